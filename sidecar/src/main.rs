//! `streamgate-sidecar`: runs beside each app container (see DESIGN.md, "Sidecar ports").

use clap::Parser;
use std::path::PathBuf;

/// The StreamGate sidecar: health-checks the app, registers the pod in Consul, relays
/// events between the app and NATS JetStream and forwards the app's gRPC calls.
#[derive(Parser, Debug)]
#[command(name = "streamgate-sidecar", version, about, long_about = None)]
struct Cli {
    /// Sidecar configuration file (YAML), as rendered by the operator or the webhook.
    #[arg(long, env = "STREAMGATE_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    println!(
        "streamgate-sidecar {} config={:?}",
        env!("CARGO_PKG_VERSION"),
        cli.config
    );
}
