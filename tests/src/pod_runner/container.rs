//! Turning one container of a pod into a local command: the program its image stands for
//! ([`super::images`]), its environment (literal values with `$(VAR)` expansion,
//! `fieldRef`, `secretKeyRef`, `configMapKeyRef`, `envFrom`), its volumes as directories
//! of the pod, and the rewrites that let many pods share the host's network namespace.

use super::images::Program;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret};
use kube::api::Api;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sidecar listeners the runner moves onto the pod IP (DESIGN.md's ports).
/// Where the operator mounts a service's mTLS identity in the sidecar.
const MTLS_DIR: &str = "/etc/streamgate/mtls";
const SIDECAR_LISTENERS: &[(&str, u16)] = &[
    ("STREAMGATE_APP_LISTEN", 15001),
    ("STREAMGATE_INBOUND_LISTEN", 15006),
    ("STREAMGATE_ADMIN_LISTEN", 15020),
];

/// What every container of one pod shares.
pub struct PodContext {
    pub client: kube::Client,
    pub pod: Pod,
    pub ip: Ipv4Addr,
    pub node: String,
    /// The pod's directory: volumes under `volumes/`, the containers' working directory.
    pub dir: PathBuf,
    /// Volume name → directory on the host.
    pub volumes: BTreeMap<String, PathBuf>,
}

impl PodContext {
    fn namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    /// Materialises the pod's volumes: `emptyDir` as an empty directory, `secret` and
    /// `configMap` as their files (once, at pod start), `hostPath` as itself. Others
    /// (projected service-account tokens, PVCs, …) are left out. Returns notes on what
    /// was skipped.
    pub async fn prepare_volumes(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let ns = self.namespace();
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for v in volumes {
            let dir = self.dir.join("volumes").join(&v.name);
            if let Some(host) = &v.host_path {
                self.volumes
                    .insert(v.name.clone(), PathBuf::from(&host.path));
                continue;
            }
            let files: Option<BTreeMap<String, Vec<u8>>> = if v.empty_dir.is_some() {
                Some(BTreeMap::new())
            } else if let Some(secret) = &v.secret {
                let name = secret.secret_name.clone().unwrap_or_default();
                match Api::<Secret>::namespaced(self.client.clone(), &ns)
                    .get_opt(&name)
                    .await
                {
                    Ok(Some(s)) => {
                        let mut data: BTreeMap<String, Vec<u8>> = s
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect();
                        for (k, v) in s.string_data.unwrap_or_default() {
                            data.insert(k, v.into_bytes());
                        }
                        Some(select_items(data, secret.items.as_deref()))
                    }
                    _ => {
                        notes.push(format!("secret {name} of volume {} not found", v.name));
                        Some(BTreeMap::new())
                    }
                }
            } else if let Some(cm) = &v.config_map {
                let name = cm.name.clone();
                match Api::<ConfigMap>::namespaced(self.client.clone(), &ns)
                    .get_opt(&name)
                    .await
                {
                    Ok(Some(c)) => {
                        let mut data: BTreeMap<String, Vec<u8>> = c
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes()))
                            .collect();
                        for (k, v) in c.binary_data.unwrap_or_default() {
                            data.insert(k, v.0);
                        }
                        Some(select_items(data, cm.items.as_deref()))
                    }
                    _ => {
                        notes.push(format!("configMap {name} of volume {} not found", v.name));
                        Some(BTreeMap::new())
                    }
                }
            } else {
                notes.push(format!(
                    "volume {} of an unsupported kind is left out",
                    v.name
                ));
                None
            };
            let Some(files) = files else { continue };
            let _ = std::fs::create_dir_all(&dir);
            for (path, bytes) in files {
                let target = dir.join(path);
                if let Some(parent) = target.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = std::fs::write(&target, bytes);
            }
            self.volumes.insert(v.name.clone(), dir);
        }
        notes
    }

    fn field(&self, path: &str) -> Option<String> {
        let m = &self.pod.metadata;
        let value = match path {
            "metadata.name" => m.name.clone(),
            "metadata.namespace" => m.namespace.clone(),
            "metadata.uid" => m.uid.clone(),
            "spec.nodeName" => Some(self.node.clone()),
            "spec.serviceAccountName" => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone()),
            "status.podIP" | "status.podIPs" => Some(self.ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
            _ => {
                let key = |prefix: &str| {
                    path.strip_prefix(prefix)
                        .and_then(|r| r.strip_suffix("']"))
                        .map(str::to_string)
                };
                if let Some(k) = key("metadata.labels['") {
                    m.labels.as_ref().and_then(|l| l.get(&k).cloned())
                } else if let Some(k) = key("metadata.annotations['") {
                    m.annotations.as_ref().and_then(|a| a.get(&k).cloned())
                } else {
                    None
                }
            }
        };
        Some(value.unwrap_or_default())
    }

    async fn secret_key(&self, name: &str, key: &str) -> Option<String> {
        let s = Api::<Secret>::namespaced(self.client.clone(), &self.namespace())
            .get_opt(name)
            .await
            .ok()??;
        if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
            return Some(String::from_utf8_lossy(&v.0).into_owned());
        }
        s.string_data.and_then(|d| d.get(key).cloned())
    }

    async fn config_map_key(&self, name: &str, key: &str) -> Option<String> {
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace())
            .get_opt(name)
            .await
            .ok()??
            .data?
            .get(key)
            .cloned()
    }

    /// The environment of `container` as the kubelet would give it, plus the runner's
    /// rewrites for `program`. A missing non-optional Secret or ConfigMap key is an
    /// error (the kubelet's CreateContainerConfigError).
    pub async fn environment(
        &self,
        container: &Container,
        program: &Program,
    ) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), self.dir.display().to_string()),
            (
                "HOSTNAME".into(),
                self.pod.metadata.name.clone().unwrap_or_default(),
            ),
        ];
        for from in container.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let data: BTreeMap<String, String> = if let Some(cm) = &from.config_map_ref {
                Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace())
                    .get_opt(&cm.name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|c| c.data)
                    .unwrap_or_default()
            } else if let Some(sr) = &from.secret_ref {
                Api::<Secret>::namespaced(self.client.clone(), &self.namespace())
                    .get_opt(&sr.name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| s.data)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect()
            } else {
                BTreeMap::new()
            };
            for (k, v) in data {
                set(&mut env, &format!("{prefix}{k}"), v);
            }
        }
        for var in container.env.iter().flatten() {
            if let Some(value) = self.env_value(var, &env).await? {
                set(&mut env, &var.name, value);
            }
        }
        self.rewrite(&mut env, container, program);
        Ok(env)
    }

    async fn env_value(
        &self,
        var: &EnvVar,
        earlier: &[(String, String)],
    ) -> Result<Option<String>, String> {
        if let Some(value) = &var.value {
            return Ok(Some(expand(value, earlier)));
        }
        let Some(from) = &var.value_from else {
            return Ok(Some(String::new()));
        };
        if let Some(field) = &from.field_ref {
            return Ok(self.field(&field.field_path));
        }
        if let Some(sel) = &from.secret_key_ref {
            return match self.secret_key(&sel.name, &sel.key).await {
                Some(v) => Ok(Some(v)),
                None if sel.optional == Some(true) => Ok(None),
                None => Err(format!(
                    "secret {:?} key {:?} (env {}) not found",
                    sel.name, sel.key, var.name
                )),
            };
        }
        if let Some(sel) = &from.config_map_key_ref {
            return match self.config_map_key(&sel.name, &sel.key).await {
                Some(v) => Ok(Some(v)),
                None if sel.optional == Some(true) => Ok(None),
                None => Err(format!(
                    "configMap {:?} key {:?} (env {}) not found",
                    sel.name, sel.key, var.name
                )),
            };
        }
        Ok(None)
    }

    /// Many pods share the host's network: what a container would bind or reach on its
    /// own loopback goes to the pod IP instead. Mounted volumes' paths in the
    /// environment become the host directories standing in for them.
    fn rewrite(&self, env: &mut Vec<(String, String)>, container: &Container, program: &Program) {
        let ip = self.ip.to_string();
        match program {
            Program::Sidecar(_) => {
                for (name, port) in SIDECAR_LISTENERS {
                    let value = get(env, name)
                        .map(|v| to_pod_ip(&v, &ip))
                        .unwrap_or_else(|| format!("{ip}:{port}"));
                    set(env, name, value);
                }
                // The app listens on the pod IP too (below).
                set(env, "STREAMGATE_APP_HOST", ip.clone());
                // The identity volume's path is the sidecar's default, not in its
                // environment: name it so the rewrite below points it at the volume.
                let mtls_mounted = container
                    .volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.mount_path.trim_end_matches('/') == MTLS_DIR);
                if mtls_mounted {
                    set(env, "STREAMGATE_MTLS_DIR", MTLS_DIR.to_string());
                }
            }
            Program::DemoApp(_) => {
                let port = container
                    .ports
                    .iter()
                    .flatten()
                    .next()
                    .map(|p| p.container_port)
                    .unwrap_or(9091);
                let listen = get(env, "DEMO_LISTEN")
                    .map(|v| to_pod_ip(&v, &ip))
                    .unwrap_or_else(|| format!("{ip}:{port}"));
                set(env, "DEMO_LISTEN", listen);
                if get(env, "POD_NAME").is_none() {
                    set(
                        env,
                        "POD_NAME",
                        self.pod.metadata.name.clone().unwrap_or_default(),
                    );
                }
            }
            _ => {}
        }
        if let Some(addr) = get(env, "STREAMGATE_SIDECAR_ADDR") {
            set(env, "STREAMGATE_SIDECAR_ADDR", to_pod_ip(&addr, &ip));
        }
        let mut mounts: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter_map(|m| {
                let dir = self.volumes.get(&m.name)?;
                let dir = match &m.sub_path {
                    Some(sub) if !sub.is_empty() => dir.join(sub),
                    _ => dir.clone(),
                };
                Some((m.mount_path.trim_end_matches('/').to_string(), dir))
            })
            .collect();
        // Longest first, so /a/b is rewritten before /a.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        for (_, value) in env.iter_mut() {
            for (path, dir) in &mounts {
                if !path.is_empty() && value.contains(path.as_str()) {
                    *value = value.replace(path.as_str(), &dir.display().to_string());
                }
            }
        }
    }

    /// Command line for `container` running `program`, with `env` and the pod's directory
    /// as working directory; `None` when a host command has no `command`.
    pub fn command(
        &self,
        container: &Container,
        program: &Program,
        env: &[(String, String)],
    ) -> Option<Command> {
        let cmd: Vec<String> = container
            .command
            .iter()
            .flatten()
            .map(|a| expand(a, env))
            .collect();
        let args: Vec<String> = container
            .args
            .iter()
            .flatten()
            .map(|a| expand(a, env))
            .collect();
        let mut c = match program {
            Program::Sidecar(bin) | Program::DemoApp(bin) | Program::Binary(bin) => {
                let mut c = Command::new(bin);
                c.args(cmd.iter().skip(1)).args(&args);
                c
            }
            Program::Host => {
                let all: Vec<&String> = cmd.iter().chain(args.iter()).collect();
                let (first, rest) = all.split_first()?;
                let mut c = Command::new(first);
                c.args(rest);
                c
            }
        };
        c.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir);
        Some(c)
    }
}

fn select_items(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        Some(items) if !items.is_empty() => items
            .iter()
            .filter_map(|i| Some((i.path.clone(), data.get(&i.key)?.clone())))
            .collect(),
        _ => data,
    }
}

fn get(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_string(), value));
}

/// `127.0.0.1:15001`, `localhost:15001`, `0.0.0.0:15001` → `<ip>:15001`.
fn to_pod_ip(addr: &str, ip: &str) -> String {
    for local in ["127.0.0.1:", "localhost:", "0.0.0.0:"] {
        if let Some(port) = addr.strip_prefix(local) {
            return format!("{ip}:{port}");
        }
    }
    addr.to_string()
}

/// The kubelet's `$(VAR)` expansion against earlier variables; `$$` escapes.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = get(env, &inner[..end])
        {
            out.push_str(&v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The log file of one container of one pod.
pub fn log_path(dir: &Path, pod: &Pod, container: &str) -> PathBuf {
    dir.join(format!(
        "{}_{}_{container}.log",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_the_kubelet() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)", &env), "x-$(B)-$(A)");
    }

    #[test]
    fn loopback_addresses_move_to_the_pod_ip() {
        assert_eq!(
            to_pod_ip("127.0.0.1:15001", "127.0.0.12"),
            "127.0.0.12:15001"
        );
        assert_eq!(to_pod_ip("10.0.0.1:80", "127.0.0.12"), "10.0.0.1:80");
    }
}
