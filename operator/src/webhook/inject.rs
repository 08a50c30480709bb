//! The injection decision and the pod mutation, as pure functions of the pod: whether to
//! inject, and the JSON patch that adds the sidecar rendered by the operator's own
//! renderer ([`crate::render::render_sidecar`]).

use super::annotations::{self, INJECT, INJECTED};
use crate::labels::CONFIG_HASH_ANNOTATION;
use crate::render::{
    RenderedSidecar, SIDECAR_ADDR_ENV, SIDECAR_NAME, render_sidecar, sidecar_addr_env,
};
use crate::sidecar_defaults::SidecarDefaults;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use streamgate_crds::FieldError;

/// Namespace label that turns injection on for every pod in the namespace.
pub const NAMESPACE_LABEL: &str = "streamgate.io/inject";
pub const NAMESPACE_ENABLED: &str = "enabled";

/// What the webhook does with one pod.
#[derive(Debug)]
pub enum Decision {
    /// Leave the pod as it is, for this reason.
    Skip(&'static str),
    /// Add the sidecar with this patch.
    Inject(json_patch::Patch),
    /// Refuse the pod: an annotation is wrong.
    Reject(FieldError),
}

/// Where the pod is being created.
pub struct InjectionScope<'a> {
    pub namespace: &'a str,
    /// True when the namespace is labelled `streamgate.io/inject=enabled`.
    pub namespace_enabled: bool,
    /// The operator's own namespace, never injected.
    pub operator_namespace: &'a str,
}

pub fn decide(pod: &Pod, target: &InjectionScope<'_>, settings: &SidecarDefaults) -> Decision {
    match inject(pod, target, settings) {
        Injection::Skip(reason) => Decision::Skip(reason),
        Injection::Reject(e) => Decision::Reject(e),
        Injection::Injected(mutated) => {
            let before = serde_json::to_value(pod).unwrap_or_default();
            let after = serde_json::to_value(&*mutated).unwrap_or_default();
            Decision::Inject(json_patch::diff(&before, &after))
        }
    }
}

/// The pod as the webhook admits it (also what `streamgate inject` prints).
#[derive(Debug)]
pub enum Injection {
    /// Left as it is, for this reason.
    Skip(&'static str),
    /// With the sidecar.
    Injected(Box<Pod>),
    /// Refused: an annotation is wrong.
    Reject(FieldError),
}

pub fn inject(pod: &Pod, target: &InjectionScope<'_>, settings: &SidecarDefaults) -> Injection {
    match not_requested(pod, target) {
        Some(Decision::Skip(reason)) => return Injection::Skip(reason),
        Some(Decision::Reject(e)) => return Injection::Reject(e),
        Some(Decision::Inject(_)) | None => {}
    }
    let mut wanted = match wanted_sidecar(pod) {
        Ok(wanted) => wanted,
        Err(e) => return Injection::Reject(e),
    };
    wanted.sidecar.resources = wanted
        .sidecar
        .resources
        .map(|named| crate::sidecar_defaults::merge_resources(&named, &settings.resources));
    let rendered = render_sidecar(&wanted.config, &wanted.sidecar, settings);
    match with_sidecar(pod, &rendered, &wanted.config.service.service_name) {
        Ok(mutated) => Injection::Injected(Box::new(mutated)),
        Err(e) => Injection::Reject(e),
    }
}

/// The decision when the pod gets no sidecar: it is in a system namespace, opted out,
/// did not ask, asked wrongly, or already has one.
fn not_requested(pod: &Pod, target: &InjectionScope<'_>) -> Option<Decision> {
    if target.namespace == "kube-system" || target.namespace == target.operator_namespace {
        return Some(Decision::Skip("system or operator namespace"));
    }
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    match pod_annotations.get(INJECT).map(|v| v.trim()) {
        Some("false") => return Some(Decision::Skip("opted out")),
        Some("true") => {}
        Some(other) => {
            return Some(Decision::Reject(FieldError::new(
                INJECT,
                format!("{other:?} is not \"true\" or \"false\""),
            )));
        }
        None if target.namespace_enabled => {}
        None => return Some(Decision::Skip("not requested")),
    }
    let spec = pod.spec.as_ref();
    let has_sidecar = spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .any(|c| c.name == SIDECAR_NAME);
    (has_sidecar || pod_annotations.contains_key(INJECTED))
        .then_some(Decision::Skip("already injected"))
}

/// The sidecar the pod's annotations describe, its name and port defaulted from the pod.
fn wanted_sidecar(pod: &Pod) -> Result<annotations::AnnotatedSidecar, FieldError> {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let default_name = labels
        .get(crate::labels::NAME_LABEL)
        .or_else(|| labels.get("app"))
        .map(String::as_str);
    let ports: Vec<i32> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port))
        .collect();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    annotations::parse(pod_annotations, default_name, &ports)
}

/// The pod with the sidecar first among its init containers, its volumes, the sidecar's
/// address in every app container, and the labels and annotations that mark it.
fn with_sidecar(pod: &Pod, rendered: &RenderedSidecar, service: &str) -> Result<Pod, FieldError> {
    let mut mutated = pod.clone();
    let pod_spec = mutated.spec.get_or_insert_with(Default::default);
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for volume in &rendered.volumes {
        if volumes.iter().any(|v| v.name == volume.name) {
            return Err(FieldError::new(
                INJECT,
                format!(
                    "the pod already has a volume named {}, which the sidecar needs",
                    volume.name
                ),
            ));
        }
        volumes.push(volume.clone());
    }
    rendered.add_fs_group(pod_spec);
    // First among the init containers: up before anything else in the pod runs.
    pod_spec
        .init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, rendered.container.clone());
    for container in &mut pod_spec.containers {
        let env = container.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == SIDECAR_ADDR_ENV) {
            env.push(sidecar_addr_env());
        }
        rendered.add_pre_stop(container);
    }
    // The label the identity issuer looks for (and that StreamGateService pods carry).
    mutated
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(
            crate::labels::SERVICE_LABEL.to_string(),
            service.to_string(),
        );
    let annotations = mutated
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(INJECTED.to_string(), "true".to_string());
    annotations.insert(
        CONFIG_HASH_ANNOTATION.to_string(),
        rendered.config_hash.clone(),
    );
    Ok(mutated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1",
                "labels": {"app": "web"},
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
            },
            "spec": {"containers": [{"name": "app", "image": "web:1", "ports": [{"containerPort": 8080}]}]}
        }))
        .unwrap()
    }

    fn target(namespace_enabled: bool) -> InjectionScope<'static> {
        InjectionScope {
            namespace: "apps",
            namespace_enabled,
            operator_namespace: "streamgate-system",
        }
    }

    fn apply(pod: &Pod, patch: &json_patch::Patch) -> Pod {
        let mut value = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut value, patch).unwrap();
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn annotated_pod_gets_one_native_sidecar_first_and_the_app_its_address() {
        let p = pod(&[(INJECT, "true")]);
        let Decision::Inject(patch) = decide(&p, &target(false), &SidecarDefaults::for_tests())
        else {
            panic!("not injected");
        };
        let injected = apply(&p, &patch);
        let spec = injected.spec.as_ref().unwrap();
        let init = spec.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].name, SIDECAR_NAME);
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == SIDECAR_ADDR_ENV));
        let labels = injected.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[crate::labels::SERVICE_LABEL], "web");
        // A second pass over the injected pod changes nothing.
        assert!(matches!(
            decide(&injected, &target(false), &SidecarDefaults::for_tests()),
            Decision::Skip("already injected")
        ));
    }

    #[test]
    fn namespace_label_injects_and_the_pod_can_opt_out() {
        let settings = SidecarDefaults::for_tests();
        assert!(matches!(
            decide(&pod(&[]), &target(true), &settings),
            Decision::Inject(_)
        ));
        assert!(matches!(
            decide(&pod(&[]), &target(false), &settings),
            Decision::Skip(_)
        ));
        let opted_out = pod(&[(INJECT, "false")]);
        assert!(matches!(
            decide(&opted_out, &target(true), &settings),
            Decision::Skip("opted out")
        ));
    }

    #[test]
    fn system_namespaces_are_never_injected() {
        let system = InjectionScope {
            namespace: "kube-system",
            namespace_enabled: true,
            operator_namespace: "streamgate-system",
        };
        let p = pod(&[(INJECT, "true")]);
        assert!(matches!(
            decide(&p, &system, &SidecarDefaults::for_tests()),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn bad_inject_value_is_rejected_by_name() {
        let p = pod(&[(INJECT, "yes")]);
        let Decision::Reject(e) = decide(&p, &target(false), &SidecarDefaults::for_tests()) else {
            panic!("not rejected");
        };
        assert_eq!(e.field, INJECT);
    }
}
