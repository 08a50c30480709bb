//! Receiving events as a subscribing service does: the sidecar POSTs each event's
//! envelope to one of the configured paths (HTTP apps), or calls
//! `streamgate.app.v1.EventHandler/Handle` (gRPC apps). Every delivery is recorded for
//! tests (`GET /admin/events`). `POST /admin/events/fail {"status": 500}` makes the app
//! refuse deliveries: HTTP with that status, gRPC with RETRY; `{"status": 500,
//! "deadLetter": true}` makes gRPC answer DEAD_LETTER; `{"status": 0}` accepts again.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use streamgate_proto::app::v1 as pb;
use streamgate_proto::app::v1::event_handler_server::{EventHandler, EventHandlerServer};

#[derive(Default)]
pub struct EventLog {
    /// Every delivery, accepted or refused, in arrival order.
    received: Mutex<Vec<Value>>,
    /// 0 accepts; anything else is the status refusals answer with.
    fail_status: AtomicU16,
    /// gRPC refusals answer DEAD_LETTER rather than RETRY.
    dead_letter: AtomicBool,
}

impl EventLog {
    fn record(&self, record: Value) {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fail {
    status: u16,
    #[serde(default)]
    dead_letter: bool,
}

/// `EventHandler/Handle`: the gRPC side of the same log.
pub fn grpc_server(log: Arc<EventLog>) -> EventHandlerServer<GrpcEvents> {
    EventHandlerServer::new(GrpcEvents { log })
}

pub struct GrpcEvents {
    log: Arc<EventLog>,
}

#[tonic::async_trait]
impl EventHandler for GrpcEvents {
    async fn handle(
        &self,
        request: tonic::Request<pb::HandleRequest>,
    ) -> Result<tonic::Response<pb::HandleResponse>, tonic::Status> {
        let metadata = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (traceparent, tracestate) = (metadata("traceparent"), metadata("tracestate"));
        let r = request.into_inner();
        let event = serde_json::from_str(&r.envelope_json)
            .unwrap_or_else(|_| Value::String(r.envelope_json.clone()));
        let data: Value = serde_json::from_str(&r.data_json).unwrap_or(Value::Null);
        let fail = self.log.fail_status.load(Ordering::Acquire);
        self.log.record(json!({
            "path": GRPC_PATH,
            "event": event,
            "eventId": r.id,
            "attempt": r.attempt.to_string(),
            "accepted": fail == 0,
            "traceparent": traceparent,
            "tracestate": tracestate,
            "grpc": {"type": r.r#type, "source": r.source, "timestamp": r.timestamp, "data": data},
        }));
        let (result, reason) = match fail {
            0 => (pb::handle_response::Result::Ack, String::new()),
            status if self.log.dead_letter.load(Ordering::Acquire) => (
                pb::handle_response::Result::DeadLetter,
                format!("the demo app refuses this event for good (status {status})"),
            ),
            status => (
                pb::handle_response::Result::Retry,
                format!("the demo app refuses with {status}"),
            ),
        };
        Ok(tonic::Response::new(pb::HandleResponse {
            result: result as i32,
            reason,
        }))
    }
}

/// What a gRPC delivery is recorded under as its "path".
pub const GRPC_PATH: &str = "streamgate.app.v1.EventHandler/Handle";

pub fn router(paths: &[String], log: Arc<EventLog>) -> Router {
    let mut router = Router::new()
        .route("/admin/events", get(list))
        .route("/admin/events/fail", post(set_fail));
    for path in paths {
        let path = path.clone();
        router = router.route(
            &path.clone(),
            post(move |state, headers, body| receive(state, path.clone(), headers, body)),
        );
    }
    router.with_state(log)
}

async fn receive(
    State(log): State<Arc<EventLog>>,
    path: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let event = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let fail = log.fail_status.load(Ordering::Acquire);
    log.record(json!({
        "path": path,
        "event": event,
        "eventId": header("streamgate-event-id"),
        "attempt": header("streamgate-delivery-attempt"),
        "traceparent": header("traceparent"),
        "tracestate": header("tracestate"),
        "accepted": fail == 0,
    }));
    match fail {
        0 => StatusCode::OK,
        status => StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

async fn list(State(log): State<Arc<EventLog>>) -> Json<Value> {
    let received = log.received.lock().unwrap_or_else(|e| e.into_inner());
    Json(json!({"count": received.len(), "events": *received}))
}

async fn set_fail(State(log): State<Arc<EventLog>>, Json(fail): Json<Fail>) -> Json<Value> {
    log.dead_letter.store(fail.dead_letter, Ordering::Release);
    log.fail_status.store(fail.status, Ordering::Release);
    Json(json!({"status": fail.status, "deadLetter": fail.dead_letter}))
}
