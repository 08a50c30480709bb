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
            .arg(format!("-server-port={}", self.server_port));
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
