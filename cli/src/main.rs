//! `streamgate`, StreamGate's command line. Installed on the PATH as `kubectl-streamgate`
//! it is also the kubectl plugin `kubectl streamgate`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod check;
mod inject;
mod nats;
mod output;
mod pem;
mod prometheus;
mod status;

/// StreamGate's command line.
#[derive(Parser, Debug)]
#[command(name = "streamgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the install: CRD, operator and its leader, webhook, Consul, NATS and the
    /// streams, sidecar versions; each failure with its fix. Exit 0: healthy; 1: a check
    /// failed; 3: no cluster to check.
    Check(Box<check::CheckArgs>),
    /// Show StreamGateServices: replicas, Consul instances with their check output,
    /// upstreams (calls, errors, latency, ejections) and spool depth from the sidecars'
    /// metrics, subscriptions' consumer lag from NATS.
    Status(Box<status::StatusArgs>),
    /// Print workloads with the sidecar the injection webhook would add, for GitOps
    /// without the webhook. Exit 0: printed; 1: cannot read, parse or render; 2: a
    /// workload's StreamGate annotations are wrong (nothing is printed).
    Inject(Box<inject::InjectArgs>),
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Check(args) => check::main(*args),
        Command::Inject(args) => inject::main(*args),
        Command::Status(args) => status::main(*args),
    }
}
