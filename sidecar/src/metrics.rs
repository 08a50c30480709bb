//! Prometheus metrics served on `/metrics`: app health state and check latency,
//! readiness, Consul operations and their errors, and the event relay's.
//!
//! prometheus-client keeps every metric in atomics owned by this struct (no global
//! registry), so the hot paths only bump counters and `/metrics` encodes on demand.

use crate::events::metrics::EventMetrics;
use crate::forward::metrics::ForwardMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsulLabels {
    /// `register`, `update_check`, `watch`, `deregister`.
    pub operation: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// 1 when the app is healthy by the thresholds, else 0.
    pub app_healthy: Gauge,
    /// 1 while the instance is known to be registered in Consul.
    pub consul_registered: Gauge,
    /// 1 while `/readyz` answers 200.
    pub ready: Gauge,
    /// 0 while the event relay cannot set up its streams or consumers on a reachable NATS.
    pub event_relay_working: Gauge,
    pub health_checks: Family<ResultLabels, Counter>,
    pub health_check_duration: Histogram,
    pub health_transitions: Counter,
    pub consul_operations: Family<ConsulLabels, Counter>,
    pub consul_registrations: Counter,
    /// The event relay's metrics (see [`crate::events::metrics`]).
    pub events: Arc<EventMetrics>,
    /// gRPC forwarding's metrics (see [`crate::forward::metrics`]).
    pub forward: Arc<ForwardMetrics>,
    /// Spans exported and dropped (when traces are on).
    pub traces: streamgate_telemetry::SpanCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("streamgate_sidecar");
        let metrics = Metrics {
            registry: Registry::default(),
            app_healthy: Gauge::default(),
            consul_registered: Gauge::default(),
            ready: Gauge::default(),
            event_relay_working: {
                let working = Gauge::default();
                working.set(1);
                working
            },
            health_checks: Family::default(),
            // 0.5 ms .. ~4 s: loopback checks are sub-millisecond, timeouts are seconds.
            health_check_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            health_transitions: Counter::default(),
            consul_operations: Family::default(),
            consul_registrations: Counter::default(),
            events: Arc::default(),
            forward: Arc::default(),
            traces: Default::default(),
        };
        metrics.traces.register(registry);
        metrics.events.register(registry);
        metrics.forward.register(registry);
        registry.register(
            "app_healthy",
            "Whether the app is healthy (1) by the health check thresholds",
            metrics.app_healthy.clone(),
        );
        registry.register(
            "consul_registered",
            "Whether the pod's instance is registered in Consul (1)",
            metrics.consul_registered.clone(),
        );
        registry.register(
            "ready",
            "Whether /readyz reports ready (1)",
            metrics.ready.clone(),
        );
        registry.register(
            "event_relay_working",
            "0 while the event relay cannot set up its streams or consumers on a reachable NATS",
            metrics.event_relay_working.clone(),
        );
        registry.register(
            "health_checks",
            "App health probes by result",
            metrics.health_checks.clone(),
        );
        registry.register(
            "health_check_duration_seconds",
            "Duration of app health probes",
            metrics.health_check_duration.clone(),
        );
        registry.register(
            "health_transitions",
            "Changes of the app's health state",
            metrics.health_transitions.clone(),
        );
        registry.register(
            "consul_operations",
            "Consul HTTP API calls by operation and outcome",
            metrics.consul_operations.clone(),
        );
        registry.register(
            "consul_registrations",
            "Registrations of the instance (the first and every re-registration)",
            metrics.consul_registrations.clone(),
        );
        Metrics {
            registry: root,
            ..metrics
        }
    }

    pub fn observe_check(&self, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "failure" };
        self.health_checks
            .get_or_create(&ResultLabels { result })
            .inc();
        self.health_check_duration.observe(took.as_secs_f64());
    }

    pub fn observe_consul(&self, operation: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.consul_operations
            .get_or_create(&ConsulLabels { operation, outcome })
            .inc();
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_with_the_prefix() {
        let m = Metrics::new();
        m.observe_check(true, Duration::from_millis(2));
        m.observe_consul("register", false);
        m.app_healthy.set(1);
        let text = m.encode();
        for needle in [
            "streamgate_sidecar_app_healthy 1",
            "streamgate_sidecar_health_checks_total{result=\"success\"} 1",
            "streamgate_sidecar_health_check_duration_seconds_count 1",
            "streamgate_sidecar_consul_operations_total{operation=\"register\",outcome=\"error\"} 1",
            "streamgate_sidecar_ready 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
