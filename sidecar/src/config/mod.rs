//! The sidecar's effective configuration: the document (`--config FILE` or
//! `STREAMGATE_CONFIG`), then flags and environment over it ([`overrides`]), then
//! defaults and checks that turn it into typed [`Settings`] ([`resolve`]).
//!
//! Every refusal is a [`FieldError`] naming the document's field, so one line tells
//! the user what to fix whether the value came from the file, a flag or the environment.

pub mod events;
pub mod overrides;
pub mod resolve;

use crate::cli::Cli;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
pub use streamgate_crds::FieldError;
pub use streamgate_crds::sidecar_config::ConsulMode;
use streamgate_crds::sidecar_config::{CONFIG_ENV, SidecarConfig};
use streamgate_crds::{HealthCheckType, LogLevel};

/// Reads an environment variable; injected so tests never depend on the real environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What the sidecar runs with, every default filled in and every value checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The effective document, as `/config` shows it.
    pub document: SidecarConfig,
    pub pod_ip: IpAddr,
    /// The node's address (`status.hostIP`), when known.
    pub host_ip: Option<IpAddr>,
    pub listen: Listen,
    pub consul: ConsulSettings,
    pub health: HealthSettings,
    pub events: events::EventSettings,
    pub drain_timeout: Duration,
    /// On `preStop`: how long to keep serving after leaving Consul.
    pub leave_delay: Duration,
    pub log_level: LogLevel,
    /// Where the workload certificate for mTLS is mounted (see [`crate::forward::tls`]).
    pub mtls_dir: std::path::PathBuf,
    /// The ServiceAccount token shown to the identity endpoint.
    pub identity_token_file: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub app: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct ConsulSettings {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8500`.
    pub address: String,
    pub token: Option<Secret>,
    pub deregister_critical_after: Duration,
    pub mode: ConsulMode,
    /// The Consul node of a catalog registration: the Kubernetes node's name, if known.
    pub node_name: Option<String>,
}

/// The app health check, resolved against the service's port and the app host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub kind: HealthCheckType,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

impl HealthSettings {
    /// `host:port`, with IPv6 addresses in brackets as URLs and connect calls want them.
    pub fn authority(&self) -> String {
        self.authority_for(self.port.into())
    }

    /// The app host with another port (the app's own, for event deliveries).
    pub fn authority_for(&self, port: i32) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{}:{port}", self.host),
        }
    }
}

/// A value that must never be logged or served.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Loads, overrides, resolves and checks the configuration.
pub fn load(cli: &Cli, env: EnvLookup<'_>) -> Result<Settings, FieldError> {
    let mut document = read_document(cli, env)?;
    overrides::apply(&mut document, &cli.overrides)?;
    let mut settings = resolve::resolve(document, env)?;
    settings.mtls_dir = cli.mtls_dir.clone();
    settings.identity_token_file = cli.identity_token_file.clone();
    Ok(settings)
}

/// The document from `--config`, else from `STREAMGATE_CONFIG`, else a skeleton that
/// `--service-name` and `--app-port` must complete.
fn read_document(cli: &Cli, env: EnvLookup<'_>) -> Result<SidecarConfig, FieldError> {
    let (text, origin) = match (&cli.config, env(CONFIG_ENV)) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                FieldError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?;
            (text, path.display().to_string())
        }
        (None, Some(text)) if !text.trim().is_empty() => (text, CONFIG_ENV.to_string()),
        _ => {
            if cli.overrides.service_name.is_none() || cli.overrides.app_port.is_none() {
                return Err(FieldError::new(
                    "--config",
                    format!(
                        "no configuration: give --config FILE, the document in {CONFIG_ENV}, \
                         or at least --service-name and --app-port"
                    ),
                ));
            }
            // The overrides fill the two required fields in right after.
            (
                "service: {serviceName: \"\", port: 0}".to_string(),
                String::new(),
            )
        }
    };
    parse_document(&text).map_err(|mut e| {
        if !origin.is_empty() {
            e.reason = format!("{} (in {origin})", e.reason);
        }
        e
    })
}

/// Parses the YAML document, naming the field of the first bad value.
pub fn parse_document(text: &str) -> Result<SidecarConfig, FieldError> {
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string().replace('\n', " ");
        // serde_yaml prefixes some messages with the path itself.
        let reason = message
            .strip_prefix(&format!("{path}: "))
            .unwrap_or(&message);
        let field = if path.is_empty() || path == "." {
            "document"
        } else {
            path.as_str()
        };
        FieldError::new(field, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_alone_are_enough() {
        let cli = Cli {
            overrides: crate::cli::Overrides {
                service_name: Some("upload".into()),
                app_port: Some("9091".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let settings = load(&cli, &no_env).unwrap();
        assert_eq!(settings.document.service.service_name, "upload");
        assert_eq!(settings.health.port, 9091);
    }

    #[test]
    fn no_configuration_at_all_names_config() {
        let err = load(&Cli::default(), &no_env).unwrap_err();
        assert_eq!(err.field, "--config");
    }

    #[test]
    fn document_comes_from_the_environment() {
        let env = |name: &str| {
            (name == CONFIG_ENV).then(|| "service: {serviceName: web, port: 8080}".to_string())
        };
        let settings = load(&Cli::default(), &env).unwrap();
        assert_eq!(settings.document.service.service_name, "web");
    }

    #[test]
    fn yaml_errors_name_the_field() {
        let err = parse_document("service: {serviceName: a, port: 1, helth: {}}").unwrap_err();
        assert_eq!(err.field, "service.helth", "{err}");
        assert!(err.reason.contains("helth"), "{err}");
        let err = parse_document("service: {serviceName: a, port: 1}\ndrainTimeout: 10 seconds")
            .unwrap_err();
        assert_eq!(err.field, "drainTimeout", "{err}");
        let err = parse_document("service: {serviceName: a, port: 1, health: {timeoutSeconds: x}}")
            .unwrap_err();
        assert_eq!(err.field, "service.health.timeoutSeconds", "{err}");
        let err = parse_document("service: {serviceName: a}").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }
}
