//! One probe of the app: HTTP GET on a path, `grpc.health.v1.Health/Check`, or a TCP
//! connect. Each returns whether it passed and a short output that becomes the Consul
//! check's note, so `consul` and the UI show why an instance is critical.

use crate::config::HealthSettings;
use std::time::Duration;
use streamgate_crds::HealthCheckType;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How much of an HTTP answer's body goes into the output (Consul keeps notes short).
const BODY_EXCERPT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    pub output: String,
}

impl ProbeResult {
    fn pass(output: String) -> Self {
        ProbeResult { ok: true, output }
    }
    fn fail(output: String) -> Self {
        ProbeResult { ok: false, output }
    }
}

pub enum Probe {
    Http {
        client: reqwest::Client,
        url: String,
    },
    /// The channel connects lazily and reconnects by itself when the app restarts.
    Grpc {
        client: HealthClient<Channel>,
        target: String,
    },
    Tcp {
        target: String,
    },
}

/// Why a probe could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("HTTP client: {}", crate::error_chain(.0))]
    HttpClient(#[source] reqwest::Error),
    #[error("gRPC endpoint: {0}")]
    GrpcEndpoint(#[source] tonic::transport::Error),
}

impl Probe {
    /// Builds the probe; needs a running Tokio runtime (the gRPC channel's worker).
    pub fn new(settings: &HealthSettings) -> Result<Probe, ProbeError> {
        let target = settings.authority();
        match settings.kind {
            HealthCheckType::Http => {
                let client = crate::http_client()
                    .timeout(settings.timeout)
                    .connect_timeout(settings.timeout)
                    // A redirect is not a 2xx: the probe judges the app's own answer.
                    .redirect(reqwest::redirect::Policy::none())
                    .pool_max_idle_per_host(1)
                    .build()
                    .map_err(ProbeError::HttpClient)?;
                let url = format!("http://{target}{}", settings.path);
                Ok(Probe::Http { client, url })
            }
            HealthCheckType::Grpc => {
                let channel = Endpoint::from_shared(format!("http://{target}"))
                    .map_err(ProbeError::GrpcEndpoint)?
                    .connect_timeout(settings.timeout)
                    .timeout(settings.timeout)
                    .connect_lazy();
                Ok(Probe::Grpc {
                    client: HealthClient::new(channel),
                    target,
                })
            }
            HealthCheckType::Tcp => Ok(Probe::Tcp { target }),
        }
    }

    /// Probes once; never takes much longer than `timeout`.
    pub async fn check(&mut self, timeout: Duration) -> ProbeResult {
        match tokio::time::timeout(timeout, self.check_inner()).await {
            Ok(result) => result,
            Err(_) => {
                ProbeResult::fail(format!("{}: timed out after {timeout:?}", self.describe()))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Probe::Http { url, .. } => format!("HTTP GET {url}"),
            Probe::Grpc { target, .. } => format!("gRPC health check {target}"),
            Probe::Tcp { target } => format!("TCP connect {target}"),
        }
    }

    async fn check_inner(&mut self) -> ProbeResult {
        match self {
            Probe::Http { client, url } => http(client, url).await,
            Probe::Grpc { client, target } => grpc(client, target).await,
            Probe::Tcp { target } => match tokio::net::TcpStream::connect(target.as_str()).await {
                Ok(_) => ProbeResult::pass(format!("TCP connect {target}: success")),
                Err(e) => ProbeResult::fail(format!("TCP connect {target}: {e}")),
            },
        }
    }
}

async fn http(client: &reqwest::Client, url: &str) -> ProbeResult {
    let mut response = match client.get(url).send().await {
        Ok(response) => response,
        Err(e) => return ProbeResult::fail(format!("HTTP GET {url}: {}", crate::error_chain(&e))),
    };
    let status = response.status();
    let mut body = Vec::new();
    while body.len() < BODY_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(BODY_EXCERPT);
    let excerpt = String::from_utf8_lossy(&body);
    let output = format!("HTTP GET {url}: {status}: {}", excerpt.trim());
    if status.is_success() {
        ProbeResult::pass(output)
    } else {
        ProbeResult::fail(output)
    }
}

async fn grpc(client: &mut HealthClient<Channel>, target: &str) -> ProbeResult {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match client.check(request).await {
        Ok(response) => {
            let status = ServingStatus::try_from(response.get_ref().status)
                .unwrap_or(ServingStatus::Unknown);
            let output = format!("gRPC health check {target}: {}", status.as_str_name());
            if status == ServingStatus::Serving {
                ProbeResult::pass(output)
            } else {
                ProbeResult::fail(output)
            }
        }
        Err(status) => ProbeResult::fail(format!(
            "gRPC health check {target}: {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}
