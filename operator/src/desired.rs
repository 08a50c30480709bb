//! The "build" step: a pure function from a StreamGateService to the objects that should
//! exist for it (the sidecar configuration, the Deployment and the Service). No API
//! calls, so it is unit-tested in full.

use crate::labels::{CONFIG_HASH_ANNOTATION, NAME_LABEL, SERVICE_LABEL, selector_labels};
use crate::render::{RenderedSidecar, render_sidecar, sidecar_addr_env};
use crate::sidecar_defaults::SidecarDefaults;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSpec, PodTemplateSpec, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use streamgate_crds::sidecar_config::{ADMIN_PORT, INBOUND_PORT, ServiceConfig, SidecarConfig};
use streamgate_crds::{FieldError, Protocol, StreamGateService};

/// Everything the operator applies for one StreamGateService.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub sidecar: RenderedSidecar,
    pub deployment: Deployment,
    pub service: Service,
    /// Only for a service with `allowedCallers`: other pods may reach its sidecar's
    /// inbound and admin ports, never the app's (`None`: no policy, and one left from
    /// before is deleted).
    pub network_policy: Option<NetworkPolicy>,
    /// The service's own ServiceAccount, its identity in the mesh (`None` when
    /// `podTemplate.serviceAccountName` names another one).
    pub service_account: Option<ServiceAccount>,
}

/// The "validate" step: the rules the API server enforced, checked again on the object we
/// got (it may predate a schema change), so a bad spec is reported instead of applied.
pub fn validate(sgs: &StreamGateService) -> Result<SidecarConfig, FieldError> {
    let config = sidecar_config(sgs);
    config.service.validate().map_err(|e| FieldError {
        // Report spec paths (`spec.health.timeoutSeconds`), which is what the user wrote.
        field: e.field.replacen("service.", "spec.", 1),
        reason: e.reason,
    })?;
    if sgs.spec.image.trim().is_empty() {
        return Err(FieldError::new("spec.image", "must not be empty"));
    }
    sgs.spec.sidecar.validate()?;
    Ok(config)
}

/// The sidecar configuration of a StreamGateService (pod identity comes from the
/// downward API at run time).
pub fn sidecar_config(sgs: &StreamGateService) -> SidecarConfig {
    let spec = &sgs.spec;
    let service = ServiceConfig {
        service_name: sgs.consul_name(),
        port: spec.port,
        protocol: spec.protocol,
        tags: spec.tags.clone(),
        meta: spec.meta.clone(),
        health: spec.health.clone(),
        events: spec.events.clone(),
        upstreams: spec.upstreams.clone(),
        allowed_callers: spec.allowed_callers.clone(),
    };
    // Every other field takes the document's own defaults, whatever fields it grows.
    let mut config: SidecarConfig =
        serde_json::from_value(serde_json::json!({ "service": service }))
            .expect("a service section with defaults is a valid sidecar config");
    config.log_level = spec.sidecar.log_level;
    config
}

/// Builds the desired objects. `sgs` must carry its name, namespace and uid.
pub fn desired(
    sgs: &StreamGateService,
    config: &SidecarConfig,
    settings: &SidecarDefaults,
) -> Desired {
    let name = sgs.metadata.name.clone().unwrap_or_default();
    let sidecar = render_sidecar(config, &sgs.spec.sidecar, settings);
    let mut labels = selector_labels(&name);
    labels.insert(NAME_LABEL.to_string(), name.clone());
    labels.insert(SERVICE_LABEL.to_string(), sgs.consul_name());
    let metadata = ObjectMeta {
        name: Some(name),
        namespace: sgs.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(sgs)]),
        ..Default::default()
    };
    Desired {
        service_account: sgs
            .spec
            .pod_template
            .service_account_name
            .is_none()
            .then(|| ServiceAccount {
                metadata: metadata.clone(),
                ..Default::default()
            }),
        deployment: deployment(sgs, metadata.clone(), &sidecar),
        network_policy: (!sgs.spec.allowed_callers.is_empty())
            .then(|| network_policy(metadata.clone())),
        service: service(sgs, metadata),
        sidecar,
    }
}

/// The app's shutdown keeps Kubernetes' default 30 s after the pod has left the mesh:
/// the `preStop` hook's `leaveDelay` (docs/consul.md) counts against the grace period.
fn grace_period(spec: &streamgate_crds::StreamGateServiceSpec) -> i64 {
    const APP_SHUTDOWN_SECONDS: i64 = 30;
    if !spec.sidecar.leaves_first() {
        return APP_SHUTDOWN_SECONDS;
    }
    let delay = spec.sidecar.leave_delay.map_or(
        std::time::Duration::from_millis(
            streamgate_crds::contract::lifecycle::DEFAULT_LEAVE_DELAY_MS,
        ),
        |d| d.as_duration(),
    );
    // Whole seconds, rounded up, plus the hook's own wait for Consul (at most 5 s).
    APP_SHUTDOWN_SECONDS + delay.as_millis().div_ceil(1000) as i64 + 5
}

/// With `allowedCallers`, the sidecar is the only door: the Service publishes only
/// `sg-inbound`, and this policy admits other pods to the inbound (15006) and admin
/// (15020: probes, metrics, the preStop hook) ports only, so a pod that dials the app's
/// port by pod IP gets nowhere. The app reaches its sidecar over the pod's loopback,
/// which no policy governs. Enforced by CNIs that implement NetworkPolicy.
fn network_policy(metadata: ObjectMeta) -> NetworkPolicy {
    let name = metadata.name.clone().unwrap_or_default();
    let port = |number: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(number))),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    };
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![port(INBOUND_PORT), port(ADMIN_PORT)]),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// The Deployment: the app container beside the rendered sidecar.
fn deployment(
    sgs: &StreamGateService,
    metadata: ObjectMeta,
    sidecar: &RenderedSidecar,
) -> Deployment {
    let spec = &sgs.spec;
    let name = metadata.name.clone().unwrap_or_default();
    let mut pod_labels = spec.pod_template.labels.clone();
    // StreamGate's labels win: the selector depends on them.
    pod_labels.extend(metadata.labels.clone().unwrap_or_default());
    let mut pod_annotations = spec.pod_template.annotations.clone();
    pod_annotations.insert(
        CONFIG_HASH_ANNOTATION.to_string(),
        sidecar.config_hash.clone(),
    );
    let overrides = &spec.pod_template;
    let mut app = app_container(spec);
    sidecar.add_pre_stop(&mut app);
    let mut pod_spec = PodSpec {
        init_containers: Some(vec![sidecar.container.clone()]),
        containers: vec![app],
        volumes: Some(sidecar.volumes.clone()),
        // The identity its certificate names: `allowedCallers: [<this service>]` in the
        // same namespace means these pods.
        service_account_name: Some(
            overrides
                .service_account_name
                .clone()
                .unwrap_or_else(|| name.clone()),
        ),
        node_selector: non_empty_map(&overrides.node_selector),
        tolerations: non_empty(&overrides.tolerations),
        affinity: overrides.affinity.clone(),
        security_context: overrides.security_context.clone(),
        termination_grace_period_seconds: Some(grace_period(spec)),
        ..Default::default()
    };
    sidecar.add_fs_group(&mut pod_spec);
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn app_container(spec: &streamgate_crds::StreamGateServiceSpec) -> Container {
    let mut env = vec![sidecar_addr_env()];
    env.extend(spec.env.iter().cloned());
    Container {
        name: "app".to_string(),
        image: Some(spec.image.clone()),
        command: non_empty(&spec.command),
        args: non_empty(&spec.args),
        env: Some(env),
        resources: spec.resources.clone(),
        ports: Some(vec![ContainerPort {
            name: Some(protocol_port_name(spec.protocol).to_string()),
            container_port: spec.port,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn service(sgs: &StreamGateService, metadata: ObjectMeta) -> Service {
    let name = metadata.name.clone().unwrap_or_default();
    Service {
        metadata,
        spec: Some(ServiceSpec {
            // Headless: clients resolve the pods themselves, which is what gRPC's own
            // balancing wants, and no cluster IP is allocated per service.
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(&name)),
            ports: Some(service_ports(&sgs.spec)),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Service's ports. Mesh traffic goes through the sidecar's inbound port (caller
/// identity, `allowedCallers`, mTLS). The app's own port is published for plain
/// Kubernetes clients only when the service admits every caller: with `allowedCallers`
/// it would be a second door around the check.
fn service_ports(spec: &streamgate_crds::StreamGateServiceSpec) -> Vec<ServicePort> {
    let inbound = ServicePort {
        name: Some("sg-inbound".to_string()),
        port: i32::from(INBOUND_PORT),
        target_port: Some(IntOrString::Int(i32::from(INBOUND_PORT))),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    };
    if !spec.allowed_callers.is_empty() {
        return vec![inbound];
    }
    let app = ServicePort {
        name: Some(protocol_port_name(spec.protocol).to_string()),
        port: spec.port,
        target_port: Some(IntOrString::Int(spec.port)),
        app_protocol: Some(app_protocol(spec.protocol).to_string()),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    };
    vec![app, inbound]
}

fn owner_reference(sgs: &StreamGateService) -> OwnerReference {
    OwnerReference {
        api_version: StreamGateService::api_version(&()).to_string(),
        kind: StreamGateService::kind(&()).to_string(),
        name: sgs.metadata.name.clone().unwrap_or_default(),
        uid: sgs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn protocol_port_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Grpc => "grpc",
        Protocol::Http => "http",
    }
}

fn app_protocol(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Grpc => "kubernetes.io/h2c",
        Protocol::Http => "http",
    }
}

fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

fn non_empty_map(
    map: &std::collections::BTreeMap<String, String>,
) -> Option<std::collections::BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::SIDECAR_NAME;

    pub(crate) fn sgs(yaml_spec: &str) -> StreamGateService {
        let mut sgs: StreamGateService = serde_yaml::from_str(&format!(
            "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: upload, namespace: media, uid: u-1, generation: 1}}\nspec: {yaml_spec}"
        ))
        .unwrap();
        sgs.metadata.generation = Some(1);
        sgs
    }

    fn build(yaml_spec: &str) -> Desired {
        let s = sgs(yaml_spec);
        let config = validate(&s).unwrap();
        desired(&s, &config, &SidecarDefaults::for_tests())
    }

    #[test]
    fn deployment_has_app_and_native_sidecar_owned_by_the_resource() {
        let d = build("{image: 'reg/upload:1', port: 9091, replicas: 2}");
        let dep = &d.deployment;
        assert_eq!(dep.metadata.name.as_deref(), Some("upload"));
        let owner = &dep.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("StreamGateService", "u-1")
        );
        let spec = dep.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("reg/upload:1"));
        let env = pod.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "STREAMGATE_SIDECAR_ADDR"));
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.name, SIDECAR_NAME);
        assert_eq!(init.restart_policy.as_deref(), Some("Always"));
        // The app leaves the mesh before the kubelet stops it.
        let hook = pod.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref();
        assert!(hook.unwrap().http_get.is_some());
        let annotations = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref();
        assert!(annotations.unwrap().contains_key(CONFIG_HASH_ANNOTATION));
    }

    #[test]
    fn building_twice_gives_identical_objects() {
        let spec = "{image: 'reg/upload:1', port: 9091, upstreams: [{service: metadata}]}";
        assert_eq!(build(spec), build(spec));
    }

    #[test]
    fn spec_change_changes_the_config_hash_but_image_change_does_not() {
        let base = build("{image: 'reg/upload:1', port: 9091}");
        let upstream = build("{image: 'reg/upload:1', port: 9091, upstreams: [{service: x}]}");
        let image = build("{image: 'reg/upload:2', port: 9091}");
        assert_ne!(base.sidecar.config_hash, upstream.sidecar.config_hash);
        assert_eq!(base.sidecar.config_hash, image.sidecar.config_hash);
    }

    #[test]
    fn service_exposes_app_port_and_mesh_port() {
        let d = build("{image: 'reg/upload:1', port: 9091, protocol: http}");
        let spec = d.service.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        let ports = spec.ports.unwrap();
        assert_eq!(ports[0].port, 9091);
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[1].port, 15006);
    }

    #[test]
    fn only_a_service_with_allowed_callers_gets_a_network_policy() {
        assert!(build("{image: i, port: 9091}").network_policy.is_none());
        let d = build("{image: i, port: 9091, allowedCallers: [api-gateway]}");
        let policy = d.network_policy.unwrap();
        let spec = policy.spec.unwrap();
        let selected = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(selected, selector_labels("upload"));
        let ports: Vec<_> = spec.ingress.unwrap()[0]
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| p.port.unwrap())
            .collect();
        assert_eq!(ports, [IntOrString::Int(15006), IntOrString::Int(15020)]);
        assert!(policy.metadata.owner_references.is_some());
    }

    #[test]
    fn service_with_allowed_callers_publishes_only_the_mesh_port() {
        let d = build("{image: 'reg/upload:1', port: 9091, allowedCallers: [api-gateway]}");
        let ports = d.service.spec.unwrap().ports.unwrap();
        assert_eq!(ports.len(), 1, "{ports:?}");
        assert_eq!(ports[0].name.as_deref(), Some("sg-inbound"));
        assert_eq!(ports[0].port, 15006);
    }

    #[test]
    fn service_name_defaults_to_the_resource_name() {
        let d = build("{image: 'reg/upload:1', port: 9091}");
        assert!(d.sidecar.config_yaml.contains("serviceName: upload"));
        let d = build("{image: 'reg/upload:1', port: 9091, serviceName: uploads}");
        assert!(d.sidecar.config_yaml.contains("serviceName: uploads"));
    }

    #[test]
    fn pod_template_overrides_apply_but_cannot_break_the_selector() {
        let d = build(
            "{image: i, port: 1, podTemplate: {labels: {team: media, 'app.kubernetes.io/instance': evil}, serviceAccountName: sa1, nodeSelector: {disk: ssd}}}",
        );
        let template = d.deployment.spec.unwrap().template;
        let labels = template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["team"], "media");
        assert_eq!(labels["app.kubernetes.io/instance"], "upload");
        let pod = template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("sa1"));
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
    }

    #[test]
    fn validate_reports_spec_field_paths() {
        let bad = sgs("{image: i, port: 9091, health: {timeoutSeconds: 9}}");
        assert_eq!(
            validate(&bad).unwrap_err().field,
            "spec.health.timeoutSeconds"
        );
        let reserved = sgs("{image: i, port: 15020}");
        assert_eq!(validate(&reserved).unwrap_err().field, "spec.port");
        let empty = sgs("{image: ' ', port: 9091}");
        assert_eq!(validate(&empty).unwrap_err().field, "spec.image");
        let opted_out = build("{image: i, port: 9091, sidecar: {leaveFirst: false}}");
        let pod = opted_out.deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
        let slow = sgs("{image: i, port: 9091, sidecar: {leaveDelay: 2m}}");
        assert_eq!(
            validate(&slow).unwrap_err().field,
            "spec.sidecar.leaveDelay"
        );
    }
}
