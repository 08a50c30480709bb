//! Workload identities for mTLS between sidecars. The webhook's CA issues one
//! certificate per service and namespace, kept in the Secret
//! `streamgate-mtls-<service>` beside the pods, which mount it (optional, so a pod never
//! waits for it) at `/etc/streamgate/mtls`. Every pod of a service shares its identity:
//! a peer authorises callers by service, as `allowedCallers` does.
//!
//! The issuer finds the services from the `streamgate.io/service` label that
//! StreamGateService pods and injected pods carry, and reissues a certificate when a
//! third of its validity is left or the CA changed; the kubelet refreshes the mounted
//! files in place.

use crate::labels::SERVICE_LABEL;
use crate::webhook::certs::issue_workload;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::{info, warn};

pub const MTLS_DIR: &str = "/etc/streamgate/mtls";
const NOT_AFTER: &str = "streamgate.io/not-after";

/// Name of the Secret holding `service`'s identity.
pub fn secret_name(service: &str) -> String {
    format!("streamgate-mtls-{service}")
}

/// Whether the Secret's certificate must be (re)issued.
pub fn needs_issue(
    secret: Option<&Secret>,
    ca_cert: &str,
    validity: Duration,
    now: Timestamp,
) -> bool {
    let Some(secret) = secret else { return true };
    let data = secret.data.clone().unwrap_or_default();
    let same_ca = data
        .get("ca.crt")
        .is_some_and(|c| c.0 == ca_cert.as_bytes());
    let not_after: Option<Timestamp> = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NOT_AFTER))
        .and_then(|t| t.parse().ok());
    let threshold = SignedDuration::try_from(validity / 3).unwrap_or(SignedDuration::ZERO);
    !same_ca || not_after.is_none_or(|t| t.duration_since(now) < threshold)
}

/// Ensures the identity Secret of every (namespace, service) that has pods, and removes
/// the Secret of a service whose last pod went since the previous pass (`known`). A
/// Secret orphaned while no operator ran stays (finding it would take list rights on
/// every Secret in the cluster, which the operator does not ask for).
pub async fn issue_all(
    client: &kube::Client,
    scope: Option<&str>,
    ca_cert: &str,
    ca_key: &str,
    validity: Duration,
    known: &mut BTreeSet<(String, String)>,
) -> anyhow::Result<usize> {
    let pods: Api<Pod> = match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = pods
        .list_metadata(&ListParams::default().labels(SERVICE_LABEL))
        .await?;
    let services: BTreeSet<(String, String)> = list
        .items
        .iter()
        .filter_map(|p| {
            let ns = p.metadata.namespace.clone()?;
            let svc = p.metadata.labels.as_ref()?.get(SERVICE_LABEL)?.clone();
            Some((ns, svc))
        })
        .collect();
    for (namespace, service) in known.difference(&services) {
        remove(client, namespace, service).await;
    }
    known.clone_from(&services);
    let mut issued = 0;
    for (namespace, service) in services {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let name = secret_name(&service);
        let existing = secrets.get_opt(&name).await?;
        if !needs_issue(existing.as_ref(), ca_cert, validity, Timestamp::now()) {
            continue;
        }
        let (cert, key, not_after) = issue_workload(ca_key, &namespace, &service, validity)?;
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        let mut secret = existing.clone().unwrap_or_else(|| Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "streamgate".to_string(),
                    ),
                    (SERVICE_LABEL.to_string(), service.clone()),
                ])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_string()),
            ..Default::default()
        });
        secret.data = Some(BTreeMap::from([
            ("ca.crt".to_string(), bytes(ca_cert)),
            ("tls.crt".to_string(), bytes(&cert)),
            ("tls.key".to_string(), bytes(&key)),
        ]));
        secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(NOT_AFTER.to_string(), not_after.to_string());
        let result = match existing {
            Some(_) => {
                secrets
                    .replace(&name, &PostParams::default(), &secret)
                    .await
            }
            None => secrets.create(&PostParams::default(), &secret).await,
        };
        match result {
            Ok(_) => {
                issued += 1;
                info!(%namespace, %service, %not_after, "issued the workload certificate");
            }
            // Another replica wrote it first; the next pass checks it.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                warn!(%namespace, %service, error = %e, "could not write the workload certificate")
            }
        }
    }
    Ok(issued)
}

/// Deletes the identity Secret of a service that has no pod left, if we made it.
async fn remove(client: &kube::Client, namespace: &str, service: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret_name(service);
    let ours = match secrets.get_opt(&name).await {
        Ok(Some(secret)) => secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .is_some_and(|v| v == "streamgate"),
        Ok(None) => return,
        Err(e) => {
            warn!(%namespace, %service, error = %e, "could not read the workload certificate");
            return;
        }
    };
    if !ours {
        return;
    }
    match secrets.delete(&name, &Default::default()).await {
        Ok(_) => info!(%namespace, %service, "removed the workload certificate: no pod left"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            warn!(%namespace, %service, error = %e, "could not remove the workload certificate")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(ca: &str, not_after: Timestamp) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    NOT_AFTER.to_string(),
                    not_after.to_string(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "ca.crt".to_string(),
                ByteString(ca.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn issues_when_missing_expiring_or_signed_by_another_ca() {
        let now = Timestamp::now();
        let day = Duration::from_secs(86_400);
        let fresh = secret("CA", now + SignedDuration::from_hours(23));
        assert!(!needs_issue(Some(&fresh), "CA", day, now));
        assert!(needs_issue(None, "CA", day, now));
        assert!(needs_issue(Some(&fresh), "NEW-CA", day, now));
        let expiring = secret("CA", now + SignedDuration::from_hours(2));
        assert!(needs_issue(Some(&expiring), "CA", day, now));
    }
}
