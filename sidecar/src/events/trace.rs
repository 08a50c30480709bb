//! Spans of an event's way, when traces are on, all in the publisher's trace:
//!
//! - `publish <subject>` (PRODUCER): the app handed the event over; child of the app's
//!   `traceparent`. Its context is what the envelope carries from here on, so every
//!   later span, in this sidecar or a subscriber's, joins it;
//! - `spool <subject>` (INTERNAL): the event was written to the spool (NATS down or
//!   slow to ack);
//! - `send <subject>` (CLIENT): one JetStream publish and its ack, directly or from the
//!   spool;
//! - `deliver <subject>` (CONSUMER), in the subscriber's sidecar: one delivery attempt
//!   to the app, whose own work is its child (the `traceparent` handed to the app).

use super::envelope::{Outgoing, TraceContext};
use super::publisher::{Durable, Sent};
use super::receiver::NotTaken;
use std::sync::Arc;
use streamgate_telemetry::{
    KeyValue, SdkSpan, Span, SpanKind, Status, Tracer as _, Traces, traceparent,
};

/// The `publish` span of one event, ended once the event is durable (or refused).
pub struct PublishSpan(SdkSpan);

impl PublishSpan {
    /// Starts the span; the returned context is the one to put in the envelope.
    pub fn start(
        traces: &Arc<Traces>,
        subject: &str,
        given: Option<&TraceContext>,
    ) -> (PublishSpan, TraceContext) {
        let span = start(traces, "publish", SpanKind::Producer, subject, given);
        let carried = TraceContext {
            traceparent: traceparent(span.span_context()),
            tracestate: given.and_then(|g| g.tracestate.clone()),
        };
        (PublishSpan(span), carried)
    }

    /// The id the event got (generated when the app gave none).
    pub fn id(&mut self, id: &str) {
        if self.0.is_recording() {
            self.0
                .set_attribute(KeyValue::new("messaging.message.id", id.to_string()));
        }
    }

    pub fn finish(mut self, outcome: Result<Durable, &str>) {
        match outcome {
            Ok(durable) => {
                if self.0.is_recording() {
                    let spooled = durable == Durable::Spooled;
                    self.0
                        .set_attribute(KeyValue::new("streamgate.spooled", spooled));
                }
            }
            Err(reason) => self.0.set_status(Status::error(reason.to_string())),
        }
        self.0.end();
    }
}

/// `send` spans for events about to go to JetStream, each a child of its envelope's
/// context (`from_spool` tells which way it came). None when traces are off.
pub fn sends(
    traces: Option<&Arc<Traces>>,
    events: &[Outgoing],
    from_spool: bool,
) -> Option<Vec<SdkSpan>> {
    let traces = traces?;
    Some(
        events
            .iter()
            .map(|event| {
                let mut span = for_event(traces, "send", SpanKind::Client, event);
                if span.is_recording() {
                    span.set_attribute(KeyValue::new("streamgate.from_spool", from_spool));
                }
                span
            })
            .collect(),
    )
}

/// Ends the `send` spans with what became of each event.
pub fn sent(spans: Option<Vec<SdkSpan>>, results: &[Sent]) {
    for (mut span, sent) in spans.into_iter().flatten().zip(results) {
        match sent {
            Sent::Stored => {}
            Sent::Failed => span.set_status(Status::error("no JetStream ack: kept in the spool")),
            Sent::Unpublishable(reason) => span.set_status(Status::error(reason.clone())),
        }
        span.end();
    }
}

/// `spool` spans for events about to be written to the spool.
pub fn spooling(traces: Option<&Arc<Traces>>, events: &[Outgoing]) -> Vec<SdkSpan> {
    traces.map_or_else(Vec::new, |traces| {
        events
            .iter()
            .map(|event| for_event(traces, "spool", SpanKind::Internal, event))
            .collect()
    })
}

/// Ends the `spool` spans: written, or why not.
pub fn spooled(spans: Vec<SdkSpan>, error: Option<&str>) {
    for mut span in spans {
        if let Some(error) = error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }
}

/// The `deliver` span of one attempt, and the context to hand the app with the event.
pub fn deliver(
    traces: &Arc<Traces>,
    subject: &str,
    id: &str,
    attempt: i64,
    payload: &[u8],
) -> (SdkSpan, TraceContext) {
    let carried = TraceContext::from_envelope(payload);
    let mut span = start(
        traces,
        "deliver",
        SpanKind::Consumer,
        subject,
        carried.as_ref(),
    );
    if span.is_recording() {
        span.set_attributes([
            KeyValue::new("messaging.message.id", id.to_string()),
            KeyValue::new("streamgate.delivery_attempt", attempt),
        ]);
    }
    let handed = TraceContext {
        traceparent: traceparent(span.span_context()),
        tracestate: carried.and_then(|c| c.tracestate),
    };
    (span, handed)
}

/// Ends a `deliver` span with the app's answer.
pub fn delivered(mut span: SdkSpan, result: &Result<(), NotTaken>) {
    match result {
        Ok(()) => {}
        Err(NotTaken::Retry(error)) => span.set_status(Status::error(error.to_string())),
        Err(NotTaken::DeadLetter(reason)) => span.set_status(Status::error(reason.clone())),
    }
    span.end();
}

fn for_event(
    traces: &Arc<Traces>,
    operation: &'static str,
    kind: SpanKind,
    event: &Outgoing,
) -> SdkSpan {
    let carried = TraceContext::from_envelope(&event.payload);
    let mut span = start(traces, operation, kind, &event.subject, carried.as_ref());
    if span.is_recording() {
        span.set_attribute(KeyValue::new("messaging.message.id", event.id.clone()));
    }
    span
}

fn start(
    traces: &Arc<Traces>,
    operation: &'static str,
    kind: SpanKind,
    subject: &str,
    parent: Option<&TraceContext>,
) -> SdkSpan {
    let parent = parent
        .map(|p| traces.extract_pair(&p.traceparent, p.tracestate.as_deref()))
        .unwrap_or_default();
    let mut span = traces
        .tracer()
        .span_builder(operation)
        .with_kind(kind)
        .start_with_context(traces.tracer(), &parent);
    if span.is_recording() {
        // `<operation> <destination>`, as OpenTelemetry's messaging conventions say.
        span.update_name(format!("{operation} {subject}"));
        span.set_attributes([
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.destination.name", subject.to_string()),
            KeyValue::new("messaging.operation.name", operation),
        ]);
    }
    span
}
