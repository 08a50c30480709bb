//! The operator's own MutatingWebhookConfiguration, applied server-side with the CA as
//! `caBundle`. Two webhooks: one for namespaces labelled `streamgate.io/inject=enabled`
//! (every pod), one for the other namespaces (pods annotated `streamgate.io/inject`),
//! so the server knows a namespace's choice without reading the namespace.

use super::inject::{NAMESPACE_ENABLED, NAMESPACE_LABEL};
use crate::labels::FIELD_MANAGER;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

/// CEL: the pod carries `streamgate.io/inject` with a value other than "false". Outside
/// opted-in namespaces only such pods reach the webhook, so with every operator replica
/// down the API server still admits every other pod (`failurePolicy: Fail` applies only
/// to pods that asked for a sidecar). An invalid value still reaches the webhook, which
/// refuses it naming the annotation.
pub const ASKS_FOR_INJECTION: &str = "has(object.metadata.annotations) && 'streamgate.io/inject' in object.metadata.annotations && object.metadata.annotations['streamgate.io/inject'] != 'false'";
/// CEL: the pod did not opt out with `streamgate.io/inject: "false"` (in an opted-in
/// namespace every other pod is injected).
pub const NOT_OPTED_OUT: &str = "!has(object.metadata.annotations) || !('streamgate.io/inject' in object.metadata.annotations) || object.metadata.annotations['streamgate.io/inject'] != 'false'";

pub const PATH_NAMESPACE: &str = "/inject/namespace";
pub const PATH_POD: &str = "/inject/pod";

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// `--webhook-url`: the operator runs outside the cluster.
    Url(String),
    /// The chart's Service in the operator's namespace, port 443.
    Service { namespace: String, name: String },
}

#[derive(Clone, Debug)]
pub struct Registration {
    pub name: String,
    pub endpoint: Endpoint,
    /// `Fail` (the default: a pod is never started silently without its sidecar) or `Ignore`.
    pub failure_policy: crate::cli::FailurePolicy,
    pub timeout_seconds: i32,
    /// Only this namespace (an operator scoped with `--namespace`), else every namespace
    /// but these excluded ones.
    pub only_namespace: Option<String>,
    pub excluded_namespaces: Vec<String>,
}

fn client_config(endpoint: &Endpoint, path: &str, ca: &str) -> WebhookClientConfig {
    let ca_bundle = Some(ByteString(ca.as_bytes().to_vec()));
    match endpoint {
        Endpoint::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle,
            service: None,
        },
        Endpoint::Service { namespace, name } => WebhookClientConfig {
            url: None,
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_string()),
                port: Some(443),
            }),
        },
    }
}

fn requirement(key: &str, operator: &str, values: &[String]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_string(),
        operator: operator.to_string(),
        values: Some(values.to_vec()),
    }
}

/// The desired configuration (a pure function, unit-tested).
pub fn desired(registration: &Registration, ca: &str) -> MutatingWebhookConfiguration {
    let scope = match &registration.only_namespace {
        Some(ns) => requirement(
            "kubernetes.io/metadata.name",
            "In",
            std::slice::from_ref(ns),
        ),
        None => requirement(
            "kubernetes.io/metadata.name",
            "NotIn",
            &registration.excluded_namespaces,
        ),
    };
    let enabled = vec![NAMESPACE_ENABLED.to_string()];
    let webhook = |name: &str,
                   path: &str,
                   label: LabelSelectorRequirement,
                   condition: (&str, &str)| MutatingWebhook {
        name: name.to_string(),
        admission_review_versions: vec!["v1".to_string()],
        client_config: client_config(&registration.endpoint, path, ca),
        failure_policy: Some(registration.failure_policy.as_str().to_string()),
        match_policy: Some("Equivalent".to_string()),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![scope.clone(), label]),
            match_labels: None,
        }),
        // Another webhook changing the pod after us gets us called again; the handler
        // recognises its own sidecar and changes nothing.
        reinvocation_policy: Some("IfNeeded".to_string()),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_string()]),
            operations: Some(vec!["CREATE".to_string()]),
            resources: Some(vec!["pods".to_string()]),
            scope: Some("Namespaced".to_string()),
        }]),
        side_effects: "None".to_string(),
        timeout_seconds: Some(registration.timeout_seconds),
        object_selector: None,
        match_conditions: Some(vec![MatchCondition {
            name: condition.0.to_string(),
            expression: condition.1.to_string(),
        }]),
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(registration.name.clone()),
            labels: Some(crate::labels::managed_by()),
            ..Default::default()
        },
        webhooks: Some(vec![
            webhook(
                "namespace.inject.streamgate.io",
                PATH_NAMESPACE,
                requirement(NAMESPACE_LABEL, "In", &enabled),
                ("not-opted-out", NOT_OPTED_OUT),
            ),
            webhook(
                "pod.inject.streamgate.io",
                PATH_POD,
                requirement(NAMESPACE_LABEL, "NotIn", &enabled),
                ("asks-for-injection", ASKS_FOR_INJECTION),
            ),
        ]),
    }
}

/// Applies the configuration; a no-op when nothing changed.
pub async fn apply(
    client: &kube::Client,
    registration: &Registration,
    ca: &str,
) -> kube::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut body =
        serde_json::to_value(desired(registration, ca)).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    body["kind"] = "MutatingWebhookConfiguration".into();
    api.patch(
        &registration.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_webhooks_fail_closed_with_the_ca_and_scoped_namespaces() {
        let r = Registration {
            name: "streamgate-sidecar-injector".into(),
            endpoint: Endpoint::Url("https://127.0.0.1:9443".into()),
            failure_policy: crate::cli::FailurePolicy::Fail,
            timeout_seconds: 5,
            only_namespace: None,
            excluded_namespaces: vec!["kube-system".into(), "streamgate-system".into()],
        };
        let c = desired(&r, "CA");
        let hooks = c.webhooks.unwrap();
        assert_eq!(hooks.len(), 2);
        for hook in &hooks {
            assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(hook.client_config.ca_bundle.as_ref().unwrap().0, b"CA");
            let exprs = hook
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_expressions
                .as_ref()
                .unwrap();
            assert_eq!(exprs[0].operator, "NotIn");
            assert!(
                exprs[0]
                    .values
                    .as_ref()
                    .unwrap()
                    .contains(&"kube-system".to_string())
            );
        }
        assert_eq!(
            hooks[1].client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/inject/pod")
        );
        let condition = |i: usize| {
            hooks[i].match_conditions.as_ref().unwrap()[0]
                .expression
                .clone()
        };
        assert_eq!(condition(0), NOT_OPTED_OUT);
        assert_eq!(condition(1), ASKS_FOR_INJECTION);
    }
}
