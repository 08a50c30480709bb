//! The "apply" step: server-side apply of owned objects under one field manager, skipped
//! when the object in the cluster already holds every value we would apply — so a no-op
//! reconcile writes nothing, and a hand edit of a field we own is put back.

use crate::labels::FIELD_MANAGER;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Debug;

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
    /// An object no longer wanted was removed.
    Deleted,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Created => "created",
            Applied::Updated => "updated",
            Applied::Unchanged => "unchanged",
            Applied::Deleted => "deleted",
        }
    }
}

/// True when every value in `desired` is present and equal in `actual` (objects compared
/// key by key, arrays element by element), i.e. applying `desired` would change nothing.
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    first_difference(desired, actual).is_none()
}

/// The path (e.g. `.spec.template.spec.containers[0].image`) of the first value of
/// `desired` that `actual` lacks or holds differently; logged with each update so an
/// operator can see why the object was written. The path is built on the way back from
/// a difference only: every reconcile compares whole objects that are almost always
/// equal, and formatting each visited key's path was a tenth of the operator's CPU.
pub fn first_difference(desired: &Value, actual: &Value) -> Option<String> {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().find_map(|(k, v)| match a.get(k) {
            Some(av) => first_difference(v, av).map(|rest| format!(".{k}{rest}")),
            None => Some(format!(".{k}")),
        }),
        (Value::Array(d), Value::Array(a)) if d.len() == a.len() => {
            d.iter().zip(a).enumerate().find_map(|(i, (dv, av))| {
                first_difference(dv, av).map(|rest| format!("[{i}]{rest}"))
            })
        }
        _ if desired == actual => None,
        _ => Some(String::new()),
    }
}

/// Applies `desired` unless `current` already matches it. With the action, the object as
/// the API server answered an apply (None when nothing was written).
pub async fn apply<K>(
    api: &Api<K>,
    desired: &K,
    current: Option<&K>,
) -> kube::Result<(Applied, Option<K>)>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let desired_value = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    if let Some(current) = current {
        let current_value = serde_json::to_value(current).map_err(kube::Error::SerdeError)?;
        match first_difference(&desired_value, &current_value) {
            None => return Ok((Applied::Unchanged, None)),
            Some(path) => {
                tracing::debug!(kind = K::kind(&Default::default()).as_ref(), %path, "differs")
            }
        }
    }
    let mut body = desired_value;
    body["apiVersion"] = Value::String(K::api_version(&Default::default()).to_string());
    body["kind"] = Value::String(K::kind(&Default::default()).to_string());
    let answer = api
        .patch(
            &desired.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    let action = if current.is_some() {
        Applied::Updated
    } else {
        Applied::Created
    };
    Ok((action, Some(answer)))
}

/// `desired` applied as [`apply`] does, or — when it is `None` — `current` deleted if it
/// exists (an object that is wanted only under some spec, like a NetworkPolicy).
pub async fn apply_or_delete<K>(
    api: &Api<K>,
    desired: Option<&K>,
    current: Option<&K>,
) -> kube::Result<(Applied, Option<K>)>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    match (desired, current) {
        (Some(desired), current) => apply(api, desired, current).await,
        (None, None) => Ok((Applied::Unchanged, None)),
        (None, Some(current)) => {
            match api
                .delete(&current.name_any(), &kube::api::DeleteParams::default())
                .await
            {
                Ok(_) => Ok((Applied::Deleted, None)),
                // Gone already: what we wanted.
                Err(kube::Error::Api(e)) if e.code == 404 => Ok((Applied::Unchanged, None)),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_do_not_count_as_a_difference() {
        let desired =
            json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "app"}]}}});
        let actual = json!({"spec": {"replicas": 2, "strategy": {}, "template": {"containers": [{"name": "app", "imagePullPolicy": "Always"}]}}});
        assert!(is_subset(&desired, &actual));
    }

    #[test]
    fn a_changed_or_missing_value_is_a_difference() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 1}]}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 3, "ports": [{"port": 1}]}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 2}})));
        assert_eq!(
            first_difference(
                &desired,
                &json!({"spec": {"replicas": 2, "ports": [{"port": 9}]}})
            ),
            Some(".spec.ports[0].port".to_string())
        );
        assert_eq!(
            first_difference(&desired, &json!({"spec": {"ports": [{"port": 1}]}})),
            Some(".spec.replicas".to_string())
        );
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 2, "ports": [{"port": 1}, {"port": 2}]}})
        ));
    }
}
