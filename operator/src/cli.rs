//! The command line: `streamgate-operator crd` and `streamgate-operator run`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The StreamGate operator: reconciles StreamGateService resources into Deployments and
/// Services, keeps Consul clean and injects the StreamGate sidecar into annotated workloads.
#[derive(Parser, Debug)]
#[command(name = "streamgate-operator", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the StreamGateService CustomResourceDefinition as YAML.
    Crd,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crate::crdgen::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
