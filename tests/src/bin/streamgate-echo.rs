//! `streamgate-echo`: the Echo test service as a process, for tests that must kill an
//! instance the way a node failure does (SIGKILL) and for the forwarding benchmark.

use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use streamgate_tests::echo::{Controls, service};

#[derive(Parser)]
struct Cli {
    /// Address to serve on (loopback).
    #[arg(long)]
    listen: SocketAddr,
    /// The name replies carry as `server`.
    #[arg(long)]
    name: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let controls = Arc::new(Controls::default());
    tonic::transport::Server::builder()
        .add_service(service(&cli.name, controls))
        .serve(cli.listen)
        .await?;
    Ok(())
}
