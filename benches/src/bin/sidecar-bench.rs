//! `sidecar-bench`: the sidecar's figures for `make bench`, each beside a baseline
//! measured in the same run on the same machine.
//!
//! - idle RSS of a registered, ready sidecar, beside the demo app's (a bare
//!   tokio + axum + tonic server doing nothing);
//! - median time from process start to `/readyz` 200 over 20 starts with the app
//!   already healthy, beside the demo app's start to its first `/health` 200 (the floor
//!   that process start-up and a first HTTP answer cost anyway).
//!
//! Run the release build: `cargo build --release --workspace --bins &&
//! target/release/sidecar-bench` (the sidecar and the demo app are found beside it).
//! Consul comes from `CONSUL_HTTP_ADDR`, else a dev agent is started from
//! `STREAMGATE_CONSUL_BIN`, the `make tools` cache or `consul` on the PATH. Exits 1 when
//! a figure misses its target, 2 when the bench cannot run.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};
use streamgate_benches::consul::Consul;
use streamgate_benches::figures::{exit_code, mib, millis, verdict};
use streamgate_benches::procfs::rss_kib;
use streamgate_benches::running::Running;
use streamgate_benches::work_dir::WorkDir;
use streamgate_benches::{siblings, tools};
use streamgate_tests::ports::free_port;

const STARTS: usize = 20;
const RSS_TARGET_KIB: u64 = 10 * 1024;
const READY_TARGET: Duration = Duration::from_millis(100);
/// How long a started process has to answer: far beyond any figure worth reporting.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// What a stopped sidecar gets to deregister from Consul before it is killed.
const SIDECAR_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    exit_code("sidecar-bench", bench())
}

fn bench() -> Result<bool> {
    let sidecar = siblings::binary("streamgate-sidecar")?;
    let demo = siblings::binary("streamgate-demo-app")?;
    let work = WorkDir::new("sidecar-bench")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(measure(&sidecar, &demo, &work))
}

async fn measure(sidecar: &Path, demo: &Path, work: &WorkDir) -> Result<bool> {
    let consul = match Consul::from_env() {
        Some(consul) => consul,
        None => Consul::start(&tools::CONSUL.locate()?, work.path()).await?,
    };
    let app_addr = format!("127.0.0.1:{}", free_port()?);
    let app = spawn_demo(demo, &app_addr, work)?;
    wait_ok(&format!("http://{app_addr}/health"), START_TIMEOUT).await?;

    let mut baseline_starts = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let started = Instant::now();
        let _child = spawn_demo(demo, &addr, work)?;
        wait_ok(&format!("http://{addr}/health"), START_TIMEOUT).await?;
        baseline_starts.push(started.elapsed());
    }

    let mut ready_starts = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let started = Instant::now();
        let child = spawn_sidecar(sidecar, consul.addr(), &app_addr, &admin, work)?;
        wait_ok(&format!("http://{admin}/readyz"), START_TIMEOUT).await?;
        ready_starts.push(started.elapsed());
        child.stop();
    }

    // Idle: ready, then a few probe periods and TTL refreshes with nothing else.
    let admin = format!("127.0.0.1:{}", free_port()?);
    let idle = spawn_sidecar(sidecar, consul.addr(), &app_addr, &admin, work)?;
    wait_ok(&format!("http://{admin}/readyz"), START_TIMEOUT).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sidecar_rss = rss_kib(idle.pid())?;
    let app_rss = rss_kib(app.pid())?;
    idle.stop();

    let ready = median(&mut ready_starts);
    let floor = median(&mut baseline_starts);
    let rss_ok = sidecar_rss <= RSS_TARGET_KIB;
    let ready_ok = ready <= READY_TARGET;
    row("sidecar", "value", "baseline (same run)", "target");
    row(
        "idle RSS",
        &mib(sidecar_rss),
        &format!("demo app idle (tokio+axum+tonic) {}", mib(app_rss)),
        &verdict(rss_ok, "<= 10 MiB"),
    );
    row(
        &format!("start -> /readyz, median of {STARTS}"),
        &millis(ready),
        &format!("demo app start -> /health {}", millis(floor)),
        &verdict(ready_ok, "<= 100 ms"),
    );
    let slowest = ready_starts.last().copied().unwrap_or_default();
    row(
        "start -> /readyz, slowest",
        &millis(slowest),
        "for scale: Linkerd proxy 17-26 MB, Dapr ~50 MB",
        "",
    );
    Ok(rss_ok && ready_ok)
}

fn row(name: &str, value: &str, baseline: &str, target: &str) {
    println!("{name:<40} {value:>10}   {baseline:<44} {target}");
}

fn spawn_demo(bin: &Path, addr: &str, work: &WorkDir) -> Result<Running> {
    let mut command = Command::new(bin);
    command.env_clear().args(["--listen", addr]);
    Running::spawn(
        "demo-app",
        command,
        &work.join("demo-app.log"),
        Duration::ZERO,
    )
}

fn spawn_sidecar(
    bin: &Path,
    consul: &str,
    app: &str,
    admin: &str,
    work: &WorkDir,
) -> Result<Running> {
    let (host, port) = app
        .rsplit_once(':')
        .with_context(|| format!("no port in the app address {app}"))?;
    let document = format!(
        "service: {{serviceName: bench, port: {port}}}\n\
         pod: {{name: bench-0, namespace: bench, ip: 127.0.0.1}}\nappHost: {host}\n\
         listen: {{app: '127.0.0.1:{}', inbound: '127.0.0.1:{}', admin: '{admin}'}}\n\
         consul: {{address: '{consul}'}}\n",
        free_port()?,
        free_port()?,
    );
    let mut command = Command::new(bin);
    command.env_clear().env("STREAMGATE_CONFIG", document);
    // Stopped with SIGTERM, through the sidecar's own graceful path (it deregisters).
    Running::spawn("sidecar", command, &work.join("sidecar.log"), SIDECAR_GRACE)
}

/// Polls every millisecond: the figure is a latency, so the poll must not add to it (the
/// harness's `wait::eventually` polls every 100 ms, most of the figure).
async fn wait_ok(url: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(1))
        .build()?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("{url} not 200 after {timeout:?}")
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
