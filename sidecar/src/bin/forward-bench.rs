//! `forward-bench`: gRPC forwarding's figures for `make bench`, each beside baselines
//! measured in the same run with the same load generator (ghz) and the same server.
//!
//! The server is this binary itself (`forward-bench serve`, a separate process): the
//! demo app's `streamgate.demo.v1.UploadService/Upload`, stateless, on one tokio thread,
//! called with 1 KiB of content. Three paths to it, all on loopback:
//!
//! - (a) direct: ghz → server;
//! - (b) ghz → client sidecar (app listener, `:authority` = the server's service name)
//!   → server sidecar (inbound on 127.0.0.2, found through Consul) → server;
//! - (c) ghz → nginx from Debian as a gRPC proxy (`grpc_pass` to an upstream pool with
//!   `keepalive 16`), one process (`master_process off`), to set one nginx worker beside
//!   one sidecar thread.
//!
//! For each: p50/p99 at a fixed 2,000 RPS (16 connections, 32 workers, 10 s) and the
//! latency added over (a); maximum throughput (16 connections, 64 workers, 10 s). For the
//! sidecars: the highest RSS sampled during the runs and CPU seconds per 1,000 requests
//! (utime + stime from /proc), beside nginx's. Targets for (b): added p50 <= 150 µs and
//! p99 <= 600 µs at 2,000 RPS, throughput >= 1.2x nginx's, RSS <= 15 MiB under load.
//!
//! Run the release build: `cargo build --release -p streamgate-sidecar && make tools &&
//! target/release/forward-bench`. Tools come from `STREAMGATE_GHZ_BIN`,
//! `STREAMGATE_NGINX_BIN` and `STREAMGATE_CONSUL_BIN` (what `scripts/bench.sh` sets),
//! else from the `make tools` cache, else the PATH. Consul comes from `CONSUL_HTTP_ADDR`,
//! else a dev agent of our own. `FB_SECONDS` shortens or lengthens each measured run.
//! Exits 1 when a target is missed or (b) cannot be measured, 2 when the bench itself
//! cannot run. Every child process is stopped when the bench ends, however it ends.

#[path = "support/mod.rs"]
mod support;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use support::free_port;

const RATE: u32 = 2_000;
const CONNECTIONS: u32 = 16;
const RATE_WORKERS: u32 = 32;
const MAX_WORKERS: u32 = 64;
const PAYLOAD_BYTES: usize = 1024;
const CALL: &str = "streamgate.demo.v1.UploadService/Upload";
const PROTO: &str = include_str!("../../../proto/streamgate/demo/v1/upload.proto");
const PROTO_PATH: &str = "streamgate/demo/v1/upload.proto";

const ADDED_P50_TARGET: Duration = Duration::from_micros(150);
const ADDED_P99_TARGET: Duration = Duration::from_micros(600);
const THROUGHPUT_TARGET: f64 = 1.2;
const RSS_TARGET_KIB: u64 = 15 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return serve(args.get(1).map(String::as_str));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("forward-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(bench()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("forward-bench: {e}");
            ExitCode::from(2)
        }
    }
}

// --- the server --------------------------------------------------------------------

mod server {
    use streamgate_proto::demo::v1::upload_service_server::UploadService;
    use streamgate_proto::demo::v1::{GetUploadRequest, UploadRequest, UploadResponse};
    use tonic::{Request, Response, Status};

    /// The demo app's UploadService without its in-memory store, so nothing grows (and
    /// no map resize stalls a run) over hundreds of thousands of calls.
    pub struct Echo;

    #[tonic::async_trait]
    impl UploadService for Echo {
        async fn upload(
            &self,
            request: Request<UploadRequest>,
        ) -> Result<Response<UploadResponse>, Status> {
            let request = request.into_inner();
            Ok(Response::new(UploadResponse {
                upload_id: "bench".into(),
                size: i64::try_from(request.content.len()).unwrap_or(i64::MAX),
                filename: request.filename,
                served_by: "forward-bench".into(),
            }))
        }

        async fn get_upload(
            &self,
            _: Request<GetUploadRequest>,
        ) -> Result<Response<UploadResponse>, Status> {
            Err(Status::unimplemented("forward-bench serves Upload only"))
        }
    }
}

/// `forward-bench serve ADDR`: the gRPC server every path ends at, on one thread.
fn serve(addr: Option<&str>) -> ExitCode {
    let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: forward-bench serve 127.0.0.1:PORT");
        return ExitCode::from(2);
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                use streamgate_proto::demo::v1::upload_service_server::UploadServiceServer;
                tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(UploadServiceServer::new(server::Echo))
                    .serve(addr)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forward-bench serve: {e}");
            ExitCode::from(2)
        }
    }
}

// --- the bench ---------------------------------------------------------------------

struct Tools {
    ghz: PathBuf,
    nginx: PathBuf,
    consul: PathBuf,
    sidecar: PathBuf,
    this: PathBuf,
}

/// Where one run of ghz sends its calls.
struct Target {
    label: &'static str,
    addr: String,
    authority: Option<String>,
}

/// One process watched during a run: its highest RSS and the CPU it spent.
struct Watched {
    pid: u32,
    max_rss_kib: u64,
    cpu_start: Duration,
    cpu: Duration,
}

/// ghz's JSON report, the parts read (latencies are nanoseconds).
#[derive(serde::Deserialize)]
struct Report {
    count: u64,
    rps: f64,
    #[serde(rename = "errorDistribution", default)]
    errors: Option<std::collections::BTreeMap<String, u64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    statuses: Option<std::collections::BTreeMap<String, u64>>,
    #[serde(rename = "latencyDistribution", default)]
    latencies: Option<Vec<Percentile>>,
}

#[derive(serde::Deserialize)]
struct Percentile {
    percentage: u32,
    latency: u64,
}

/// The figures of one path.
struct Measured {
    p50: Duration,
    p99: Duration,
    rate_requests: u64,
    max_rps: f64,
    max_requests: u64,
    /// Per watched process: (highest RSS KiB, CPU at the fixed rate, CPU at max).
    usage: Vec<(u64, Duration, Duration)>,
}

async fn bench() -> Result<bool, String> {
    let tools = tools()?;
    let work =
        std::env::temp_dir().join(format!("streamgate-forward-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("proto/streamgate/demo/v1")).map_err(|e| e.to_string())?;
    std::fs::write(work.join("proto").join(PROTO_PATH), PROTO).map_err(|e| e.to_string())?;
    let _cleanup = RemoveDir(work.clone());
    let seconds = std::env::var("FB_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| (1..=120).contains(s))
        .unwrap_or(10);

    // The server, and nginx in front of it.
    let server_addr = format!("127.0.0.1:{}", free_port()?);
    let _server = spawn(
        Command::new(&tools.this).args(["serve", &server_addr]),
        &work.join("server.log"),
        "server",
        false,
    )?;
    wait_tcp(&server_addr, Duration::from_secs(10)).await?;
    let nginx_addr = format!("127.0.0.1:{}", free_port()?);
    let nginx = start_nginx(&tools.nginx, &work, &nginx_addr, &server_addr)?;
    wait_tcp(&nginx_addr, Duration::from_secs(10)).await?;

    // Consul and the two sidecars; when they cannot start, (b) fails alone.
    let service = format!("fwdbench{}", std::process::id());
    let path = start_sidecars(&tools, &work, &service, &server_addr).await;

    let direct = Target {
        label: "(a) direct",
        addr: server_addr.clone(),
        authority: None,
    };
    let proxied = Target {
        label: "(c) nginx",
        addr: nginx_addr,
        authority: None,
    };
    let label = "(b) sidecars";
    let direct = measure(&tools, &work, &direct, &[], seconds).await?;
    let nginx = measure(&tools, &work, &proxied, &[nginx.0.id()], seconds).await;
    let sidecars = match &path {
        Ok(path) => {
            let forwarded = Target {
                label,
                addr: path.app.clone(),
                authority: Some(service.clone()),
            };
            let pids = [path.client.0.id(), path.server.0.id()];
            measure(&tools, &work, &forwarded, &pids, seconds).await
        }
        Err(e) => Err(format!("{label}: {e}")),
    };
    Ok(report(&direct, &nginx, &sidecars))
}

/// Prints the table; true when every target of (b) is met.
fn report(
    direct: &Measured,
    nginx: &Result<Measured, String>,
    sidecars: &Result<Measured, String>,
) -> bool {
    println!(
        "1 KiB unary Upload, {CONNECTIONS} connections; latency at {RATE} RPS with {RATE_WORKERS} workers, max throughput with {MAX_WORKERS}"
    );
    row("forward", "value", "baseline (same run)", "target");
    row(
        "(a) direct p50 / p99",
        &format!("{} / {}", micros(direct.p50), micros(direct.p99)),
        &format!("max throughput {:.0}/s", direct.max_rps),
        "",
    );
    // Signed: under noise a proxied percentile can come out below the direct one.
    let added = |m: &Measured| {
        (
            signed_micros(m.p50) - signed_micros(direct.p50),
            signed_micros(m.p99) - signed_micros(direct.p99),
        )
    };
    if let Ok(n) = nginx {
        let (a50, a99) = added(n);
        row(
            "(c) nginx added p50 / p99",
            &format!("{a50} µs / {a99} µs"),
            &format!("p50 {} p99 {}", micros(n.p50), micros(n.p99)),
            "",
        );
        row(
            "(c) nginx max throughput",
            &format!("{:.0}/s", n.max_rps),
            &format!("direct {:.0}/s", direct.max_rps),
            "",
        );
        if let Some((rss, cpu_rate, cpu_max)) = n.usage.first() {
            row(
                "(c) nginx worker RSS / CPU per 1k",
                &format!("{} / {}", mib(*rss), per_k(*cpu_rate, n.rate_requests)),
                &format!(
                    "CPU per 1k at max throughput {}",
                    per_k(*cpu_max, n.max_requests)
                ),
                "",
            );
        }
    } else if let Err(e) = nginx {
        row("(c) nginx", "FAILED", "", "");
        println!("    {e}");
    }
    let s = match sidecars {
        Ok(s) => s,
        Err(e) => {
            row("(b) sidecars", "FAILED", "", "all targets MISSED");
            println!("    {e}");
            return false;
        }
    };
    let (a50, a99) = added(s);
    let nginx_added = nginx.as_ref().ok().map(added);
    let nginx_note = |i: usize| {
        nginx_added
            .map(|n| format!("nginx added {} µs", if i == 0 { n.0 } else { n.1 }))
            .unwrap_or_else(|| "nginx: not measured".into())
    };
    let p50_ok = a50 <= signed_micros(ADDED_P50_TARGET);
    let p99_ok = a99 <= signed_micros(ADDED_P99_TARGET);
    row(
        &format!("(b) sidecars added p50 at {RATE} RPS"),
        &format!("{a50} µs"),
        &format!("{}; p50 {}", nginx_note(0), micros(s.p50)),
        &verdict(p50_ok, "<= 150 µs"),
    );
    row(
        &format!("(b) sidecars added p99 at {RATE} RPS"),
        &format!("{a99} µs"),
        &format!("{}; p99 {}", nginx_note(1), micros(s.p99)),
        &verdict(p99_ok, "<= 600 µs"),
    );
    let throughput_ok = match nginx {
        Ok(n) => {
            let ratio = s.max_rps / n.max_rps;
            let ok = ratio >= THROUGHPUT_TARGET;
            row(
                "(b) sidecars max throughput",
                &format!("{:.0}/s", s.max_rps),
                &format!(
                    "nginx {:.0}/s ({ratio:.2}x), direct {:.0}/s",
                    n.max_rps, direct.max_rps
                ),
                &verdict(ok, ">= 1.2x nginx"),
            );
            ok
        }
        Err(_) => {
            row(
                "(b) sidecars max throughput",
                &format!("{:.0}/s", s.max_rps),
                "nginx not measured: no ratio",
                "MISSED",
            );
            false
        }
    };
    let nginx_usage = nginx.as_ref().ok().and_then(|n| {
        n.usage
            .first()
            .map(|u| (u.0, per_k(u.1, n.rate_requests), per_k(u.2, n.max_requests)))
    });
    let max_rss = s.usage.iter().map(|u| u.0).max().unwrap_or(0);
    let rss_ok = max_rss <= RSS_TARGET_KIB;
    for (name, (rss, _, _)) in ["client", "server"].iter().zip(&s.usage) {
        row(
            &format!("(b) {name} sidecar RSS under load"),
            &mib(*rss),
            &nginx_usage
                .as_ref()
                .map(|n| format!("nginx worker {}", mib(n.0)))
                .unwrap_or_default(),
            &verdict(*rss <= RSS_TARGET_KIB, "<= 15 MiB"),
        );
    }
    let total_rate: Duration = s.usage.iter().map(|u| u.1).sum();
    let total_max: Duration = s.usage.iter().map(|u| u.2).sum();
    let each = |pick: fn(&(u64, Duration, Duration)) -> Duration, requests| {
        s.usage
            .iter()
            .map(|u| per_k(pick(u), requests))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    row(
        &format!("(b) sidecars CPU per 1k at {RATE} RPS"),
        &per_k(total_rate, s.rate_requests),
        &format!(
            "client + server {}; nginx {}",
            each(|u| u.1, s.rate_requests),
            nginx_usage.as_ref().map(|n| n.1.as_str()).unwrap_or("-")
        ),
        "",
    );
    row(
        "(b) sidecars CPU per 1k at max",
        &per_k(total_max, s.max_requests),
        &format!(
            "client + server {}; nginx {}",
            each(|u| u.2, s.max_requests),
            nginx_usage.as_ref().map(|n| n.2.as_str()).unwrap_or("-")
        ),
        "",
    );
    p50_ok && p99_ok && throughput_ok && rss_ok
}

/// One path: a one-call check (a clear error instead of a run of failures), a short
/// warm-up, the fixed-rate run, the max-throughput run.
async fn measure(
    tools: &Tools,
    work: &Path,
    target: &Target,
    watch: &[u32],
    seconds: u64,
) -> Result<Measured, String> {
    let label = target.label;
    let check = ghz(
        tools,
        work,
        target,
        &["-n", "1", "-c", "1", "--connections", "1"],
        &mut [],
    )
    .await
    .map_err(|e| format!("{label}: {e}"))?;
    ok_calls(&check, 0).map_err(|e| format!("{label}: first call: {e}"))?;
    let rate = RATE.to_string();
    let connections = CONNECTIONS.to_string();
    let rate_workers = RATE_WORKERS.to_string();
    let max_workers = MAX_WORKERS.to_string();
    let duration = format!("{seconds}s");
    let fixed = [
        "--connections",
        connections.as_str(),
        "-c",
        rate_workers.as_str(),
        "--rps",
        rate.as_str(),
    ];
    let warm = [&fixed[..], &["-z", "1s"][..]].concat();
    ok_calls(
        &ghz(tools, work, target, &warm, &mut []).await?,
        RATE_WORKERS,
    )
    .map_err(|e| format!("{label}: warm-up: {e}"))?;

    let mut watched = watchers(watch)?;
    let at_rate = ghz(
        tools,
        work,
        target,
        &[&fixed[..], &["-z", duration.as_str()][..]].concat(),
        &mut watched,
    )
    .await?;
    ok_calls(&at_rate, RATE_WORKERS).map_err(|e| format!("{label}: at {RATE} RPS: {e}"))?;
    let rate_usage: Vec<(u64, Duration)> = watched.iter().map(|w| (w.max_rss_kib, w.cpu)).collect();

    let mut watched = watchers(watch)?;
    let at_max = ghz(
        tools,
        work,
        target,
        &[
            "--connections",
            connections.as_str(),
            "-c",
            max_workers.as_str(),
            "-z",
            duration.as_str(),
        ],
        &mut watched,
    )
    .await?;
    ok_calls(&at_max, MAX_WORKERS).map_err(|e| format!("{label}: max throughput: {e}"))?;

    let percentile = |p: u32| {
        at_rate
            .latencies
            .iter()
            .flatten()
            .find(|l| l.percentage == p)
            .map(|l| Duration::from_nanos(l.latency))
            .ok_or_else(|| format!("{label}: ghz reported no p{p}"))
    };
    Ok(Measured {
        p50: percentile(50)?,
        p99: percentile(99)?,
        rate_requests: at_rate.count,
        max_rps: at_max.rps,
        max_requests: at_max.count,
        usage: rate_usage
            .iter()
            .zip(&watched)
            .map(|((rss, cpu), w)| ((*rss).max(w.max_rss_kib), *cpu, w.cpu))
            .collect(),
    })
}

/// Every call OK, or the statuses and errors ghz saw. A run ended by its duration cancels
/// the calls in flight at that moment (one per worker at most: "use of closed network
/// connection"), so up to `in_flight` failures are tolerated; real failures are many more.
fn ok_calls(report: &Report, in_flight: u32) -> Result<(), String> {
    let statuses = report.statuses.clone().unwrap_or_default();
    let ok = statuses.get("OK").copied().unwrap_or(0);
    if report.count > 0 && ok > 0 && report.count - ok <= u64::from(in_flight) {
        return Ok(());
    }
    let mut errors: Vec<(u64, String)> = report
        .errors
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(message, n)| (n, message))
        .collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.0));
    let top = errors
        .first()
        .map(|(n, message)| format!("; most common error ({n}x): {message}"))
        .unwrap_or_default();
    Err(format!(
        "{ok} of {} calls OK (statuses {statuses:?}){top}",
        report.count
    ))
}

fn watchers(pids: &[u32]) -> Result<Vec<Watched>, String> {
    pids.iter()
        .map(|&pid| {
            Ok(Watched {
                pid,
                max_rss_kib: rss_kib(pid)?,
                cpu_start: cpu_time(pid)?,
                cpu: Duration::ZERO,
            })
        })
        .collect()
}

/// Runs ghz against `target` with `extra` flags, sampling the watched processes every
/// 50 ms; killed if it outlives its own duration by 30 s.
async fn ghz(
    tools: &Tools,
    work: &Path,
    target: &Target,
    extra: &[&str],
    watched: &mut [Watched],
) -> Result<Report, String> {
    let data = serde_json::json!({
        "filename": "bench.bin",
        "content": base64(&payload()),
        "content_type": "application/octet-stream",
    })
    .to_string();
    let out = work.join("ghz.json");
    let mut command = Command::new(&tools.ghz);
    command
        .args(["--insecure", "--format", "json", "--output"])
        .arg(&out)
        .arg("--import-paths")
        .arg(work.join("proto"))
        .args(["--proto", PROTO_PATH, "--call", CALL, "--timeout", "5s"])
        .args(["--data", &data])
        .args(extra);
    if let Some(authority) = &target.authority {
        command.args(["--authority", authority]);
    }
    command.arg(&target.addr);
    let mut child = spawn(&mut command, &work.join("ghz.log"), "ghz", false)?;
    let started = Instant::now();
    let limit = Duration::from_secs(
        extra
            .windows(2)
            .find(|w| w[0] == "-z")
            .and_then(|w| w[1].trim_end_matches('s').parse::<u64>().ok())
            .unwrap_or(0)
            + 30,
    );
    let status = loop {
        for w in watched.iter_mut() {
            if let Ok(rss) = rss_kib(w.pid) {
                w.max_rss_kib = w.max_rss_kib.max(rss);
            }
        }
        if let Some(status) = child.0.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > limit {
            return Err(format!(
                "{}: ghz still running after {limit:?}; killed",
                target.label
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for w in watched.iter_mut() {
        w.cpu = cpu_time(w.pid)?.saturating_sub(w.cpu_start);
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    if text.trim().is_empty() {
        let log = std::fs::read_to_string(work.join("ghz.log")).unwrap_or_default();
        return Err(format!(
            "ghz exited with {status} and no report: {}",
            log.trim()
        ));
    }
    serde_json::from_str(&text).map_err(|e| format!("ghz's JSON report: {e}"))
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD_BYTES).map(|i| (i * 31 % 251) as u8).collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// --- the processes ------------------------------------------------------------------

/// A child process stopped when dropped (SIGTERM first for the sidecars, so they leave
/// Consul), so no run, failed or not, leaves processes behind.
struct Running(Child, bool);

impl Drop for Running {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if self.0.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(command: &mut Command, log: &Path, what: &str, graceful: bool) -> Result<Running, String> {
    let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    command
        .spawn()
        .map(|child| Running(child, graceful))
        .map_err(|e| format!("starting {what} ({:?}): {e}", command.get_program()))
}

fn tools() -> Result<Tools, String> {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .ok_or("cannot locate the binaries' directory")?;
    let sidecar = dir.join("streamgate-sidecar");
    if !sidecar.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p streamgate-sidecar",
            sidecar.display()
        ));
    }
    let this = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(Tools {
        ghz: tool("STREAMGATE_GHZ_BIN", "ghz", "GHZ_VERSION", "bin/ghz")?,
        nginx: tool(
            "STREAMGATE_NGINX_BIN",
            "nginx",
            "NGINX_DEB_VERSION",
            "bin/nginx",
        )?,
        consul: tool(
            "STREAMGATE_CONSUL_BIN",
            "consul",
            "CONSUL_DEB_VERSION",
            "bin/consul",
        )?,
        sidecar,
        this,
    })
}

/// `$ENV`, else `make tools`' cache (`<tools>/<name>-<version>/<rel>`, the version from
/// scripts/versions.sh of the source tree this binary was built from), else the PATH.
fn tool(env: &str, name: &str, version_key: &str, rel: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(format!("{env}={} does not exist", path.display()))
        };
    }
    let versions = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/versions.sh");
    let version = std::fs::read_to_string(versions).ok().and_then(|text| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(version_key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .next()
    });
    let root = std::env::var_os("STREAMGATE_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/streamgate")));
    if let (Some(root), Some(version)) = (root, version) {
        let cached = root.join(format!("{name}-{version}")).join(rel);
        if cached.exists() {
            return Ok(cached);
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} not found ({env}, the make tools cache, PATH): run 'make tools'")
        })
}

/// nginx as one process (`master_process off`: the single worker serves, and a kill
/// leaves no orphaned worker), every path inside `work`, HTTP/2 cleartext in, gRPC out
/// to a keepalive pool of 16 connections. Request limits lifted so neither side's
/// connections are recycled every 1,000 calls (nginx's default) during a run.
fn start_nginx(bin: &Path, work: &Path, listen: &str, server: &str) -> Result<Running, String> {
    let dir = work.join("nginx");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let d = dir.display();
    let conf = format!(
        "master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream app {{ server {server}; keepalive 16; keepalive_requests 1000000; }}\n\
         server {{\n    listen {listen} http2;\n    location / {{ grpc_pass grpc://app; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let check = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path)
        .arg("-t")
        .output()
        .map_err(|e| format!("nginx -t ({}): {e}", bin.display()))?;
    if !check.status.success() {
        return Err(format!(
            "nginx -t: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        ));
    }
    spawn(
        Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"]),
        &dir.join("stderr.log"),
        "nginx",
        false,
    )
}

struct SidecarRole<'a> {
    service: &'a str,
    ip: &'a str,
    app_port: u16,
    app_listen: String,
    upstream: Option<&'a str>,
}

/// A sidecar with its own pod IP (127.0.0.N); returns it and its admin address. The
/// server's registers `service` with its inbound address; the client's names it as its
/// one upstream. Both check the app with a TCP connect.
fn spawn_sidecar(
    bin: &Path,
    work: &Path,
    name: &str,
    consul: &str,
    role: &SidecarRole<'_>,
) -> Result<(Running, String), String> {
    let admin = format!("{}:{}", role.ip, free_port()?);
    let upstreams = role
        .upstream
        .map(|u| format!(", upstreams: [{{service: {u}}}]"))
        .unwrap_or_default();
    let document = format!(
        "service: {{serviceName: {service}, port: {port}, health: {{type: tcp, periodSeconds: 2}}{upstreams}}}\n\
         pod: {{name: {name}-0, namespace: bench, ip: {ip}}}\nappHost: 127.0.0.1\n\
         listen: {{app: '{app}', inbound: '{ip}:{inbound}', admin: '{admin}'}}\n\
         consul: {{address: '{consul}'}}\nlogLevel: warn\n",
        service = role.service,
        port = role.app_port,
        ip = role.ip,
        app = role.app_listen,
        inbound = free_port()?,
    );
    let child = spawn(
        Command::new(bin)
            .env_clear()
            .env("STREAMGATE_CONFIG", document),
        &work.join(format!("sidecar-{name}.log")),
        &format!("the {name} sidecar"),
        true,
    )?;
    Ok((child, admin))
}

/// The sidecars' path, stopped when dropped: sidecars first (they deregister), then Consul.
struct SidecarPath {
    client: Running,
    server: Running,
    _consul: Option<Running>,
    /// The client sidecar's app listener, where ghz calls.
    app: String,
}

/// Consul, a server sidecar registering `service` (inbound on 127.0.0.2) and a client
/// sidecar with `service` as its upstream; ready, and the server's instance passing.
async fn start_sidecars(
    tools: &Tools,
    work: &Path,
    service: &str,
    server_addr: &str,
) -> Result<SidecarPath, String> {
    let (consul, agent) = consul(&tools.consul, work).await?;
    let app = format!("127.0.0.1:{}", free_port()?);
    let (server, server_admin) = spawn_sidecar(
        &tools.sidecar,
        work,
        "server",
        &consul,
        &SidecarRole {
            service,
            ip: "127.0.0.2",
            app_port: port_of(server_addr)?,
            app_listen: format!("127.0.0.1:{}", free_port()?),
            upstream: None,
        },
    )?;
    let (client, client_admin) = spawn_sidecar(
        &tools.sidecar,
        work,
        "client",
        &consul,
        &SidecarRole {
            service: &format!("{service}-client"),
            ip: "127.0.0.3",
            app_port: port_of(server_addr)?,
            app_listen: app.clone(),
            upstream: Some(service),
        },
    )?;
    let path = SidecarPath {
        client,
        server,
        _consul: agent,
        app,
    };
    for (name, admin) in [("server", &server_admin), ("client", &client_admin)] {
        wait_ok(&format!("http://{admin}/readyz"), Duration::from_secs(30))
            .await
            .map_err(|e| {
                format!(
                    "{e}; the {name} sidecar's log ends: {}",
                    log_tail(work, name)
                )
            })?;
    }
    wait_passing(&consul, service, Duration::from_secs(30)).await?;
    Ok(path)
}

fn log_tail(work: &Path, name: &str) -> String {
    let log = std::fs::read_to_string(work.join(format!("sidecar-{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// `CONSUL_HTTP_ADDR`, else a dev agent of our own (kept alive by the returned guard).
async fn consul(bin: &Path, work: &Path) -> Result<(String, Option<Running>), String> {
    if let Some(addr) = support::consul_from_env() {
        return Ok((addr, None));
    }
    let (mut command, addr) = support::consul_dev_agent(bin)?;
    let agent = spawn(&mut command, &work.join("consul.log"), "Consul", false)?;
    wait_ok(&format!("{addr}/v1/status/leader"), Duration::from_secs(30)).await?;
    Ok((addr, Some(agent)))
}

fn http() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())
}

async fn wait_ok(url: &str, timeout: Duration) -> Result<(), String> {
    let client = http()?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{url} not 200 after {timeout:?}"))
}

/// Until Consul lists a passing instance of `service` (what the client sidecar routes to).
async fn wait_passing(consul: &str, service: &str, timeout: Duration) -> Result<(), String> {
    let client = http()?;
    let url = format!("{consul}/v1/health/service/{service}?passing=true");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(&url).send().await
            && let Ok(list) = response.json::<Vec<serde_json::Value>>().await
            && !list.is_empty()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "Consul shows no passing instance of {service} after {timeout:?}"
    ))
}

async fn wait_tcp(addr: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("nothing listens on {addr} after {timeout:?}"))
}

fn port_of(addr: &str) -> Result<u16, String> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| format!("no port in {addr}"))
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

/// utime + stime of a process (fields 14 and 15 of /proc/PID/stat, in clock ticks of
/// 1/100 s, USER_HZ on Linux).
fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // The command name (field 2) may hold spaces; the fields after it start past ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok(Duration::from_millis((user + system) * 10)),
        _ => Err(format!("no utime/stime in /proc/{pid}/stat")),
    }
}

fn row(name: &str, value: &str, baseline: &str, target: &str) {
    println!("{name:<38} {value:>18}   {baseline:<52} {target}");
}

fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

fn signed_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// CPU seconds per 1,000 requests.
fn per_k(cpu: Duration, requests: u64) -> String {
    if requests == 0 {
        return "-".into();
    }
    format!("{:.4} s", cpu.as_secs_f64() * 1000.0 / requests as f64)
}

fn verdict(ok: bool, target: &str) -> String {
    format!("{target} {}", if ok { "ok" } else { "MISSED" })
}
