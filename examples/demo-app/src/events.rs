//! Receiving events as a subscribing service does: the sidecar POSTs each event's
//! envelope to one of the configured paths. Every delivery is recorded for tests
//! (`GET /admin/events`), and `POST /admin/events/fail {"status": 500}` makes the app
//! refuse deliveries with that status (`{"status": 0}` accepts again).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct EventLog {
    /// Every delivery, accepted or refused, in arrival order.
    received: Mutex<Vec<Value>>,
    /// 0 accepts; anything else is the status refusals answer with.
    fail_status: AtomicU16,
}

#[derive(Deserialize)]
struct Fail {
    status: u16,
}

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
    let record = json!({
        "path": path,
        "event": event,
        "eventId": header("streamgate-event-id"),
        "attempt": header("streamgate-delivery-attempt"),
        "traceparent": header("traceparent"),
        "tracestate": header("tracestate"),
        "accepted": fail == 0,
    });
    log.received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(record);
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
    log.fail_status.store(fail.status, Ordering::Release);
    Json(json!({"status": fail.status}))
}
