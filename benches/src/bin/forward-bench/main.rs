//! `forward-bench`: gRPC forwarding's figures for `make bench`, each beside its peers
//! measured in the same run with the same load generator (ghz) and the same server.
//!
//! The server is this binary itself (`forward-bench serve`, a separate process): the
//! demo app's `streamgate.demo.v1.UploadService/Upload`, stateless, on one tokio thread,
//! called with 1 KiB of content. The paths to it, all on loopback:
//!
//! - direct: ghz → server;
//! - one hop: ghz → the server sidecar's inbound listener (its one runtime thread), and
//!   ghz → each peer with one worker: nginx (`grpc_pass`, upstream `keepalive 128`),
//!   HAProxy (`nbthread 1`, `http-reuse always`, HTTP/2 both sides) and nghttpx (`-n1`,
//!   backend `proto=h2`), all from Debian bookworm;
//! - two hops: ghz → client sidecar (app listener, `:authority` = the service) → server
//!   sidecar (found through Consul) → server, and each peer chained twice;
//! - two hops with traces: the same pair of sidecars exporting spans to a Jaeger of its
//!   own at 1% parent-based sampling.
//!
//! Every path is measured in alternated rounds (`FB_ROUNDS`, 3): p50/p99 at a fixed 2,000
//! calls/s (16 connections, 32 workers) and the maximum throughput (16 connections, 64
//! workers), each run `FB_SECONDS` long (8); CPU seconds per 1,000 calls at the maximum
//! and RSS (idle, under load) of the path's proxy processes from /proc. Each figure is
//! its path's median. Targets for the sidecar, at one hop and at two: max calls/s ≥ the
//! best peer's; added p50 ≤ the best peer's; p99 ≤ the best peer's; CPU per 1,000 calls
//! at max ≤ 0.8× the best peer's; RSS idle ≤ 12 MiB, under load ≤ 16 MiB; with traces at
//! 1%, within 5% of traces off in throughput and CPU.
//!
//! Run the release build: `make tools && cargo build --release --workspace --bins &&
//! target/release/forward-bench` (the sidecar is found beside it). Tools come from
//! `STREAMGATE_{GHZ,NGINX,HAPROXY,NGHTTPX,JAEGER,CONSUL}_BIN` (what `scripts/bench.sh`
//! sets), else from the `make tools` cache, else the PATH. Consul comes from
//! `CONSUL_HTTP_ADDR`, else a dev agent of our own. `FB_PATHS=sidecars,HAProxy` measures
//! only the paths whose label names one of the words (and the direct one). Exits 1 when a target is missed or a
//! path cannot be measured, 2 when the bench itself cannot run. Every child process is
//! stopped when the bench ends, however it ends.

mod ghz;
mod measure;
mod nginx;
mod peers;
mod rounds;
mod server;
mod sidecars;
mod table;

use anyhow::{Context, Result};
use measure::Target;
use rounds::{BenchPath, Kind};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;
use streamgate_benches::figures::exit_code;
use streamgate_benches::running::Running;
use streamgate_benches::work_dir::WorkDir;
use streamgate_benches::{procfs, siblings, tools};
use streamgate_tests::ports::free_port;
use streamgate_tests::wait::eventually;

/// The programs a run starts.
struct Tools {
    ghz: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
    nghttpx: PathBuf,
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
    let setting = |name: &str, default: u64, max: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| (1..=max).contains(s))
            .unwrap_or(default)
    };
    let seconds = setting("FB_SECONDS", 8, 120);
    let rounds = usize::try_from(setting("FB_ROUNDS", 3, 15)).unwrap_or(3);

    let server_addr = format!("127.0.0.1:{}", free_port()?);
    let mut command = Command::new(&tools.this);
    command.args(["serve", &server_addr]);
    let _server = Running::spawn("server", command, &work.join("server.log"), Duration::ZERO)?;
    wait_tcp(&server_addr, Duration::from_secs(10)).await?;

    let mut paths = vec![BenchPath {
        kind: Kind::Direct,
        hops: 0,
        target: target("direct", &server_addr, None),
        pids: Vec::new(),
    }];
    // Every proxy process lives until the bench ends.
    let mut proxies: Vec<Running> = Vec::new();
    let consul = sidecars::consul(&tools, &work).await?;
    let service = format!("fwdbench{}", std::process::id());
    let plain = sidecars::Pair {
        service: &service,
        server_ip: "127.0.0.2",
        client_ip: "127.0.0.3",
        env: &[],
        binary: &tools.sidecar,
    };
    let plain = sidecars::start(&work, &consul, &plain, &server_addr).await?;
    paths.push(BenchPath {
        kind: Kind::Sidecar,
        hops: 1,
        target: target("1 hop: sidecar", &plain.inbound, None),
        pids: vec![plain.server.pid()],
    });
    for peer in PEERS {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let one = peer.start(
            &tools,
            &work,
            &format!("{}-1", peer.name),
            &listen,
            &server_addr,
        )?;
        wait_tcp(&listen, Duration::from_secs(10)).await?;
        paths.push(BenchPath {
            kind: Kind::Peer(peer.name),
            hops: 1,
            target: target(&format!("1 hop: {}", peer.name), &listen, None),
            pids: procfs::with_descendants(one.pid()),
        });
        proxies.push(one);
    }
    paths.push(BenchPath {
        kind: Kind::Sidecar,
        hops: 2,
        target: target("2 hops: sidecars", &plain.app, Some(&service)),
        pids: vec![plain.client.pid(), plain.server.pid()],
    });
    for peer in PEERS {
        let (first, second) = (
            format!("127.0.0.1:{}", free_port()?),
            format!("127.0.0.1:{}", free_port()?),
        );
        let near = peer.start(
            &tools,
            &work,
            &format!("{}-2b", peer.name),
            &second,
            &server_addr,
        )?;
        let far = peer.start(&tools, &work, &format!("{}-2a", peer.name), &first, &second)?;
        wait_tcp(&first, Duration::from_secs(10)).await?;
        wait_tcp(&second, Duration::from_secs(10)).await?;
        paths.push(BenchPath {
            kind: Kind::Peer(peer.name),
            hops: 2,
            target: target(&format!("2 hops: {} x2", peer.name), &first, None),
            pids: [far.pid(), near.pid()]
                .into_iter()
                .flat_map(procfs::with_descendants)
                .collect(),
        });
        proxies.extend([far, near]);
    }
    // The same pair with traces on, exporting to a Jaeger of its own.
    let jaeger =
        streamgate_tests::jaeger::Jaeger::start(&tools.jaeger, &work.join("jaeger")).await?;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_endpoint()),
        (
            "OTEL_TRACES_SAMPLER",
            "parentbased_traceidratio".to_string(),
        ),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let traced_service = format!("{service}t");
    let traced = sidecars::Pair {
        service: &traced_service,
        server_ip: "127.0.0.4",
        client_ip: "127.0.0.5",
        env: &env,
        binary: &tools.sidecar,
    };
    let traced = sidecars::start(&work, &consul, &traced, &server_addr).await?;
    paths.push(BenchPath {
        kind: Kind::SidecarTraced,
        hops: 2,
        target: target(
            "2 hops: sidecars, traces 1%",
            &traced.app,
            Some(&traced_service),
        ),
        pids: vec![traced.client.pid(), traced.server.pid()],
    });

    // `FB_SIDECAR_BASELINE=<binary>`: the same pair from another build (e.g. the commit
    // before a lever), measured in the same alternated rounds.
    let _baseline = match std::env::var_os("FB_SIDECAR_BASELINE") {
        Some(binary) => {
            let baseline_service = format!("{service}b");
            let pair = sidecars::Pair {
                service: &baseline_service,
                server_ip: "127.0.0.6",
                client_ip: "127.0.0.7",
                env: &[],
                binary: std::path::Path::new(&binary),
            };
            let baseline = sidecars::start(&work, &consul, &pair, &server_addr).await?;
            paths.push(BenchPath {
                kind: Kind::SidecarBaseline,
                hops: 1,
                target: target("1 hop: sidecar, baseline build", &baseline.inbound, None),
                pids: vec![baseline.server.pid()],
            });
            paths.push(BenchPath {
                kind: Kind::SidecarBaseline,
                hops: 2,
                target: target(
                    "2 hops: sidecars, baseline build",
                    &baseline.app,
                    Some(&baseline_service),
                ),
                pids: vec![baseline.client.pid(), baseline.server.pid()],
            });
            Some(baseline)
        }
        None => None,
    };

    // `FB_PATHS=sidecars`: only the paths whose label contains one of the comma-separated
    // words (and the direct baseline), for a closer look at a few of them.
    if let Ok(only) = std::env::var("FB_PATHS") {
        let words: Vec<&str> = only
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect();
        paths
            .retain(|p| p.kind == Kind::Direct || words.iter().any(|w| p.target.label.contains(w)));
    }
    let figures = rounds::run(&tools, &work, &paths, rounds, seconds).await;
    Ok(table::print(&paths, &figures, rounds))
}

fn target(label: &str, addr: &str, authority: Option<&str>) -> Target {
    Target {
        label: label.to_string(),
        addr: addr.to_string(),
        authority: authority.map(str::to_string),
    }
}

/// A proxy peer: how to start one of it in front of an address.
struct Peer {
    name: &'static str,
    start: fn(&Tools, &WorkDir, &str, &str, &str) -> Result<Running>,
}

impl Peer {
    fn start(
        &self,
        tools: &Tools,
        work: &WorkDir,
        name: &str,
        listen: &str,
        to: &str,
    ) -> Result<Running> {
        (self.start)(tools, work, name, listen, to).with_context(|| format!("starting {name}"))
    }
}

const PEERS: [Peer; 3] = [
    Peer {
        name: "nginx",
        start: |t, w, n, l, to| nginx::start(&t.nginx, w, n, l, to),
    },
    Peer {
        name: "HAProxy",
        start: |t, w, n, l, to| peers::haproxy(&t.haproxy, w, n, l, to),
    },
    Peer {
        name: "nghttpx",
        start: |t, w, n, l, to| peers::nghttpx(&t.nghttpx, w, n, l, to),
    },
];

fn tools() -> Result<Tools> {
    Ok(Tools {
        ghz: tools::GHZ.locate()?,
        nginx: tools::NGINX.locate()?,
        haproxy: tools::HAPROXY.locate()?,
        nghttpx: tools::NGHTTPX.locate()?,
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
