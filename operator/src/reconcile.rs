//! The reconciler: for one StreamGateService, validate → build → apply → update status,
//! inside a finalizer whose cleanup removes the service's Consul instances.

use crate::apply::{Applied, apply};
use crate::backoff;
use crate::consul::Consul;
use crate::desired::{desired, validate};
use crate::error::{Error, Result};
use crate::known::Known;
use crate::labels::{FIELD_MANAGER, FINALIZER};
use crate::metrics::{ChildLabels, Metrics};
use crate::settings::SidecarSettings;
use crate::status::{compute_status, is_ready};
use crate::written::WrittenStatuses;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use streamgate_crds::StreamGateService;
use tracing::{info, warn};

/// How long the finalizer keeps trying to reach Consul before it gives up, records an
/// Event and lets the deletion go through (the sweep removes what is left later).
const CONSUL_CLEANUP_GRACE: Duration = Duration::from_secs(60);

/// Everything a reconcile needs, built once.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub consul: Consul,
    pub metrics: Metrics,
    pub settings: SidecarSettings,
    /// The owned Deployments and Services, from caches fed by the controller's watches, so
    /// a reconcile reads its children without a request.
    pub deployments: Known<Deployment>,
    pub services: Known<Service>,
    /// Statuses written moments ago that the resource cache may not show yet.
    pub statuses: WrittenStatuses,
    /// Consecutive reconcile failures per object, for the error policy's backoff.
    pub failures: backoff::Failures,
    /// Requeue period once Ready (Consul is polled, not watched).
    pub resync_ready: Duration,
    /// Requeue period while not Ready.
    pub resync_not_ready: Duration,
}

#[tracing::instrument(skip(sgs, ctx), fields(namespace = %sgs.namespace().unwrap_or_default(), name = %sgs.name_any()))]
pub async fn reconcile(sgs: Arc<StreamGateService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start_reconcile();
    let started = std::time::Instant::now();
    let namespace = sgs.namespace().ok_or(Error::MissingField("namespace"))?;
    let api: Api<StreamGateService> = Api::namespaced(ctx.client.clone(), &namespace);
    let sgs_name = sgs.name_any();
    let result = finalizer(&api, FINALIZER, sgs, |event| async {
        match event {
            Finalizer::Apply(sgs) => apply_service(&sgs, &ctx).await,
            Finalizer::Cleanup(sgs) => cleanup(&sgs, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    if result.is_ok() {
        ctx.failures.reset(&namespace, &sgs_name);
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "reconciled"
    );
    result
}

/// The controller's error policy: back off exponentially per object (an invalid spec from
/// a minute, anything else from 5 s, at most 5 minutes), with jitter so many failing
/// resources do not retry in lockstep. A spec edit wakes the object at once anyway.
pub fn error_policy(sgs: Arc<StreamGateService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.kind());
    let failures = ctx
        .failures
        .record(&sgs.namespace().unwrap_or_default(), &sgs.name_any());
    let base = match error {
        Error::Invalid(_) => Duration::from_secs(60),
        _ => Duration::from_secs(5),
    };
    let delay = backoff::with_jitter(backoff::delay(base, failures));
    warn!(name = %sgs.name_any(), error = %error, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

async fn apply_service(sgs: &StreamGateService, ctx: &Context) -> Result<Action> {
    let namespace = sgs.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = sgs.name_any();
    let reference = sgs.object_ref(&());

    // validate
    let config = match validate(sgs) {
        Ok(config) => config,
        Err(field_error) => {
            publish(
                ctx,
                &reference,
                EventType::Warning,
                "InvalidSpec",
                &field_error.to_string(),
            )
            .await;
            return Err(Error::Invalid(field_error));
        }
    };
    // build
    let want = desired(sgs, &config, &ctx.settings);

    // apply
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let current_deployment = ctx.deployments.get(&name, &namespace);
    let current_service = ctx.services.get(&name, &namespace);
    let provisional = current_deployment.provisional || current_service.provisional;
    let applied = [
        (
            "Deployment",
            apply(
                &deployments,
                &want.deployment,
                current_deployment.object.as_deref(),
            )
            .await
            .map(|(action, answer)| remember_created(&ctx.deployments, action, answer)),
        ),
        (
            "Service",
            apply(&services, &want.service, current_service.object.as_deref())
                .await
                .map(|(action, answer)| remember_created(&ctx.services, action, answer)),
        ),
    ];
    let mut changes: Vec<(Applied, &str)> = Vec::new();
    for (kind, result) in applied {
        match result {
            Ok(action) => {
                ctx.metrics
                    .applies
                    .get_or_create(&ChildLabels {
                        kind: kind.to_string(),
                        action: action.as_str().to_string(),
                    })
                    .inc();
                if action != Applied::Unchanged {
                    info!(kind, action = action.as_str(), "applied");
                    changes.push((action, kind));
                }
            }
            Err(e) => {
                publish(
                    ctx,
                    &reference,
                    EventType::Warning,
                    "ApplyFailed",
                    &format!("{kind} {name}: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
    }
    // One Event per reconcile that changed something, e.g. "Created Deployment and Service upload".
    if let Some((first, _)) = changes.first() {
        let reason = if *first == Applied::Created {
            "Created"
        } else {
            "Updated"
        };
        let kinds: Vec<&str> = changes.iter().map(|(_, kind)| *kind).collect();
        let note = format!("{reason} {} {name}", kinds.join(" and "));
        publish(ctx, &reference, EventType::Normal, reason, &note).await;
    }

    // A child created just now has no status yet and its watch event brings us back here
    // within moments: writing a status now would only be overwritten.
    if changes
        .iter()
        .any(|(action, _)| *action == Applied::Created)
    {
        return Ok(Action::requeue(ctx.resync_not_ready));
    }

    // update status (from the cache: a Deployment created just now has no status yet, and
    // its watch event brings us back here when it does)
    let deployment = current_deployment.object;
    let consul = ctx
        .consul
        .managed_instances(&sgs.consul_name(), &namespace)
        .await
        .map_err(|e| e.to_string());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Computed from the status last written when the cache does not show it yet, so the
    // same status is not written twice and condition transition times carry over.
    let written = ctx.statuses.stand_in(sgs);
    let provisional = provisional || written.is_some();
    let as_known;
    let sgs = match written {
        Some(status) => {
            as_known = StreamGateService {
                status: Some(status),
                ..sgs.clone()
            };
            &as_known
        }
        None => sgs,
    };
    let status = compute_status(sgs, deployment.as_deref(), &consul, now);
    if sgs.status.as_ref() != Some(&status) {
        // A JSON merge patch of the whole status, not a server-side apply: the status is
        // ours alone and computed whole (every field set, conditions replaced as a list),
        // so the two write the same thing, and a merge patch costs the API server a
        // fraction of an apply (no YAML decoding, no field-set merging). Status writes
        // were the largest share of its CPU with 1,000 resources.
        let api: Api<StreamGateService> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({ "status": status });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        api.patch_status(&name, &params, &Patch::Merge(&patch))
            .await?;
        ctx.statuses.remember(sgs, status.clone());
    }
    let resync = if is_ready(&status) {
        ctx.resync_ready
    } else {
        ctx.resync_not_ready
    };
    // Someone else's change hidden behind a provisional answer shows once the cache
    // has caught up: look again by then.
    Ok(Action::requeue(if provisional {
        resync.min(crate::known::CATCH_UP)
    } else {
        resync
    }))
}

/// Keeps what the API server answered to a creation until the watch shows the object.
fn remember_created<K>(known: &Known<K>, action: Applied, answer: Option<K>) -> Applied
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    if let (Applied::Created, Some(object)) = (action, answer) {
        known.remember_created(object);
    }
    action
}

/// Deletion: stop the pods, remove every Consul instance of the service, then let the
/// owned objects be garbage-collected. Gives up on Consul after a grace period so an
/// unreachable Consul never blocks a deletion forever.
async fn cleanup(sgs: &StreamGateService, ctx: &Context) -> Result<Action> {
    let namespace = sgs.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = sgs.name_any();
    let reference = sgs.object_ref(&());
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    // Deleting the pods first stops their sidecars from registering again.
    match deployments.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let service = sgs.consul_name();
    let result = async {
        let node = ctx.consul.agent_node().await?;
        let instances = ctx.consul.managed_instances(&service, &namespace).await?;
        for instance in &instances {
            ctx.consul.deregister(instance, &node).await?;
        }
        Ok::<usize, crate::consul::ConsulError>(instances.len())
    }
    .await;
    match result {
        Ok(count) => {
            info!(count, "deregistered the service's Consul instances");
            publish(
                ctx,
                &reference,
                EventType::Normal,
                "ConsulCleaned",
                &format!("deregistered {count} Consul instance(s) of {service}"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => {
            let deleting_for = sgs
                .meta()
                .deletion_timestamp
                .as_ref()
                .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            if deleting_for > CONSUL_CLEANUP_GRACE {
                let message = format!(
                    "gave up deregistering {service} from Consul after {deleting_for:?}: {e}; the ghost sweep will remove what is left"
                );
                warn!("{message}");
                publish(
                    ctx,
                    &reference,
                    EventType::Warning,
                    "ConsulCleanupAbandoned",
                    &message,
                )
                .await;
                Ok(Action::await_change())
            } else {
                publish(
                    ctx,
                    &reference,
                    EventType::Warning,
                    "ConsulCleanupFailed",
                    &e.to_string(),
                )
                .await;
                Err(e.into())
            }
        }
    }
}

/// Records a Kubernetes Event in the background: an Event is for people, and a slow
/// events API must not slow reconciles down.
async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    let recorder = ctx.recorder.clone();
    let reference = reference.clone();
    let reason = reason.to_string();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(error = %e, reason, "could not publish an Event");
        }
    });
}
