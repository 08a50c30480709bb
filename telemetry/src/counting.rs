//! A bound on finished spans waiting for export, and the counts a dashboard needs:
//! spans exported, and spans dropped because the queue was full or their export failed.
//!
//! The SDK's batch processor drops on a full queue too, but keeps the count to itself;
//! this gate keeps the same bound in front of it (so the processor's own queue never
//! fills) and counts every span one way or the other.

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Why a span was not exported.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` (the exporter is behind: the collector is slow or down) or
    /// `export_failed` (the collector refused the batch or could not be reached).
    pub reason: &'static str,
}

/// The trace export counters, registered with the process's metrics (under its prefix:
/// `streamgate_sidecar_trace_spans_dropped_total`, `streamgate_operator_...`).
#[derive(Clone, Default, Debug)]
pub struct SpanCounters {
    pub exported: Counter,
    pub dropped: Family<DropLabels, Counter>,
}

impl SpanCounters {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "trace_spans_exported",
            "Spans the collector accepted",
            self.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans never exported: the export queue was full, or the collector refused or missed the export",
            self.dropped.clone(),
        );
        // Both reasons from the start, so a dashboard's rate() has a series at zero.
        for reason in ["queue_full", "export_failed"] {
            let _ = self.dropped.get_or_create(&DropLabels { reason });
        }
    }
}

/// Spans handed to the batch processor and not yet exported or failed.
#[derive(Debug)]
struct Pending {
    count: AtomicUsize,
    limit: usize,
    counters: SpanCounters,
}

/// The exporter, with `pending` told of each batch's end; and the gate to put around
/// the processor that feeds it.
pub(crate) fn wrap<E: SpanExporter>(
    exporter: E,
    limit: usize,
    counters: SpanCounters,
) -> (CountingExporter<E>, Gate) {
    let pending = Arc::new(Pending {
        count: AtomicUsize::new(0),
        limit,
        counters,
    });
    (
        CountingExporter {
            inner: exporter,
            pending: pending.clone(),
        },
        Gate { pending },
    )
}

pub(crate) struct Gate {
    pending: Arc<Pending>,
}

impl Gate {
    pub(crate) fn around<P: SpanProcessor>(self, inner: P) -> GatedProcessor<P> {
        GatedProcessor {
            inner,
            pending: self.pending,
        }
    }
}

#[derive(Debug)]
pub(crate) struct GatedProcessor<P> {
    inner: P,
    pending: Arc<Pending>,
}

impl<P: SpanProcessor> SpanProcessor for GatedProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .pending
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.pending.limit).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            self.pending
                .counters
                .dropped
                .get_or_create(&DropLabels {
                    reason: "queue_full",
                })
                .inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug)]
pub(crate) struct CountingExporter<E> {
    inner: E,
    pending: Arc<Pending>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        let _ = self
            .pending
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
        let counters = &self.pending.counters;
        match &result {
            Ok(()) => {
                counters.exported.inc_by(n as u64);
            }
            Err(e) => {
                counters
                    .dropped
                    .get_or_create(&DropLabels {
                        reason: "export_failed",
                    })
                    .inc_by(n as u64);
                tracing::debug!(spans = n, error = %e, "trace export failed");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
