//! Where `make tools` put each component: `${STREAMGATE_TOOLS:-$HOME/.cache/streamgate}`,
//! one folder per component and version, with the versions pinned in `scripts/versions.sh`.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Paths to the binaries of every component.
#[derive(Debug, Clone)]
pub struct Tools {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub kwok: PathBuf,
    pub kwok_stages: PathBuf,
    pub helm: PathBuf,
    /// The Consul of this run: Debian's 1.8.7, or the newer one of the test matrix when
    /// `STREAMGATE_TEST_CONSUL=newer` (or any binary in `STREAMGATE_CONSUL_BIN`).
    pub consul: PathBuf,
    /// The newer Consul (the last MPL-2.0 line, built from source), for agentless tests.
    pub consul_newer: PathBuf,
    pub nats_server: PathBuf,
    /// The trace collector (Jaeger v2, OTLP in, query API out).
    pub jaeger: PathBuf,
    pub k8s_version: String,
    /// The tools cache, and the pinned versions (for the real node's tools).
    pub root: PathBuf,
    pub versions: HashMap<String, String>,
}

/// The repository root (the workspace holding this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Parses the `KEY=VALUE` lines of `scripts/versions.sh`.
pub fn parse_versions(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

impl Tools {
    /// Locates every component, failing with the command that installs a missing one.
    pub fn locate() -> Result<Self> {
        let versions_file = repo_root().join("scripts/versions.sh");
        let text = std::fs::read_to_string(&versions_file)
            .with_context(|| format!("reading {}", versions_file.display()))?;
        let v = parse_versions(&text);
        let get = |key: &str| {
            v.get(key)
                .cloned()
                .with_context(|| format!("{key} missing from {}", versions_file.display()))
        };
        let root = std::env::var_os("STREAMGATE_TOOLS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/streamgate"))
            })
            .context("neither STREAMGATE_TOOLS nor HOME is set")?;
        let k8s = get("K8S_VERSION")?;
        let kube_dir = root.join(format!("kubernetes-{k8s}/bin"));
        let kwok_dir = root.join(format!("kwok-{}", get("KWOK_VERSION")?));
        let consul_newer = root.join(format!(
            "consul-mpl-{}/bin/consul",
            get("CONSUL_MPL_VERSION")?
        ));
        let consul = match std::env::var_os("STREAMGATE_CONSUL_BIN") {
            Some(bin) => PathBuf::from(bin),
            None if consul_matrix_entry()? == ConsulEntry::Newer => consul_newer.clone(),
            None => root.join(format!("consul-{}/bin/consul", get("CONSUL_DEB_VERSION")?)),
        };
        let tools = Tools {
            etcd: root.join(format!("etcd-{}/bin/etcd", get("ETCD_DEB_VERSION")?)),
            kube_apiserver: kube_dir.join("kube-apiserver"),
            kube_controller_manager: kube_dir.join("kube-controller-manager"),
            kube_scheduler: kube_dir.join("kube-scheduler"),
            kubectl: kube_dir.join("kubectl"),
            kwok: kwok_dir.join("bin/kwok"),
            kwok_stages: kwok_dir.join("stages-fast.yaml"),
            helm: root.join(format!("helm-{}/bin/helm", get("HELM_VERSION")?)),
            consul,
            consul_newer,
            nats_server: root.join(format!(
                "nats-server-{}/bin/nats-server",
                get("NATS_DEB_VERSION")?
            )),
            jaeger: root.join(format!("jaeger-{}/bin/jaeger", get("JAEGER_VERSION")?)),
            k8s_version: k8s,
            root: root.clone(),
            versions: v.clone(),
        };
        for (name, path) in tools.all() {
            if !path.exists() {
                bail!("{name} not found at {}: run `make tools`", path.display());
            }
        }
        Ok(tools)
    }

    fn all(&self) -> [(&'static str, &Path); 12] {
        [
            ("etcd", &self.etcd),
            ("kube-apiserver", &self.kube_apiserver),
            ("kube-controller-manager", &self.kube_controller_manager),
            ("kube-scheduler", &self.kube_scheduler),
            ("kubectl", &self.kubectl),
            ("kwok", &self.kwok),
            ("kwok stages", &self.kwok_stages),
            ("helm", &self.helm),
            ("consul", &self.consul),
            ("consul (newer)", &self.consul_newer),
            ("nats-server", &self.nats_server),
            ("jaeger", &self.jaeger),
        ]
    }
}

/// Which Consul of the test matrix this run uses (`STREAMGATE_TEST_CONSUL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsulEntry {
    /// Debian's 1.8.7, the generation the seed's services were written against.
    Debian,
    /// The newer one (`CONSUL_MPL_VERSION`), with agentless support.
    Newer,
}

/// The matrix entry named by `STREAMGATE_TEST_CONSUL` (`debian`, the default, or
/// `newer`); any other value is an error naming it.
pub fn consul_matrix_entry() -> Result<ConsulEntry> {
    match std::env::var("STREAMGATE_TEST_CONSUL").as_deref() {
        Err(_) | Ok("") | Ok("debian") => Ok(ConsulEntry::Debian),
        Ok("newer") => Ok(ConsulEntry::Newer),
        Ok(other) => bail!("STREAMGATE_TEST_CONSUL={other:?}: use `debian` or `newer`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_file_lines() {
        let v = parse_versions("# comment\nK8S_VERSION=v1.35.4\nX=\"quoted\"\n\n");
        assert_eq!(v["K8S_VERSION"], "v1.35.4");
        assert_eq!(v["X"], "quoted");
        assert_eq!(v.len(), 2);
    }
}
