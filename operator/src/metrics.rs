//! Prometheus metrics of the operator: reconciles, errors by kind, reconcile latency,
//! leadership and Consul ghosts removed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChildLabels {
    pub kind: String,
    pub action: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub applies: Family<ChildLabels, Counter>,
    pub leader: Gauge,
    pub ghosts_deregistered: Counter,
    /// 1 while the streams capture every declared subject with the configured settings.
    pub streams_in_sync: Gauge,
    pub stream_writes: Counter,
    pub stream_errors: Counter,
    /// Attempts to prepare the webhook's certificates that failed.
    pub webhook_errors: Counter,
    /// Spans exported and dropped (when traces are on).
    pub traces: streamgate_telemetry::SpanCounters,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            applies: Family::default(),
            leader: Gauge::default(),
            ghosts_deregistered: Counter::default(),
            streams_in_sync: Gauge::default(),
            stream_writes: Counter::default(),
            stream_errors: Counter::default(),
            webhook_errors: Counter::default(),
            traces: Default::default(),
        };
        m.traces
            .register(registry.sub_registry_with_prefix("streamgate_operator"));
        for step in crate::error::STEPS {
            m.error_counter(step);
        }
        registry.register(
            "streamgate_operator_reconciles",
            "Reconciles run",
            m.reconciles.clone(),
        );
        registry.register(
            "streamgate_operator_reconcile_errors",
            "Reconciles that failed, by error kind",
            m.errors.clone(),
        );
        registry.register(
            "streamgate_operator_reconcile_duration_seconds",
            "Time one reconcile took",
            m.duration.clone(),
        );
        registry.register(
            "streamgate_operator_child_applies",
            "Server-side applies of owned objects, by kind and action",
            m.applies.clone(),
        );
        registry.register(
            "streamgate_operator_leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        registry.register(
            "streamgate_operator_consul_ghosts_deregistered",
            "Consul instances removed because their pod no longer exists",
            m.ghosts_deregistered.clone(),
        );
        registry.register(
            "streamgate_operator_streams_in_sync",
            "1 while the JetStream streams capture every declared subject with the configured settings",
            m.streams_in_sync.clone(),
        );
        registry.register(
            "streamgate_operator_stream_writes",
            "JetStream streams created or updated",
            m.stream_writes.clone(),
        );
        registry.register(
            "streamgate_operator_stream_errors",
            "Passes over the JetStream streams that failed",
            m.stream_errors.clone(),
        );
        registry.register(
            "streamgate_operator_webhook_certificate_errors",
            "Attempts to prepare the webhook's certificates and registration that failed (the replica stays not ready meanwhile)",
            m.webhook_errors.clone(),
        );
        m
    }

    /// Times one reconcile; the duration is observed when the guard drops.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    pub fn error(&self, kind: &str) {
        self.error_counter(kind).inc();
    }

    fn error_counter(&self, kind: &str) -> Counter {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
            })
            .clone()
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}
