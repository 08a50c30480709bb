//! Starts the local platform in dependency order, waits for each component to be ready,
//! and stops everything already started when one fails (printing that one's log tail).

use crate::components::{self, Layout};
use crate::node::{self, ControlPlane, NodePorts, NodeTools, RealNode};
use crate::pki::ClusterPki;
use crate::ports::free_port;
use crate::process::{Group, Proc};
use crate::tools::Tools;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Number of fake nodes kwok plays.
pub const KWOK_NODES: usize = 2;
/// How long any one component may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client needs to reach the platform; also the content of `.streamgate/env`.
#[derive(Debug, Clone)]
pub struct PlatformInfo {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver_url: String,
    pub consul_http_addr: String,
    pub nats_url: String,
    pub nats_monitor_url: String,
    pub etcd_url: String,
    /// Jaeger's OTLP/gRPC receiver (`OTEL_EXPORTER_OTLP_ENDPOINT`), on the node's address
    /// when there is a real node (pods export there), else on loopback.
    pub otlp_endpoint: String,
    /// Jaeger's UI and query API (loopback).
    pub jaeger_url: String,
    pub logs: PathBuf,
    pub tools: Tools,
    /// Set when the platform has a real node.
    pub node: Option<NodeInfo>,
}

/// How pods on the real node reach the platform, and where its registry is.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// The node's address on the pod bridge.
    pub ip: String,
    /// Consul's HTTP address as pods reach it.
    pub consul_http_addr: String,
    /// NATS as pods reach it.
    pub nats_url: String,
    /// `127.0.0.1:<port>`: the local OCI registry the node pulls from.
    pub registry: String,
}

impl PlatformInfo {
    /// The sh-sourceable environment file.
    pub fn env_file(&self) -> String {
        let kube_bin = self.tools.kubectl.parent().unwrap_or(Path::new("."));
        let helm_bin = self.tools.helm.parent().unwrap_or(Path::new("."));
        format!(
            "# StreamGate local platform; source me: . .streamgate/env\n\
             export KUBECONFIG='{}'\n\
             export CONSUL_HTTP_ADDR='{}'\n\
             export NATS_URL='{}'\n\
             export STREAMGATE_NATS_MONITOR='{}'\n\
             export STREAMGATE_APISERVER='{}'\n\
             export STREAMGATE_ETCD='{}'\n\
             export STREAMGATE_OTLP_ENDPOINT='{}'\n\
             export STREAMGATE_JAEGER_URL='{}'\n\
             export STREAMGATE_LOGS='{}'\n\
             # kubectl and helm matching the platform's Kubernetes release\n\
             export PATH='{}:{}':\"$PATH\"\n",
            self.kubeconfig.display(),
            self.consul_http_addr,
            self.nats_url,
            self.nats_monitor_url,
            self.apiserver_url,
            self.etcd_url,
            self.otlp_endpoint,
            self.jaeger_url,
            self.logs.display(),
            kube_bin.display(),
            helm_bin.display(),
        )
    }

    /// Chart values that make `helm install -f` work on the real node as on a user's
    /// cluster: Consul and NATS at addresses pods reach, images already on the node.
    pub fn helm_values(&self) -> Option<String> {
        let node = self.node.as_ref()?;
        Some(format!(
            "# Written by `make env-up` for the local platform's real node.\n\
             image:\n  pullPolicy: IfNotPresent\n\
             consul:\n  address: {consul}\n\
             nats:\n  url: {nats}\n\
             tracing:\n  otlpEndpoint: {otlp}\n",
            consul = node.consul_http_addr,
            nats = node.nats_url,
            otlp = self.otlp_endpoint,
        ))
    }

    /// Runs the platform's helm against it (its caches under the platform's directory).
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.tools.helm)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .args(args)
            .output()
            .context("running helm")?;
        if !out.status.success() {
            bail!(
                "helm {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the platform's own kubectl against it.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        run_kubectl(&self.tools.kubectl, &self.kubeconfig, args, stdin)
    }
}

/// A running platform. Dropping it stops every component.
#[derive(Debug)]
pub struct Platform {
    pub info: PlatformInfo,
    procs: Group,
    node: Option<RealNode>,
}

impl Platform {
    /// Starts every component with its data and logs under `dir`; kwok's nodes only.
    pub fn start(dir: &Path) -> Result<Platform> {
        Self::start_with(dir, false)
    }

    /// Starts every component and a real node (see [`crate::node`]); the pods that must
    /// run land on it, kwok's nodes are tainted.
    pub fn start_with_node(dir: &Path) -> Result<Platform> {
        Self::start_with(dir, true)
    }

    fn start_with(dir: &Path, real_node: bool) -> Result<Platform> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tools = Tools::locate()?;
        // The node's bridge first: the API server, Consul and NATS bind to its address.
        let node = match real_node {
            true => Some(RealNode::claim(
                &dir.join("node"),
                NodeTools::locate(&tools.root, &tools.versions)?,
            )?),
            false => None,
        };
        let listen_ip = match real_node {
            true => node::NODE_IP.to_string(),
            false => "127.0.0.1".to_string(),
        };
        let layout = Layout {
            dir: dir.to_path_buf(),
            etcd_client_port: free_port()?,
            etcd_peer_port: free_port()?,
            apiserver_port: free_port()?,
            controller_manager_port: free_port()?,
            scheduler_port: free_port()?,
            kwok_server_port: free_port()?,
            kwok_node_port: free_port()?,
            consul_http_port: free_port()?,
            consul_serf_lan_port: free_port()?,
            consul_serf_wan_port: free_port()?,
            consul_server_port: free_port()?,
            nats_port: free_port()?,
            nats_monitor_port: free_port()?,
            jaeger: crate::jaeger::JaegerPorts::on(&listen_ip)?,
            listen_ip,
            real_node,
        };
        // A new platform starts from nothing: no data, logs or keys of an earlier one.
        for sub in [layout.logs(), layout.data(), layout.pki()] {
            let _ = std::fs::remove_dir_all(&sub);
            std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let info = PlatformInfo {
            dir: dir.to_path_buf(),
            kubeconfig: layout.kubeconfig("admin"),
            apiserver_url: layout.apiserver_url(),
            // On the node's address when there is one: the same address then works for
            // the host's processes and for pods (Consul listens on both).
            consul_http_addr: format!("http://{}:{}", layout.listen_ip, layout.consul_http_port),
            nats_url: format!("nats://{}:{}", layout.listen_ip, layout.nats_port),
            nats_monitor_url: format!("http://127.0.0.1:{}", layout.nats_monitor_port),
            etcd_url: layout.etcd_url(),
            otlp_endpoint: layout.jaeger.otlp_endpoint(),
            jaeger_url: layout.jaeger.query_url(),
            logs: layout.logs(),
            tools: tools.clone(),
            node: None,
        };
        let mut platform = Platform {
            info,
            procs: Group::default(),
            node,
        };
        if let Err(e) = platform.boot(&tools, &layout) {
            platform.stop();
            return Err(e);
        }
        Ok(platform)
    }

    fn boot(&mut self, tools: &Tools, l: &Layout) -> Result<()> {
        let pki = ClusterPki::generate(&l.pki())?;
        for (user, creds) in [
            ("admin", &pki.admin),
            ("controller-manager", &pki.controller_manager),
            ("scheduler", &pki.scheduler),
            ("kwok", &pki.kwok),
            ("kubelet", &pki.kubelet),
            ("kube-proxy", &pki.kube_proxy),
        ] {
            let yaml = components::kubeconfig_yaml(&l.apiserver_url(), &pki.ca_cert, user, creds);
            std::fs::write(l.kubeconfig(user), yaml)?;
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let nats_config = l.dir.join("nats.conf");
        std::fs::write(&nats_config, components::nats_config(l))?;

        // Independent of each other: start together, then wait for each.
        self.launch(l, "etcd", components::etcd(tools, l))?;
        self.launch(l, "consul", components::consul(tools, l))?;
        self.launch(
            l,
            "nats-server",
            components::nats_server(tools, &nats_config),
        )?;
        let jaeger_config = l.dir.join("jaeger.yaml");
        std::fs::write(&jaeger_config, crate::jaeger::config(&l.jaeger))?;
        self.launch(
            l,
            "jaeger",
            crate::jaeger::command(&tools.jaeger, &jaeger_config),
        )?;
        self.ready("etcd", || {
            Ok(get_text(&http, &format!("{}/health", l.etcd_url()))?.contains("\"true\""))
        })?;
        let consul_leader = format!("{}/v1/status/leader", self.info.consul_http_addr);
        self.ready("consul", || Ok(get_text(&http, &consul_leader)?.len() > 2))?;
        let nats_health = format!("{}/healthz", self.info.nats_monitor_url);
        self.ready("nats-server", || {
            Ok(get_text(&http, &nats_health)?.contains("ok"))
        })?;
        let jaeger_health = l.jaeger.health_url();
        self.ready("jaeger", || {
            Ok(get_text(&http, &jaeger_health)?.contains("\"healthy\":true"))
        })?;

        self.launch(
            l,
            "kube-apiserver",
            components::kube_apiserver(tools, l, &pki),
        )?;
        let admin_http = admin_client(&pki)?;
        let readyz = format!("{}/readyz", l.apiserver_url());
        self.ready("kube-apiserver", || {
            Ok(get_text(&admin_http, &readyz)? == "ok")
        })?;

        self.launch(
            l,
            "kube-controller-manager",
            components::kube_controller_manager(tools, l, &pki),
        )?;
        self.launch(l, "kube-scheduler", components::kube_scheduler(tools, l))?;
        self.launch(l, "kwok", components::kwok(tools, l))?;
        self.info.kubectl(
            &["apply", "-f", "-"],
            Some(&components::kwok_nodes_manifest(KWOK_NODES, l.real_node)),
        )?;
        // Service-account tokens are the controller-manager's doing: its `default`
        // ServiceAccount proves it is up and reconciling.
        self.ready("kube-controller-manager", || {
            Ok(self
                .info
                .kubectl(&["get", "serviceaccount", "default", "-o", "name"], None)
                .is_ok())
        })?;
        let insecure = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .tls_danger_accept_invalid_certs(true)
            .build()?;
        let scheduler_health = format!("https://127.0.0.1:{}/healthz", l.scheduler_port);
        self.ready("kube-scheduler", || {
            Ok(get_text(&insecure, &scheduler_health)? == "ok")
        })?;
        self.ready("kwok", || {
            let out = self.info.kubectl(
                &[
                    "get",
                    "nodes",
                    "-l",
                    "type=kwok",
                    "-o",
                    "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                ],
                None,
            )?;
            Ok(out.lines().filter(|s| *s == "True").count() == KWOK_NODES)
        })?;
        if self.node.is_some() {
            self.start_node(l, &pki)?;
        }
        Ok(())
    }

    fn start_node(&mut self, l: &Layout, pki: &ClusterPki) -> Result<()> {
        let images = node_images()?;
        let info = self.info.clone();
        let kubectl = |args: &[&str]| info.kubectl(args, None);
        let cp = ControlPlane {
            kubelet_kubeconfig: &l.kubeconfig("kubelet"),
            kube_proxy_kubeconfig: &l.kubeconfig("kube-proxy"),
            client_ca: &pki.ca_cert,
            logs: &l.logs(),
            kubectl: &kubectl,
            images: &images,
        };
        let ports = NodePorts {
            kubelet: node::config::KubeletPorts {
                server: free_port()?,
                healthz: free_port()?,
            },
            kube_proxy: node::config::KubeProxyPorts {
                healthz: free_port()?,
                metrics: free_port()?,
            },
            registry: free_port()?,
        };
        let node = self.node.as_mut().context("no real node claimed")?;
        node.start(&cp, ports)?;
        self.info.node = Some(NodeInfo {
            name: node::NODE_NAME.to_string(),
            ip: node::NODE_IP.to_string(),
            consul_http_addr: format!("http://{}:{}", node::NODE_IP, l.consul_http_port),
            nats_url: format!("nats://{}:{}", node::NODE_IP, l.nats_port),
            registry: node.registry.clone(),
        });
        Ok(())
    }

    /// The real node, when the platform has one.
    pub fn node(&self) -> Option<&RealNode> {
        self.node.as_ref()
    }

    fn launch(&mut self, l: &Layout, name: &str, command: Command) -> Result<()> {
        self.procs.launch(&l.logs(), name, command)
    }

    /// Waits for `check`, failing early if the component exits, and with its log tail
    /// when it does not become ready in time.
    fn ready(&self, name: &str, check: impl FnMut() -> Result<bool>) -> Result<()> {
        self.procs.ready(name, READY_TIMEOUT, check)
    }

    /// Stops every component, last started first: the real node (and its pods) before
    /// the control plane. Returns what of the node could not be removed.
    pub fn stop(&mut self) -> Vec<String> {
        let errors = self.node.as_mut().map(RealNode::stop).unwrap_or_default();
        self.node = None;
        self.procs.stop_all(Duration::from_secs(10));
        errors
    }

    fn all_procs(&self) -> impl Iterator<Item = &Proc> {
        self.procs
            .iter()
            .chain(self.node.iter().flat_map(RealNode::procs))
    }

    /// Components that have exited although the platform was not stopped.
    pub fn exited(&self) -> Vec<String> {
        self.all_procs()
            .filter_map(|p| p.exit_status().map(|s| format!("{} ({s})", p.name)))
            .collect()
    }

    /// The last `lines` lines of every component's log, for a failing test.
    pub fn log_tails(&self, lines: usize) -> String {
        self.all_procs()
            .map(|p| {
                format!(
                    "----- {} ({}) -----\n{}",
                    p.name,
                    p.log.display(),
                    p.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn pids(&self) -> Vec<u32> {
        self.all_procs().map(Proc::pid).collect()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let errors = self.stop();
        if !errors.is_empty() {
            eprintln!("stopping the real node: {}", errors.join("; "));
        }
    }
}

/// The image archives `make images` wrote (`STREAMGATE_IMAGES` overrides the folder),
/// which the real node imports; the pause image among them.
pub fn node_images() -> Result<Vec<PathBuf>> {
    let dir = std::env::var_os("STREAMGATE_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::tools::repo_root().join("target/images"));
    let version = env!("CARGO_PKG_VERSION");
    let archives: Vec<PathBuf> = ["pause", "operator", "sidecar", "demo-app"]
        .iter()
        .map(|name| dir.join(format!("{name}-{version}.tar")))
        .collect();
    if let Some(missing) = archives.iter().find(|a| !a.exists()) {
        bail!("{} not found: run `make images`", missing.display());
    }
    Ok(archives)
}

fn get_text(client: &reqwest::blocking::Client, url: &str) -> Result<String> {
    Ok(client.get(url).send()?.text()?.trim().to_string())
}

fn admin_client(pki: &ClusterPki) -> Result<reqwest::blocking::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_cert)?)?;
    let mut identity_pem = std::fs::read(&pki.admin.cert)?;
    identity_pem.extend(std::fs::read(&pki.admin.key)?);
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .tls_certs_only([ca])
        .identity(reqwest::Identity::from_pem(&identity_pem)?)
        .build()?)
}

/// Runs `kubectl` with `kubeconfig`, feeding `stdin` when given; fails with its stderr.
pub fn run_kubectl(
    kubectl: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(kubectl)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", kubectl.display()))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
