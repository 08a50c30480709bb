//! The app-facing listener (`listen.app`, 127.0.0.1:15001): HTTP/1.1 and h2c on one port.
//!
//! One axum router carries the sidecar's own APIs: gRPC `streamgate.sidecar.v1.*`
//! (routed by path, `/streamgate.sidecar.v1.Events/...`) and HTTP `/v1/events/{type}`.
//! Every other gRPC call is forwarded to the service it names ([`crate::forward`]);
//! anything else gets a 404.

use crate::events::api::{self, EventsApi};
use crate::forward::outbound::Forwarder;
use axum::Router;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The sidecar's own routes; every other gRPC call goes to `forwarder`.
pub fn router(events: EventsApi, forwarder: Arc<Forwarder>) -> Router {
    let grpc = tonic::service::Routes::new(events.grpc()).into_axum_router();
    let http = Router::new()
        .route("/v1/events/{type}", post(api::http_publish))
        .with_state(events);
    grpc.merge(http)
        .fallback(move |request: Request<axum::body::Body>| fallback(forwarder, request))
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

/// gRPC calls are forwarded; HTTP callers get a 404.
async fn fallback(forwarder: Arc<Forwarder>, request: Request<axum::body::Body>) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        forwarder.forward(request).await
    } else {
        (StatusCode::NOT_FOUND, "no such route on the sidecar\n").into_response()
    }
}
