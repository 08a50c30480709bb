//! Operator-wide settings that shape every rendered sidecar: where Consul and NATS are,
//! which image and resources the sidecar gets, which Secrets hold credentials.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// What the sidecar renderer needs beyond the service's own spec.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarSettings {
    /// Default sidecar image (a spec's `sidecar.image` wins).
    pub image: String,
    /// Default sidecar resources (a spec's `sidecar.resources` wins).
    pub resources: ResourceRequirements,
    /// Consul HTTP address the sidecars use.
    pub consul_address: String,
    /// Secret (in the pod's namespace) whose key `token` holds the Consul ACL token.
    pub consul_token_secret: Option<String>,
    /// NATS URL the sidecars use.
    pub nats_url: String,
    /// Secret (in the pod's namespace) with NATS credentials, mounted read-only.
    pub nats_credentials_secret: Option<String>,
}

impl SidecarSettings {
    /// Settings for tests and examples: local addresses, default resources.
    pub fn for_tests() -> Self {
        SidecarSettings {
            image: "streamgate/sidecar:test".into(),
            resources: default_sidecar_resources(),
            consul_address: "http://127.0.0.1:8500".into(),
            consul_token_secret: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_credentials_secret: None,
        }
    }
}

/// A lean sidecar: requests that fit hundreds per node, a memory limit that catches leaks.
pub fn default_sidecar_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("10m")),
            ("memory".to_string(), q("16Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), q("128Mi"))])),
        ..Default::default()
    }
}
