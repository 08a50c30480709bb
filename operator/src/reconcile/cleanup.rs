//! Step 5, on deletion: stop the pods, remove every Consul instance of the service, then
//! let the owned objects be garbage-collected. Gives up on Consul after a grace period
//! so an unreachable Consul never blocks a deletion forever.

use super::{Context, Subject, events};
use crate::error::{Error, Result};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Resource;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use std::time::Duration;
use streamgate_crds::StreamGateService;
use tracing::{info, warn};

/// How long the finalizer keeps trying to reach Consul before it gives up, records an
/// Event and lets the deletion go through (the sweep removes what is left later).
const CONSUL_CLEANUP_GRACE: Duration = Duration::from_secs(60);

pub(super) async fn cleanup(sgs: &StreamGateService, ctx: &Context) -> Result<Action> {
    let target = Subject::of(sgs)?;
    stop_pods(ctx, &target).await?;
    let service = sgs.consul_name();
    match deregister_all(ctx, &service, &target.namespace).await {
        Ok(count) => {
            info!(count, "deregistered the service's Consul instances");
            let note = format!("deregistered {count} Consul instance(s) of {service}");
            events::publish(ctx, &target, EventType::Normal, "ConsulCleaned", &note).await;
            Ok(Action::await_change())
        }
        Err(e) if deleting_for(sgs) > CONSUL_CLEANUP_GRACE => {
            let message = format!(
                "gave up deregistering {service} from Consul after {:?}: {e}; the ghost sweep will remove what is left",
                deleting_for(sgs)
            );
            warn!("{message}");
            let reason = "ConsulCleanupAbandoned";
            events::publish(ctx, &target, EventType::Warning, reason, &message).await;
            Ok(Action::await_change())
        }
        Err(e) => {
            let note = e.to_string();
            events::publish(
                ctx,
                &target,
                EventType::Warning,
                "ConsulCleanupFailed",
                &note,
            )
            .await;
            Err(Error::ConsulCleanup(e))
        }
    }
}

/// Deleting the pods first stops their sidecars from registering again.
async fn stop_pods(ctx: &Context, target: &Subject) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &target.namespace);
    match deployments
        .delete(&target.name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::StopPods(e)),
    }
}

/// Deregisters every instance StreamGate registered for the service; how many.
async fn deregister_all(
    ctx: &Context,
    service: &str,
    namespace: &str,
) -> Result<usize, crate::consul::ConsulError> {
    let node = ctx.consul.agent_node().await?;
    let instances = ctx.consul.managed_instances(service, namespace).await?;
    for instance in &instances {
        ctx.consul.deregister(instance, node.as_deref()).await?;
    }
    Ok(instances.len())
}

/// How long the resource has been marked for deletion.
fn deleting_for(sgs: &StreamGateService) -> Duration {
    sgs.meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
}
