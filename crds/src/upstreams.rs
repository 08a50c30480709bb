//! The services an app calls through its sidecar, with per-upstream resilience settings.

use crate::duration::GoDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A DNS-1123 label: Consul service names and upstream names.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// One service the app calls (by its Consul name) and how calls to it are protected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// The Consul service name of the callee, e.g. `metadata`.
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub service: String,
    /// Only the callee's instances in this namespace. Empty: those in the caller's own
    /// namespace when it has any, else every passing instance (seed services included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Deadline of one call, retries included; past it the app gets DEADLINE_EXCEEDED.
    #[serde(default = "default_timeout")]
    pub timeout: GoDuration,
    /// Retries of failed calls on another instance, under a retry budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Per-instance circuit breaking by consecutive failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

fn default_timeout() -> GoDuration {
    GoDuration::from_millis(5_000)
}

/// gRPC status codes a call may be retried on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    Unavailable,
    ResourceExhausted,
    Aborted,
    DeadlineExceeded,
    Internal,
    Unknown,
}

/// How failed calls are retried.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: i32,
    /// Exponential backoff with jitter between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// Status codes that are retried. (Named `retryOn`, not `on`: YAML 1.1 parsers such
    /// as kubectl's read a bare `on:` key as the boolean `true`.)
    #[serde(default = "default_retry_on", alias = "on")]
    #[schemars(length(min = 1, max = 6))]
    pub retry_on: Vec<RetryOn>,
}

fn default_attempts() -> i32 {
    3
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Unavailable]
}

/// Exponential backoff bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.base) <= duration(self.max)", "message": "base must not exceed max",
     "fieldPath": ".base"}
]))]
pub struct Backoff {
    /// First backoff.
    #[serde(default = "default_backoff_base")]
    pub base: GoDuration,
    /// Largest backoff.
    #[serde(default = "default_backoff_max")]
    pub max: GoDuration,
}

fn default_backoff_base() -> GoDuration {
    GoDuration::from_millis(25)
}
fn default_backoff_max() -> GoDuration {
    GoDuration::from_millis(1_000)
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

/// Ejects an instance after consecutive failures, for a time that doubles from
/// `baseEjection` up to `maxEjection`; one probe request decides whether it returns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.baseEjection) <= duration(self.maxEjection)",
     "message": "baseEjection must not exceed maxEjection", "fieldPath": ".baseEjection"}
]))]
pub struct CircuitBreaker {
    /// Consecutive failures that eject an instance.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: i32,
    /// First ejection time.
    #[serde(default = "default_base_ejection")]
    pub base_ejection: GoDuration,
    /// Longest ejection time.
    #[serde(default = "default_max_ejection")]
    pub max_ejection: GoDuration,
}

fn default_consecutive_failures() -> i32 {
    5
}
fn default_base_ejection() -> GoDuration {
    GoDuration::from_millis(1_000)
}
fn default_max_ejection() -> GoDuration {
    GoDuration::from_millis(60_000)
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
        }
    }
}

/// True when `text` is a DNS-1123 label.
pub fn is_dns_label(text: &str) -> bool {
    let b = text.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The schema and CEL rules on a list of upstreams, for configurations that bypass the
/// API server.
pub fn validate_upstreams(field: &str, upstreams: &[Upstream]) -> Result<(), crate::FieldError> {
    use crate::FieldError;
    for (i, u) in upstreams.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if !is_dns_label(&u.service) {
            return Err(FieldError::new(
                format!("{at}.service"),
                format!("{:?} is not a DNS-1123 label", u.service),
            ));
        }
        if let Some(namespace) = u.namespace.as_deref().filter(|ns| !is_dns_label(ns)) {
            return Err(FieldError::new(
                format!("{at}.namespace"),
                format!("{namespace:?} is not a DNS-1123 label"),
            ));
        }
        if upstreams[..i].iter().any(|o| o.service == u.service) {
            return Err(FieldError::new(
                format!("{at}.service"),
                format!("{:?} is listed twice", u.service),
            ));
        }
        if u.timeout.0.is_zero() {
            return Err(FieldError::new(format!("{at}.timeout"), "must be positive"));
        }
        if let Some(r) = &u.retries {
            if !(1..=10).contains(&r.attempts) {
                return Err(FieldError::new(
                    format!("{at}.retries.attempts"),
                    format!("must be between 1 and 10, got {}", r.attempts),
                ));
            }
            if r.backoff.base > r.backoff.max {
                return Err(FieldError::new(
                    format!("{at}.retries.backoff.base"),
                    "must not exceed max",
                ));
            }
        }
        if let Some(cb) = &u.circuit_breaker {
            if cb.consecutive_failures < 1 {
                return Err(FieldError::new(
                    format!("{at}.circuitBreaker.consecutiveFailures"),
                    format!("must be at least 1, got {}", cb.consecutive_failures),
                ));
            }
            if cb.base_ejection > cb.max_ejection {
                return Err(FieldError::new(
                    format!("{at}.circuitBreaker.baseEjection"),
                    "must not exceed maxEjection",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_parses_with_defaults() {
        let u: Upstream = serde_json::from_value(serde_json::json!({
            "service": "metadata", "timeout": "2s",
            "retries": {"attempts": 3, "backoff": {"base": "25ms", "max": "1s"}, "retryOn": ["unavailable"]},
            "circuitBreaker": {"consecutiveFailures": 5, "baseEjection": "1s", "maxEjection": "60s"}
        }))
        .unwrap();
        assert_eq!(u.timeout, GoDuration::from_millis(2000));
        assert_eq!(u.retries.unwrap().retry_on, vec![RetryOn::Unavailable]);
        let bare: Upstream = serde_json::from_value(serde_json::json!({"service": "x"})).unwrap();
        assert_eq!(bare.timeout, GoDuration::from_millis(5000));
    }

    #[test]
    fn duplicate_and_malformed_upstreams_name_the_field() {
        let ups: Vec<Upstream> = serde_json::from_value(serde_json::json!([
            {"service": "a"}, {"service": "a"}
        ]))
        .unwrap();
        assert_eq!(
            validate_upstreams("upstreams", &ups).unwrap_err().field,
            "upstreams[1].service"
        );
        let bad: Vec<Upstream> =
            serde_json::from_value(serde_json::json!([{"service": "Bad_Name"}])).unwrap();
        assert_eq!(
            validate_upstreams("upstreams", &bad).unwrap_err().field,
            "upstreams[0].service"
        );
    }
}
