//! `StreamGateService`: one microservice, reconciled into a Deployment (app + sidecar)
//! and a Service.

use crate::events::Events;
use crate::health::HealthCheck;
use crate::upstreams::{DNS_LABEL_PATTERN, Upstream};
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, PodSecurityContext, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Ports the sidecar owns inside the pod; the app may not use them.
pub const RESERVED_PORTS: [i32; 3] = [15001, 15006, 15020];

/// The desired state of one StreamGate service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "streamgate.io",
    version = "v1alpha1",
    kind = "StreamGateService",
    namespaced,
    shortname = "sgs",
    category = "streamgate",
    status = "StreamGateServiceStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas","description":"Pods ready"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas","description":"Pods wanted"}"#,
    printcolumn = r#"{"name":"Consul-Passing","type":"integer","jsonPath":".status.consul.passing","description":"Instances passing in Consul"}"#,
    printcolumn = r#"{"name":"Consul-Total","type":"integer","jsonPath":".status.consul.total","description":"Instances registered in Consul"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","description":"Reason of the Ready condition"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(self.port in [15001, 15006, 15020])",
     "message": "port must not be one of the sidecar's ports 15001, 15006, 15020", "fieldPath": ".port"},
    {"rule": "!has(self.upstreams) || self.upstreams.all(u, self.upstreams.exists_one(v, v.service == u.service))",
     "message": "upstream services must be unique", "fieldPath": ".upstreams"}
]))]
pub struct StreamGateServiceSpec {
    /// Container image of the app, e.g. `registry.example.com/streamgate/upload:1.4.2`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Entrypoint of the app container, as in a Container (the image's if empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,
    /// Arguments of the app container, as in a Container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub args: Vec<String>,
    /// Environment of the app container, as in a Container. `STREAMGATE_SIDECAR_ADDR` is
    /// added by StreamGate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,
    /// Compute resources of the app container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Number of pods. Also set by `kubectl scale` and HorizontalPodAutoscalers.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// The port the app listens on (the seed's services: 9005-9009, 9090-9093).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The app's protocol: `grpc` (calls forwarded as HTTP/2) or `http`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Consul service name (a DNS-1123 label). Defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub service_name: Option<String>,
    /// Consul tags of every instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 255)))]
    pub tags: Vec<String>,
    /// Consul service meta of every instance (StreamGate adds k8s-namespace, k8s-pod,
    /// k8s-pod-uid and managed-by).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// How the sidecar checks the app's health.
    #[serde(default)]
    pub health: HealthCheck,
    /// Events the app publishes and subscribes to.
    #[serde(default)]
    pub events: Events,
    /// Services the app calls through the sidecar, with timeouts, retries and circuit
    /// breaking.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub upstreams: Vec<Upstream>,
    /// Who may call this service, by the identity the caller's mTLS certificate names (its
    /// pods' ServiceAccount, which the operator names after each StreamGateService unless
    /// `podTemplate.serviceAccountName` says otherwise): `name` (that account in this
    /// namespace; so a service's name admits that service) or `namespace/name`. Empty
    /// allows any caller; with entries, plaintext callers are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = crate::contract::callers::ENTRY_PATTERN), length(max = 127)))]
    pub allowed_callers: Vec<String>,
    /// Settings of the StreamGate sidecar container.
    #[serde(default)]
    pub sidecar: SidecarSpec,
    /// Pod-level settings of the generated Deployment's pod template.
    #[serde(default)]
    pub pod_template: PodTemplateOverrides,
}

fn default_replicas() -> i32 {
    1
}

/// The app's wire protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Grpc,
    Http,
}

/// Log verbosity of the sidecar.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The sidecar container's settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image; empty uses the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,
    /// Compute resources of the sidecar container; empty uses the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Log level of the sidecar.
    #[serde(default)]
    pub log_level: LogLevel,
    /// Leave before the app stops (default true): the app container gets a `preStop`
    /// hook that asks the sidecar to take the instance out of Consul, keep serving for
    /// `leaveDelay`, then refuse new calls (so callers retry elsewhere) — all before
    /// the kubelet sends the app SIGTERM. `false` renders no hook: the instance then
    /// leaves Consul only once the app has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_first: Option<bool>,
    /// How long a leaving pod still serves calls from callers with an older view of
    /// Consul before its app is asked to stop (default 3s, at most 60s; counts against
    /// the pod's termination grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_delay: Option<crate::GoDuration>,
    /// The share of this service's traces its sidecar samples when it starts one
    /// (0 to 1; a call or event that arrives with a sampling decision keeps it). Empty
    /// uses the operator's `--sidecar-trace-sampling-ratio` (chart
    /// `tracing.samplingRatio`, 1% by default). Traces are exported only when the
    /// operator is given an OTLP endpoint (chart `tracing.otlpEndpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub trace_sampling_ratio: Option<f64>,
}

impl SidecarSpec {
    /// Whether the app container gets the leave-first `preStop` hook.
    pub fn leaves_first(&self) -> bool {
        self.leave_first != Some(false)
    }

    /// `leaveDelay` and `traceSamplingRatio` within their bounds, naming the field
    /// otherwise.
    pub fn validate(&self) -> Result<(), crate::FieldError> {
        if let Some(ratio) = self.trace_sampling_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(crate::FieldError::new(
                "spec.sidecar.traceSamplingRatio",
                format!("{ratio} is not a ratio from 0 to 1"),
            ));
        }
        let max = std::time::Duration::from_millis(crate::contract::lifecycle::MAX_LEAVE_DELAY_MS);
        match self.leave_delay {
            Some(delay) if delay.as_duration() > max => Err(crate::FieldError::new(
                "spec.sidecar.leaveDelay",
                format!("{delay} is longer than {}s", max.as_secs()),
            )),
            _ => Ok(()),
        }
    }
}

/// Pod-level overrides of the generated pod template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra pod labels (StreamGate's own selector labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// ServiceAccount the pods run as; empty uses the namespace's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
    /// Node selector of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Pod security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamGateServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Instances of the service in Consul.
    #[serde(default)]
    pub consul: ConsulStatus,
    /// Label selector of the pods (for the scale subresource and HPAs).
    #[serde(default)]
    pub selector: String,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Consul's view of the service's instances.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsulStatus {
    /// Instances whose checks pass.
    #[serde(default)]
    pub passing: i32,
    /// Instances registered.
    #[serde(default)]
    pub total: i32,
}

impl StreamGateService {
    /// The Consul service name: `spec.serviceName`, or the resource's name.
    pub fn consul_name(&self) -> String {
        self.spec
            .service_name
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}
