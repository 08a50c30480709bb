//! The app-facing listener (`listen.app`, 127.0.0.1:15001): HTTP/1.1 and h2c on one port.
//!
//! One axum router carries the sidecar's own APIs: gRPC `streamgate.sidecar.v1.*`
//! (routed by path, `/streamgate.sidecar.v1.Events/...`) and HTTP `/v1/events/{type}`.
//! Whatever matches none of them reaches the fallback: today a clear "not here", and the
//! place where gRPC forwarding to other services (any other gRPC path, target in
//! `:authority`) plugs in as one more layer.

use crate::events::api::{self, EventsApi};
use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The sidecar's own routes; `fallback` handles everything else.
pub fn router(events: EventsApi) -> Router {
    let grpc = tonic::service::Routes::new(events.grpc()).into_axum_router();
    let http = Router::new()
        .route("/v1/events/{type}", post(api::http_publish))
        .with_state(events);
    grpc.merge(http).fallback(fallback)
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, router: Router) {
    use axum::serve::ListenerExt;
    // Without TCP_NODELAY a small gRPC answer waits for the app's delayed ACK (~40 ms).
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "app listener stopped");
    }
}

/// gRPC callers get UNIMPLEMENTED in gRPC's own framing; HTTP callers a 404.
async fn fallback(request: Request<axum::body::Body>) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        let mut response = StatusCode::OK.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("12"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("no such method on the sidecar"),
        );
        response
    } else {
        (StatusCode::NOT_FOUND, "no such route on the sidecar\n").into_response()
    }
}
