//! The external programs the benches run: Consul and nats-server (started as the tests
//! start them), ghz and nginx (`forward-bench` only).
//!
//! Each comes from its environment variable (what `scripts/bench.sh` sets), else from the
//! `make tools` cache at the version pinned in `scripts/versions.sh`, else from the PATH.
//! Not the harness's `streamgate_tests::tools::Tools::locate`: that one requires the whole
//! platform (etcd, Kubernetes, kwok, helm) to be installed, which no bench but
//! `operator-bench` needs, and it knows neither ghz nor nginx.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use streamgate_tests::tools::{parse_versions, repo_root};

/// Where one program may be found.
pub struct Tool {
    /// The file name on the PATH.
    pub name: &'static str,
    /// The environment variable that names the binary.
    pub env: &'static str,
    /// Its version's key in `scripts/versions.sh`.
    pub version_key: &'static str,
    /// The binary's path inside `<tools cache>/<name>-<version>/`.
    pub in_cache: &'static str,
}

pub const CONSUL: Tool = Tool {
    name: "consul",
    env: "STREAMGATE_CONSUL_BIN",
    version_key: "CONSUL_DEB_VERSION",
    in_cache: "bin/consul",
};

pub const NATS_SERVER: Tool = Tool {
    name: "nats-server",
    env: "STREAMGATE_NATS_BIN",
    version_key: "NATS_DEB_VERSION",
    in_cache: "bin/nats-server",
};

pub const GHZ: Tool = Tool {
    name: "ghz",
    env: "STREAMGATE_GHZ_BIN",
    version_key: "GHZ_VERSION",
    in_cache: "bin/ghz",
};

/// The trace collector the tracing-cost rounds export to (`forward-bench`).
pub const JAEGER: Tool = Tool {
    name: "jaeger",
    env: "STREAMGATE_JAEGER_BIN",
    version_key: "JAEGER_VERSION",
    in_cache: "bin/jaeger",
};

pub const HAPROXY: Tool = Tool {
    name: "haproxy",
    env: "STREAMGATE_HAPROXY_BIN",
    version_key: "HAPROXY_DEB_VERSION",
    in_cache: "bin/haproxy",
};

pub const NGHTTPX: Tool = Tool {
    name: "nghttpx",
    env: "STREAMGATE_NGHTTPX_BIN",
    version_key: "NGHTTPX_DEB_VERSION",
    in_cache: "bin/nghttpx",
};

pub const NGINX: Tool = Tool {
    name: "nginx",
    env: "STREAMGATE_NGINX_BIN",
    version_key: "NGINX_DEB_VERSION",
    in_cache: "bin/nginx",
};

impl Tool {
    /// `$env` (which must exist), else the `make tools` cache, else the PATH.
    pub fn locate(&self) -> Result<PathBuf> {
        if let Some(path) = std::env::var_os(self.env) {
            let path = PathBuf::from(path);
            if !path.exists() {
                bail!("{}={} does not exist", self.env, path.display());
            }
            return Ok(path);
        }
        if let Some(cached) = self.in_tools_cache().filter(|p| p.exists()) {
            return Ok(cached);
        }
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(self.name))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{} not found ({}, the make tools cache, PATH): run 'make tools'",
                    self.name, self.env
                )
            })
    }

    /// `${STREAMGATE_TOOLS:-$HOME/.cache/streamgate}/<name>-<version>/<in_cache>`, with
    /// the version from `scripts/versions.sh` of the source tree this bench was built from.
    fn in_tools_cache(&self) -> Option<PathBuf> {
        let versions = std::fs::read_to_string(repo_root().join("scripts/versions.sh")).ok()?;
        let version = parse_versions(&versions).remove(self.version_key)?;
        let root = std::env::var_os("STREAMGATE_TOOLS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/streamgate"))
            })?;
        Some(
            root.join(format!("{}-{version}", self.name))
                .join(self.in_cache),
        )
    }
}
