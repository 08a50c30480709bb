//! A real tonic server of `streamgate.testing.v1.Echo` for the forwarding tests and
//! benchmark: it says which instance answered and what metadata reached it, and can be
//! made slow or failing while it runs.
//!
//! In-process ([`EchoServer::start`]) for most tests; as the `streamgate-echo` binary
//! where a test must SIGKILL an instance.

use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;
use streamgate_proto::testing::v1::echo_server::{Echo, EchoServer as EchoGrpc};
use streamgate_proto::testing::v1::{EchoReply, EchoRequest};
use tonic::{Request, Response, Status, Streaming};

/// Metadata the server reports back.
const REPORTED: [&str; 3] = ["streamgate-caller", "traceparent", "grpc-timeout"];

/// What a running instance is told to do; shared with the test.
#[derive(Default)]
pub struct Controls {
    /// A gRPC status code every call fails with (0 = answer normally).
    pub fail_code: AtomicI32,
    /// Added to every call's time, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Calls received.
    pub calls: AtomicU64,
}

impl Controls {
    pub fn fail_with(&self, code: Option<tonic::Code>) {
        self.fail_code
            .store(code.map_or(0, |c| c as i32), Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub struct EchoService {
    name: Arc<str>,
    controls: Arc<Controls>,
}

impl EchoService {
    pub fn new(name: &str, controls: Arc<Controls>) -> Self {
        EchoService {
            name: Arc::from(name),
            controls,
        }
    }

    /// Counts the call, waits the delays, fails when told to.
    async fn enter<T>(&self, request: &Request<T>, delay_ms: u32) -> Result<(), Status> {
        self.controls.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.controls.delay_ms.load(Ordering::SeqCst) + u64::from(delay_ms);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let _ = request;
        match self.controls.fail_code.load(Ordering::SeqCst) {
            0 => Ok(()),
            code => Err(Status::new(
                tonic::Code::from(code),
                format!("{} told to fail", self.name),
            )),
        }
    }

    fn reply(&self, payload: Vec<u8>, metadata: &HashMap<String, String>) -> EchoReply {
        EchoReply {
            payload,
            server: self.name.to_string(),
            metadata: metadata.clone(),
        }
    }
}

fn reported<T>(request: &Request<T>) -> HashMap<String, String> {
    request
        .metadata()
        .clone()
        .into_headers()
        .iter()
        .filter(|(name, _)| REPORTED.contains(&name.as_str()) || name.as_str().starts_with("x-"))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.enter(&request, request.get_ref().delay_ms).await?;
        let metadata = reported(&request);
        let payload = request.into_inner().payload;
        Ok(Response::new(self.reply(payload, &metadata)))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.enter(&request, request.get_ref().delay_ms).await?;
        let metadata = reported(&request);
        let inner = request.into_inner();
        let replies: Vec<Result<EchoReply, Status>> = (0..inner.count)
            .map(|_| Ok(self.reply(inner.payload.clone(), &metadata)))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(replies))))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.enter(&request, 0).await?;
        let metadata = reported(&request);
        let mut stream = request.into_inner();
        let mut joined = Vec::new();
        while let Some(message) = stream.next().await {
            joined.extend(message?.payload);
        }
        Ok(Response::new(self.reply(joined, &metadata)))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.enter(&request, 0).await?;
        let metadata = reported(&request);
        let this = self.clone();
        let replies = request
            .into_inner()
            .map(move |message| message.map(|m| this.reply(m.payload, &metadata)));
        Ok(Response::new(Box::pin(replies)))
    }
}

/// An in-process instance; stops when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub controls: Arc<Controls>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    /// Serves on `addr` (port 0 for any free port).
    pub async fn start(name: &str, addr: SocketAddr) -> anyhow::Result<EchoServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let controls = Arc::new(Controls::default());
        let service = EchoService::new(name, controls.clone());
        let incoming = tokio_stream_listener(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoGrpc::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(EchoServer {
            addr,
            controls,
            task,
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepted connections as the stream tonic serves, with TCP_NODELAY.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// The gRPC service, for the `streamgate-echo` binary.
pub fn service(name: &str, controls: Arc<Controls>) -> EchoGrpc<EchoService> {
    EchoGrpc::new(EchoService::new(name, controls))
}
