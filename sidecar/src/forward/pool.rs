//! Persistent HTTP/2 connections to one instance, multiplexed and reused.
//!
//! A call leases a stream on the least busy connection; a connection whose streams are
//! saturated (`streams_per_connection` in flight) makes the pool open another, up to
//! `max_connections`. Concurrent calls that find no room wait for a single dial instead
//! of each opening its own. Closed connections leave the pool at the next lease, idle
//! ones in [`Pool::close_idle`]. HTTP/2 keep-alive pings find a dead peer (a node gone
//! without a FIN) within seconds.

use super::discovery::Endpoint;
use super::tls::{self, IdentityStore};
use axum::body::Body;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub type Sender = SendRequest<Body>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub streams_per_connection: usize,
    pub max_connections: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        // Below the 100 concurrent streams most servers (Go's, tonic's) allow.
        PoolLimits {
            streams_per_connection: 100,
            max_connections: 8,
        }
    }
}

/// Why a connection could not be opened; the request was not sent, so a retry is safe.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {addr}: {reason}")]
pub struct DialError {
    pub addr: std::net::SocketAddr,
    pub reason: DialFailure,
}

/// What went wrong while opening a connection.
#[derive(Debug, thiserror::Error)]
pub enum DialFailure {
    #[error("no answer within {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("the instance requires mTLS and this sidecar has no identity mounted")]
    NoIdentity,
    #[error("{0} is not a valid TLS name")]
    InvalidServerName(String),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HTTP/2 handshake: {0}")]
    Http2(hyper::Error),
}

/// Opens connections: mTLS to instances that advertise it (to every instance when
/// strict), plaintext HTTP/2 to the others.
pub struct Dialer {
    identity: Option<Arc<IdentityStore>>,
    /// The namespace assumed for an instance whose registration does not name one.
    namespace: String,
    /// mTLS to every instance: an instance registered as plaintext (a downgrade, or a
    /// permissive sidecar without a certificate) fails the handshake instead.
    strict: bool,
}

impl Dialer {
    pub fn new(identity: Option<Arc<IdentityStore>>, namespace: String) -> Self {
        Dialer {
            identity,
            namespace,
            strict: false,
        }
    }

    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    pub fn is_strict(&self) -> bool {
        self.strict
    }

    pub async fn dial(&self, service: &str, endpoint: &Endpoint) -> Result<Sender, DialError> {
        let failed = |reason: DialFailure| DialError {
            addr: endpoint.addr,
            reason,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint.addr))
            .await
            .map_err(|_| failed(DialFailure::ConnectTimeout(CONNECT_TIMEOUT)))?
            .map_err(|e| failed(DialFailure::Connect(e)))?;
        // gRPC messages are small and latency-bound; never wait for Nagle.
        let _ = tcp.set_nodelay(true);
        if !endpoint.mtls && !self.strict {
            return handshake(tcp)
                .await
                .map_err(|e| failed(DialFailure::Http2(e)));
        }
        let identity = self
            .identity
            .as_ref()
            .and_then(|s| s.current())
            .ok_or_else(|| failed(DialFailure::NoIdentity))?;
        let namespace = endpoint.namespace.as_deref().unwrap_or(&self.namespace);
        let name = tls::server_name(service, namespace).ok_or_else(|| {
            failed(DialFailure::InvalidServerName(format!(
                "{service}.{namespace}"
            )))
        })?;
        let connector = tokio_rustls::TlsConnector::from(identity.client.clone());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| failed(DialFailure::TlsTimeout))?
            .map_err(|e| failed(DialFailure::Tls(e)))?;
        handshake(stream)
            .await
            .map_err(|e| failed(DialFailure::Http2(e)))
    }
}

async fn handshake<IO>(io: IO) -> Result<Sender, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}

struct Connection {
    sender: Sender,
    in_flight: Arc<AtomicUsize>,
    last_used: Instant,
}

/// The connections to one instance.
pub struct Pool {
    connections: Mutex<Vec<Connection>>,
    /// Held while dialing, so concurrent calls share one new connection.
    dialing: tokio::sync::Mutex<()>,
    limits: PoolLimits,
    open: Gauge,
}

/// One stream's claim on a connection; releases it when dropped (at the end of the
/// response body, since a stream lives that long).
pub struct Lease {
    pub sender: Sender,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(limits: PoolLimits, open: Gauge) -> Self {
        Pool {
            connections: Mutex::new(Vec::new()),
            dialing: tokio::sync::Mutex::new(()),
            limits,
            open,
        }
    }

    /// A stream on a live connection, dialing one with `dial` when none has room.
    pub async fn lease<F, Fut>(&self, dial: F) -> Result<Lease, DialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Sender, DialError>>,
    {
        if let Some(lease) = self.take(false) {
            return Ok(lease);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(lease) = self.take(false) {
            return Ok(lease);
        }
        if self.len() >= self.limits.max_connections
            && let Some(lease) = self.take(true)
        {
            return Ok(lease);
        }
        let sender = dial().await?;
        let in_flight = Arc::new(AtomicUsize::new(1));
        self.lock().push(Connection {
            sender: sender.clone(),
            in_flight: in_flight.clone(),
            last_used: Instant::now(),
        });
        self.open.inc();
        Ok(Lease { sender, in_flight })
    }

    /// The least busy live connection; with `over_limit` even a saturated one (the
    /// pool is at its connection limit, so the stream queues on HTTP/2's own limit).
    fn take(&self, over_limit: bool) -> Option<Lease> {
        let mut connections = self.lock();
        let before = connections.len();
        connections.retain(|c| !c.sender.is_closed());
        self.open.dec_by((before - connections.len()) as i64);
        let best = connections
            .iter_mut()
            .filter(|c| c.sender.is_ready())
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))?;
        if !over_limit
            && best.in_flight.load(Ordering::Relaxed) >= self.limits.streams_per_connection
        {
            return None;
        }
        best.in_flight.fetch_add(1, Ordering::Relaxed);
        best.last_used = Instant::now();
        Some(Lease {
            sender: best.sender.clone(),
            in_flight: best.in_flight.clone(),
        })
    }

    /// Closes connections with no stream that were not used for `idle`.
    pub fn close_idle(&self, idle: Duration, now: Instant) -> usize {
        let mut connections = self.lock();
        let before = connections.len();
        connections.retain(|c| {
            !c.sender.is_closed()
                && (c.in_flight.load(Ordering::Relaxed) > 0
                    || now.saturating_duration_since(c.last_used) < idle)
        });
        let closed = before - connections.len();
        self.open.dec_by(closed as i64);
        closed
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let open = self.lock().len();
        self.open.dec_by(open as i64);
    }
}
