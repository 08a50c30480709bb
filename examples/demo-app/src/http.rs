//! HTTP routes: the seed's `/health`, and `/admin/health` to flip it in tests.

use crate::health::HealthSwitch;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct SetHealth {
    healthy: bool,
}

pub fn router(switch: HealthSwitch) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/admin/health", get(health).post(set_health))
        .with_state(switch)
}

async fn health(State(switch): State<HealthSwitch>) -> (StatusCode, Json<Value>) {
    if switch.is_healthy() {
        (StatusCode::OK, Json(json!({"status": "healthy"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy"})),
        )
    }
}

async fn set_health(
    State(switch): State<HealthSwitch>,
    Json(body): Json<SetHealth>,
) -> (StatusCode, Json<Value>) {
    switch.set(body.healthy).await;
    health(State(switch)).await
}
