//! The sidecar's configuration document (DESIGN.md, "Sidecar configuration").
//!
//! The operator and the injection webhook render it from a StreamGateService spec or
//! from `streamgate.io/*` annotations; the sidecar reads it from `--config FILE` or from
//! the `STREAMGATE_CONFIG` environment variable (the whole YAML document, which is how
//! the renderer hands it over so a pod needs no extra ConfigMap). Pod identity comes
//! from the downward API (`POD_NAME`, `POD_NAMESPACE`, `POD_UID`, `POD_IP`).

use crate::duration::GoDuration;
use crate::events::Events;
use crate::health::HealthCheck;
use crate::service::{LogLevel, Protocol};
use crate::upstreams::Upstream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Environment variable holding the whole configuration document.
pub const CONFIG_ENV: &str = "STREAMGATE_CONFIG";
/// Port of the app-facing listener (127.0.0.1).
pub const APP_PORT: u16 = 15001;
/// Port of the inbound listener (pod IP).
pub const INBOUND_PORT: u16 = 15006;
/// Port of the admin server (pod IP).
pub const ADMIN_PORT: u16 = 15020;

/// Everything the sidecar needs to run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    /// The service, with the names and meaning of `StreamGateService.spec`.
    pub service: ServiceConfig,
    /// The pod the sidecar runs in (the downward API's variables override it).
    #[serde(default)]
    pub pod: PodInfo,
    /// Where the app listens.
    #[serde(default = "default_app_host")]
    pub app_host: String,
    /// Listen addresses; defaults derive from the pod IP.
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub consul: ConsulConfig,
    #[serde(default)]
    pub nats: NatsConfig,
    /// Directory of the on-disk event spool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<String>,
    /// Log verbosity.
    #[serde(default)]
    pub log_level: LogLevel,
    /// How long in-flight work may drain after SIGTERM before the sidecar exits.
    #[serde(default = "default_drain")]
    pub drain_timeout: GoDuration,
    /// When the pod terminates, how long it keeps serving calls routed to it after it
    /// left Consul, before its app is asked to stop (see `contract::lifecycle`).
    #[serde(default = "default_leave_delay")]
    pub leave_delay: GoDuration,
    /// The mTLS identity issued by the operator; absent: certificate files in the mTLS
    /// directory if there are any (a sidecar run by hand), else plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
}

/// Where the sidecar gets its certificate, and how strictly it uses mTLS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    /// The operator's identity endpoint (`https://host:port`).
    pub endpoint: String,
    /// PEM roots that verify the endpoint's serving certificate (the operator's webhook
    /// CA). Peers are verified with the workload trust bundle each certificate comes
    /// with, so rotating the workload CA changes no pod.
    pub endpoint_ca: String,
    #[serde(default)]
    pub mode: MtlsMode,
}

/// How a sidecar uses mTLS.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Inbound takes only mTLS peers (the sidecar is not ready before it holds a
    /// certificate) and every outbound call is mTLS, whatever Consul says.
    #[default]
    Strict,
    /// For meshes with plaintext services (the seed's Go services): inbound also takes
    /// plaintext, where the caller is only a header anyone can write, and outbound calls
    /// follow what each instance advertises in Consul.
    Permissive,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "strict",
            MtlsMode::Permissive => "permissive",
        }
    }
}

/// The service part of the configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    pub service_name: String,
    pub port: i32,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub health: HealthCheck,
    #[serde(default)]
    pub events: Events,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_callers: Vec<String>,
}

/// The pod's identity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub ip: String,
    /// The node's address (downward API `status.hostIP`): the kubelet's `preStop` call
    /// to the sidecar comes from it (or from the pod's gateway).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// The node's name (downward API `spec.nodeName`): the Consul node of the pod's
    /// instance in catalog registration mode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
}

/// Listen addresses (`host:port`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenConfig {
    /// App-facing: gRPC forwarding, the events API. Default `127.0.0.1:15001`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// From other sidecars. Default `<pod ip>:15006`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<String>,
    /// Admin: /livez, /readyz, /metrics, /config. Default `<pod ip>:15020`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

/// How to reach Consul.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsulConfig {
    /// `http://host:port` or `host:port`; default from `CONSUL_HTTP_ADDR`, or the seed's
    /// `CONSUL_ADDRESS` + `CONSUL_PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// File holding the ACL token (else `CONSUL_HTTP_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Consul drops an instance whose check stayed critical this long (pod vanished).
    #[serde(default = "default_deregister_after")]
    pub deregister_critical_after: GoDuration,
    /// The cluster the pod runs in, registered as meta `k8s-cluster` (set by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// How the instance is written to Consul (see [`ConsulMode`]).
    #[serde(default)]
    pub mode: ConsulMode,
}

/// How a sidecar registers its pod's instance in Consul.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConsulMode {
    /// Through the Consul agent at `consul.address` (a node-local client agent, or the
    /// seed's single dev agent), with a TTL check the agent runs.
    Agent,
    /// Agentless: straight into the catalog, on a node named after the Kubernetes node
    /// (`pod.nodeName`), with the check written by the sidecar.
    Catalog,
    /// `agent` when what answers at `consul.address` is a client agent or a dev agent,
    /// `catalog` when it is a server or refuses the agent API.
    #[default]
    Auto,
}

impl ConsulMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsulMode::Agent => "agent",
            ConsulMode::Catalog => "catalog",
            ConsulMode::Auto => "auto",
        }
    }
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: None,
            token_file: None,
            deregister_critical_after: default_deregister_after(),
            cluster_id: None,
            mode: ConsulMode::default(),
        }
    }
}

/// How to reach NATS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port`; default from `NATS_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Directory of a mounted credentials Secret (token, user/password, nkey or creds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<String>,
    /// Tuning of the event relay; absent means every default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<EventRelayConfig>,
}

/// Tuning of the event relay (`nats.relay`: streams, spool size, in-flight windows). The
/// operator renders `manageStreams: false` with its streams' duplicate window and age,
/// and the spool size of `spec.events.spool`; the rest is for a person tuning a sidecar
/// (or a test).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventRelayConfig {
    /// True (run alone): the sidecar creates `stream` and adds its subjects to it, never
    /// changing an existing stream's settings. False (under the operator, which owns the
    /// streams): it only checks that streams capture its subjects and is not ready until
    /// they do.
    #[serde(default = "default_manage_streams")]
    pub manage_streams: bool,
    /// The JetStream stream the sidecar creates or extends with the subjects no stream
    /// captures yet (when `manageStreams`).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// How long the stream keeps an event (when the sidecar creates it).
    #[serde(default = "default_stream_max_age")]
    pub stream_max_age: GoDuration,
    /// JetStream drops a second publish with the same `Nats-Msg-Id` within this window;
    /// the subscriber side drops an `id` it delivered within it too.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: GoDuration,
    /// Bytes of unsent events the on-disk spool may hold; beyond, publishes are refused.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: i64,
    /// Publishes awaiting their JetStream ack at once.
    #[serde(default = "default_publish_in_flight")]
    pub publish_in_flight: i32,
    /// How long a publish waits for its JetStream ack before the event is spooled.
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout: GoDuration,
    /// Events being delivered to the app at once, per subscription.
    #[serde(default = "default_delivery_in_flight")]
    pub delivery_in_flight: i32,
    /// How long the app may take to answer one delivery.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: GoDuration,
}

impl Default for EventRelayConfig {
    fn default() -> Self {
        EventRelayConfig {
            manage_streams: default_manage_streams(),
            stream: default_stream(),
            stream_max_age: default_stream_max_age(),
            duplicate_window: default_duplicate_window(),
            spool_max_bytes: default_spool_max_bytes(),
            publish_in_flight: default_publish_in_flight(),
            publish_timeout: default_publish_timeout(),
            delivery_in_flight: default_delivery_in_flight(),
            delivery_timeout: default_delivery_timeout(),
        }
    }
}

fn default_manage_streams() -> bool {
    true
}
fn default_stream() -> String {
    crate::contract::events::STREAM.to_string()
}
fn default_stream_max_age() -> GoDuration {
    GoDuration::from_millis(7 * 24 * 3_600_000)
}
fn default_duplicate_window() -> GoDuration {
    GoDuration::from_millis(120_000)
}
fn default_spool_max_bytes() -> i64 {
    256 << 20
}
fn default_publish_in_flight() -> i32 {
    1024
}
fn default_publish_timeout() -> GoDuration {
    GoDuration::from_millis(2_000)
}
fn default_delivery_in_flight() -> i32 {
    32
}
fn default_delivery_timeout() -> GoDuration {
    GoDuration::from_millis(10_000)
}

fn default_app_host() -> String {
    "127.0.0.1".to_string()
}
fn default_drain() -> GoDuration {
    GoDuration::from_millis(10_000)
}
fn default_leave_delay() -> GoDuration {
    GoDuration::from_millis(crate::contract::lifecycle::DEFAULT_LEAVE_DELAY_MS)
}
fn default_deregister_after() -> GoDuration {
    GoDuration::from_millis(60_000)
}

impl ServiceConfig {
    /// The rules the API server would enforce on the same fields, naming the field.
    pub fn validate(&self) -> Result<(), crate::FieldError> {
        use crate::FieldError;
        if !crate::upstreams::is_dns_label(&self.service_name) {
            return Err(FieldError::new(
                "service.serviceName",
                format!("{:?} is not a DNS-1123 label", self.service_name),
            ));
        }
        crate::validate_port("service.port", self.port)?;
        if crate::service::RESERVED_PORTS.contains(&self.port) {
            return Err(FieldError::new(
                "service.port",
                format!("{} is one of the sidecar's own ports", self.port),
            ));
        }
        self.health.validate("service.health")?;
        self.events.validate("service.events")?;
        crate::upstreams::validate_upstreams("service.upstreams", &self.upstreams)?;
        for (i, caller) in self.allowed_callers.iter().enumerate() {
            if !crate::contract::callers::is_valid_entry(caller) {
                return Err(FieldError::new(
                    format!("service.allowedCallers[{i}]"),
                    format!("{caller:?} is not a service name or namespace/service"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
service:
  serviceName: upload
  port: 9091
  protocol: grpc
  tags: [v1]
  meta: {}
  health: {type: http, path: /health, periodSeconds: 5, timeoutSeconds: 1,
           failureThreshold: 3, successThreshold: 1}
  events: {publish: [file.uploaded], subscribe: [{type: job.completed, path: /events}]}
  upstreams: [{service: metadata, timeout: 2s}]
  allowedCallers: []
pod: {name: upload-7d9f-x2, namespace: default, uid: "", ip: 127.0.0.2}
appHost: 127.0.0.1
listen:
  app: 127.0.0.1:15001
  inbound: 127.0.0.2:15006
  admin: 127.0.0.2:15020
consul: {address: http://127.0.0.1:8500, tokenFile: ""}
nats: {url: nats://127.0.0.1:4222, credentialsDir: ""}
spoolDir: /var/lib/streamgate/spool
"#;

    #[test]
    fn parses_the_design_example() {
        let config: SidecarConfig = serde_yaml::from_str(DESIGN_EXAMPLE).unwrap();
        assert_eq!(config.service.service_name, "upload");
        assert_eq!(config.listen.inbound.as_deref(), Some("127.0.0.2:15006"));
        assert_eq!(config.service.events.subscribe[0].max_deliver, 5);
        config.service.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err =
            serde_yaml::from_str::<SidecarConfig>("service: {serviceName: a, port: 1, helth: {}}")
                .unwrap_err();
        assert!(err.to_string().contains("helth"), "{err}");
    }

    #[test]
    fn reserved_port_is_refused() {
        let mut config: SidecarConfig = serde_yaml::from_str(DESIGN_EXAMPLE).unwrap();
        config.service.port = 15020;
        assert_eq!(config.service.validate().unwrap_err().field, "service.port");
    }
}
