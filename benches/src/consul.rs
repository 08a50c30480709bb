//! Consul for a bench: the agent at `CONSUL_HTTP_ADDR` when one is given, else a dev agent
//! of the bench's own, started the way the tests start theirs
//! ([`ConsulAgent`]: loopback only, every port free, up once it has a leader) and killed
//! when dropped.

use anyhow::Result;
use std::path::Path;
use streamgate_tests::consul_agent::ConsulAgent;

pub struct Consul {
    addr: String,
    /// The agent this bench started, if any; it lives as long as this value.
    _agent: Option<ConsulAgent>,
}

impl Consul {
    /// The agent at `CONSUL_HTTP_ADDR` (`host:port` or a URL), when that is set.
    pub fn from_env() -> Option<Consul> {
        let addr = std::env::var("CONSUL_HTTP_ADDR").ok()?;
        let addr = if addr.contains("://") {
            addr
        } else {
            format!("http://{addr}")
        };
        Some(Consul { addr, _agent: None })
    }

    /// A dev agent of our own from `bin`, logging into `log_dir`; returns once it has a
    /// leader, which is when it accepts registrations.
    pub async fn start(bin: &Path, log_dir: &Path) -> Result<Consul> {
        let agent = ConsulAgent::start_new(bin, log_dir).await?;
        Ok(Consul {
            addr: agent.addr(),
            _agent: Some(agent),
        })
    }

    /// The HTTP API's base URL, e.g. `http://127.0.0.1:8500`.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}
