//! Operator-wide settings that shape every rendered sidecar: where Consul and NATS are,
//! which image and resources the sidecar gets, which Secrets hold credentials.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;
use streamgate_crds::sidecar_config::{ConsulMode, MtlsMode};

/// What the sidecar renderer needs beyond the service's own spec.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarDefaults {
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
    /// The cluster's id, registered with every instance (meta `k8s-cluster`).
    pub cluster_id: String,
    /// How sidecars register their instance.
    pub consul_mode: ConsulMode,
    /// Set when the operator owns the event streams: sidecars only bind to them, and
    /// drop a delivered event id within the streams' duplicate window.
    pub owned_streams: Option<OwnedStreams>,
    /// Where sidecars export spans, and how many they sample; `None`: no traces.
    pub traces: Option<SidecarTraces>,
    /// Where sidecars get their mTLS certificate; `None` (no webhook server, so no
    /// identity endpoint): sidecars run plaintext.
    pub identity: Option<SidecarIdentity>,
}

/// The identity endpoint and trust bundle rendered into every sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarIdentity {
    pub endpoint: String,
    pub mode: MtlsMode,
    /// The endpoint's CA, rendered into every sidecar (and the issuer behind it).
    pub ca: crate::identity::Authorities,
}

/// `--mtls-mode` (clap only lets `strict` and `permissive` through).
pub fn mtls_mode(flag: &str) -> MtlsMode {
    match flag {
        "permissive" => MtlsMode::Permissive,
        _ => MtlsMode::Strict,
    }
}

/// The sidecars' trace export, rendered as the standard `OTEL_*` variables.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarTraces {
    pub endpoint: String,
    /// The parent-based sampler's ratio for traces a sidecar starts.
    pub sampling_ratio: f64,
}

/// What a sidecar needs to know of the operator's streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedStreams {
    pub duplicate_window: std::time::Duration,
    pub max_age: std::time::Duration,
}

impl SidecarDefaults {
    /// From the operator's flags (also taken by `streamgate inject`, so it renders what
    /// the webhook renders). `consul_address` is the operator's own, the sidecars'
    /// default.
    pub fn from_flags(
        sidecar: &crate::cli::SidecarArgs,
        streams: &crate::cli::StreamArgs,
        consul_address: &str,
        cluster: &str,
    ) -> Self {
        SidecarDefaults {
            image: sidecar.sidecar_image.clone(),
            resources: sidecar_resources(
                &sidecar.sidecar_cpu_request,
                &sidecar.sidecar_memory_request,
                &sidecar.sidecar_memory_limit,
            ),
            consul_address: sidecar
                .sidecar_consul_address
                .clone()
                .unwrap_or_else(|| consul_address.to_string()),
            consul_token_secret: sidecar.consul_token_secret.clone(),
            nats_url: sidecar.nats_url.clone(),
            nats_credentials_secret: sidecar.nats_credentials_secret.clone(),
            cluster_id: cluster.to_string(),
            consul_mode: match sidecar.consul_mode.as_str() {
                "agent" => ConsulMode::Agent,
                "catalog" => ConsulMode::Catalog,
                _ => ConsulMode::Auto,
            },
            owned_streams: streams.manage_streams.then_some(OwnedStreams {
                duplicate_window: streams.stream_duplicate_window,
                max_age: streams.stream_max_age,
            }),
            traces: sidecar
                .sidecar_otlp_endpoint
                .as_ref()
                .filter(|endpoint| !endpoint.trim().is_empty())
                .map(|endpoint| SidecarTraces {
                    endpoint: endpoint.trim().to_string(),
                    sampling_ratio: sidecar.sidecar_trace_sampling_ratio,
                }),
            identity: None,
        }
    }

    /// Settings for tests and examples: local addresses, default resources.
    pub fn for_tests() -> Self {
        SidecarDefaults {
            image: "streamgate/sidecar:test".into(),
            resources: default_sidecar_resources(),
            consul_address: "http://127.0.0.1:8500".into(),
            consul_token_secret: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_credentials_secret: None,
            cluster_id: "test-cluster".into(),
            consul_mode: ConsulMode::Auto,
            owned_streams: None,
            traces: None,
            identity: None,
        }
    }
}

/// The sidecar's default CPU request (`--sidecar-cpu-request`).
pub const DEFAULT_CPU_REQUEST: &str = "10m";
/// The sidecar's default memory request (`--sidecar-memory-request`).
pub const DEFAULT_MEMORY_REQUEST: &str = "16Mi";
/// The sidecar's default memory limit (`--sidecar-memory-limit`).
pub const DEFAULT_MEMORY_LIMIT: &str = "128Mi";

/// A sidecar's requests and limit.
pub fn sidecar_resources(
    cpu_request: &str,
    memory_request: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q(cpu_request)),
            ("memory".to_string(), q(memory_request)),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), q(memory_limit))])),
        ..Default::default()
    }
}

/// A lean sidecar: requests that fit hundreds per node, a memory limit that catches leaks.
pub fn default_sidecar_resources() -> ResourceRequirements {
    sidecar_resources(
        DEFAULT_CPU_REQUEST,
        DEFAULT_MEMORY_REQUEST,
        DEFAULT_MEMORY_LIMIT,
    )
}

/// `overrides` on top of `defaults`, key by key: an annotation that sets only the memory
/// limit keeps the operator's configured requests.
pub fn merge_resources(
    overrides: &ResourceRequirements,
    defaults: &ResourceRequirements,
) -> ResourceRequirements {
    let merge = |o: &Option<BTreeMap<String, Quantity>>, d: &Option<BTreeMap<String, Quantity>>| {
        let mut merged = d.clone().unwrap_or_default();
        merged.extend(o.clone().unwrap_or_default());
        (!merged.is_empty()).then_some(merged)
    };
    ResourceRequirements {
        requests: merge(&overrides.requests, &defaults.requests),
        limits: merge(&overrides.limits, &defaults.limits),
        ..defaults.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_keep_the_configured_defaults_they_do_not_name() {
        let configured = sidecar_resources("20m", "32Mi", "256Mi");
        let overrides = ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("512Mi".into()),
            )])),
            ..Default::default()
        };
        let merged = merge_resources(&overrides, &configured);
        let requests = merged.requests.unwrap();
        assert_eq!(requests["cpu"].0, "20m");
        assert_eq!(requests["memory"].0, "32Mi");
        assert_eq!(merged.limits.unwrap()["memory"].0, "512Mi");
    }
}
