//! `streamgate-operator`: the StreamGate Kubernetes operator.
//!
//! Subcommands are added as the operator grows (`crd`, `run`); see DESIGN.md.

use clap::Parser;

/// The StreamGate operator: reconciles StreamGateService resources into Deployments and
/// Services, keeps Consul clean and injects the StreamGate sidecar into annotated workloads.
#[derive(Parser, Debug)]
#[command(name = "streamgate-operator", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "streamgate-operator {} (API group {}/{})",
        env!("CARGO_PKG_VERSION"),
        streamgate_crds::GROUP,
        streamgate_crds::VERSION
    );
}
