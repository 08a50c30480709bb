//! A real node beside kwok's fake ones: containerd (CRI), runc, the CNI bridge, the
//! kubelet and kube-proxy, running the project's own OCI images (`make images`) as real
//! pods on a bridge network the harness creates.
//!
//! - [`config`]: containerd's, the CNI network's, the kubelet's and kube-proxy's files.
//! - [`network`]: the bridge, the node's address on it, and the rules that keep the pod
//!   network on this machine.
//! - [`teardown`]: removing every process, mount, namespace, cgroup, link and rule the
//!   node made, and finding any that is left.
//!
//! One real node runs per machine at a time (kube-proxy's iptables chains and the pod
//! cgroups are machine-wide): [`RealNode::claim`] records its owner in
//! `/run/streamgate-node/owner`, refuses while that owner lives, and clears what a dead
//! owner left. Pods reach the API server (through the `kubernetes` Service too), Consul
//! and NATS at [`NODE_IP`], the node's address on the bridge.

pub mod config;
pub mod network;
pub mod teardown;

use crate::process::{Group, Proc};
use anyhow::{Context, Result, bail};
use config::{KubeProxyPorts, KubeletPorts, NodePaths};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const NODE_NAME: &str = "streamgate-node-0";
/// The harness's pod bridge (not `cni0`, so it never takes over another setup's).
pub const BRIDGE: &str = "sgbr0";
/// The node's address on the bridge: the pods' gateway, and where the API server, Consul,
/// NATS and the kubelet listen for pods.
pub const NODE_IP: &str = "10.88.0.1";
pub const POD_SUBNET: &str = "10.88.0.0/24";
pub const POD_SUBNET_PREFIX: u8 = 24;
/// The pod subnet's first three octets with the dot, to recognise its addresses.
pub const POD_SUBNET_BASE: &str = "10.88.0.";
/// Sockets, containerd's state and the owner record.
pub const RUN_DIR: &str = "/run/streamgate-node";
/// The label the real node carries, for pods that must run for real.
pub const REAL_NODE_LABEL: &str = "streamgate.io/real-node";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Who runs the node, and what to restore when it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub pid: u32,
    pub dir: PathBuf,
    pub run: PathBuf,
    pub ip_forward_before: String,
}

fn owner_file() -> PathBuf {
    Path::new(RUN_DIR).join("owner")
}

/// The node's programs, from `make tools`.
#[derive(Debug, Clone)]
pub struct NodeTools {
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub runc: PathBuf,
    pub cni_bin: PathBuf,
    pub iptables: PathBuf,
    pub crane: PathBuf,
    /// containerd's shim and the iptables wrappers live here; it goes first on PATH.
    pub bin_dir: PathBuf,
}

impl NodeTools {
    /// Finds them under the tools cache `root`, with the versions of `scripts/versions.sh`.
    pub fn locate(root: &Path, v: &HashMap<String, String>) -> Result<NodeTools> {
        let get = |key: &str| {
            v.get(key)
                .cloned()
                .with_context(|| format!("{key} missing from scripts/versions.sh"))
        };
        let node = root.join(format!(
            "node-containerd-{}-runc-{}-cni-{}-iptables-{}",
            get("CONTAINERD_DEB_VERSION")?,
            get("RUNC_DEB_VERSION")?,
            get("CNI_PLUGINS_DEB_VERSION")?,
            get("IPTABLES_DEB_VERSION")?
        ));
        let kube = root.join(format!("kubernetes-{}/bin", get("K8S_VERSION")?));
        let bin = node.join("bin");
        let tools = NodeTools {
            kubelet: kube.join("kubelet"),
            kube_proxy: kube.join("kube-proxy"),
            containerd: bin.join("containerd"),
            ctr: bin.join("ctr"),
            runc: bin.join("runc"),
            cni_bin: node.join("cni"),
            iptables: bin.join("iptables"),
            crane: root.join(format!("crane-{}/bin/crane", get("CRANE_VERSION")?)),
            bin_dir: bin,
        };
        for path in [
            &tools.kubelet,
            &tools.kube_proxy,
            &tools.containerd,
            &tools.ctr,
            &tools.runc,
            &tools.cni_bin,
            &tools.iptables,
            &tools.crane,
        ] {
            if !path.exists() {
                bail!("{} not found: run `make tools`", path.display());
            }
        }
        Ok(tools)
    }

    /// PATH for the node's processes: the node's own programs first.
    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        )
    }
}

/// What the node needs from the control plane.
pub struct ControlPlane<'a> {
    pub kubelet_kubeconfig: &'a Path,
    pub kube_proxy_kubeconfig: &'a Path,
    pub client_ca: &'a Path,
    pub logs: &'a Path,
    pub kubectl: &'a dyn Fn(&[&str]) -> Result<String>,
    /// Image archives (`make images`) imported into containerd before the kubelet starts.
    pub images: &'a [PathBuf],
}

/// Ports the node's processes listen on.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub kubelet: KubeletPorts,
    pub kube_proxy: KubeProxyPorts,
    /// The OCI registry (`crane registry serve`) on 127.0.0.1.
    pub registry: u16,
}

/// A running real node. Dropping it takes it apart.
#[derive(Debug)]
pub struct RealNode {
    pub paths: NodePaths,
    pub tools: NodeTools,
    pub owner: OwnerRecord,
    /// `127.0.0.1:<port>`: a registry the node pulls from over plain HTTP.
    pub registry: String,
    procs: Group,
}

impl RealNode {
    /// Takes the machine's node slot and creates the pod bridge (its address must exist
    /// before the API server, Consul and NATS bind to it). Clears what a dead earlier
    /// owner left; refuses while a live one runs.
    pub fn claim(dir: &Path, tools: NodeTools) -> Result<RealNode> {
        let run = PathBuf::from(RUN_DIR);
        if let Ok(text) = std::fs::read_to_string(owner_file()) {
            let earlier: OwnerRecord = serde_json::from_str(&text)
                .with_context(|| format!("reading {}", owner_file().display()))?;
            if earlier.pid != std::process::id()
                && Path::new(&format!("/proc/{}", earlier.pid)).exists()
            {
                bail!(
                    "a real node already runs on this machine (owner pid {}, data in {}); stop it first (`make env-down`, or end that test run)",
                    earlier.pid,
                    earlier.dir.display()
                );
            }
            let errors = teardown::teardown(&earlier, &tools.iptables);
            if !errors.is_empty() {
                bail!(
                    "could not clear what an earlier real node left: {}",
                    errors.join("; ")
                );
            }
        } else if network::bridge_exists() {
            let errors = network::remove(&tools.iptables, None);
            if !errors.is_empty() {
                bail!("could not remove a stale pod bridge: {}", errors.join("; "));
            }
        }
        std::fs::create_dir_all(&run).with_context(|| format!("creating {RUN_DIR}"))?;
        std::fs::create_dir_all(dir)?;
        let ip_forward_before = network::create(&tools.iptables)?;
        let owner = OwnerRecord {
            pid: std::process::id(),
            dir: dir.to_path_buf(),
            run: run.clone(),
            ip_forward_before,
        };
        std::fs::write(owner_file(), serde_json::to_string(&owner)?)?;
        let paths = NodePaths {
            dir: dir.to_path_buf(),
            run,
            cni_bin: tools.cni_bin.clone(),
            runc: tools.runc.clone(),
        };
        Ok(RealNode {
            paths,
            tools,
            owner,
            registry: String::new(),
            procs: Group::default(),
        })
    }

    /// Starts the local registry, containerd (and imports the images), the kubelet and
    /// kube-proxy, and waits until the node is Ready.
    pub fn start(&mut self, cp: &ControlPlane<'_>, ports: NodePorts) -> Result<()> {
        let p = self.paths.clone();
        for d in [
            p.cni_conf_dir(),
            p.kubelet_root(),
            p.pod_logs(),
            p.dir.join("registry"),
        ] {
            std::fs::create_dir_all(&d)?;
        }
        self.registry = format!("127.0.0.1:{}", ports.registry);
        let hosts = p.registry_hosts_dir().join(&self.registry);
        std::fs::create_dir_all(&hosts)?;
        std::fs::write(
            hosts.join("hosts.toml"),
            config::plain_http_registry_hosts(&self.registry),
        )?;
        std::fs::write(
            p.containerd_config(),
            config::containerd_toml(&p, &sandbox_image()),
        )?;
        std::fs::write(
            p.cni_conf_dir().join("10-streamgate.conflist"),
            config::cni_conflist(&p),
        )?;
        std::fs::write(
            p.kubelet_config(),
            config::kubelet_yaml(&p, ports.kubelet, &cp.client_ca.display().to_string()),
        )?;
        std::fs::write(
            p.kube_proxy_config(),
            config::kube_proxy_yaml(
                &cp.kube_proxy_kubeconfig.display().to_string(),
                ports.kube_proxy,
            ),
        )?;

        let mut registry = Command::new(&self.tools.crane);
        registry
            .args(["registry", "serve", "--address", &self.registry, "--disk"])
            .arg(p.dir.join("registry"))
            .env("HOME", &p.dir);
        self.launch(cp.logs, "registry", registry)?;

        let mut containerd = Command::new(&self.tools.containerd);
        containerd
            .arg("--config")
            .arg(p.containerd_config())
            .env("PATH", self.tools.path_env());
        self.launch(cp.logs, "containerd", containerd)?;
        self.ready("containerd", || Ok(self.ctr(&["version"]).is_ok()))?;
        for archive in cp.images {
            self.ctr(&["images", "import", &archive.display().to_string()])
                .with_context(|| format!("importing {} into containerd", archive.display()))?;
        }

        let mut kubelet = Command::new(&self.tools.kubelet);
        kubelet
            .arg(format!("--config={}", p.kubelet_config().display()))
            .arg(format!("--kubeconfig={}", cp.kubelet_kubeconfig.display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .arg(format!("--root-dir={}", p.kubelet_root().display()))
            .arg(format!(
                "--cert-dir={}",
                p.kubelet_root().join("pki").display()
            ))
            .arg(format!("--node-labels={REAL_NODE_LABEL}=true"))
            .env("PATH", self.tools.path_env());
        self.launch(cp.logs, "kubelet", kubelet)?;
        self.ready("kubelet", || {
            let status = (cp.kubectl)(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            Ok(status.trim() == "True")
        })?;

        let mut kube_proxy = Command::new(&self.tools.kube_proxy);
        kube_proxy
            .arg(format!("--config={}", p.kube_proxy_config().display()))
            .env("PATH", self.tools.path_env());
        self.launch(cp.logs, "kube-proxy", kube_proxy)?;
        let healthz = format!("http://127.0.0.1:{}/healthz", ports.kube_proxy.healthz);
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        self.ready("kube-proxy", || {
            Ok(http.get(&healthz).send()?.status().is_success())
        })?;
        Ok(())
    }

    /// Runs `ctr` against the node's containerd, in the CRI plugin's namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let mut all = vec![
            "--address".to_string(),
            self.paths.containerd_socket().display().to_string(),
            "--namespace".to_string(),
            "k8s.io".to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        network::run(&self.tools.ctr, &all)
    }

    /// Whether the pod network's guard rules are in place (read, never probed).
    pub fn guard_in_place(&self) -> Result<bool> {
        network::guard_in_place(&self.tools.iptables)
    }

    fn launch(&mut self, logs: &Path, name: &str, command: Command) -> Result<()> {
        self.procs.launch(logs, name, command)
    }

    fn ready(&self, name: &str, check: impl FnMut() -> Result<bool>) -> Result<()> {
        self.procs.ready(name, READY_TIMEOUT, check)
    }

    /// The node's processes (for log tails and pid lists).
    pub fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter()
    }

    /// Stops the kubelet and kube-proxy gracefully, then takes everything apart. Returns
    /// what could not be removed.
    pub fn stop(&mut self) -> Vec<String> {
        self.procs.stop_all(Duration::from_secs(5));
        let errors = teardown::teardown(&self.owner, &self.tools.iptables);
        let _ = std::fs::remove_file(owner_file());
        errors
    }

    /// What of the node is left on the machine (empty after [`RealNode::stop`]).
    pub fn leftovers(&self) -> Vec<String> {
        teardown::leftovers(&self.owner, &self.tools.iptables)
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if self.owner.pid == std::process::id() && owner_file().exists() {
            let errors = self.stop();
            if !errors.is_empty() {
                eprintln!("real node teardown: {}", errors.join("; "));
            }
        }
    }
}

/// Takes apart the node this process owns, if any (for a process that ends without
/// dropping its platform: a test binary's shared one lives in a static).
pub fn teardown_owned_node(iptables: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(owner_file()) else {
        return Vec::new();
    };
    let Ok(owner) = serde_json::from_str::<OwnerRecord>(&text) else {
        return vec![format!("{} is not an owner record", owner_file().display())];
    };
    if owner.pid != std::process::id() {
        return Vec::new();
    }
    let errors = teardown::teardown(&owner, iptables);
    let _ = std::fs::remove_file(owner_file());
    errors
}

static EXIT_IPTABLES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn teardown_on_exit() {
    if let Some(iptables) = EXIT_IPTABLES.get() {
        let errors = teardown_owned_node(iptables);
        if !errors.is_empty() {
            eprintln!("real node teardown at exit: {}", errors.join("; "));
        }
    }
}

/// Registers [`teardown_owned_node`] to run when the process exits normally (the test
/// harness returns from main). A process killed outright leaves the node to the next
/// [`RealNode::claim`], which clears it.
pub fn teardown_at_exit() {
    let Ok(tools) =
        crate::tools::Tools::locate().and_then(|t| NodeTools::locate(&t.root, &t.versions))
    else {
        return;
    };
    if EXIT_IPTABLES.set(tools.iptables).is_ok() {
        #[allow(unsafe_code)]
        // SAFETY: atexit only records a function pointer; the function it registers is a
        // plain `extern "C" fn` that does not unwind (errors are printed, not panicked).
        unsafe {
            libc::atexit(teardown_on_exit);
        }
    }
}

/// Host pids of processes whose command line starts with one of `programs` (a
/// container's processes are the host's too, in other namespaces): e.g.
/// `/usr/local/bin/streamgate-sidecar`, the entrypoint of the sidecar image.
pub fn processes_running(programs: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| programs.iter().any(|p| c.starts_with(p.as_bytes())))
        })
        .collect()
}

/// The pod sandbox image `make images` builds (nothing can be pulled here).
pub fn sandbox_image() -> String {
    format!("docker.io/streamgate/pause:{}", env!("CARGO_PKG_VERSION"))
}
