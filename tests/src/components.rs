//! Each component's command line. Readiness checks live in [`crate::platform`], which
//! knows the order the components depend on each other.

use crate::pki::{CertFiles, ClusterPki};
use crate::tools::Tools;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Ports and paths every component agrees on.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub apiserver_port: u16,
    pub controller_manager_port: u16,
    pub scheduler_port: u16,
    pub kwok_server_port: u16,
    pub kwok_node_port: u16,
    pub consul_http_port: u16,
    pub consul_serf_lan_port: u16,
    pub consul_serf_wan_port: u16,
    pub consul_server_port: u16,
    pub nats_port: u16,
    pub nats_monitor_port: u16,
    pub jaeger: crate::jaeger::JaegerPorts,
    /// Where the API server and NATS listen: 127.0.0.1, or the real node's address on the
    /// pod bridge when the platform has one (pods must reach them; the host reaches that
    /// address as well as loopback).
    pub listen_ip: String,
    /// Whether a real node runs (the API server then publishes its own endpoints).
    pub real_node: bool,
}

impl Layout {
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        if user == "admin" {
            self.dir.join("kubeconfig")
        } else {
            self.pki().join(format!("{user}.kubeconfig"))
        }
    }
    pub fn apiserver_url(&self) -> String {
        format!("https://{}:{}", self.listen_ip, self.apiserver_port)
    }
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_client_port)
    }
}

/// A kubeconfig for `user` authenticating with its client certificate.
pub fn kubeconfig_yaml(server: &str, ca: &Path, user: &str, creds: &CertFiles) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: streamgate-local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: streamgate-local\n  context:\n    cluster: streamgate-local\n    user: {user}\ncurrent-context: streamgate-local\n",
        ca = ca.display(),
        cert = creds.cert.display(),
        key = creds.key.display(),
    )
}

pub fn etcd(tools: &Tools, l: &Layout) -> Command {
    let peer = format!("http://127.0.0.1:{}", l.etcd_peer_port);
    let mut c = Command::new(&tools.etcd);
    c.arg("--name=streamgate-local")
        .arg(format!("--data-dir={}", l.data().join("etcd").display()))
        .arg(format!("--listen-client-urls={}", l.etcd_url()))
        .arg(format!("--advertise-client-urls={}", l.etcd_url()))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=streamgate-local={peer}"))
        // A throw-away test cluster: durability across power loss is not worth the fsyncs.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    c
}

pub fn kube_apiserver(tools: &Tools, l: &Layout, pki: &ClusterPki) -> Command {
    let mut c = Command::new(&tools.kube_apiserver);
    c.arg(format!("--etcd-servers={}", l.etcd_url()))
        .arg(format!("--bind-address={}", l.listen_ip))
        .arg(format!("--advertise-address={}", l.listen_ip))
        .arg(format!("--secure-port={}", l.apiserver_port))
        .arg(format!("--tls-cert-file={}", pki.apiserver.cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.apiserver.key.display()
        ))
        .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
        // Published for the controller-manager's and scheduler's delegated authentication,
        // which otherwise log an error every few seconds.
        .arg(format!(
            "--requestheader-client-ca-file={}",
            pki.ca_cert.display()
        ))
        .arg("--requestheader-allowed-names=front-proxy-client")
        .arg("--requestheader-username-headers=X-Remote-User")
        .arg("--requestheader-group-headers=X-Remote-Group")
        .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!(
            "--service-account-key-file={}",
            pki.service_account_pub.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.service_account_key.display()
        ))
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        .arg("--authorization-mode=Node,RBAC")
        .arg(
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,\
             PodSecurity,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota",
        )
        .arg("--allow-privileged=true")
        .arg("--profiling=false");
    if l.real_node {
        // Pods reach the API server through the `kubernetes` Service (kube-proxy), whose
        // endpoint is the advertised address on the pod bridge; `kubectl logs`/`exec`
        // reach the kubelet at its InternalIP with the admin identity.
        c.arg("--endpoint-reconciler-type=lease")
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!(
                "--kubelet-client-certificate={}",
                pki.admin.cert.display()
            ))
            .arg(format!("--kubelet-client-key={}", pki.admin.key.display()));
    } else {
        // The advertised address is loopback and no kubelet runs: nothing would answer
        // behind the `kubernetes` Service's endpoints.
        c.arg("--endpoint-reconciler-type=none");
    }
    c
}

pub fn kube_controller_manager(tools: &Tools, l: &Layout, pki: &ClusterPki) -> Command {
    let kubeconfig = l.kubeconfig("controller-manager");
    let mut c = Command::new(&tools.kube_controller_manager);
    c.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!(
            "--authentication-kubeconfig={}",
            kubeconfig.display()
        ))
        .arg(format!(
            "--authorization-kubeconfig={}",
            kubeconfig.display()
        ))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", l.controller_manager_port))
        .arg(format!(
            "--cert-dir={}",
            l.data().join("controller-manager").display()
        ))
        .arg("--leader-elect=false")
        .arg(format!(
            "--service-account-private-key-file={}",
            pki.service_account_key.display()
        ))
        .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
        .arg("--use-service-account-credentials=true");
    c
}

pub fn kube_scheduler(tools: &Tools, l: &Layout) -> Command {
    let kubeconfig = l.kubeconfig("scheduler");
    let mut c = Command::new(&tools.kube_scheduler);
    c.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!(
            "--authentication-kubeconfig={}",
            kubeconfig.display()
        ))
        .arg(format!(
            "--authorization-kubeconfig={}",
            kubeconfig.display()
        ))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", l.scheduler_port))
        .arg(format!(
            "--cert-dir={}",
            l.data().join("scheduler").display()
        ))
        .arg("--leader-elect=false");
    c
}

/// Annotation that tells kwok a node is its to play.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

pub fn kwok(tools: &Tools, l: &Layout) -> Command {
    let mut c = Command::new(&tools.kwok);
    c.arg(format!("--kubeconfig={}", l.kubeconfig("kwok").display()))
        .arg(format!("--config={}", tools.kwok_stages.display()))
        .arg("--manage-all-nodes=false")
        .arg(format!(
            "--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"
        ))
        .arg(format!("--server-address=127.0.0.1:{}", l.kwok_server_port))
        .arg(format!("--node-port={}", l.kwok_node_port))
        .arg("--node-ip=127.0.0.1")
        .arg("--cidr=10.244.0.1/16")
        .arg("--node-lease-duration-seconds=40");
    c
}

/// Taint on kwok's nodes while a real node runs, so pods land on the real one unless they
/// tolerate it (the scale tests' pods do).
pub const KWOK_TAINT: &str = "streamgate.io/fake-node";

/// The fake nodes kwok plays, as a manifest for `kubectl apply`; `tainted` when a real
/// node should get the pods.
pub fn kwok_nodes_manifest(count: usize, tainted: bool) -> String {
    let taints = if tainted {
        format!("\nspec:\n  taints: [{{key: {KWOK_TAINT}, value: \"true\", effect: NoSchedule}}]")
    } else {
        String::new()
    };
    (0..count)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: kwok-node-{i}\n  annotations:\n    {KWOK_NODE_ANNOTATION}: fake\n    node.alpha.kubernetes.io/ttl: \"0\"\n  labels:\n    type: kwok\n    kubernetes.io/hostname: kwok-node-{i}\n    kubernetes.io/os: linux\n    kubernetes.io/arch: amd64{taints}\nstatus:\n  allocatable: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n  capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

pub fn consul(tools: &Tools, l: &Layout) -> Command {
    let mut c = Command::new(&tools.consul);
    c.arg("agent")
        .arg("-dev")
        .arg("-node=streamgate-local")
        .arg("-bind=127.0.0.1")
        .arg(if l.real_node {
            format!("-client=127.0.0.1 {}", l.listen_ip)
        } else {
            "-client=127.0.0.1".to_string()
        })
        .arg(format!("-http-port={}", l.consul_http_port))
        .arg("-dns-port=-1")
        .arg("-grpc-port=-1")
        .arg(format!("-serf-lan-port={}", l.consul_serf_lan_port))
        .arg(format!("-serf-wan-port={}", l.consul_serf_wan_port))
        .arg(format!("-server-port={}", l.consul_server_port))
        .args(crate::consul_agent::fixed_port_flags(&tools.consul));
    c
}

/// nats-server's configuration file: client and monitoring listeners on loopback,
/// JetStream with its store under the platform's data directory.
pub fn nats_config(l: &Layout) -> String {
    format!(
        "server_name: streamgate-local\nlisten: {}:{}\nhttp: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
        l.listen_ip,
        l.nats_port,
        l.nats_monitor_port,
        l.data().join("nats").display()
    )
}

pub fn nats_server(tools: &Tools, config: &Path) -> Command {
    let mut c = Command::new(&tools.nats_server);
    c.arg("-c").arg(config);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwok_nodes_manifest_has_one_document_per_node() {
        let manifest = kwok_nodes_manifest(2, false);
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&manifest)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["metadata"]["name"], "kwok-node-1");
        assert_eq!(
            docs[0]["metadata"]["annotations"][KWOK_NODE_ANNOTATION],
            "fake"
        );
    }
}
