//! The app's publish API on `listen.app`: HTTP `POST /v1/events/{type}` (body: the
//! event's `data` object; optional `Streamgate-Event-Id` header) and gRPC
//! `streamgate.sidecar.v1.Events`. Both answer once the events are durable.
//!
//! | outcome | HTTP | gRPC |
//! |---|---|---|
//! | acked or spooled | 200 `{"id", "spooled"}` | OK |
//! | type not in `events.publish` | 403 | PERMISSION_DENIED |
//! | malformed type, data or id | 400 | INVALID_ARGUMENT |
//! | larger than the NATS server's `max_payload` (envelope and header room included) | 413 | RESOURCE_EXHAUSTED |
//! | spool full | 503 | RESOURCE_EXHAUSTED |
//! | spool unwritable (e.g. its disk is full) | 503 | UNAVAILABLE |
//! | the sidecar is shutting down | 503 | UNAVAILABLE |
//! | relay off | 500 | UNAVAILABLE |

use super::envelope::{self, Outgoing, Refused, TraceContext};
use super::publisher::{Durable, Publisher};
use super::spool::SpoolError;
use super::trace::PublishSpan;
use crate::shutdown::Drain;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use streamgate_proto::sidecar::v1 as pb;
use streamgate_proto::sidecar::v1::events_server::{Events, EventsServer};
use tonic::{Request, Response, Status};

/// NATS's default `max_payload`: the limit until the server has told its own.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Kept free of the limit for the message's headers (`Nats-Msg-Id`), which count against
/// `max_payload` too.
const HEADER_ROOM: usize = 1024;

/// What both APIs need; cheap to clone.
#[derive(Clone)]
pub struct EventsApi {
    pub service: Arc<str>,
    pub allowed: Arc<[String]>,
    /// None when the service publishes nothing (every type is then forbidden).
    pub publisher: Option<Arc<Publisher>>,
    pub drain: Drain,
    /// The NATS server's `max_payload` (from its INFO once connected). An event NATS
    /// would refuse is refused here, before it is answered as safe: spooled, it would be
    /// retried at the head of the spool forever and hold up every event behind it.
    pub max_payload: Arc<AtomicUsize>,
    /// Set when the sidecar shuts down: publishes are refused from then on, so the spool
    /// only shrinks while the shutdown flushes it.
    pub closing: Arc<AtomicBool>,
    pub traces: Option<Arc<streamgate_telemetry::Traces>>,
}

/// Why a publish failed, mapped to each protocol's code.
enum Failure {
    Refused(Refused),
    Spool(SpoolError),
    Closing,
    Off,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(refused) => f.write_str(refused.message()),
            Failure::Spool(e) => write!(f, "{e}"),
            Failure::Closing => f.write_str(CLOSING),
            Failure::Off => f.write_str("the event relay is off"),
        }
    }
}

const CLOSING: &str =
    "the sidecar is shutting down and accepts no more events; publish through another instance";

impl EventsApi {
    pub fn grpc(&self) -> EventsServer<EventsApi> {
        EventsServer::new(self.clone())
    }

    /// The event's envelope, carrying the `publish` span's context when traces are on
    /// (else the app's own); refused ones end their span with the reason.
    fn build(
        &self,
        event_type: &str,
        data: &[u8],
        id: &str,
        trace: Option<&TraceContext>,
    ) -> Result<(Outgoing, Option<PublishSpan>), Refused> {
        let Some(traces) = &self.traces else {
            return Ok((self.envelope(event_type, data, id, trace)?, None));
        };
        let subject = format!("{}{event_type}", envelope::SUBJECT_PREFIX);
        let (mut span, carried) = PublishSpan::start(traces, &subject, trace);
        match self.envelope(event_type, data, id, Some(&carried)) {
            Ok(event) => {
                span.id(&event.id);
                Ok((event, Some(span)))
            }
            Err(refused) => {
                span.finish(Err(refused.message()));
                Err(refused)
            }
        }
    }

    fn envelope(
        &self,
        event_type: &str,
        data: &[u8],
        id: &str,
        trace: Option<&TraceContext>,
    ) -> Result<Outgoing, Refused> {
        let event = envelope::build(&self.allowed, &self.service, event_type, data, id, trace)?;
        let limit = self
            .max_payload
            .load(Ordering::Relaxed)
            .saturating_sub(HEADER_ROOM);
        if event.payload.len() > limit {
            return Err(Refused::TooLarge(format!(
                "the event is {} bytes with its envelope; the NATS server's max_payload allows {limit} bytes per event",
                event.payload.len()
            )));
        }
        Ok(event)
    }

    /// Makes the events durable and ends their `publish` spans with the outcome.
    async fn publish(
        &self,
        events: Vec<Outgoing>,
        spans: Vec<PublishSpan>,
    ) -> Result<Vec<Durable>, Failure> {
        let result = self.make_durable(events).await;
        match &result {
            Ok(durable) => {
                for (span, durable) in spans.into_iter().zip(durable) {
                    span.finish(Ok(*durable));
                }
            }
            Err(failure) => {
                let reason = failure.to_string();
                for span in spans {
                    span.finish(Err(&reason));
                }
            }
        }
        result
    }

    async fn make_durable(&self, events: Vec<Outgoing>) -> Result<Vec<Durable>, Failure> {
        // Tracked before the check: a shutdown that closes after it waits for this one.
        let _in_flight = self.drain.track();
        if self.closing.load(Ordering::Acquire) {
            return Err(Failure::Closing);
        }
        let publisher = self.publisher.as_ref().ok_or(Failure::Off)?;
        publisher.publish(events).await.map_err(Failure::Spool)
    }

    /// Refuses every publish from now on (503 / UNAVAILABLE).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Returns once the spool is empty: everything accepted is in JetStream.
    pub async fn flushed(&self) {
        if let Some(publisher) = &self.publisher {
            publisher.spool().emptied().await;
        }
    }

    /// Records and bytes still waiting in the spool.
    pub fn unsent(&self) -> (u64, u64) {
        self.publisher
            .as_ref()
            .map_or((0, 0), |p| p.spool().unsent())
    }
}

/// The body of `POST /v1/events/{type}`, read no further than the NATS server's
/// `max_payload`: an event larger than that could never be published, so its body is
/// refused (413) before it is held in memory whole, whatever its `Content-Length` says.
async fn bounded_body(
    api: &EventsApi,
    body: axum::body::Body,
) -> Result<Bytes, (StatusCode, String)> {
    use http_body_util::BodyExt;
    let limit = api.max_payload.load(Ordering::Relaxed);
    let too_large = || {
        format!(
            "the event is larger than the NATS server's max_payload allows ({limit} bytes per event)"
        )
    };
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        // Refused at the first frame when the declared length is over already.
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, too_large()))
        }
        Err(e) => Err((
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {e}"),
        )),
    }
}

/// `POST /v1/events/{type}`.
pub async fn http_publish(
    State(api): State<EventsApi>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, Json<Value>) {
    let body = match bounded_body(&api, body).await {
        Ok(body) => body,
        Err((status, message)) => return (status, Json(json!({"error": message}))),
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("streamgate-event-id").unwrap_or_default();
    let trace = TraceContext::from_headers(header("traceparent"), header("tracestate"));
    let result = match api.build(&event_type, &body, id, trace.as_ref()) {
        Ok((event, span)) => {
            let id = event.id.clone();
            let spans = span.into_iter().collect();
            api.publish(vec![event], spans).await.map(|d| (id, d[0]))
        }
        Err(refused) => Err(Failure::Refused(refused)),
    };
    match result {
        Ok((id, durable)) => (
            StatusCode::OK,
            Json(json!({"id": id, "spooled": durable == Durable::Spooled})),
        ),
        Err(failure) => {
            let (status, message) = match failure {
                Failure::Refused(Refused::Invalid(m)) => (StatusCode::BAD_REQUEST, m),
                Failure::Refused(Refused::Forbidden(m)) => (StatusCode::FORBIDDEN, m),
                Failure::Refused(Refused::TooLarge(m)) => (StatusCode::PAYLOAD_TOO_LARGE, m),
                Failure::Spool(e @ SpoolError::Full { .. }) => {
                    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
                // Not accepted (e.g. the spool's disk is full): nothing was kept, and the
                // app may retry later, as with a full spool.
                Failure::Spool(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                Failure::Closing => (StatusCode::SERVICE_UNAVAILABLE, CLOSING.into()),
                Failure::Off => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the event relay is off".into(),
                ),
            };
            (status, Json(json!({"error": message})))
        }
    }
}

fn status(failure: Failure) -> Status {
    match failure {
        Failure::Refused(Refused::Invalid(m)) => Status::invalid_argument(m),
        Failure::Refused(Refused::Forbidden(m)) => Status::permission_denied(m),
        Failure::Refused(Refused::TooLarge(m)) => Status::resource_exhausted(m),
        Failure::Spool(e @ SpoolError::Full { .. }) => Status::resource_exhausted(e.to_string()),
        Failure::Spool(e) => Status::unavailable(e.to_string()),
        Failure::Closing => Status::unavailable(CLOSING),
        Failure::Off => Status::unavailable("the event relay is off"),
    }
}

/// The W3C trace context of a gRPC call (its `traceparent` / `tracestate` metadata).
fn grpc_trace(metadata: &tonic::metadata::MetadataMap) -> Option<TraceContext> {
    let get = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    TraceContext::from_headers(get("traceparent"), get("tracestate"))
}

fn responses(ids: Vec<String>, durable: Vec<Durable>) -> Vec<pb::PublishResponse> {
    ids.into_iter()
        .zip(durable)
        .map(|(id, d)| pb::PublishResponse {
            id,
            spooled: d == Durable::Spooled,
        })
        .collect()
}

#[tonic::async_trait]
impl Events for EventsApi {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let trace = grpc_trace(request.metadata());
        let r = request.into_inner();
        let (event, span) = self
            .build(&r.r#type, r.data_json.as_bytes(), &r.id, trace.as_ref())
            .map_err(|e| status(Failure::Refused(e)))?;
        let id = event.id.clone();
        let spans = span.into_iter().collect();
        let durable = EventsApi::publish(self, vec![event], spans)
            .await
            .map_err(status)?;
        Ok(Response::new(responses(vec![id], durable).remove(0)))
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        let trace = grpc_trace(request.metadata());
        let requests = request.into_inner().events;
        // All or nothing at validation: one bad event refuses the batch, naming it.
        let mut events = Vec::with_capacity(requests.len());
        let mut spans = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let (event, span) = self
                .build(&r.r#type, r.data_json.as_bytes(), &r.id, trace.as_ref())
                .map_err(|e| {
                    let mut s = status(Failure::Refused(e));
                    s = Status::new(s.code(), format!("events[{i}]: {}", s.message()));
                    s
                })?;
            events.push(event);
            spans.extend(span);
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let durable = EventsApi::publish(self, events, spans)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PublishBatchResponse {
            results: responses(ids, durable),
        }))
    }
}
