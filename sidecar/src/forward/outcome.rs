//! Where outcomes are observed: one place for a call's final status (the upstream's
//! request metrics) and one for an attempt's verdict on its instance (the circuit
//! breaker and the ejections metric), as linkerd2-proxy observes a response in one
//! layer. Each is a value consumed once; dropping it unconsumed is an outcome too (the
//! app went away: the call is CANCELLED and says nothing about the instance), so no
//! path through the call can forget to count or leave a breaker's probe taken.

use super::breaker::Admission;
use super::trace::CallSpan;
use super::upstream::{Backend, Upstream};
use std::sync::Arc;
use std::time::Instant;
use tonic::Code;

/// A call's final status, counted once in its upstream's metrics and ending its span
/// (when traces are on).
pub struct CallOutcome {
    upstream: Arc<Upstream>,
    span: Option<CallSpan>,
    counted: bool,
}

impl CallOutcome {
    pub fn new(upstream: Arc<Upstream>, span: Option<CallSpan>) -> Self {
        CallOutcome {
            upstream,
            span,
            counted: false,
        }
    }

    pub fn span(&self) -> Option<&CallSpan> {
        self.span.as_ref()
    }

    /// An attempt goes to `instance` (for the call's span).
    pub fn attempt(&mut self, instance: &Backend, admission: Admission) {
        if let Some(span) = &mut self.span {
            span.attempt(instance, admission);
        }
    }

    /// The call ended with `code`.
    pub fn finish(mut self, code: Code) {
        self.count(code);
    }

    fn count(&mut self, code: Code) {
        if !self.counted {
            self.counted = true;
            self.upstream.metrics.finished(code);
            if let Some(span) = self.span.take() {
                span.finish(code);
            }
        }
    }
}

impl Drop for CallOutcome {
    fn drop(&mut self) {
        // The caller stopped waiting before any answer.
        self.count(Code::Cancelled);
    }
}

/// One attempt on one instance, whose breaker learns how it went at most once.
pub struct AttemptOutcome {
    upstream: Arc<Upstream>,
    instance: Arc<Backend>,
    admission: Admission,
    recorded: bool,
}

impl AttemptOutcome {
    pub fn new(upstream: Arc<Upstream>, instance: Arc<Backend>, admission: Admission) -> Self {
        AttemptOutcome {
            upstream,
            instance,
            admission,
            recorded: false,
        }
    }

    /// The instance could not be reached or lost the exchange (no connection, a reset,
    /// no answer in time).
    pub fn instance_failed(mut self) {
        self.record(false);
    }

    /// The instance answered with `code`: a failure when the status says the instance
    /// is in trouble, nothing at all when the caller cancelled.
    pub fn answered(mut self, code: Code) {
        if code != Code::Cancelled {
            self.record(!is_instance_failure(code));
        }
    }

    fn record(&mut self, success: bool) {
        self.recorded = true;
        let Some(breaker) = &self.instance.breaker else {
            return;
        };
        let before = breaker.ejections();
        breaker.record(success, Instant::now());
        if breaker.ejections() > before {
            self.upstream.metrics.ejections.inc();
            tracing::warn!(
                upstream = %self.upstream.name,
                instance = %self.instance.endpoint.id,
                "instance ejected by the circuit breaker"
            );
        }
    }
}

impl Drop for AttemptOutcome {
    fn drop(&mut self) {
        // Abandoned without a verdict: a probe the breaker let through must be given
        // back, or the instance would stay ejected.
        if !self.recorded
            && self.admission == Admission::Probe
            && let Some(breaker) = &self.instance.breaker
        {
            breaker.release_probe();
        }
    }
}

/// Statuses that say the instance (not the request) is in trouble.
pub fn is_instance_failure(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Internal | Code::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::breaker::BreakerConfig;
    use crate::forward::discovery::{Endpoint, Resolution};
    use crate::forward::metrics::ForwardMetrics;
    use crate::forward::pool::PoolLimits;
    use crate::forward::retry::RetryPolicy;
    use crate::forward::upstream::UpstreamSettings;
    use prometheus_client::registry::Registry;
    use std::time::Duration;
    use tokio::sync::watch;

    const EJECTION: Duration = Duration::from_secs(10);

    /// An upstream with one instance whose breaker ejects after one failure.
    async fn one_instance() -> (Arc<Upstream>, Arc<Backend>, Registry) {
        let metrics = ForwardMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let settings = UpstreamSettings {
            timeout: Duration::from_secs(1),
            retry: RetryPolicy::from_spec(None),
            breaker: Some(BreakerConfig {
                consecutive_failures: 1,
                base_ejection: EJECTION,
                max_ejection: EJECTION * 4,
            }),
            scope: crate::forward::upstream::NamespaceScope::Prefer("default".into()),
        };
        let endpoint = Endpoint {
            id: "a".into(),
            addr: ([127, 0, 0, 1], 1).into(),
            namespace: None,
            mtls: false,
        };
        let (tx, rx) = watch::channel(Resolution::Pending);
        let upstream = Arc::new(Upstream::new(
            "upload".into(),
            settings,
            rx,
            metrics.upstream("upload"),
            PoolLimits::default(),
        ));
        tx.send(Resolution::Known(Arc::from(vec![endpoint])))
            .unwrap();
        let soon = tokio::time::Instant::now() + Duration::from_millis(100);
        let instance = upstream.instances(soon).await.unwrap()[0].clone();
        (upstream, instance, registry)
    }

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test]
    async fn an_attempt_abandoned_while_probing_gives_the_probe_back() {
        let (upstream, instance, _) = one_instance().await;
        let breaker = instance.breaker.as_ref().unwrap();
        let start = Instant::now();
        breaker.record(false, start);
        let after_ejection = start + EJECTION;
        assert_eq!(breaker.admit(after_ejection), Admission::Probe);
        // E.g. the deadline passed while waiting for a connection: no verdict.
        drop(AttemptOutcome::new(
            upstream,
            instance.clone(),
            Admission::Probe,
        ));
        assert_eq!(
            breaker.admit(after_ejection + Duration::from_secs(1)),
            Admission::Probe,
            "the next request probes instead of finding the instance ejected"
        );
    }

    #[tokio::test]
    async fn an_attempts_verdict_reaches_the_breaker_and_counts_the_ejection() {
        let (upstream, instance, registry) = one_instance().await;
        let cancelled = AttemptOutcome::new(upstream.clone(), instance.clone(), Admission::Closed);
        cancelled.answered(Code::Cancelled);
        assert!(
            !instance.breaker.as_ref().unwrap().is_open(),
            "a cancel says nothing"
        );
        let failed = AttemptOutcome::new(upstream, instance.clone(), Admission::Closed);
        failed.answered(Code::Unavailable);
        assert!(instance.breaker.as_ref().unwrap().is_open());
        let text = exposition(&registry);
        assert!(
            text.contains("forward_ejections_total{upstream=\"upload\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_call_is_counted_once_and_a_dropped_one_as_cancelled() {
        let (upstream, _, registry) = one_instance().await;
        CallOutcome::new(upstream.clone(), None).finish(Code::Ok);
        drop(CallOutcome::new(upstream, None));
        let text = exposition(&registry);
        for needle in [
            "forward_requests_total{upstream=\"upload\",code=\"OK\"} 1",
            "forward_requests_total{upstream=\"upload\",code=\"CANCELLED\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
