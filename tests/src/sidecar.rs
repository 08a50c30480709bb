//! Fixtures of the sidecar's integration tests: the binaries under test, loopback
//! addresses, the demo app and the sidecar as real processes, a pod of both
//! ([`started_sidecar`]), and views of Consul.

use crate::bins::binary;
use crate::ports::free_port;
use crate::process::Proc;
use crate::tools::repo_root;
use crate::wait::eventually;
use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub struct Binaries {
    pub sidecar: PathBuf,
    pub demo_app: PathBuf,
}

/// The sidecar and the demo app, built once per test binary (a no-op when `make`
/// built them already).
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| Binaries {
        sidecar: binary("streamgate-sidecar", "streamgate-sidecar").expect("building the sidecar"),
        demo_app: binary("streamgate-demo-app", "streamgate-demo-app")
            .expect("building the demo app"),
    })
}

/// A loopback address of its own (127.0.0.N) for one pod, so pods are told apart by IP
/// the way they are in a cluster. Ports are free ports, so addresses never collide.
pub fn pod_ip() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() % 97;
    format!("127.0.0.{}", 2 + n % 250)
}

/// A directory for one test's logs, under the repository's `.streamgate/test`.
pub fn log_dir(test: &str) -> PathBuf {
    let dir = repo_root()
        .join(".streamgate/test/sidecar")
        .join(format!("{test}.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the log directory");
    dir
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// The demo app as a process on `addr`.
pub struct DemoApp {
    pub addr: SocketAddr,
    proc: Proc,
}

impl DemoApp {
    pub async fn start(dir: &Path, ip: &str, healthy: bool) -> Result<DemoApp> {
        let addr: SocketAddr = format!("{ip}:{}", free_port()?).parse()?;
        Self::start_at(dir, addr, healthy).await
    }

    /// Starts on a given address (to bring an app back where it was).
    pub async fn start_at(dir: &Path, addr: SocketAddr, healthy: bool) -> Result<DemoApp> {
        Self::start_with_env(dir, addr, healthy, &[]).await
    }

    /// Starts with extra environment (e.g. `STREAMGATE_SIDECAR_ADDR`, `DEMO_EVENT_PATHS`).
    pub async fn start_with_env(
        dir: &Path,
        addr: SocketAddr,
        healthy: bool,
        env: &[(&str, &str)],
    ) -> Result<DemoApp> {
        let mut command = Command::new(&binaries().demo_app);
        command.env_clear().envs(env.iter().copied());
        command
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--pod-name")
            .arg("demo");
        if !healthy {
            command.arg("--start-unhealthy");
        }
        let proc = Proc::spawn(
            "demo-app",
            command,
            &dir.join(format!("demo-app-{addr}.log")),
        )?;
        let app = DemoApp { addr, proc };
        let client = http();
        let url = format!("http://{addr}/admin/health");
        eventually("the demo app answers", Duration::from_secs(10), || async {
            Ok(client.get(&url).send().await.ok().map(|_| ()))
        })
        .await?;
        Ok(app)
    }

    /// The demo app of an events pod on `addr`: it publishes through the sidecar's app
    /// listener `sidecar` and records deliveries on `/events`.
    pub async fn start_for_events(
        dir: &Path,
        addr: SocketAddr,
        sidecar: SocketAddr,
    ) -> Result<DemoApp> {
        let sidecar = sidecar.to_string();
        let env = [
            ("STREAMGATE_SIDECAR_ADDR", sidecar.as_str()),
            ("DEMO_EVENT_PATHS", "/events"),
        ];
        Self::start_with_env(dir, addr, true, &env).await
    }

    pub async fn set_healthy(&self, healthy: bool) -> Result<()> {
        let response = http()
            .post(format!("http://{}/admin/health", self.addr))
            .json(&serde_json::json!({ "healthy": healthy }))
            .send()
            .await?;
        if !response.status().is_success() && response.status() != 503 {
            bail!("flipping the demo app's health: {}", response.status());
        }
        Ok(())
    }

    pub fn stop(&self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

/// What one sidecar is started with.
pub struct SidecarOptions {
    pub service: String,
    pub pod_ip: String,
    pub app: SocketAddr,
    /// The `health:` flow mapping, e.g. `{type: http, periodSeconds: 2}`.
    pub health: String,
    pub consul: String,
    pub deregister_critical_after: String,
    pub drain_timeout: String,
    pub env: Vec<(String, String)>,
    /// `listen.app`: the app-facing listener (events API).
    pub app_listen: SocketAddr,
    /// The `service.events` flow mapping, e.g. `{publish: [file.uploaded]}`.
    pub events: String,
    /// Further top-level document lines (`nats:`, `spoolDir:`), each ending in a newline.
    pub extra: String,
    /// The pod's name; replicas of one service need their own (default `<service>-pod`).
    pub pod_name: Option<String>,
    /// Further `service:` lines (`upstreams:`, `allowedCallers:`), each indented by two
    /// spaces and ending in a newline.
    pub service_extra: String,
}

impl SidecarOptions {
    pub fn new(service: &str, pod_ip: &str, app: SocketAddr, consul: &str) -> Self {
        SidecarOptions {
            service: service.into(),
            pod_ip: pod_ip.into(),
            app,
            health: "{type: http, periodSeconds: 2, failureThreshold: 1}".into(),
            consul: consul.into(),
            deregister_critical_after: "1m".into(),
            drain_timeout: "5s".into(),
            env: Vec::new(),
            app_listen: format!("127.0.0.1:{}", free_port().expect("a free port"))
                .parse()
                .expect("an address"),
            events: "{}".into(),
            extra: String::new(),
            pod_name: None,
            service_extra: String::new(),
        }
    }
}

pub const NAMESPACE: &str = "sgtest";

/// The sidecar as a process, configured through `STREAMGATE_CONFIG` as the operator
/// renders it, with an environment of its own only.
pub struct Sidecar {
    pub admin: SocketAddr,
    pub app_listen: SocketAddr,
    pub inbound: SocketAddr,
    pub instance_id: String,
    pub pod_name: String,
    proc: Proc,
}

impl Sidecar {
    pub fn start(dir: &Path, o: &SidecarOptions) -> Result<Sidecar> {
        let admin: SocketAddr = format!("{}:{}", o.pod_ip, free_port()?).parse()?;
        let inbound: SocketAddr = format!("{}:{}", o.pod_ip, free_port()?).parse()?;
        let app_listen = o.app_listen;
        let pod_name = o
            .pod_name
            .clone()
            .unwrap_or_else(|| format!("{}-pod", o.service));
        let document = format!(
            "service:\n  serviceName: {service}\n  port: {port}\n  tags: [v1]\n  meta: {{team: media}}\n  health: {health}\n  events: {events}\n{service_extra}\
             pod: {{name: {pod_name}, namespace: {NAMESPACE}, uid: uid-{service}, ip: {ip}}}\n\
             appHost: {app_host}\n\
             listen: {{app: '{app_listen}', inbound: '{inbound}', admin: '{admin}'}}\n\
             consul: {{address: '{consul}', deregisterCriticalAfter: {dereg}}}\n\
             drainTimeout: {drain}\n{extra}",
            service = o.service,
            port = o.app.port(),
            health = o.health,
            ip = o.pod_ip,
            app_host = o.app.ip(),
            consul = o.consul,
            dereg = o.deregister_critical_after,
            drain = o.drain_timeout,
            events = o.events,
            extra = o.extra,
            service_extra = o.service_extra,
        );
        let mut command = Command::new(&binaries().sidecar);
        command
            .env_clear()
            .env("STREAMGATE_CONFIG", document)
            // Debug logs of the sidecar itself; h2's frame-by-frame logs would cost
            // more CPU than the data path they describe.
            .env("RUST_LOG", "debug,h2=info,hyper=info,hyper_util=info");
        for (key, value) in &o.env {
            command.env(key, value);
        }
        let proc = Proc::spawn(
            "sidecar",
            command,
            &dir.join(format!("sidecar-{}.log", o.service)),
        )?;
        Ok(Sidecar {
            admin,
            app_listen,
            inbound,
            instance_id: streamgate_consul::contract::instance_id(&o.service, NAMESPACE, &pod_name),
            pod_name,
            proc,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `/readyz`'s status code, or an error while the server is not up.
    pub async fn readyz(&self) -> Result<u16> {
        let response = http()
            .get(format!("http://{}/readyz", self.admin))
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let response = http()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await?;
        Ok(response.error_for_status()?.text().await?)
    }

    /// The value of one sample of `/metrics`, e.g.
    /// `streamgate_sidecar_health_checks_total{result="failure"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let text = self.admin_get("/metrics").await?;
        Ok(text
            .lines()
            .find_map(|line| {
                line.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0))
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        eventually("the sidecar's /readyz answers 200", timeout, || async {
            Ok((self.readyz().await? == 200).then_some(()))
        })
        .await
        .with_context(|| self.log_tail(30))
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.proc.pid() as i32), signal);
    }

    pub async fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        eventually("the sidecar exits", timeout, || async {
            Ok(self.proc.exit_status())
        })
        .await
        .with_context(|| self.log_tail(30))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(2));
    }
}

/// One instance as Consul's catalog reports it (what discovery sees).
#[derive(Debug, Clone)]
pub struct CatalogInstance {
    pub id: String,
    /// The Consul node it hangs off.
    pub node: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: Value,
    /// The sidecar's TTL check's status: `passing` or `critical`.
    pub status: String,
}

pub struct ConsulView {
    base: String,
    client: reqwest::Client,
}

impl ConsulView {
    pub fn new(base: &str) -> ConsulView {
        ConsulView {
            base: base.trim_end_matches('/').to_string(),
            client: http(),
        }
    }

    /// A JSON answer of Consul's HTTP API at `path`.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self.client.get(url).send().await?.error_for_status()?;
        Ok(response.json().await?)
    }

    /// The instance `id` of `service` in the catalog, if there.
    pub async fn instance(&self, service: &str, id: &str) -> Result<Option<CatalogInstance>> {
        let entries: Vec<Value> = self.get(&format!("/v1/health/service/{service}")).await?;
        let Some(entry) = entries.into_iter().find(|e| e["Service"]["ID"] == id) else {
            return Ok(None);
        };
        let check_id = format!("service:{id}");
        let status = entry["Checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["CheckID"] == check_id.as_str()))
            .and_then(|c| c["Status"].as_str())
            .unwrap_or("missing")
            .to_string();
        let service = &entry["Service"];
        Ok(Some(CatalogInstance {
            id: id.to_string(),
            node: entry["Node"]["Node"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            address: service["Address"].as_str().unwrap_or_default().to_string(),
            port: service["Port"].as_u64().unwrap_or_default() as u16,
            tags: serde_json::from_value(service["Tags"].clone()).unwrap_or_default(),
            meta: service["Meta"].clone(),
            status,
        }))
    }

    /// Waits until the instance is in the catalog with `status`.
    pub async fn wait_status(
        &self,
        service: &str,
        id: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<CatalogInstance> {
        eventually(&format!("{id} is {status} in Consul"), timeout, || async {
            Ok(self
                .instance(service, id)
                .await?
                .filter(|i| i.status == status))
        })
        .await
    }

    /// Every instance of `service`, whatever its node and status: `(node, id)`.
    pub async fn all_instances(&self, service: &str) -> Result<Vec<(String, String)>> {
        let entries: Vec<Value> = self.get(&format!("/v1/health/service/{service}")).await?;
        Ok(entries
            .iter()
            .map(|e| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (text(&e["Node"]["Node"]), text(&e["Service"]["ID"]))
            })
            .collect())
    }

    /// Waits until the instance is gone from the catalog.
    pub async fn wait_gone(&self, service: &str, id: &str, timeout: Duration) -> Result<()> {
        eventually(&format!("{id} is gone from Consul"), timeout, || async {
            Ok(self.instance(service, id).await?.is_none().then_some(()))
        })
        .await
    }

    /// The TTL check's output as the local agent has it (the catalog defers
    /// output-only changes for minutes by design).
    pub async fn check_output(&self, id: &str) -> Result<String> {
        let checks: Value = self.get("/v1/agent/checks").await?;
        Ok(checks[format!("service:{id}")]["Output"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

/// A pod as the sidecar tests run it: its log directory and loopback IP, the demo app,
/// and the sidecar beside it.
pub struct SidecarPod {
    pub service: String,
    pub dir: PathBuf,
    pub ip: String,
    pub app: DemoApp,
    pub sidecar: Sidecar,
}

/// Starts a pod of the service `name` (made unique to the test run by `env`): the demo
/// app, healthy or not, and a sidecar registering with the platform's Consul, its
/// options first adjusted by `tweak` (health check, events, drain timeout, ...).
pub async fn started_sidecar(
    env: &crate::TestEnv,
    name: &str,
    app_healthy: bool,
    tweak: impl FnOnce(&mut SidecarOptions),
) -> Result<SidecarPod> {
    let service = env.unique(name);
    let dir = log_dir(&service);
    let ip = pod_ip();
    let app = DemoApp::start(&dir, &ip, app_healthy).await?;
    let mut options = SidecarOptions::new(&service, &ip, app.addr, env.consul_addr());
    tweak(&mut options);
    let sidecar = Sidecar::start(&dir, &options)?;
    Ok(SidecarPod {
        service,
        dir,
        ip,
        app,
        sidecar,
    })
}
