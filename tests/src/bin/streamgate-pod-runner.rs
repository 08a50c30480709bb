//! `streamgate-pod-runner`: runs the pods bound to one node of the local platform as
//! local processes (see `streamgate_tests::pod_runner` and docs/pod-runner.md). `make dev`
//! starts it in the background; it stops every pod's processes and removes its Node on
//! SIGTERM or SIGINT.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use streamgate_tests::pod_runner::{Options, PodRunner};
use streamgate_tests::tools::repo_root;

#[derive(Parser)]
#[command(
    name = "streamgate-pod-runner",
    about = "Plays the kubelet of one node of the local platform: its pods run as local processes"
)]
struct Cli {
    /// The Node to create and play.
    #[arg(
        long,
        env = "STREAMGATE_RUNNER_NODE",
        default_value = "streamgate-runner-0"
    )]
    node: String,
    /// Where the workspace's binaries are (default: <repo>/target/debug).
    #[arg(long, env = "STREAMGATE_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Directory for container logs, the runner's log and pod directories
    /// (default: $STREAMGATE_LOGS/pods, else .streamgate/logs/pods).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// First N of the 127.0.0.N pod addresses.
    #[arg(long, default_value_t = 10)]
    first_ip: u8,
    /// Extra image mapping REPOSITORY=BINARY (a path, or a name in --bin-dir); repeatable.
    #[arg(long = "image", value_name = "REPOSITORY=BINARY")]
    images: Vec<String>,
    /// Leave the Node behind on exit.
    #[arg(long)]
    keep_node: bool,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("streamgate-pod-runner: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let bin_dir = cli
        .bin_dir
        .unwrap_or_else(|| repo_root().join("target/debug"));
    let log_dir = cli.log_dir.unwrap_or_else(|| {
        std::env::var_os("STREAMGATE_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".streamgate/logs"))
            .join("pods")
    });
    let mut options = Options::new(&cli.node, &bin_dir, &log_dir);
    options.first_ip = cli.first_ip;
    options.keep_node = cli.keep_node;
    options.log_to_stderr = true;
    for spec in &cli.images {
        options.images.add_spec(spec).map_err(anyhow::Error::msg)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = kube::Config::infer()
            .await
            .context("loading the kubeconfig (KUBECONFIG)")?;
        let mut runner = PodRunner::start(config, options).await?;
        eprintln!(
            "streamgate-pod-runner: node {} Ready; logs in {}",
            runner.node(),
            log_dir.display()
        );
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("streamgate-pod-runner: stopping");
        // Blocks this runtime's only thread, which nothing else needs now: the runner
        // has a runtime of its own.
        runner.stop();
        anyhow::Ok(())
    })?;
    Ok(())
}
