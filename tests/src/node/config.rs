//! The real node's configuration files, as pure functions of [`NodePaths`]: containerd's
//! (CRI plugin), the CNI network, the kubelet's and kube-proxy's. What each setting is for
//! is said beside it; the ones this machine needs are marked "here".

use super::{BRIDGE, NODE_IP, NODE_NAME, POD_SUBNET};
use std::path::PathBuf;

/// Where the node keeps its state, sockets and configuration.
#[derive(Debug, Clone)]
pub struct NodePaths {
    /// The node's data: containerd's root, the kubelet's root, CNI state, pod logs.
    pub dir: PathBuf,
    /// Sockets and the owner file, on tmpfs so a reboot clears them.
    pub run: PathBuf,
    /// The CNI plugin binaries (`make tools`).
    pub cni_bin: PathBuf,
    /// runc (`make tools`).
    pub runc: PathBuf,
}

impl NodePaths {
    pub fn containerd_socket(&self) -> PathBuf {
        self.run.join("containerd.sock")
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd.toml")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    /// containerd's per-registry settings (`hosts.toml`), e.g. plain HTTP for the local
    /// registry.
    pub fn registry_hosts_dir(&self) -> PathBuf {
        self.dir.join("containerd/certs.d")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet.yaml")
    }
    pub fn kube_proxy_config(&self) -> PathBuf {
        self.dir.join("kube-proxy.yaml")
    }
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
}

/// containerd 1.6 (config version 2) with only what the CRI plugin needs.
pub fn containerd_toml(p: &NodePaths, sandbox_image: &str) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Snapshotters this node does not use; each would otherwise probe the file system.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  # Nothing can be pulled from a public registry here: `make images` builds the pause image.
  sandbox_image = "{sandbox_image}"
  # Here: a process may not lower its OOM score adjustment.
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pods' network namespaces under the node's state directory, not the machine's
  # /run/netns: taking the node apart unmounts them with everything else of it.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        # The kubelet's cgroup driver here is cgroupfs (cgroup v1 controllers, no systemd).
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
"#,
        root = p.dir.join("containerd/root").display(),
        state = p.run.join("containerd-state").display(),
        socket = p.containerd_socket().display(),
        opt = p.dir.join("containerd/opt").display(),
        runc = p.runc.display(),
        cni_bin = p.cni_bin.display(),
        cni_conf = p.cni_conf_dir().display(),
        hosts = p.registry_hosts_dir().display(),
    )
}

/// The pod network: the harness's own bridge, addresses from host-local, the node as
/// gateway, and no masquerading (nothing from it is to leave the machine; see
/// [`super::network`] for the rule that drops it).
pub fn cni_conflist(p: &NodePaths) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "streamgate-pods",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": p.dir.join("cni/ipam").display().to_string(),
            }
        }]
    })
    .to_string()
}

/// Ports the kubelet listens on.
#[derive(Debug, Clone, Copy)]
pub struct KubeletPorts {
    /// Its API (logs, exec), on the node's address: the API server connects to it.
    pub server: u16,
    /// Its health endpoint, on loopback.
    pub healthz: u16,
}

pub fn kubelet_yaml(p: &NodePaths, ports: KubeletPorts, client_ca: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: {server}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: "{client_ca}"}}
authorization: {{mode: Webhook}}
containerRuntimeEndpoint: unix://{socket}
# Here: no systemd, cgroup v1 controllers, swap may be on.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: "{logs}"
# No cluster DNS on the local platform: pods reach Consul, NATS and the API server by
# address (the API server also through the `kubernetes` Service, via kube-proxy).
resolvConf: ""
# The images were imported, not pulled: never collect them, whatever the disk says.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
serializeImagePulls: false
maxPods: 110
"#,
        server = ports.server,
        healthz = ports.healthz,
        socket = p.containerd_socket().display(),
        logs = p.pod_logs().display(),
    )
}

/// Ports kube-proxy listens on, both on loopback.
#[derive(Debug, Clone, Copy)]
pub struct KubeProxyPorts {
    pub healthz: u16,
    pub metrics: u16,
}

pub fn kube_proxy_yaml(kubeconfig: &str, ports: KubeProxyPorts) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: "{kubeconfig}"}}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_SUBNET}
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
# NodePorts only on the pod bridge, never on the machine's other interfaces.
nodePortAddresses: ["{NODE_IP}/32"]
iptables: {{localhostNodePorts: false, masqueradeAll: false}}
# Leave the machine's conntrack sysctls alone.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"#,
        healthz = ports.healthz,
        metrics = ports.metrics,
    )
}

/// containerd's `hosts.toml` for a registry served over plain HTTP on loopback.
pub fn plain_http_registry_hosts(host_port: &str) -> String {
    format!(
        "server = \"http://{host_port}\"\n\n[host.\"http://{host_port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> NodePaths {
        NodePaths {
            dir: "/tmp/node".into(),
            run: "/run/sg".into(),
            cni_bin: "/tools/cni".into(),
            runc: "/tools/bin/runc".into(),
        }
    }

    #[test]
    fn cni_network_never_masquerades_and_uses_the_harness_bridge() {
        let v: serde_json::Value = serde_json::from_str(&cni_conflist(&paths())).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["bridge"], BRIDGE);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], NODE_IP);
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/node/cni/ipam");
    }

    #[test]
    fn configs_are_valid_yaml_with_the_settings_this_machine_needs() {
        let kubelet: serde_yaml::Value = serde_yaml::from_str(&kubelet_yaml(
            &paths(),
            KubeletPorts {
                server: 1,
                healthz: 2,
            },
            "/ca.crt",
        ))
        .unwrap();
        assert_eq!(kubelet["cgroupDriver"], "cgroupfs");
        assert_eq!(kubelet["failCgroupV1"], false);
        assert_eq!(kubelet["address"], NODE_IP);
        assert_eq!(kubelet["authentication"]["anonymous"]["enabled"], false);
        let proxy: serde_yaml::Value = serde_yaml::from_str(&kube_proxy_yaml(
            "/k",
            KubeProxyPorts {
                healthz: 3,
                metrics: 4,
            },
        ))
        .unwrap();
        assert_eq!(proxy["healthzBindAddress"], "127.0.0.1:3");
        assert_eq!(proxy["nodePortAddresses"][0], format!("{NODE_IP}/32"));
        let containerd = containerd_toml(&paths(), "docker.io/streamgate/pause:1");
        assert!(containerd.contains("restrict_oom_score_adj = true"));
        assert!(containerd.contains("sandbox_image = \"docker.io/streamgate/pause:1\""));
    }
}
