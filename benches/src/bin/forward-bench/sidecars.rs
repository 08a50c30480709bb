//! Path (b): Consul, a server sidecar in front of the server and a client sidecar that
//! names the server's service as its upstream; and the same pair again with traces on,
//! for the tracing-cost rounds.

use crate::Tools;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use streamgate_benches::consul::Consul;
use streamgate_benches::running::Running;
use streamgate_benches::work_dir::WorkDir;
use streamgate_tests::ports::free_port;
use streamgate_tests::wait::eventually;

/// What a stopped sidecar gets to deregister from Consul before it is killed.
const SIDECAR_GRACE: Duration = Duration::from_secs(3);

/// The sidecars' path, stopped when dropped (they deregister from Consul).
pub struct SidecarPath {
    pub client: Running,
    pub server: Running,
    /// The client sidecar's app listener, where ghz calls for two hops.
    pub app: String,
    /// The server sidecar's inbound listener, where ghz calls for one hop.
    pub inbound: String,
}

/// One pair of sidecars: the service the server registers, the pod IPs of both, and
/// environment both get (the `OTEL_*` variables of the tracing-cost path).
pub struct Pair<'a> {
    pub service: &'a str,
    pub server_ip: &'a str,
    pub client_ip: &'a str,
    pub env: &'a [(String, String)],
    /// The sidecar binary (this build's, or a baseline build's to weigh a lever).
    pub binary: &'a std::path::Path,
}

struct SidecarRole<'a> {
    service: &'a str,
    ip: &'a str,
    app_port: u16,
    app_listen: String,
    inbound: String,
    upstream: Option<&'a str>,
    env: &'a [(String, String)],
}

/// The Consul the sidecars register in: `CONSUL_HTTP_ADDR`'s, else a dev agent.
pub async fn consul(tools: &Tools, work: &WorkDir) -> Result<Consul> {
    match Consul::from_env() {
        Some(consul) => Ok(consul),
        None => Consul::start(&tools.consul, work.path()).await,
    }
}

/// A server sidecar registering `pair.service` and a client sidecar with it as its
/// upstream; ready, and the server's instance passing.
pub async fn start(
    work: &WorkDir,
    consul: &Consul,
    pair: &Pair<'_>,
    server_addr: &str,
) -> Result<SidecarPath> {
    let service = pair.service;
    let app = format!("127.0.0.1:{}", free_port()?);
    let inbound = format!("{}:{}", pair.server_ip, free_port()?);
    let (server, server_admin) = spawn_sidecar(
        pair.binary,
        work,
        &format!("{service}-server"),
        consul.addr(),
        &SidecarRole {
            service,
            ip: pair.server_ip,
            app_port: port_of(server_addr)?,
            app_listen: format!("127.0.0.1:{}", free_port()?),
            inbound: inbound.clone(),
            upstream: None,
            env: pair.env,
        },
    )?;
    let (client, client_admin) = spawn_sidecar(
        pair.binary,
        work,
        &format!("{service}-client"),
        consul.addr(),
        &SidecarRole {
            service: &format!("{service}-client"),
            ip: pair.client_ip,
            app_port: port_of(server_addr)?,
            app_listen: app.clone(),
            inbound: format!("{}:{}", pair.client_ip, free_port()?),
            upstream: Some(service),
            env: pair.env,
        },
    )?;
    let http = http()?;
    for (name, admin, sidecar) in [
        ("server", &server_admin, &server),
        ("client", &client_admin, &client),
    ] {
        wait_ok(
            &http,
            &format!("http://{admin}/readyz"),
            Duration::from_secs(30),
        )
        .await
        .with_context(|| {
            format!(
                "the {name} sidecar is not ready; its log ends: {}",
                sidecar.log_tail(5).replace('\n', " | ")
            )
        })?;
    }
    wait_passing(&http, consul.addr(), service, Duration::from_secs(30)).await?;
    Ok(SidecarPath {
        client,
        server,
        app,
        inbound,
    })
}

/// A sidecar with its own pod IP (127.0.0.N); returns it and its admin address. The
/// server's registers `service` with its inbound address; the client's names it as its
/// one upstream. Both check the app with a TCP connect.
fn spawn_sidecar(
    bin: &Path,
    work: &WorkDir,
    name: &str,
    consul: &str,
    role: &SidecarRole<'_>,
) -> Result<(Running, String)> {
    let admin = format!("{}:{}", role.ip, free_port()?);
    let upstreams = role
        .upstream
        .map(|u| format!(", upstreams: [{{service: {u}}}]"))
        .unwrap_or_default();
    let document = format!(
        "service: {{serviceName: {service}, port: {port}, health: {{type: tcp, periodSeconds: 2}}{upstreams}}}\n\
         pod: {{name: {name}-0, namespace: bench, ip: {ip}}}\nappHost: 127.0.0.1\n\
         listen: {{app: '{app}', inbound: '{inbound}', admin: '{admin}'}}\n\
         consul: {{address: '{consul}'}}\nlogLevel: warn\n",
        service = role.service,
        port = role.app_port,
        ip = role.ip,
        app = role.app_listen,
        inbound = role.inbound,
    );
    let mut command = Command::new(bin);
    command
        .env_clear()
        .env("STREAMGATE_CONFIG", document)
        .envs(role.env.iter().map(|(k, v)| (k, v)));
    // Stopped with SIGTERM first, so they leave Consul.
    let child = Running::spawn(
        &format!("the {name} sidecar"),
        command,
        &work.join(format!("sidecar-{name}.log")),
        SIDECAR_GRACE,
    )?;
    Ok((child, admin))
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?)
}

async fn wait_ok(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<()> {
    eventually(&format!("{url} answers 200"), timeout, || async move {
        Ok(http
            .get(url)
            .send()
            .await?
            .status()
            .is_success()
            .then_some(()))
    })
    .await
}

/// Until Consul lists a passing instance of `service` (what the client sidecar routes to).
async fn wait_passing(
    http: &reqwest::Client,
    consul: &str,
    service: &str,
    timeout: Duration,
) -> Result<()> {
    let url = format!("{consul}/v1/health/service/{service}?passing=true");
    let url = url.as_str();
    eventually(
        &format!("a passing instance of {service} in Consul"),
        timeout,
        || async move {
            let list: Vec<serde_json::Value> = http.get(url).send().await?.json().await?;
            Ok((!list.is_empty()).then_some(()))
        },
    )
    .await
}

fn port_of(addr: &str) -> Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("no port in {addr}"))
}
