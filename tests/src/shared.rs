//! One platform per test binary, and per-test isolation on top of it.
//!
//! The first test that asks starts the platform; the others reuse it. Its processes die
//! with the test binary (see [`crate::process`]). Each test gets a [`TestEnv`]: its own
//! namespace and a unique suffix for Consul service names and NATS subjects, so tests run
//! in parallel without seeing each other. When a test panics, the tail of every
//! component's log is printed.

use crate::platform::Platform;
use crate::tools::repo_root;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rand::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

static PLATFORM: OnceLock<Result<Platform, String>> = OnceLock::new();

/// The platform of this test binary, started on first use (kwok's nodes only, unless a
/// test of the binary asked for the real node first).
pub fn platform() -> &'static Platform {
    shared_platform(false)
}

/// The platform of this test binary with a real node (see [`crate::node`]); every test of
/// a binary that needs one should ask through this.
pub fn platform_with_node() -> &'static Platform {
    let platform = shared_platform(true);
    assert!(
        platform.node().is_some(),
        "this test binary's platform was started without a real node: call \
         platform_with_node (TestEnv::on_real_node) in every test of the binary"
    );
    platform
}

fn shared_platform(real_node: bool) -> &'static Platform {
    let started = PLATFORM.get_or_init(|| {
        // Booting blocks (HTTP polls, kubectl); keep it off any async runtime's thread.
        std::thread::spawn(move || {
            let dir = test_platform_dir();
            remove_stale_test_dirs();
            if real_node {
                // A static is never dropped: take the node apart when the binary exits.
                crate::node::teardown_at_exit();
                Platform::start_with_node(&dir)
            } else {
                Platform::start(&dir)
            }
            .map_err(|e| format!("{e:#}"))
        })
        .join()
        .unwrap_or_else(|_| Err("platform start-up panicked".into()))
    });
    match started {
        Ok(platform) => platform,
        Err(e) => panic!("the local platform did not start:\n{e}"),
    }
}

fn tests_root() -> PathBuf {
    repo_root().join(".streamgate/test")
}

fn test_platform_dir() -> PathBuf {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "test".into());
    tests_root().join(format!("{exe}.{}", std::process::id()))
}

/// Data directories of earlier test binaries that are no longer running.
fn remove_stale_test_dirs() {
    let Ok(entries) = std::fs::read_dir(tests_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('.').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !PathBuf::from(format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A lower-case alphanumeric suffix that makes names unique per test.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A DNS-1123 label made of `base` and `suffix`, at most 63 characters.
pub fn dns_label(base: &str, suffix: &str) -> String {
    let cleaned: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let keep = 63 - suffix.len() - 1;
    let trimmed = cleaned[..cleaned.len().min(keep)].trim_matches('-');
    format!("{trimmed}-{suffix}")
}

/// One test's view of the platform.
pub struct TestEnv {
    pub platform: &'static Platform,
    /// The test's own namespace (created by [`TestEnv::new`]).
    pub namespace: String,
    /// Appended to Consul service names, NATS subjects and other shared names.
    pub suffix: String,
    client: kube::Client,
}

impl TestEnv {
    /// A namespace of its own and a client for it. `name` should name the test.
    pub async fn new(name: &str) -> Result<TestEnv> {
        Self::with_namespace_labels(name, BTreeMap::new()).await
    }

    /// Like [`TestEnv::new`], on the platform with a real node: pods run for real.
    pub async fn on_real_node(name: &str, labels: BTreeMap<String, String>) -> Result<TestEnv> {
        Self::create(platform_with_node(), name, labels).await
    }

    /// Like [`TestEnv::new`], with labels on the namespace (e.g. PodSecurity enforcement).
    pub async fn with_namespace_labels(
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<TestEnv> {
        Self::create(platform(), name, labels).await
    }

    async fn create(
        platform: &'static Platform,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<TestEnv> {
        let suffix = random_suffix();
        let namespace = dns_label(name, &suffix);
        let client = kube_client(platform).await?;
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {namespace}"))?;
        Ok(TestEnv {
            platform,
            namespace,
            suffix,
            client,
        })
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A name unique to this test, e.g. `upload-x7k2p9` for a Consul service.
    pub fn unique(&self, base: &str) -> String {
        dns_label(base, &self.suffix)
    }

    pub fn consul_addr(&self) -> &str {
        &self.platform.info.consul_http_addr
    }

    pub fn nats_url(&self) -> &str {
        &self.platform.info.nats_url
    }

    /// Runs kubectl against the platform in this test's namespace.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.platform.info.kubectl(&all, stdin)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test in namespace {} failed; component logs:\n{}",
                self.namespace,
                self.platform.log_tails(12)
            );
        }
    }
}

/// A kube client with the platform's admin credentials.
pub async fn kube_client(platform: &Platform) -> Result<kube::Client> {
    Ok(kube::Client::try_from(kube_config(platform).await?)?)
}

/// The platform's admin client configuration (for a client on another runtime).
pub async fn kube_config(platform: &Platform) -> Result<kube::Config> {
    let kubeconfig = Kubeconfig::read_from(&platform.info.kubeconfig)?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the platform kubeconfig")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_label_is_valid_and_bounded() {
        let label = dns_label(&"Very_Long Test Name ".repeat(10), "abc123");
        assert!(label.len() <= 63, "{label}");
        assert!(label.ends_with("-abc123"));
        assert!(
            label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(!label.starts_with('-'));
    }

    #[test]
    fn random_suffixes_differ() {
        assert_ne!(random_suffix(), random_suffix());
    }
}
