//! Defaults and checks that turn the overridden document into [`Settings`].
//!
//! The service part is checked by `ServiceConfig::validate` from `streamgate-crds`, the
//! same rules the API server enforces on a StreamGateService; this module checks what
//! only the sidecar knows about: the pod, listeners, Consul, NATS and durations.

use super::{ConsulSettings, EnvLookup, HealthSettings, Listen, Secret, Settings};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use streamgate_crds::contract::identity;
use streamgate_crds::contract::lifecycle::MAX_LEAVE_DELAY_MS;
use streamgate_crds::sidecar_config::{
    ADMIN_PORT, APP_PORT, ConsulMode, INBOUND_PORT, SidecarConfig,
};
use streamgate_crds::{FieldError, GoDuration};

/// Where Consul's agent listens when nothing says otherwise (Consul's own default).
pub const DEFAULT_CONSUL_ADDRESS: &str = "http://127.0.0.1:8500";
/// The pod IP of a sidecar run by hand beside a local app.
pub const DEFAULT_POD_IP: &str = "127.0.0.1";

pub fn resolve(mut doc: SidecarConfig, env: EnvLookup<'_>) -> Result<Settings, FieldError> {
    if doc.service.service_name.is_empty() {
        return Err(FieldError::new("service.serviceName", "is required"));
    }
    doc.service.validate()?;
    let pod_ip = resolve_pod(&mut doc, env)?;
    check_host("appHost", &doc.app_host)?;
    let listen = resolve_listen(&mut doc, pod_ip)?;
    let consul = resolve_consul(&mut doc, env)?;
    check_nats_url(doc.nats.url.as_deref())?;
    if doc.drain_timeout.as_duration() > Duration::from_secs(3600) {
        return Err(FieldError::new(
            "drainTimeout",
            format!("{} is longer than 1h", doc.drain_timeout),
        ));
    }
    let leave_delay = doc.leave_delay.as_duration();
    if leave_delay > Duration::from_millis(MAX_LEAVE_DELAY_MS) {
        return Err(FieldError::new(
            "leaveDelay",
            format!(
                "{} is longer than {}s",
                doc.leave_delay,
                MAX_LEAVE_DELAY_MS / 1000
            ),
        ));
    }
    let host_ip = resolve_host_ip(&doc.pod.host_ip)?;
    let events = super::events::resolve(&mut doc, env)?;
    Ok(Settings {
        pod_ip,
        host_ip,
        leave_delay,
        listen,
        consul,
        health: health_settings(&doc),
        events,
        drain_timeout: doc.drain_timeout.as_duration(),
        log_level: doc.log_level,
        mtls_dir: streamgate_crds::contract::mounts::MTLS_DIR.into(),
        identity_token_file: std::path::Path::new(identity::TOKEN_DIR).join(identity::TOKEN_FILE),
        document: doc,
    })
}

/// The node's address, when the downward API gives it.
fn resolve_host_ip(text: &str) -> Result<Option<IpAddr>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        FieldError::new(
            "pod.hostIp",
            format!("{text:?} is not an IP address (HOST_IP)"),
        )
    })
}

/// The pod's IP, name and namespace, defaulted for a sidecar run by hand; the IP parsed.
fn resolve_pod(doc: &mut SidecarConfig, env: EnvLookup<'_>) -> Result<IpAddr, FieldError> {
    if doc.pod.ip.is_empty() {
        doc.pod.ip = DEFAULT_POD_IP.to_string();
    }
    let pod_ip: IpAddr = doc.pod.ip.parse().map_err(|_| {
        FieldError::new(
            "pod.ip",
            format!("{:?} is not an IP address (POD_IP)", doc.pod.ip),
        )
    })?;
    if doc.pod.name.is_empty() {
        // By hand, beside a local app: the host's name identifies the instance.
        doc.pod.name = env("HOSTNAME").unwrap_or_else(|| "local".into());
    }
    check_name("pod.name", &doc.pod.name)?;
    if doc.pod.namespace.is_empty() {
        doc.pod.namespace = "default".into();
    }
    check_name("pod.namespace", &doc.pod.namespace)?;
    Ok(pod_ip)
}

/// The three listeners: the app's on loopback, inbound and admin on the pod IP, each on
/// its own address.
fn resolve_listen(doc: &mut SidecarConfig, pod_ip: IpAddr) -> Result<Listen, FieldError> {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let listen = Listen {
        app: listen_addr("listen.app", &mut doc.listen.app, loopback, APP_PORT)?,
        inbound: listen_addr(
            "listen.inbound",
            &mut doc.listen.inbound,
            pod_ip,
            INBOUND_PORT,
        )?,
        admin: listen_addr("listen.admin", &mut doc.listen.admin, pod_ip, ADMIN_PORT)?,
    };
    if listen.inbound == listen.admin || listen.app == listen.admin {
        return Err(FieldError::new(
            "listen.admin",
            format!("{} is already used by another listener", listen.admin),
        ));
    }
    if listen.app == listen.inbound {
        return Err(FieldError::new(
            "listen.inbound",
            format!("{} is already used by listen.app", listen.inbound),
        ));
    }
    Ok(listen)
}

fn resolve_consul(
    doc: &mut SidecarConfig,
    env: EnvLookup<'_>,
) -> Result<ConsulSettings, FieldError> {
    let address = consul_address(doc.consul.address.as_deref(), env)?;
    doc.consul.address = Some(address.clone());
    if let Some(cluster) = &doc.consul.cluster_id
        && !streamgate_consul::contract::is_valid_cluster_id(cluster)
    {
        return Err(FieldError::new(
            "consul.clusterId",
            format!("{cluster:?} is not 1-63 letters, digits, '.', '_' or '-'"),
        ));
    }
    let node_name = Some(doc.pod.node_name.trim().to_string()).filter(|n| !n.is_empty());
    if doc.consul.mode == ConsulMode::Catalog && node_name.is_none() {
        return Err(FieldError::new(
            "pod.nodeName",
            "consul.mode catalog registers the instance on the Kubernetes node's Consul node, \
             so it needs the node's name (NODE_NAME, downward API spec.nodeName)",
        ));
    }
    Ok(ConsulSettings {
        mode: doc.consul.mode,
        node_name,
        address,
        token: consul_token(doc.consul.token_file.as_deref(), env)?,
        deregister_critical_after: at_least(
            "consul.deregisterCriticalAfter",
            doc.consul.deregister_critical_after,
            Duration::from_secs(1),
        )?,
    })
}

fn check_nats_url(url: Option<&str>) -> Result<(), FieldError> {
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    let schemes = ["nats://", "tls://", "ws://", "wss://"];
    if !schemes.iter().any(|s| url.starts_with(s)) || url.len() <= 7 {
        return Err(FieldError::new(
            "nats.url",
            format!("{url:?} is not a nats://, tls://, ws:// or wss:// URL"),
        ));
    }
    Ok(())
}

fn health_settings(doc: &SidecarConfig) -> HealthSettings {
    let h = &doc.service.health;
    HealthSettings {
        kind: h.kind,
        host: doc.app_host.clone(),
        // validate() checked both ports are in 1..=65535.
        port: u16::try_from(h.port.unwrap_or(doc.service.port)).unwrap_or_default(),
        path: h.http_path().to_string(),
        period: Duration::from_secs(h.period_seconds.unsigned_abs().into()),
        timeout: Duration::from_secs(h.timeout_seconds.unsigned_abs().into()),
        failure_threshold: h.failure_threshold.unsigned_abs(),
        success_threshold: h.success_threshold.unsigned_abs(),
    }
}

/// Kubernetes object names and namespaces: what Consul IDs and meta can carry as is.
fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{name:?} is not a DNS-1123 name"),
        ))
    }
}

fn check_host(field: &str, host: &str) -> Result<(), FieldError> {
    let hostname = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if hostname || host.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{host:?} is not a host name or IP address"),
        ))
    }
}

/// Parses `listen.*`, filling the default from the pod IP, and writes the effective
/// value back so `/config` shows it.
fn listen_addr(
    field: &str,
    value: &mut Option<String>,
    default_ip: IpAddr,
    default_port: u16,
) -> Result<SocketAddr, FieldError> {
    let addr = match value.as_deref() {
        None | Some("") => SocketAddr::new(default_ip, default_port),
        Some(text) => text
            .parse()
            .map_err(|_| FieldError::new(field, format!("{text:?} is not an ip:port address")))?,
    };
    *value = Some(addr.to_string());
    Ok(addr)
}

/// The document's (or flag's, or `CONSUL_HTTP_ADDR`'s) address, else the seed's
/// `CONSUL_ADDRESS` + `CONSUL_PORT`, else Consul's default; `host:port` gets `http://`.
pub fn consul_address(configured: Option<&str>, env: EnvLookup<'_>) -> Result<String, FieldError> {
    const FIELD: &str = "consul.address";
    let text = match configured.filter(|a| !a.is_empty()) {
        Some(address) => address.to_string(),
        None => match (
            env("CONSUL_ADDRESS").filter(|a| !a.is_empty()),
            env("CONSUL_PORT"),
        ) {
            (Some(host), Some(port)) if !host.contains("://") => format!("{host}:{port}"),
            (Some(host), _) => host,
            (None, _) => DEFAULT_CONSUL_ADDRESS.to_string(),
        },
    };
    let with_scheme = if text.contains("://") {
        text.clone()
    } else {
        format!("http://{text}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| FieldError::new(FIELD, format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldError::new(
            FIELD,
            format!("{text:?}: the scheme must be http or https"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty)
        || !matches!(url.path(), "" | "/")
        || url.query().is_some()
    {
        return Err(FieldError::new(
            FIELD,
            format!("{text:?} must be http(s)://host:port and nothing more"),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The ACL token: the file's content when a file is named (it can be a mounted Secret),
/// else `CONSUL_HTTP_TOKEN`.
fn consul_token(file: Option<&str>, env: EnvLookup<'_>) -> Result<Option<Secret>, FieldError> {
    match file.filter(|f| !f.is_empty()) {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                FieldError::new("consul.tokenFile", format!("cannot read {path}: {e}"))
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(FieldError::new(
                    "consul.tokenFile",
                    format!("{path} is empty"),
                ));
            }
            Ok(Some(Secret(token.to_string())))
        }
        None => Ok(env("CONSUL_HTTP_TOKEN")
            .filter(|t| !t.is_empty())
            .map(Secret)),
    }
}

fn at_least(field: &str, value: GoDuration, min: Duration) -> Result<Duration, FieldError> {
    if value.as_duration() < min {
        Err(FieldError::new(
            field,
            format!("{value} is shorter than the minimum {min:?}"),
        ))
    } else {
        Ok(value.as_duration())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_document;

    fn resolve_yaml(yaml: &str, env: EnvLookup<'_>) -> Result<Settings, FieldError> {
        resolve(parse_document(yaml)?, env)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = "service: {serviceName: upload, port: 9091}\n";

    #[test]
    fn defaults_derive_from_the_pod_ip() {
        let s = resolve_yaml(
            &format!("{MINIMAL}pod: {{ip: 127.0.0.5, name: p}}"),
            &no_env,
        )
        .unwrap();
        assert_eq!(s.listen.inbound.to_string(), "127.0.0.5:15006");
        assert_eq!(s.listen.admin.to_string(), "127.0.0.5:15020");
        assert_eq!(s.listen.app.to_string(), "127.0.0.1:15001");
        assert_eq!(s.consul.address, "http://127.0.0.1:8500");
        assert_eq!(s.document.pod.namespace, "default");
        assert_eq!(s.health.path, "/health");
        assert_eq!((s.health.port, s.health.period.as_secs()), (9091, 5));
    }

    #[test]
    fn consul_address_sources_in_order() {
        let seed = |name: &str| match name {
            "CONSUL_ADDRESS" => Some("consul.internal".to_string()),
            "CONSUL_PORT" => Some("8501".to_string()),
            _ => None,
        };
        assert_eq!(
            consul_address(None, &seed).unwrap(),
            "http://consul.internal:8501"
        );
        assert_eq!(
            consul_address(Some("10.0.0.1:8500"), &seed).unwrap(),
            "http://10.0.0.1:8500"
        );
        assert_eq!(
            consul_address(Some("https://c:8501/"), &no_env).unwrap(),
            "https://c:8501"
        );
        for bad in [
            "ftp://c:1",
            "http://c:8500/v1",
            "http://:8500",
            "c:notaport",
        ] {
            let err = consul_address(Some(bad), &no_env).unwrap_err();
            assert_eq!(err.field, "consul.address", "{bad}: {err}");
        }
    }

    #[test]
    fn token_from_file_wins_over_environment() {
        let path = std::env::temp_dir().join(format!("sg-token-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let env = |name: &str| (name == "CONSUL_HTTP_TOKEN").then(|| "from-env".to_string());
        let from_file = consul_token(path.to_str(), &env).unwrap().unwrap();
        assert_eq!(from_file.0, "s3cret");
        assert_eq!(consul_token(None, &env).unwrap().unwrap().0, "from-env");
        assert_eq!(format!("{from_file:?}"), "<redacted>");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            consul_token(path.to_str(), &env).unwrap_err().field,
            "consul.tokenFile"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("pod: {ip: not-an-ip}", "pod.ip"),
            ("pod: {name: Upper_Case}", "pod.name"),
            ("appHost: 'a b'", "appHost"),
            ("listen: {admin: nohost}", "listen.admin"),
            ("listen: {inbound: '127.0.0.1:15001'}", "listen.inbound"),
            (
                "consul: {deregisterCriticalAfter: 10ms}",
                "consul.deregisterCriticalAfter",
            ),
            ("nats: {url: 'http://x:4222'}", "nats.url"),
            ("drainTimeout: 2h", "drainTimeout"),
            ("leaveDelay: 61s", "leaveDelay"),
            ("consul: {clusterId: 'a b'}", "consul.clusterId"),
            ("pod: {hostIp: node-1}", "pod.hostIp"),
        ];
        for (extra, field) in cases {
            let err = resolve_yaml(&format!("{MINIMAL}{extra}"), &no_env).unwrap_err();
            assert_eq!(err.field, field, "{extra}: {err}");
        }
        let err =
            resolve_yaml("service: {serviceName: Bad_Name, port: 9091}", &no_env).unwrap_err();
        assert_eq!(err.field, "service.serviceName");
    }
}
