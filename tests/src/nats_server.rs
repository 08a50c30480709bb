//! A nats-server with JetStream of a test's own, for tests that stop and restart NATS,
//! start without it, or need authentication. Its store directory and port stay the same
//! across restarts, so a restart is "NATS came back with its streams". The shared
//! platform's server is never touched.

use crate::ports::free_port;
use crate::process::Proc;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

pub struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    monitor_port: u16,
    proc: Mutex<Option<Proc>>,
}

impl NatsServer {
    /// Chooses the ports and writes the configuration without starting the server, for
    /// tests of "NATS unreachable" that start it later.
    pub fn reserve(bin: &Path, dir: &Path, token: Option<&str>) -> Result<NatsServer> {
        let auth = match token {
            Some(token) => format!("authorization {{\n  token: \"{token}\"\n}}\n"),
            None => String::new(),
        };
        Self::reserve_with(bin, dir, &auth)
    }

    /// Reserves a server whose configuration carries `authorization` (an
    /// `authorization { users: [...] }` block with permissions), and starts it.
    pub async fn start_with_authorization(
        bin: &Path,
        dir: &Path,
        authorization: &str,
    ) -> Result<NatsServer> {
        let server = Self::reserve_with(bin, dir, authorization)?;
        server.start().await?;
        Ok(server)
    }

    fn reserve_with(bin: &Path, dir: &Path, auth: &str) -> Result<NatsServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let server = NatsServer {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            port: free_port()?,
            monitor_port: free_port()?,
            proc: Mutex::new(None),
        };
        let config = format!(
            "server_name: test-{port}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n{auth}\njetstream {{\n  store_dir: \"{store}\"\n}}\n",
            port = server.port,
            monitor = server.monitor_port,
            store = dir.join("jetstream").display(),
        );
        std::fs::write(server.config_path(), config)?;
        Ok(server)
    }

    /// Reserves and starts; returns once the server is healthy.
    pub async fn start_new(bin: &Path, dir: &Path, token: Option<&str>) -> Result<NatsServer> {
        let server = Self::reserve(bin, dir, token)?;
        server.start().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`, the same across restarts.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server; returns once `/healthz` says JetStream is ready.
    pub async fn start(&self) -> Result<()> {
        let mut command = Command::new(&self.bin);
        command.arg("-c").arg(self.config_path());
        let proc = Proc::spawn("nats-server", command, &self.dir.join("nats-server.log"))?;
        *self.proc.lock().unwrap_or_else(|e| e.into_inner()) = Some(proc);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.monitor_port
        );
        crate::wait::eventually(
            "the test's nats-server is healthy",
            Duration::from_secs(30),
            || async {
                let response = client.get(&url).send().await?;
                Ok(response.status().is_success().then_some(()))
            },
        )
        .await
        .with_context(|| self.log_tail(20))
    }

    /// Sets the server's `max_payload` for its next start (NATS's default is 1 MiB), as
    /// an operator lowering the limit in the server's configuration does.
    pub fn set_max_payload(&self, bytes: usize) -> Result<()> {
        let path = self.config_path();
        let config = std::fs::read_to_string(&path)?;
        let kept: String = config
            .lines()
            .filter(|l| !l.starts_with("max_payload"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(path, format!("max_payload: {bytes}\n{kept}"))?;
        Ok(())
    }

    /// Stops the server gracefully (it flushes its store), as a restart of NATS does.
    pub fn stop(&self) {
        if let Some(proc) = self.proc.lock().unwrap_or_else(|e| e.into_inner()).take() {
            proc.stop(Duration::from_secs(10));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail(&self.dir.join("nats-server.log"), lines)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
