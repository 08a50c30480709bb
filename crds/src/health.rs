//! How the sidecar decides whether the app is healthy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kind of probe the sidecar runs against the app.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    /// HTTP GET on `path`; healthy on a 2xx answer.
    #[default]
    Http,
    /// `grpc.health.v1.Health/Check`; healthy when SERVING.
    Grpc,
    /// A TCP connect; healthy when it is accepted.
    Tcp,
}

/// The app health check the sidecar runs; it drives the pod's Consul TTL check and the
/// sidecar's readiness.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.timeoutSeconds < self.periodSeconds",
     "message": "timeoutSeconds must be less than periodSeconds", "fieldPath": ".timeoutSeconds"},
    {"rule": "!has(self.path) || self.type == 'http'",
     "message": "path is only allowed when type is http", "fieldPath": ".path"}
]))]
pub struct HealthCheck {
    /// Probe kind: `http` (GET `path`), `grpc` (grpc.health.v1) or `tcp` (connect).
    #[serde(rename = "type", default)]
    pub kind: HealthCheckType,
    /// HTTP path to GET (http only). Defaults to `/health`, the seed services' endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Port the probe targets. Defaults to the service's `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Seconds between probes.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
    /// Seconds a probe may take before it counts as failed; less than `periodSeconds`.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
    /// Consecutive failures after which the app is unhealthy (Consul check critical).
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
    /// Consecutive successes after which an unhealthy app is healthy again.
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: i32,
}

/// The HTTP path probed when none is given: the seed services serve `/health`.
pub const DEFAULT_HEALTH_PATH: &str = "/health";

fn default_period() -> i32 {
    5
}
fn default_timeout() -> i32 {
    1
}
fn default_failure_threshold() -> i32 {
    3
}
fn default_success_threshold() -> i32 {
    1
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: HealthCheckType::Http,
            path: None,
            port: None,
            period_seconds: default_period(),
            timeout_seconds: default_timeout(),
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
        }
    }
}

impl HealthCheck {
    /// The HTTP path to probe, defaulted.
    pub fn http_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_HEALTH_PATH)
    }

    /// Checks the rules the API server enforces with CEL, for configurations that do not
    /// pass through the API server (sidecar config files, webhook annotations).
    pub fn validate(&self, field: &str) -> Result<(), crate::FieldError> {
        use crate::FieldError;
        let positive = [
            ("periodSeconds", self.period_seconds),
            ("timeoutSeconds", self.timeout_seconds),
            ("failureThreshold", self.failure_threshold),
            ("successThreshold", self.success_threshold),
        ];
        for (name, value) in positive {
            if value < 1 {
                return Err(FieldError::new(
                    format!("{field}.{name}"),
                    format!("must be at least 1, got {value}"),
                ));
            }
        }
        if self.timeout_seconds >= self.period_seconds {
            return Err(FieldError::new(
                format!("{field}.timeoutSeconds"),
                format!(
                    "must be less than periodSeconds ({} >= {})",
                    self.timeout_seconds, self.period_seconds
                ),
            ));
        }
        if self.path.is_some() && self.kind != HealthCheckType::Http {
            return Err(FieldError::new(
                format!("{field}.path"),
                "is only allowed when type is http",
            ));
        }
        if let Some(path) = &self.path
            && !path.starts_with('/')
        {
            return Err(FieldError::new(
                format!("{field}.path"),
                format!("must start with '/', got {path:?}"),
            ));
        }
        if let Some(port) = self.port {
            crate::validate_port(&format!("{field}.port"), port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let h: HealthCheck = serde_json::from_str("{}").unwrap();
        assert_eq!(h, HealthCheck::default());
        assert_eq!(h.http_path(), "/health");
        assert_eq!((h.period_seconds, h.timeout_seconds), (5, 1));
    }

    #[test]
    fn validate_names_the_offending_field() {
        let mut h = HealthCheck {
            timeout_seconds: 5,
            ..Default::default()
        };
        assert_eq!(
            h.validate("health").unwrap_err().field,
            "health.timeoutSeconds"
        );
        h.timeout_seconds = 1;
        h.kind = HealthCheckType::Tcp;
        h.path = Some("/x".into());
        assert_eq!(h.validate("health").unwrap_err().field, "health.path");
        h.path = None;
        h.failure_threshold = 0;
        assert_eq!(
            h.validate("health").unwrap_err().field,
            "health.failureThreshold"
        );
    }
}
