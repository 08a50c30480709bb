//! Label and annotation keys StreamGate puts on the objects it manages.

use std::collections::BTreeMap;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "streamgate-operator";
/// Finalizer that cleans the service's Consul instances before the resource goes.
pub const FINALIZER: &str = "streamgate.io/consul-cleanup";
/// Pod template annotation: digest of the rendered sidecar configuration, so a change
/// of configuration rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "streamgate.io/config-hash";
/// Pod label carrying the Consul service name.
pub const SERVICE_LABEL: &str = "streamgate.io/service";

pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "streamgate";

/// The one label on every object the operator creates outside a service's own children
/// (Secrets, webhook configurations), so `kubectl get -l` finds them all.
pub fn managed_by() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())])
}

/// Whether an object carries [`managed_by`]'s label: only those does the operator rewrite.
pub fn is_managed_by_streamgate(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// The labels selecting the pods of the StreamGateService `name`.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE_LABEL.to_string(), name.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
    ])
}

/// The selector as a string, for `status.selector` (scale subresource, HPAs).
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
