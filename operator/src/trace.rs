//! A span per reconcile, when the operator's traces are on (`OTEL_*` variables, see
//! `streamgate-telemetry`): one root span per pass over a StreamGateService, named for
//! the resource, failed with the step that failed.

use crate::error::Error;
use std::sync::Arc;
use streamgate_telemetry::{KeyValue, SdkSpan, Span, SpanKind, Status, Tracer, Traces};

pub struct ReconcileSpan(SdkSpan);

impl ReconcileSpan {
    pub fn start(traces: &Arc<Traces>, namespace: &str, name: &str) -> Self {
        let mut span = traces
            .tracer()
            .span_builder("reconcile")
            .with_kind(SpanKind::Internal)
            .start(traces.tracer());
        if span.is_recording() {
            span.update_name(format!("reconcile {namespace}/{name}"));
            span.set_attributes([
                KeyValue::new("k8s.namespace.name", namespace.to_string()),
                KeyValue::new("streamgate.service", name.to_string()),
            ]);
        }
        ReconcileSpan(span)
    }

    pub fn finish<T>(mut self, result: &Result<T, Error>) {
        if let Err(error) = result {
            if self.0.is_recording() {
                self.0
                    .set_attribute(KeyValue::new("streamgate.step", error.step()));
            }
            self.0.set_status(Status::error(error.to_string()));
        }
        self.0.end();
    }
}
