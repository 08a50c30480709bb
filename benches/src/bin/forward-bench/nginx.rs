//! nginx from Debian as a gRPC proxy peer (`grpc_pass`).

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use streamgate_benches::running::Running;
use streamgate_benches::work_dir::WorkDir;

/// nginx as one process (`master_process off`: the single worker serves, and a kill
/// leaves no orphaned worker), every path inside `work/<name>`, HTTP/2 cleartext in, gRPC
/// out to a keepalive pool of 128 connections (nginx holds one upstream connection per
/// call in flight, so a smaller pool would make it open connections under load, which no
/// other peer does). Request limits lifted so neither side's connections are recycled
/// every 1,000 calls (nginx's default) during a run.
pub fn start(
    bin: &Path,
    work: &WorkDir,
    name: &str,
    listen: &str,
    server: &str,
) -> Result<Running> {
    let dir = crate::peers::proxy_dir(work, name)?;
    let d = dir.display();
    let conf = format!(
        "master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream app {{ server {server}; keepalive 128; keepalive_requests 1000000; }}\n\
         server {{\n    listen {listen} http2;\n    location / {{ grpc_pass grpc://app; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let command = |extra: &[&str]| {
        let mut command = Command::new(bin);
        command
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .args(extra);
        command
    };
    let check = command(&["-t"])
        .output()
        .with_context(|| format!("nginx -t ({})", bin.display()))?;
    if !check.status.success() {
        bail!(
            "nginx -t: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    Running::spawn(
        "nginx",
        command(&["-g", "daemon off;"]),
        &dir.join("stderr.log"),
        Duration::ZERO,
    )
}
