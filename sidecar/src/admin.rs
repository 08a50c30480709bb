//! The admin server (`listen.admin`, port 15020 on the pod IP): `/livez`, `/readyz`,
//! `/metrics` and `/config`, for the kubelet, Prometheus and people; and `/leave`, the
//! app container's `preStop` hook (see [`crate::departure`]).

use crate::departure::{Departure, LeaveCallers};
use crate::metrics::Metrics;
use crate::state::Readiness;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use streamgate_crds::contract::lifecycle::LEAVE_PATH;
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct AdminState {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Rendered once at start: the configuration does not change while running.
    pub config_json: Arc<str>,
    /// Set once everything started; until then there is nothing to leave.
    pub departure: Arc<OnceLock<Arc<Departure>>>,
    pub leave_callers: LeaveCallers,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route(LEAVE_PATH, get(leave))
        .with_state(state)
}

/// Binds first, so a port in use is reported as a start-up error, not a silent task death.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, state: AdminState) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin server stopped");
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.explain() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// The `preStop` hook: answered once the pod is out of Consul and has stopped taking
/// new calls, so the kubelet stops the app only then.
async fn leave(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> (StatusCode, String) {
    if !state.leave_callers.admits(peer.ip()) {
        tracing::warn!(%peer, "refused a request to leave Consul from outside the node");
        return (
            StatusCode::FORBIDDEN,
            format!(
                "{} may not take this pod out of service: only its node (the kubelet's preStop hook) and the pod itself may\n",
                peer.ip()
            ),
        );
    }
    let Some(departure) = state.departure.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the sidecar is still starting; it leaves Consul on SIGTERM\n".to_string(),
        );
    };
    tracing::info!(%peer, "preStop: leaving Consul before the app stops");
    if departure.before_app_stops().await {
        (
            StatusCode::OK,
            "left Consul; new calls go to other instances\n".to_string(),
        )
    } else {
        tracing::warn!("Consul did not confirm the deregistration in time; the app stops anyway");
        (
            StatusCode::GATEWAY_TIMEOUT,
            "Consul did not confirm the deregistration in time\n".to_string(),
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn config(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.config_json.to_string(),
    )
}
