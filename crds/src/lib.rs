//! StreamGate's Kubernetes API (`streamgate.io/v1alpha1`) and the types it shares with
//! the sidecar's configuration.
//!
//! - [`service`]: the `StreamGateService` custom resource, spec and status.
//! - [`health`], [`events`], [`upstreams`]: parts of the spec that the sidecar's config
//!   file carries with the same names and meaning.
//! - [`contract`]: what operator and sidecar agree on outside the config document
//!   (Consul instance ids and meta keys, identity names, mount paths).
//! - [`duration`]: Go-style durations (`2s`, `25ms`) used in the spec.
//!
//! The API server enforces the schema and CEL rules generated from these types; the
//! `validate` functions enforce the same rules where no API server is involved (sidecar
//! config files, webhook annotations), each error naming the field.

pub mod contract;
pub mod duration;
pub mod events;
pub mod health;
pub mod service;
pub mod sidecar_config;
pub mod upstreams;

pub use duration::GoDuration;
pub use events::{Events, Subscription};
pub use health::{HealthCheck, HealthCheckType};
pub use service::{
    ConsulStatus, LogLevel, PodTemplateOverrides, Protocol, SidecarSpec, StreamGateService,
    StreamGateServiceSpec, StreamGateServiceStatus,
};
pub use upstreams::{Backoff, CircuitBreaker, RetryOn, RetryPolicy, Upstream};

/// The API group of every StreamGate resource.
pub const GROUP: &str = "streamgate.io";
/// The version served and stored.
pub const VERSION: &str = "v1alpha1";

/// A configuration value that is not acceptable, and the field it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `service.health.timeoutSeconds`.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// A TCP port in 1..=65535.
pub fn validate_port(field: &str, port: i32) -> Result<(), FieldError> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be a port between 1 and 65535, got {port}"),
        ))
    }
}
