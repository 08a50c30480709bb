//! A span per forwarded call, when traces are on: a CLIENT span in the caller's sidecar
//! (one per call, retries included, naming the instance that answered) and a SERVER
//! span in the server's sidecar, linked by the W3C `traceparent` each writes into the
//! request it sends on, so the app's own spans are their children.
//!
//! A span the sampler did not pick costs its ids and the decision: names and
//! attributes are set only on recording spans.

use super::breaker::Admission;
use super::upstream::Backend;
use axum::http::HeaderMap;
use std::sync::Arc;
use streamgate_telemetry::{KeyValue, SdkSpan, Span, SpanKind, Status, Tracer as _, Traces};
use tonic::Code;

pub struct CallSpan {
    span: SdkSpan,
    traces: Arc<Traces>,
    attempts: i64,
}

impl CallSpan {
    /// The caller's span for a call of `upstream`; its parent is the app's
    /// `traceparent`, if the app sent one.
    pub fn client(traces: &Arc<Traces>, headers: &HeaderMap, upstream: &str, path: &str) -> Self {
        let mut span = Self::start(traces, headers, SpanKind::Client, path);
        if span.span.is_recording() {
            span.span
                .set_attribute(KeyValue::new("streamgate.upstream", upstream.to_string()));
        }
        span
    }

    /// The server's span for a call the inbound listener took, child of the caller's.
    pub fn server(traces: &Arc<Traces>, headers: &HeaderMap, service: &str, path: &str) -> Self {
        let mut span = Self::start(traces, headers, SpanKind::Server, path);
        if span.span.is_recording() {
            span.span
                .set_attribute(KeyValue::new("streamgate.service", service.to_string()));
        }
        span
    }

    fn start(traces: &Arc<Traces>, headers: &HeaderMap, kind: SpanKind, path: &str) -> Self {
        let parent = traces.extract(headers);
        let mut span = traces
            .tracer()
            .span_builder("grpc")
            .with_kind(kind)
            .start_with_context(traces.tracer(), &parent);
        if span.is_recording() {
            // `/package.Service/Method`, named as OpenTelemetry's RPC conventions say.
            let name = path.trim_start_matches('/');
            let (service, method) = name.split_once('/').unwrap_or((name, ""));
            span.update_name(name.to_string());
            span.set_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service.to_string()),
                KeyValue::new("rpc.method", method.to_string()),
            ]);
        }
        CallSpan {
            span,
            traces: traces.clone(),
            attempts: 0,
        }
    }

    /// Makes this span the parent of what the request reaches next.
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.traces.inject(self.span.span_context(), headers);
    }

    /// An attempt goes to `instance`, admitted by its breaker as `admission`.
    pub fn attempt(&mut self, instance: &Backend, admission: Admission) {
        self.attempts += 1;
        if !self.span.is_recording() {
            return;
        }
        let breaker = match (&instance.breaker, admission) {
            (None, _) => "off",
            (Some(_), Admission::Probe) => "half_open",
            (Some(_), _) => "closed",
        };
        self.span.set_attributes([
            KeyValue::new("streamgate.instance", instance.endpoint.id.clone()),
            KeyValue::new("server.address", instance.endpoint.addr.ip().to_string()),
            KeyValue::new("server.port", i64::from(instance.endpoint.addr.port())),
            KeyValue::new("streamgate.breaker", breaker),
        ]);
    }

    /// Who called, as the server's sidecar verified it.
    pub fn caller(&mut self, caller: &str) {
        if self.span.is_recording() {
            self.span
                .set_attribute(KeyValue::new("streamgate.caller", caller.to_string()));
        }
    }

    /// Ends the span with the call's final status.
    pub fn finish(mut self, code: Code) {
        if self.span.is_recording() {
            self.span.set_attributes([
                KeyValue::new("rpc.grpc.status_code", code as i64),
                KeyValue::new("streamgate.retries", (self.attempts - 1).max(0)),
            ]);
            if code != Code::Ok {
                self.span.set_status(Status::error(format!("{code:?}")));
            }
        }
        self.span.end();
    }
}
