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
//! Run the release build: `make tools && cargo build --release --workspace --bins &&
//! target/release/forward-bench` (the sidecar is found beside it). Tools come from
//! `STREAMGATE_GHZ_BIN`, `STREAMGATE_NGINX_BIN` and `STREAMGATE_CONSUL_BIN` (what
//! `scripts/bench.sh` sets), else from the `make tools` cache, else the PATH. Consul comes
//! from `CONSUL_HTTP_ADDR`, else a dev agent of our own. `FB_SECONDS` shortens or
//! lengthens each measured run. Exits 1 when a target is missed or (b) cannot be
//! measured, 2 when the bench itself cannot run. Every child process is stopped when the
//! bench ends, however it ends.

mod ghz;
mod measure;
mod nginx;
mod server;
mod sidecars;
mod table;
mod tracing_cost;

use anyhow::{Context, Result, anyhow};
use measure::{Target, measure};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;
use streamgate_benches::figures::exit_code;
use streamgate_benches::running::Running;
use streamgate_benches::work_dir::WorkDir;
use streamgate_benches::{siblings, tools};
use streamgate_tests::ports::free_port;
use streamgate_tests::wait::eventually;

/// The programs a run starts.
struct Tools {
    ghz: PathBuf,
    nginx: PathBuf,
    jaeger: PathBuf,
    consul: PathBuf,
    sidecar: PathBuf,
    /// This executable, run again as the server (`forward-bench serve ADDR`).
    this: PathBuf,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return server::serve(args.get(1).map(String::as_str));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime");
    exit_code(
        "forward-bench",
        runtime.and_then(|runtime| runtime.block_on(bench())),
    )
}

async fn bench() -> Result<bool> {
    let tools = tools()?;
    let work = WorkDir::new("forward-bench")?;
    ghz::write_proto(&work)?;
    let seconds = std::env::var("FB_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| (1..=120).contains(s))
        .unwrap_or(10);

    // The server, and nginx in front of it.
    let server_addr = format!("127.0.0.1:{}", free_port()?);
    let mut command = Command::new(&tools.this);
    command.args(["serve", &server_addr]);
    let _server = Running::spawn("server", command, &work.join("server.log"), Duration::ZERO)?;
    wait_tcp(&server_addr, Duration::from_secs(10)).await?;
    let nginx_addr = format!("127.0.0.1:{}", free_port()?);
    let nginx = nginx::start(&tools.nginx, &work, &nginx_addr, &server_addr)?;
    wait_tcp(&nginx_addr, Duration::from_secs(10)).await?;

    // Consul and the two sidecars; when they cannot start, (b) fails alone.
    let consul = sidecars::consul(&tools, &work).await?;
    let service = format!("fwdbench{}", std::process::id());
    let plain = sidecars::Pair {
        service: &service,
        server_ip: "127.0.0.2",
        client_ip: "127.0.0.3",
        env: &[],
    };
    let path = sidecars::start(&tools, &work, &consul, &plain, &server_addr).await;

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
    let nginx = measure(&tools, &work, &proxied, &[nginx.pid()], seconds).await;
    let sidecars = match &path {
        Ok(path) => {
            let forwarded = Target {
                label,
                addr: path.app.clone(),
                authority: Some(service.clone()),
            };
            let pids = [path.client.pid(), path.server.pid()];
            measure(&tools, &work, &forwarded, &pids, seconds).await
        }
        Err(e) => Err(anyhow!("{label}: {e:#}")),
    };
    let table_ok = table::print(&direct, &nginx, &sidecars);
    let traces_ok = match &path {
        Ok(path) => tracing_cost(
            &tools,
            &work,
            &consul,
            path,
            &service,
            &server_addr,
            seconds,
        )
        .await
        .unwrap_or_else(|e| {
            println!("(d) traces at 1%: FAILED: {e:#}");
            false
        }),
        Err(_) => false,
    };
    Ok(table_ok && traces_ok)
}

/// (d): the same pair with traces on, exporting to a Jaeger of its own, in alternated
/// rounds beside (b).
async fn tracing_cost(
    tools: &Tools,
    work: &WorkDir,
    consul: &streamgate_benches::consul::Consul,
    plain: &sidecars::SidecarPath,
    service: &str,
    server_addr: &str,
    seconds: u64,
) -> Result<bool> {
    let jaeger =
        streamgate_tests::jaeger::Jaeger::start(&tools.jaeger, &work.join("jaeger")).await?;
    let env = tracing_cost::otel_env(&jaeger.otlp_endpoint());
    let traced_service = format!("{service}t");
    let traced = sidecars::Pair {
        service: &traced_service,
        server_ip: "127.0.0.4",
        client_ip: "127.0.0.5",
        env: &env,
    };
    let traced = sidecars::start(tools, work, consul, &traced, server_addr).await?;
    let off = tracing_cost::Path {
        target: Target {
            label: "(b) sidecars, traces off",
            addr: plain.app.clone(),
            authority: Some(service.to_string()),
        },
        pids: &[plain.client.pid(), plain.server.pid()],
    };
    let on = tracing_cost::Path {
        target: Target {
            label: "(d) sidecars, traces at 1%",
            addr: traced.app.clone(),
            authority: Some(traced_service.clone()),
        },
        pids: &[traced.client.pid(), traced.server.pid()],
    };
    tracing_cost::compare(tools, work, &off, &on, seconds).await
}

fn tools() -> Result<Tools> {
    Ok(Tools {
        ghz: tools::GHZ.locate()?,
        nginx: tools::NGINX.locate()?,
        jaeger: tools::JAEGER.locate()?,
        consul: tools::CONSUL.locate()?,
        sidecar: siblings::binary("streamgate-sidecar")?,
        this: std::env::current_exe().context("locating this executable")?,
    })
}

async fn wait_tcp(addr: &str, timeout: Duration) -> Result<()> {
    eventually(&format!("a listener on {addr}"), timeout, || async {
        Ok(tokio::net::TcpStream::connect(addr).await.ok().map(drop))
    })
    .await
}
