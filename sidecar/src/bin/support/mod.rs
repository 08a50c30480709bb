//! What the benchmark binaries share: free loopback ports and a Consul dev agent of their
//! own. Each binary includes this with `#[path = "support/mod.rs"] mod support;` (a
//! directory without `main.rs` is not a binary of its own).
#![allow(dead_code)] // each binary uses its own subset

use std::net::TcpListener;
use std::process::Command;

/// A port free on 127.0.0.1 at the time of the call.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// `CONSUL_HTTP_ADDR` as a base URL, when it is set.
pub fn consul_from_env() -> Option<String> {
    let addr = std::env::var("CONSUL_HTTP_ADDR").ok()?;
    Some(if addr.contains("://") {
        addr
    } else {
        format!("http://{addr}")
    })
}

/// A Consul dev agent on loopback only, every port its own (no DNS, no gRPC); returns the
/// command to spawn and its HTTP base URL.
pub fn consul_dev_agent(bin: impl AsRef<std::ffi::OsStr>) -> Result<(Command, String), String> {
    let port = free_port()?;
    let mut command = Command::new(bin);
    command.args([
        "agent",
        "-dev",
        "-bind=127.0.0.1",
        "-client=127.0.0.1",
        "-dns-port=-1",
        "-grpc-port=-1",
    ]);
    command.arg(format!("-http-port={port}"));
    for flag in ["-serf-lan-port", "-serf-wan-port", "-server-port"] {
        command.arg(format!("{flag}={}", free_port()?));
    }
    Ok((command, format!("http://127.0.0.1:{port}")))
}
