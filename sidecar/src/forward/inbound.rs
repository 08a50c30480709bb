//! Inbound: calls from other sidecars on the pod IP's port 15006, forwarded to the app.
//!
//! The caller's identity ([`InboundSecurity`]): with mTLS the listener requires a
//! client certificate the trust bundle verifies (a plaintext or wrong-CA peer fails the
//! handshake); the caller is the namespace and ServiceAccount its certificate names.
//! Over plaintext (mTLS off, or a plaintext peer of a permissive sidecar) the caller is
//! what the calling sidecar wrote in `streamgate-caller`: good for routing and metrics,
//! not a security boundary, so a service with `allowedCallers` admits no plaintext
//! caller at all. A caller outside a non-empty `allowedCallers` gets PERMISSION_DENIED
//! and never reaches the app.

use super::body::Observed;
use super::discovery::Endpoint;
use super::metrics::ForwardMetrics;
use super::outbound::CALLER_HEADER;
use super::pool::{Dialer, Pool, PoolLimits};
use super::status::{grpc_error, grpc_status};
use super::tls::{self, IdentityStore};
use super::trace::CallSpan;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use streamgate_crds::contract::callers;
use streamgate_telemetry::Traces;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tonic::Code;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The caller recorded when nobody says who calls.
const ANONYMOUS: &str = "unknown";

/// What the inbound listener accepts.
pub enum InboundSecurity {
    /// Plaintext only (no identity: a sidecar run without mTLS).
    Plaintext,
    /// mTLS only; connections are refused while no certificate is held.
    MtlsOnly(Arc<IdentityStore>),
    /// mTLS from peers that start a TLS handshake, plaintext from the others
    /// (permissive mode, for plaintext services in the mesh).
    Either(Arc<IdentityStore>),
}

/// The first byte of a TLS connection (a handshake record); an HTTP/2 preface starts
/// with `P`.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

pub struct Inbound {
    service: String,
    /// The pod's namespace: a bare `allowedCallers` name means a caller from here.
    namespace: String,
    allowed_callers: Vec<String>,
    security: InboundSecurity,
    app: Endpoint,
    app_pool: Pool,
    dialer: Dialer,
    metrics: Arc<ForwardMetrics>,
    traces: Option<Arc<Traces>>,
    /// Turns true when the pod leaves the mesh: no new connections, a graceful GOAWAY
    /// on the open ones (see [`crate::departure`]).
    closing: tokio::sync::watch::Sender<bool>,
    /// Turns true once the listener is closed, so [`Inbound::close`] can wait for it.
    listener_closed: tokio::sync::watch::Sender<bool>,
}

impl Inbound {
    pub fn new(
        service: &str,
        namespace: &str,
        allowed_callers: Vec<String>,
        security: InboundSecurity,
        app: SocketAddr,
        metrics: Arc<ForwardMetrics>,
        traces: Option<Arc<Traces>>,
    ) -> Arc<Self> {
        let app = Endpoint {
            id: "app".into(),
            addr: app,
            namespace: None,
            mtls: false,
        };
        Arc::new(Inbound {
            service: service.to_string(),
            namespace: namespace.to_string(),
            allowed_callers,
            security,
            app,
            app_pool: Pool::new(PoolLimits::default(), Gauge::default()),
            dialer: Dialer::new(None, String::new()),
            metrics,
            traces,
            closing: tokio::sync::watch::channel(false).0,
            listener_closed: tokio::sync::watch::channel(false).0,
        })
    }

    /// Stops taking calls: the listener closes (a caller's dial is refused) and each
    /// connection gets a graceful GOAWAY (its in-flight calls finish; later streams are
    /// refused unprocessed), both of which callers retry on another instance.
    /// Returns once the listener is closed (at most a second: a listener that was never
    /// served has nothing to close).
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let mut closed = self.listener_closed.subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), closed.wait_for(|closed| *closed)).await;
    }

    /// Accepts connections until [`Inbound::close`]; each one is served on its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut closing = self.closing.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = closing.wait_for(|closing| *closing) => {
                    drop(listener);
                    self.listener_closed.send_replace(true);
                    tracing::info!("inbound closed: new calls go to other instances");
                    return;
                }
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let inbound = self.clone();
            tokio::spawn(async move { inbound.accept(tcp, peer).await });
        }
    }

    /// Serves one accepted connection, over mTLS or plaintext as [`InboundSecurity`]
    /// says.
    async fn accept(self: Arc<Self>, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let store = match &self.security {
            InboundSecurity::Plaintext => return self.serve_connection(tcp, None).await,
            InboundSecurity::MtlsOnly(store) => store,
            InboundSecurity::Either(store) => {
                let mut first = [0u8; 1];
                let peeked =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await;
                if !matches!(peeked, Ok(Ok(1))) {
                    return;
                }
                if first[0] != TLS_HANDSHAKE_RECORD {
                    return self.serve_connection(tcp, None).await;
                }
                store
            }
        };
        let Some(identity) = store.current() else {
            // No certificate yet (or any more): refuse rather than go plaintext.
            tracing::info!(%peer, "inbound refused: no mTLS certificate held yet");
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server.clone());
        let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "inbound TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "inbound TLS handshake timed out");
                return;
            }
        };
        let caller = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(tls::spiffe_workload);
        if caller.is_none() {
            tracing::info!(%peer, "inbound peer certificate names no workload");
            return;
        }
        self.serve_connection(stream, caller).await
    }

    async fn serve_connection<IO>(self: Arc<Self>, io: IO, verified: Option<tls::Workload>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let verified: Option<Arc<tls::Workload>> = verified.map(Arc::new);
        let mut closing = self.closing.subscribe();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let inbound = self.clone();
            let verified = verified.clone();
            async move { Ok::<_, Infallible>(inbound.handle(request, verified).await) }
        });
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let finished = tokio::select! {
            served = connection.as_mut() => Some(served),
            _ = closing.wait_for(|closing| *closing) => None,
        };
        let served = match finished {
            Some(served) => served,
            None => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, "inbound connection closed");
        }
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        verified: Option<Arc<tls::Workload>>,
    ) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let mut span = self.traces.as_ref().map(|traces| {
            CallSpan::server(traces, &parts.headers, &self.service, parts.uri.path())
        });
        // Over plaintext the caller is only what the calling sidecar wrote, taken as a
        // name in this namespace: a name, not an identity, which no `allowedCallers`
        // admits.
        let (caller_namespace, caller_name) = match &verified {
            Some(workload) => (
                workload.namespace.as_str(),
                workload.service_account.as_str(),
            ),
            None => (
                self.namespace.as_str(),
                parts
                    .headers
                    .get(CALLER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(ANONYMOUS),
            ),
        };
        let caller = callers::display(&self.namespace, caller_namespace, caller_name);
        if let Some(span) = &mut span {
            span.caller(&caller);
        }
        let admitted = self.allowed_callers.is_empty()
            || verified.is_some()
                && self.allowed_callers.iter().any(|entry| {
                    callers::admits(entry, &self.namespace, caller_namespace, caller_name)
                });
        if !admitted {
            self.metrics.inbound_denied(&caller);
            if let Some(span) = span {
                span.finish(Code::PermissionDenied);
            }
            let message = format!(
                "caller {caller} is not in the allowedCallers of {}",
                self.service
            );
            return grpc_error(Code::PermissionDenied, &message);
        }
        // The app sees who calls, as verified here.
        if let Ok(value) = HeaderValue::from_str(&caller) {
            parts.headers.insert(CALLER_HEADER, value);
        }
        // The app's spans are children of this one.
        if let Some(span) = &span {
            span.inject(&mut parts.headers);
        }
        let call = InboundCall {
            metrics: self.metrics.clone(),
            caller,
            span,
        };
        let request = Request::from_parts(parts, Body::new(body));
        let lease = match self
            .app_pool
            .lease(|| self.dialer.dial(&self.service, &self.app))
            .await
        {
            Ok(lease) => lease,
            Err(e) => {
                call.finish(Code::Unavailable);
                return grpc_error(Code::Unavailable, &format!("the app is unreachable: {e}"));
            }
        };
        let mut sender = lease.sender.clone();
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                call.finish(Code::Unavailable);
                let message = format!("the app failed the call: {}", crate::error_chain(&e));
                return grpc_error(Code::Unavailable, &message);
            }
        };
        let (parts, incoming) = response.into_parts();
        if let Some(code) = grpc_status(&parts.headers) {
            call.finish(code);
            return Response::from_parts(parts, Body::new(incoming));
        }
        let on_end = Box::new(move |code: Code| {
            drop(lease);
            call.finish(code);
        });
        let body = Observed::new(Body::new(incoming), None, None, on_end);
        Response::from_parts(parts, Body::new(body))
    }
}

/// An admitted call's end, observed in one place: the caller's metric series and the
/// call's span (as [`super::outcome::CallOutcome`] is for outbound calls).
struct InboundCall {
    metrics: Arc<ForwardMetrics>,
    caller: String,
    span: Option<CallSpan>,
}

impl InboundCall {
    fn finish(self, code: Code) {
        self.metrics.inbound(&self.caller, code);
        if let Some(span) = self.span {
            span.finish(code);
        }
    }
}
