//! A small app for StreamGate's tests and demos, shaped like the seed's services.
//!
//! One port serves both HTTP/1.1 and gRPC (HTTP/2), so a StreamGateService's single
//! `port` covers every kind of health check:
//!
//! - [`health`]: one switch behind `GET /health` (200 or 503) and gRPC
//!   `grpc.health.v1.Health`; tests flip it with `POST /admin/health {"healthy": false}`.
//! - [`upload`]: `streamgate.demo.v1.UploadService`, in memory, answering with the pod
//!   name so tests can see which instance served a call.
//! - [`events`]: receives subscribed events (HTTP POST or gRPC `EventHandler/Handle`)
//!   and records them for tests.
//! - [`publish`]: publishes events through the sidecar's gRPC API.
//! - [`call`]: calls another service's UploadService through the sidecar.
//! - [`http`]: the HTTP routes.

pub mod call;
pub mod events;
pub mod health;
pub mod http;
pub mod publish;
pub mod upload;

use clap::Parser;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser, Debug, Clone)]
#[command(name = "streamgate-demo-app", version, about)]
pub struct Cli {
    /// Address serving HTTP (/health, /admin/health) and gRPC.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:9091")]
    pub listen: SocketAddr,
    /// Name reported in UploadResponse.served_by.
    #[arg(long, env = "POD_NAME", default_value = "demo")]
    pub pod_name: String,
    /// Start unhealthy (flip with POST /admin/health).
    #[arg(long, env = "DEMO_START_UNHEALTHY")]
    pub start_unhealthy: bool,
    /// Paths that receive events (comma-separated).
    #[arg(
        long,
        env = "DEMO_EVENT_PATHS",
        value_delimiter = ',',
        default_value = "/events"
    )]
    pub event_paths: Vec<String>,
    /// The sidecar's app-facing address, for publishing.
    #[arg(long, env = "STREAMGATE_SIDECAR_ADDR")]
    pub sidecar_addr: Option<String>,
    /// A slow graceful shutdown: after SIGTERM the app keeps accepting this many seconds,
    /// answering every UploadService call UNAVAILABLE and `/health` 503, then exits.
    #[arg(long, env = "DEMO_SHUTDOWN_SECONDS", default_value_t = 0)]
    pub shutdown_seconds: u64,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("streamgate-demo-app: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamgate-demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(cli: Cli) -> std::io::Result<()> {
    let switch = health::HealthSwitch::new(!cli.start_unhealthy).await;
    let stopping = Arc::new(AtomicBool::new(false));
    let log = std::sync::Arc::new(events::EventLog::default());
    let grpc = tonic::service::Routes::new(upload::server(cli.pod_name.clone(), stopping.clone()))
        .add_service(switch.grpc_server())
        .add_service(events::grpc_server(log.clone()))
        .into_axum_router();
    let app = grpc
        .merge(http::router(switch.clone()))
        .merge(events::router(&cli.event_paths, log))
        .merge(publish::router(cli.sidecar_addr.clone()))
        .merge(call::router(cli.sidecar_addr.clone()));
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    tracing::info!(listen = %cli.listen, pod = %cli.pod_name, "demo app serving HTTP and gRPC");
    let shutdown_period = std::time::Duration::from_secs(cli.shutdown_seconds);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            terminated().await;
            if !shutdown_period.is_zero() {
                tracing::info!(
                    seconds = shutdown_period.as_secs(),
                    "SIGTERM: shutting down slowly, answering UNAVAILABLE"
                );
                stopping.store(true, Ordering::Release);
                switch.set(false).await;
                tokio::time::sleep(shutdown_period).await;
            }
        })
        .await
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
