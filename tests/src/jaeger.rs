//! Jaeger (v2: an OpenTelemetry Collector with Jaeger's in-memory storage and query
//! API): OTLP/gRPC in, `/api/traces` out. The platform runs one (see
//! [`crate::platform`]); the trace tests export the sidecars' and the operator's spans
//! to it and read them back as a user would in Jaeger's UI. The benches start their own.

use crate::ports::free_port;
use crate::process::Proc;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One span as Jaeger's query API gives it, with its service and parent resolved.
#[derive(Debug, Clone)]
pub struct FoundSpan {
    pub span_id: String,
    pub name: String,
    pub service: String,
    /// The span this one is a child of (`CHILD_OF` reference), if any.
    pub parent: Option<String>,
    pub tags: HashMap<String, serde_json::Value>,
}

impl FoundSpan {
    pub fn tag(&self, key: &str) -> Option<&serde_json::Value> {
        self.tags.get(key)
    }
}

/// Jaeger's listeners.
#[derive(Debug, Clone)]
pub struct JaegerPorts {
    /// Where the OTLP/gRPC receiver listens: loopback, or the real node's address on the
    /// pod bridge (pods export there; the host reaches it too).
    pub otlp: std::net::SocketAddr,
    pub query: u16,
    pub query_grpc: u16,
    pub health: u16,
}

impl JaegerPorts {
    pub fn on(otlp_ip: &str) -> Result<JaegerPorts> {
        Ok(JaegerPorts {
            otlp: format!("{otlp_ip}:{}", free_port()?).parse()?,
            query: free_port()?,
            query_grpc: free_port()?,
            health: free_port()?,
        })
    }

    pub fn otlp_endpoint(&self) -> String {
        format!("http://{}", self.otlp)
    }

    pub fn query_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.query)
    }

    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/status", self.health)
    }
}

/// Jaeger's configuration: OTLP/gRPC in, in-memory storage, the query API and the
/// health check on loopback, and no listener of the collector's own telemetry.
pub fn config(ports: &JaegerPorts) -> String {
    format!(
        r#"service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {otlp}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#,
        health = ports.health,
        query = ports.query,
        query_grpc = ports.query_grpc,
        otlp = ports.otlp,
    )
}

/// The command that runs Jaeger with the configuration at `config_path`.
pub fn command(bin: &Path, config_path: &Path) -> Command {
    let mut command = Command::new(bin);
    command.arg("--config").arg(config_path);
    command
}

/// A Jaeger of its own (the benches' collector), stopped when dropped.
pub struct Jaeger {
    ports: JaegerPorts,
    dir: std::path::PathBuf,
    _proc: Proc,
}

impl Jaeger {
    /// Starts Jaeger on loopback; returns once its health check answers.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Jaeger> {
        std::fs::create_dir_all(dir)?;
        let ports = JaegerPorts::on("127.0.0.1")?;
        let config_path = dir.join("jaeger.yaml");
        std::fs::write(&config_path, config(&ports))?;
        let proc = Proc::spawn(
            "jaeger",
            command(bin, &config_path),
            &dir.join("jaeger.log"),
        )?;
        let jaeger = Jaeger {
            ports,
            dir: dir.to_path_buf(),
            _proc: proc,
        };
        let client = client()?;
        let url = jaeger.ports.health_url();
        crate::wait::eventually("Jaeger is healthy", Duration::from_secs(30), || async {
            let response = client.get(&url).send().await?;
            Ok(response.status().is_success().then_some(()))
        })
        .await
        .with_context(|| crate::process::tail(&jaeger.dir.join("jaeger.log"), 20))?;
        Ok(jaeger)
    }

    /// Where spans go: `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn otlp_endpoint(&self) -> String {
        self.ports.otlp_endpoint()
    }
}

/// Jaeger's query API, as its UI reads it.
pub struct JaegerQuery {
    pub url: String,
}

impl JaegerQuery {
    /// The spans Jaeger holds of `trace_id` (32 hex digits); empty when it knows none.
    pub async fn trace(&self, trace_id: &str) -> Result<Vec<FoundSpan>> {
        let url = format!("{}/api/traces/{trace_id}", self.url);
        let response = client()?.get(&url).send().await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !response.status().is_success() {
            bail!("GET {url}: {}", response.status());
        }
        let body: TracesResponse = response.json().await?;
        Ok(body.data.into_iter().flat_map(TraceData::spans).collect())
    }

    /// Waits until the trace holds spans that `complete` accepts, and returns them.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        timeout: Duration,
        complete: impl Fn(&[FoundSpan]) -> bool,
    ) -> Result<Vec<FoundSpan>> {
        let last = std::sync::Mutex::new(Vec::new());
        let found = crate::wait::eventually("the trace in Jaeger", timeout, || {
            let attempt = self.trace(trace_id);
            let (last, complete) = (&last, &complete);
            async move {
                let spans = attempt.await?;
                let done = complete(&spans);
                *last.lock().unwrap_or_else(|e| e.into_inner()) = spans.clone();
                Ok(done.then_some(spans))
            }
        })
        .await;
        found.with_context(|| {
            let last = last.lock().unwrap_or_else(|e| e.into_inner());
            format!("spans found so far: {:#?}", summary(&last))
        })
    }

    /// Span names Jaeger holds for `service`.
    pub async fn operations(&self, service: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Operations {
            data: Option<Vec<String>>,
        }
        let url = format!("{}/api/services/{service}/operations", self.url);
        let body: Operations = client()?.get(&url).send().await?.json().await?;
        Ok(body.data.unwrap_or_default())
    }
}

/// `name (service) <- parent` per span, for a failure message.
pub fn summary(spans: &[FoundSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} ({}) <- {}",
                s.span_id,
                s.name,
                s.service,
                s.parent.as_deref().unwrap_or("root")
            )
        })
        .collect()
}

fn client() -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?)
}

#[derive(Deserialize)]
struct TracesResponse {
    #[serde(default)]
    data: Vec<TraceData>,
}

#[derive(Deserialize)]
struct TraceData {
    spans: Vec<RawSpan>,
    processes: HashMap<String, Process>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan {
    #[serde(rename = "spanID")]
    span_id: String,
    operation_name: String,
    #[serde(default)]
    references: Vec<Reference>,
    #[serde(rename = "processID")]
    process_id: String,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reference {
    ref_type: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    service_name: String,
}

#[derive(Deserialize)]
struct Tag {
    key: String,
    value: serde_json::Value,
}

impl TraceData {
    fn spans(self) -> Vec<FoundSpan> {
        let processes = self.processes;
        self.spans
            .into_iter()
            .map(|span| FoundSpan {
                parent: span
                    .references
                    .iter()
                    .find(|r| r.ref_type == "CHILD_OF")
                    .map(|r| r.span_id.clone()),
                service: processes
                    .get(&span.process_id)
                    .map(|p| p.service_name.clone())
                    .unwrap_or_default(),
                span_id: span.span_id,
                name: span.operation_name,
                tags: span.tags.into_iter().map(|t| (t.key, t.value)).collect(),
            })
            .collect()
    }
}
