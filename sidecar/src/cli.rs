//! The command line. Every flag has an environment fallback, and flags and environment
//! override the configuration document (DESIGN.md, "Sidecar configuration").
//!
//! Values are taken as text and parsed in [`crate::config`], so a bad one is refused with
//! the same one-line, field-naming message as a bad value in the document.

use clap::{Args, Parser};
use std::path::PathBuf;

/// The StreamGate sidecar: health-checks the app, registers the pod in Consul and
/// keeps that registration true until the pod goes.
///
/// The configuration document comes from --config FILE or, whole, from the
/// STREAMGATE_CONFIG environment variable; without one, --service-name and --app-port
/// are enough. Flags and their environment variables override the document. The Consul
/// ACL token comes from consul.tokenFile / --consul-token-file or CONSUL_HTTP_TOKEN;
/// the seed's CONSUL_ADDRESS + CONSUL_PORT are used when no Consul address is given.
#[derive(Parser, Debug, Default)]
#[command(name = "streamgate-sidecar", version, about, long_about)]
pub struct Cli {
    /// Sidecar configuration file (YAML), as rendered by the operator or the webhook.
    #[arg(long, env = "STREAMGATE_CONFIG_FILE", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory of the workload certificate for mTLS between sidecars (ca.crt, tls.crt,
    /// tls.key), as the operator mounts it; no tls.crt there means mTLS off.
    #[arg(
        long,
        env = "STREAMGATE_MTLS_DIR",
        value_name = "DIR",
        default_value = "/etc/streamgate/mtls"
    )]
    pub mtls_dir: PathBuf,

    /// The projected ServiceAccount token (audience `streamgate`) the sidecar proves
    /// itself with to the operator's identity endpoint (`identity` in the configuration).
    #[arg(
        long,
        env = "STREAMGATE_IDENTITY_TOKEN_FILE",
        value_name = "FILE",
        default_value = "/var/run/secrets/streamgate.io/identity/token"
    )]
    pub identity_token_file: PathBuf,

    #[command(flatten)]
    pub overrides: Overrides,
}

/// Values that override the configuration document, field by field.
#[derive(Args, Debug, Default, Clone)]
pub struct Overrides {
    /// service.serviceName: the Consul service name.
    #[arg(long, env = "STREAMGATE_SERVICE_NAME", help_heading = "Service")]
    pub service_name: Option<String>,
    /// service.port: the port the app listens on.
    #[arg(long, env = "STREAMGATE_APP_PORT", help_heading = "Service")]
    pub app_port: Option<String>,
    /// appHost: where the app listens (default 127.0.0.1).
    #[arg(long, env = "STREAMGATE_APP_HOST", help_heading = "Service")]
    pub app_host: Option<String>,

    /// service.health.type: http, grpc or tcp.
    #[arg(long, env = "STREAMGATE_HEALTH_TYPE", help_heading = "Health check")]
    pub health_type: Option<String>,
    /// service.health.path: the HTTP path probed (http only; default /health).
    #[arg(long, env = "STREAMGATE_HEALTH_PATH", help_heading = "Health check")]
    pub health_path: Option<String>,
    /// service.health.port: the port probed (default service.port).
    #[arg(long, env = "STREAMGATE_HEALTH_PORT", help_heading = "Health check")]
    pub health_port: Option<String>,
    /// service.health.periodSeconds: seconds between probes.
    #[arg(
        long,
        env = "STREAMGATE_HEALTH_PERIOD_SECONDS",
        help_heading = "Health check"
    )]
    pub health_period_seconds: Option<String>,
    /// service.health.timeoutSeconds: seconds a probe may take.
    #[arg(
        long,
        env = "STREAMGATE_HEALTH_TIMEOUT_SECONDS",
        help_heading = "Health check"
    )]
    pub health_timeout_seconds: Option<String>,
    /// service.health.failureThreshold: failures in a row that make the app unhealthy.
    #[arg(
        long,
        env = "STREAMGATE_HEALTH_FAILURE_THRESHOLD",
        help_heading = "Health check"
    )]
    pub health_failure_threshold: Option<String>,
    /// service.health.successThreshold: successes in a row that make it healthy again.
    #[arg(
        long,
        env = "STREAMGATE_HEALTH_SUCCESS_THRESHOLD",
        help_heading = "Health check"
    )]
    pub health_success_threshold: Option<String>,

    /// pod.name (downward API).
    #[arg(long, env = "POD_NAME", help_heading = "Pod")]
    pub pod_name: Option<String>,
    /// pod.namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE", help_heading = "Pod")]
    pub pod_namespace: Option<String>,
    /// pod.uid (downward API).
    #[arg(long, env = "POD_UID", help_heading = "Pod")]
    pub pod_uid: Option<String>,
    /// pod.ip (downward API): the address registered in Consul (default 127.0.0.1).
    #[arg(long, env = "POD_IP", help_heading = "Pod")]
    pub pod_ip: Option<String>,
    /// pod.hostIp (downward API status.hostIP): where the kubelet's preStop call comes from.
    #[arg(long, env = "HOST_IP", help_heading = "Pod")]
    pub host_ip: Option<String>,
    /// pod.nodeName (downward API spec.nodeName): the Consul node in catalog mode.
    #[arg(long, env = "NODE_NAME", help_heading = "Pod")]
    pub node_name: Option<String>,

    /// listen.app: app-facing listener (default 127.0.0.1:15001).
    #[arg(long, env = "STREAMGATE_APP_LISTEN", help_heading = "Listeners")]
    pub app_listen: Option<String>,
    /// listen.inbound: listener for other sidecars (default <pod ip>:15006).
    #[arg(long, env = "STREAMGATE_INBOUND_LISTEN", help_heading = "Listeners")]
    pub inbound_listen: Option<String>,
    /// listen.admin: /livez, /readyz, /metrics, /config (default <pod ip>:15020).
    #[arg(long, env = "STREAMGATE_ADMIN_LISTEN", help_heading = "Listeners")]
    pub admin_listen: Option<String>,

    /// consul.address: http://host:port or host:port (default http://127.0.0.1:8500).
    #[arg(long, env = "CONSUL_HTTP_ADDR", help_heading = "Consul")]
    pub consul_address: Option<String>,
    /// consul.tokenFile: file holding the ACL token (else CONSUL_HTTP_TOKEN).
    #[arg(long, env = "CONSUL_HTTP_TOKEN_FILE", help_heading = "Consul")]
    pub consul_token_file: Option<String>,
    /// consul.mode: agent, catalog (agentless) or auto (agent when a client or dev
    /// agent answers at consul.address).
    #[arg(long, env = "STREAMGATE_CONSUL_MODE", help_heading = "Consul")]
    pub consul_mode: Option<String>,
    /// consul.deregisterCriticalAfter: Consul drops an instance critical this long.
    #[arg(
        long,
        env = "STREAMGATE_DEREGISTER_CRITICAL_AFTER",
        help_heading = "Consul"
    )]
    pub deregister_critical_after: Option<String>,

    /// nats.url: nats://host:port.
    #[arg(long, env = "NATS_URL", help_heading = "NATS")]
    pub nats_url: Option<String>,

    /// drainTimeout: how long in-flight work may drain after SIGTERM (e.g. 10s).
    #[arg(long, env = "STREAMGATE_DRAIN_TIMEOUT", help_heading = "Lifecycle")]
    pub drain_timeout: Option<String>,
    /// leaveDelay: how long a terminating pod serves after leaving Consul (e.g. 3s).
    #[arg(long, env = "STREAMGATE_LEAVE_DELAY", help_heading = "Lifecycle")]
    pub leave_delay: Option<String>,
    /// logLevel: error, warn, info, debug or trace (RUST_LOG, when set, wins).
    #[arg(long, env = "STREAMGATE_LOG_LEVEL", help_heading = "Lifecycle")]
    pub log_level: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
