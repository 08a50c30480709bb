//! `sidecar-bench`: the sidecar's figures for `make bench`, each beside a baseline
//! measured in the same run on the same machine.
//!
//! - idle RSS of a registered, ready sidecar, beside the demo app's (a bare
//!   tokio + axum + tonic server doing nothing);
//! - median time from process start to `/readyz` 200 over 20 starts with the app
//!   already healthy, beside the demo app's start to its first `/health` 200 (the floor
//!   that process start-up and a first HTTP answer cost anyway).
//!
//! Run the release build: `cargo build --release -p streamgate-sidecar -p
//! streamgate-demo-app && target/release/sidecar-bench`. Consul comes from
//! `CONSUL_HTTP_ADDR`, else a dev agent is started from `STREAMGATE_CONSUL_BIN` or
//! `consul` on the PATH. Exits 1 when a figure misses its target.

#[path = "support/mod.rs"]
mod support;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use support::free_port;

const STARTS: usize = 20;
const RSS_TARGET_KIB: u64 = 10 * 1024;
const READY_TARGET: Duration = Duration::from_millis(100);

/// A child process that is killed when dropped, so no run leaves processes behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    match bench() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sidecar-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn bench() -> Result<bool, String> {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .ok_or("cannot locate the binaries' directory")?;
    let sidecar = sibling(&dir, "streamgate-sidecar")?;
    let demo = sibling(&dir, "streamgate-demo-app")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (consul, _agent) = consul().await?;
        let app_addr = format!("127.0.0.1:{}", free_port()?);
        let app = spawn_demo(&demo, &app_addr)?;
        wait_ok(
            &format!("http://{app_addr}/health"),
            Duration::from_secs(10),
        )
        .await?;

        let mut baseline_starts = Vec::with_capacity(STARTS);
        for _ in 0..STARTS {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let started = Instant::now();
            let _child = spawn_demo(&demo, &addr)?;
            wait_ok(&format!("http://{addr}/health"), Duration::from_secs(10)).await?;
            baseline_starts.push(started.elapsed());
        }

        let mut ready_starts = Vec::with_capacity(STARTS);
        for _ in 0..STARTS {
            let admin = format!("127.0.0.1:{}", free_port()?);
            let started = Instant::now();
            let child = spawn_sidecar(&sidecar, &consul, &app_addr, &admin)?;
            wait_ok(&format!("http://{admin}/readyz"), Duration::from_secs(10)).await?;
            ready_starts.push(started.elapsed());
            stop(child).await;
        }

        // Idle: ready, then a few probe periods and TTL refreshes with nothing else.
        let admin = format!("127.0.0.1:{}", free_port()?);
        let idle = spawn_sidecar(&sidecar, &consul, &app_addr, &admin)?;
        wait_ok(&format!("http://{admin}/readyz"), Duration::from_secs(10)).await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let sidecar_rss = rss_kib(idle.0.id())?;
        let app_rss = rss_kib(app.0.id())?;
        stop(idle).await;

        let ready = median(&mut ready_starts);
        let floor = median(&mut baseline_starts);
        let rss_ok = sidecar_rss <= RSS_TARGET_KIB;
        let ready_ok = ready <= READY_TARGET;
        row("sidecar", "value", "baseline (same run)", "target");
        row(
            "idle RSS",
            &format!("{:.1} MiB", sidecar_rss as f64 / 1024.0),
            &format!(
                "demo app idle (tokio+axum+tonic) {:.1} MiB",
                app_rss as f64 / 1024.0
            ),
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
    })
}

fn row(name: &str, value: &str, baseline: &str, target: &str) {
    println!("{name:<40} {value:>10}   {baseline:<44} {target}");
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn verdict(ok: bool, target: &str) -> String {
    format!("{target} {}", if ok { "ok" } else { "MISSED" })
}

fn sibling(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: cargo build --release -p streamgate-sidecar -p streamgate-demo-app",
            path.display()
        ))
    }
}

fn spawn(command: &mut Command) -> Result<Running, String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
        .spawn()
        .map(Running)
        .map_err(|e| format!("{command:?}: {e}"))
}

fn spawn_demo(bin: &Path, addr: &str) -> Result<Running, String> {
    spawn(Command::new(bin).env_clear().args(["--listen", addr]))
}

fn spawn_sidecar(bin: &Path, consul: &str, app: &str, admin: &str) -> Result<Running, String> {
    let (host, port) = app.rsplit_once(':').ok_or("app address")?;
    let document = format!(
        "service: {{serviceName: bench, port: {port}}}\n\
         pod: {{name: bench-0, namespace: bench, ip: 127.0.0.1}}\nappHost: {host}\n\
         listen: {{app: '127.0.0.1:{}', inbound: '127.0.0.1:{}', admin: '{admin}'}}\n\
         consul: {{address: '{consul}'}}\n",
        free_port()?,
        free_port()?,
    );
    spawn(
        Command::new(bin)
            .env_clear()
            .env("STREAMGATE_CONFIG", document),
    )
}

/// SIGTERM through the sidecar's own graceful path (it deregisters), then reaped.
async fn stop(mut child: Running) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status();
    for _ in 0..500 {
        if child.0.try_wait().ok().flatten().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls every millisecond: the figure is a latency, so the poll must not add to it.
async fn wait_ok(url: &str, timeout: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(format!("{url} not 200 after {timeout:?}"))
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `CONSUL_HTTP_ADDR`, else a dev agent of our own (kept alive by the returned guard).
async fn consul() -> Result<(String, Option<Running>), String> {
    if let Some(addr) = support::consul_from_env() {
        return Ok((addr, None));
    }
    let bin = std::env::var("STREAMGATE_CONSUL_BIN").unwrap_or_else(|_| "consul".into());
    let (mut command, addr) = support::consul_dev_agent(&bin)?;
    let agent = spawn(&mut command).map_err(|e| format!("starting Consul ({bin}): {e}"))?;
    wait_ok(&format!("{addr}/v1/status/leader"), Duration::from_secs(30)).await?;
    Ok((addr, Some(agent)))
}
