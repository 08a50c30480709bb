//! A Consul dev agent of a test's own, for tests that kill and restart Consul or start
//! without it. Dev mode keeps its state in memory, so a restart on the same ports is
//! "Consul came back with no state". The shared platform's agent is never touched.

use crate::ports::free_port;
use crate::process::Proc;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

pub struct ConsulAgent {
    bin: PathBuf,
    log: PathBuf,
    http_port: u16,
    serf_lan_port: u16,
    serf_wan_port: u16,
    server_port: u16,
    proc: Mutex<Option<Proc>>,
}

impl ConsulAgent {
    /// Chooses the agent's ports without starting it: tests of "Consul unreachable at
    /// start" point the sidecar at [`ConsulAgent::addr`] first and [`ConsulAgent::start`]
    /// it later.
    pub fn reserve(bin: &Path, log_dir: &Path) -> Result<ConsulAgent> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(ConsulAgent {
            bin: bin.to_path_buf(),
            log: log_dir.join("consul-agent.log"),
            http_port: free_port()?,
            serf_lan_port: free_port()?,
            serf_wan_port: free_port()?,
            server_port: free_port()?,
            proc: Mutex::new(None),
        })
    }

    /// Reserves ports and starts the agent; returns once it has a leader.
    pub async fn start_new(bin: &Path, log_dir: &Path) -> Result<ConsulAgent> {
        let agent = Self::reserve(bin, log_dir)?;
        agent.start().await?;
        Ok(agent)
    }

    /// `http://127.0.0.1:PORT`, the same across restarts.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Starts (or restarts) the agent on its ports; returns once it has elected itself
    /// leader, which is when it accepts registrations into its catalog.
    pub async fn start(&self) -> Result<()> {
        let mut command = Command::new(&self.bin);
        command
            .arg("agent")
            .arg("-dev")
            .arg(format!("-node=sidecar-test-{}", self.http_port))
            .arg("-bind=127.0.0.1")
            .arg("-client=127.0.0.1")
            .arg(format!("-http-port={}", self.http_port))
            .arg("-dns-port=-1")
            .arg("-grpc-port=-1")
            .arg(format!("-serf-lan-port={}", self.serf_lan_port))
            .arg(format!("-serf-wan-port={}", self.serf_wan_port))
            .arg(format!("-server-port={}", self.server_port))
            .args(fixed_port_flags(&self.bin));
        let proc = Proc::spawn("consul-agent", command, &self.log)?;
        *self.proc.lock().unwrap_or_else(|e| e.into_inner()) = Some(proc);
        self.wait_leader(Duration::from_secs(30)).await
    }

    /// SIGKILLs the agent: its in-memory state is gone.
    pub fn kill(&self) {
        if let Some(proc) = self.proc.lock().unwrap_or_else(|e| e.into_inner()).take() {
            proc.stop(Duration::ZERO);
        }
    }

    /// Kills the agent and starts a fresh one on the same ports.
    pub async fn restart(&self) -> Result<()> {
        self.kill();
        self.start().await
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail(&self.log, lines)
    }

    async fn wait_leader(&self, timeout: Duration) -> Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/v1/status/leader", self.addr());
        crate::wait::eventually("the test's Consul agent has a leader", timeout, || async {
            let leader = client.get(&url).send().await?.text().await?;
            Ok((leader.trim().trim_matches('"').contains(':')).then_some(()))
        })
        .await
        .with_context(|| self.log_tail(20))
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Consul cluster of two servers and no client agent (how consul-k8s installs Consul
/// 1.14+ "agentless"): each server keeps its state on disk in the test's directory and
/// both serve the same catalog, so a sidecar can be pointed at either.
pub struct ConsulServers {
    servers: Vec<ServerProc>,
}

struct ServerProc {
    http_port: u16,
    _proc: Proc,
}

impl ConsulServers {
    /// Starts two servers that join each other; returns once both see one leader.
    pub async fn start(bin: &Path, dir: &Path) -> Result<ConsulServers> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lan_ports = [free_port()?, free_port()?];
        let mut servers = Vec::new();
        for (i, name) in ["a", "b"].iter().enumerate() {
            let http_port = free_port()?;
            let data = dir.join(format!("consul-server-{name}"));
            std::fs::create_dir_all(&data)?;
            let mut command = Command::new(bin);
            command
                .arg("agent")
                .arg("-server")
                .arg("-bootstrap-expect=2")
                .arg(format!("-node=consul-server-{name}-{http_port}"))
                .arg(format!("-data-dir={}", data.display()))
                .arg("-bind=127.0.0.1")
                .arg("-client=127.0.0.1")
                .arg(format!("-http-port={http_port}"))
                .arg("-dns-port=-1")
                .arg("-grpc-port=-1")
                .arg(format!("-serf-lan-port={}", lan_ports[i]))
                .arg(format!("-serf-wan-port={}", free_port()?))
                .arg(format!("-server-port={}", free_port()?))
                .arg(format!("-retry-join=127.0.0.1:{}", lan_ports[1 - i]))
                .args(fixed_port_flags(bin))
                // Elections in a second rather than Consul's production-safe five.
                .arg("-hcl=performance { raft_multiplier = 1 }");
            let log = dir.join(format!("consul-server-{name}.log"));
            servers.push(ServerProc {
                http_port,
                _proc: Proc::spawn("consul-server", command, &log)?,
            });
        }
        let cluster = ConsulServers { servers };
        for i in 0..cluster.servers.len() {
            cluster
                .wait_leader(i, Duration::from_secs(60))
                .await
                .with_context(|| crate::process::tail(&dir.join("consul-server-a.log"), 20))?;
        }
        Ok(cluster)
    }

    /// Server `i`'s HTTP address, `http://127.0.0.1:PORT`.
    pub fn addr(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.servers[i].http_port)
    }

    async fn wait_leader(&self, i: usize, timeout: Duration) -> Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/v1/status/leader", self.addr(i));
        crate::wait::eventually("the Consul servers elected a leader", timeout, || async {
            let leader = client.get(&url).send().await?.text().await?;
            Ok((leader.trim().trim_matches('"').contains(':')).then_some(()))
        })
        .await
    }
}

/// Flags that turn off the listeners a Consul version opens on fixed ports (1.14+'s
/// gRPC TLS port 8503, in dev mode and on servers), so several Consuls run side by side.
/// Consul 1.8 knows no such flag and opens no such port.
pub fn fixed_port_flags(bin: &Path) -> Vec<&'static str> {
    match consul_version(bin) {
        Some(version) if version >= (1, 14) => vec!["-grpc-tls-port=-1"],
        _ => Vec::new(),
    }
}

/// `(major, minor)` from `consul version`'s first line, `Consul v1.16.1`.
fn consul_version(bin: &Path) -> Option<(u32, u32)> {
    let output = Command::new(bin).arg("version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.lines().next()?.trim().strip_prefix("Consul v")?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}
