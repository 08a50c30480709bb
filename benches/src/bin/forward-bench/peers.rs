//! HAProxy and nghttpx from Debian as the other gRPC proxy peers: each one process with
//! one worker thread (beside the sidecar's one runtime thread), HTTP/2 cleartext on both
//! sides, connections to the server reused across calls.

use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use streamgate_benches::running::Running;
use streamgate_benches::work_dir::WorkDir;

/// HAProxy 2.6: `nbthread 1`, `http-reuse always`, `proto h2` on the bind and the server.
pub fn haproxy(
    bin: &Path,
    work: &WorkDir,
    name: &str,
    listen: &str,
    server: &str,
) -> Result<Running> {
    let dir = proxy_dir(work, name)?;
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n  http-reuse always\n\
         frontend grpc\n  bind {listen} proto h2\n  default_backend app\n\
         backend app\n  server app {server} proto h2\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let mut command = Command::new(bin);
    // -db: foreground, no daemon, no master process: the one process serves.
    command.arg("-db").arg("-f").arg(&path);
    Running::spawn("haproxy", command, &dir.join("stderr.log"), Duration::ZERO)
}

/// nghttpx 1.52: `-n1` (one worker), cleartext HTTP/2 frontend, HTTP/2 backend
/// (`proto=h2`: streams multiplexed over its backend connections).
pub fn nghttpx(
    bin: &Path,
    work: &WorkDir,
    name: &str,
    listen: &str,
    server: &str,
) -> Result<Running> {
    let dir = proxy_dir(work, name)?;
    let (host, port) = listen.rsplit_once(':').context("listen address")?;
    let (backend_host, backend_port) = server.rsplit_once(':').context("server address")?;
    let mut command = Command::new(bin);
    command
        .arg("--conf=/dev/null")
        .arg("-n1")
        .arg(format!("--frontend={host},{port};no-tls"))
        .arg(format!("--backend={backend_host},{backend_port};;proto=h2"))
        .arg("--no-ocsp")
        .arg("--no-via")
        .arg("--log-level=WARN")
        .arg(format!(
            "--errorlog-file={}",
            dir.join("error.log").display()
        ))
        .arg(format!("--pid-file={}", dir.join("nghttpx.pid").display()));
    Running::spawn("nghttpx", command, &dir.join("stderr.log"), Duration::ZERO)
}

/// `work/<name>`, created: where one proxy's configuration and logs go.
pub fn proxy_dir(work: &WorkDir, name: &str) -> Result<std::path::PathBuf> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
