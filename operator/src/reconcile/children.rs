//! Step 3: apply the ServiceAccount (with the Deployment's creation), the Deployment,
//! Service and (with `allowedCallers`) NetworkPolicy wanted, each only when it differs
//! from what the cache shows (server-side apply, our field manager); a NetworkPolicy no
//! longer wanted is deleted.

use super::{Context, Subject, events};
use crate::apply::{self, Applied as Action};
use crate::desired::Desired;
use crate::error::{Error, Result};
use crate::known::Known;
use crate::metrics::ChildLabels;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::events::EventType;
use std::sync::Arc;
use tracing::info;

/// What applying the children did, and what the status step reads of them.
pub(super) struct Applied {
    /// The children that changed, in apply order, e.g. `[(Created, "Deployment")]`.
    pub changes: Vec<(Action, &'static str)>,
    /// The Deployment as the cache shows it (its status feeds the resource's).
    pub deployment: Option<Arc<Deployment>>,
    /// A child's current state came from a creation's answer, not the cache.
    pub provisional: bool,
}

impl Applied {
    pub fn created_any(&self) -> bool {
        self.changes
            .iter()
            .any(|(action, _)| *action == Action::Created)
    }
}

pub(super) async fn apply_children(
    ctx: &Context,
    target: &Subject,
    want: &Desired,
) -> Result<Applied> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &target.namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &target.namespace);
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &target.namespace);
    let current_deployment = ctx.deployments.get(&target.name, &target.namespace);
    let current_service = ctx.services.get(&target.name, &target.namespace);
    let current_policy = ctx.network_policies.get(&target.name, &target.namespace);
    // The pods' ServiceAccount, written when the Deployment is (about to be) created:
    // no cache follows ServiceAccounts (a watch of every one in the cluster for a rare
    // change), so one deleted by hand comes back with the next Deployment creation.
    let account = match (&want.service_account, &current_deployment.object) {
        (Some(account), None) => {
            let accounts: Api<ServiceAccount> =
                Api::namespaced(ctx.client.clone(), &target.namespace);
            Some(
                apply::apply(&accounts, account, None)
                    .await
                    .map(|(action, _)| action),
            )
        }
        _ => None,
    };
    let mut applied = Applied {
        changes: Vec::new(),
        deployment: current_deployment.object.clone(),
        provisional: current_deployment.provisional
            || current_service.provisional
            || current_policy.provisional,
    };
    let deployment = apply::apply(
        &deployments,
        &want.deployment,
        current_deployment.object.as_deref(),
    )
    .await
    .map(|(action, answer)| remember_created(&ctx.deployments, action, answer));
    // The Service is applied even when the Deployment failed: one child's trouble (a
    // quota, an admission refusal) need not hold back the other.
    let service = apply::apply(&services, &want.service, current_service.object.as_deref())
        .await
        .map(|(action, answer)| remember_created(&ctx.services, action, answer));
    let policy = apply::apply_or_delete(
        &policies,
        want.network_policy.as_ref(),
        current_policy.object.as_deref(),
    )
    .await
    .map(|(action, answer)| remember_created(&ctx.network_policies, action, answer));
    if let Some(account) = account {
        record(ctx, target, &mut applied, "ServiceAccount", account).await?;
    }
    record(ctx, target, &mut applied, "Deployment", deployment).await?;
    record(ctx, target, &mut applied, "Service", service).await?;
    record(ctx, target, &mut applied, "NetworkPolicy", policy).await?;
    Ok(applied)
}

/// Counts one child's apply in the metrics and the changes, or turns its failure into
/// the step's error (and a Warning Event naming the child).
async fn record(
    ctx: &Context,
    target: &Subject,
    applied: &mut Applied,
    kind: &'static str,
    result: Result<Action, kube::Error>,
) -> Result<()> {
    match result {
        Ok(action) => {
            ctx.metrics
                .applies
                .get_or_create(&ChildLabels {
                    kind: kind.to_string(),
                    action: action.as_str().to_string(),
                })
                .inc();
            if action != Action::Unchanged {
                info!(kind, action = action.as_str(), "applied");
                applied.changes.push((action, kind));
            }
            Ok(())
        }
        Err(source) => {
            let note = format!("{kind} {}: {source}", target.name);
            events::publish(ctx, target, EventType::Warning, "ApplyFailed", &note).await;
            Err(Error::Apply {
                kind,
                name: target.name.clone(),
                source,
            })
        }
    }
}

/// Keeps what the API server answered to a creation until the watch shows the object.
fn remember_created<K>(known: &Known<K>, action: Action, answer: Option<K>) -> Action
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    if let (Action::Created, Some(object)) = (action, answer) {
        known.remember_created(object);
    }
    action
}
