//! The reconciler. For one StreamGateService, inside a finalizer whose cleanup removes
//! the service's Consul instances, the steps are functions with a typed output each:
//!
//! 1. [`validate`] → the sidecar configuration, or
//!    `Error::Invalid` naming the field (and a Warning Event);
//! 2. [`desired()`] → the Deployment and Service wanted (pure);
//! 3. `children::apply_children` → what changed, or `Error::Apply` naming the child;
//! 4. `status_update::observe` → the status wanted, then `status_update::write` or
//!    `Error::WriteStatus`;
//! 5. `cleanup::cleanup` on deletion → pods stopped, Consul cleaned, or
//!    `Error::StopPods` / `Error::ConsulCleanup`.
//!
//! Each error variant names its step, which is the label the errors metric counts.

mod children;
mod cleanup;
mod events;
mod status_update;

use crate::backoff;
use crate::consul::Consul;
use crate::consul_watch::InstanceWatch;
use crate::desired::{desired, validate};
use crate::error::{Error, Result};
use crate::known::Known;
use crate::labels::FINALIZER;
use crate::metrics::Metrics;
use crate::sidecar_defaults::SidecarDefaults;
use crate::written::WrittenStatuses;
use children::apply_children;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use streamgate_crds::StreamGateService;
use streamgate_crds::sidecar_config::SidecarConfig;
use tracing::warn;

/// Everything a reconcile needs, built once.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub consul: Consul,
    /// Each service's instances, followed with a blocking query: what the status reads.
    pub instances: InstanceWatch,
    pub metrics: Metrics,
    pub sidecar_defaults: SidecarDefaults,
    /// The owned Deployments and Services, from caches fed by the controller's watches, so
    /// a reconcile reads its children without a request.
    pub deployments: Known<Deployment>,
    pub services: Known<Service>,
    pub network_policies: Known<NetworkPolicy>,
    /// Statuses written moments ago that the resource cache may not show yet.
    pub statuses: WrittenStatuses,
    /// Consecutive reconcile failures per object, for the error policy's backoff.
    pub failures: backoff::Failures,
    /// Requeue period once Ready (the status reads Consul from a watch's cache).
    pub resync_ready: Duration,
    /// Requeue period while not Ready.
    pub resync_not_ready: Duration,
    /// A span per reconcile, when the operator's traces are on.
    pub traces: Option<Arc<streamgate_telemetry::Traces>>,
}

/// The object being reconciled, as every step names it.
struct Subject {
    namespace: String,
    name: String,
    reference: ObjectReference,
}

impl Subject {
    fn of(sgs: &StreamGateService) -> Result<Subject> {
        Ok(Subject {
            namespace: sgs.namespace().ok_or(Error::MissingField("namespace"))?,
            name: sgs.name_any(),
            reference: sgs.object_ref(&()),
        })
    }
}

#[tracing::instrument(skip(sgs, ctx), fields(namespace = %sgs.namespace().unwrap_or_default(), name = %sgs.name_any()))]
pub async fn reconcile(sgs: Arc<StreamGateService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start_reconcile();
    let started = std::time::Instant::now();
    let namespace = sgs.namespace().ok_or(Error::MissingField("namespace"))?;
    let api: Api<StreamGateService> = Api::namespaced(ctx.client.clone(), &namespace);
    let sgs_name = sgs.name_any();
    let span = ctx
        .traces
        .as_ref()
        .map(|traces| crate::trace::ReconcileSpan::start(traces, &namespace, &sgs_name));
    let result = finalizer(&api, FINALIZER, sgs, |event| async {
        match event {
            Finalizer::Apply(sgs) => apply_service(&sgs, &ctx).await,
            Finalizer::Cleanup(sgs) => cleanup::cleanup(&sgs, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    if result.is_ok() {
        ctx.failures.reset(&namespace, &sgs_name);
    }
    if let Some(span) = span {
        span.finish(&result);
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
    ctx.metrics.error(error.step());
    let failures = ctx
        .failures
        .record(&sgs.namespace().unwrap_or_default(), &sgs.name_any());
    let delay = backoff::with_jitter(backoff::delay(first_retry(error), failures));
    warn!(name = %sgs.name_any(), step = error.step(), error = %error, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// The first retry's delay: an invalid spec does not heal by itself, so waiting long
/// costs nothing (the edit that fixes it wakes the object at once).
fn first_retry(error: &Error) -> Duration {
    match error {
        Error::Invalid(_) => Duration::from_secs(60),
        _ => Duration::from_secs(5),
    }
}

/// The steps for a live resource: validate, build, apply, then the status.
async fn apply_service(sgs: &StreamGateService, ctx: &Context) -> Result<Action> {
    let target = Subject::of(sgs)?;
    let config = validated(sgs, ctx, &target).await?;
    // Sidecars are rendered with the identity endpoint's CA: until this replica loaded
    // it (moments after it starts), rendering would make plaintext pods.
    let identity = ctx.sidecar_defaults.identity.as_ref();
    if identity.is_some_and(|identity| identity.ca.endpoint_ca().is_none()) {
        tracing::debug!("waiting for the identity endpoint's CA before rendering");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let want = desired(sgs, &config, &ctx.sidecar_defaults);
    let changes = apply_children(ctx, &target, &want).await?;
    events::announce_changes(ctx, &target, &changes).await;
    // A child created just now has no status yet and its watch event brings us back here
    // within moments: writing a status now would only be overwritten.
    if changes.created_any() {
        return Ok(Action::requeue(ctx.resync_not_ready));
    }
    let update = status_update::observe(sgs, ctx, &target, &changes).await;
    status_update::write(ctx, &target, sgs, &update).await?;
    Ok(Action::requeue(update.next_look(ctx)))
}

/// Step 1: the sidecar configuration the spec describes, or the field that is wrong,
/// told to the user as a Warning Event on the resource.
async fn validated(
    sgs: &StreamGateService,
    ctx: &Context,
    target: &Subject,
) -> Result<SidecarConfig> {
    match validate(sgs) {
        Ok(config) => Ok(config),
        Err(field_error) => {
            let note = field_error.to_string();
            events::publish(ctx, target, EventType::Warning, "InvalidSpec", &note).await;
            Err(Error::Invalid(field_error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamgate_crds::FieldError;

    #[test]
    fn an_invalid_spec_waits_longer_before_its_first_retry() {
        let invalid = Error::Invalid(FieldError::new("spec.port", "must be 1..65535"));
        let status = Error::WriteStatus(kube::Error::LinesCodecMaxLineLengthExceeded);
        assert_eq!(first_retry(&invalid), Duration::from_secs(60));
        assert_eq!(first_retry(&status), Duration::from_secs(5));
    }
}
