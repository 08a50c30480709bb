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

pub use streamgate_crds::contract::mounts::MTLS_DIR;
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

/// The leader's identity issuer: once a `period`, reads the CA from the webhook's
/// Secret and runs [`issue_all`]. Only the leader runs it, so replicas never race on the
/// same Secret.
pub struct Issuer {
    pub client: kube::Client,
    /// The webhook's PKI Secret, holder of the CA.
    pub ca_secrets: Api<Secret>,
    pub ca_secret_name: String,
    /// Only this namespace's pods, when the operator watches one.
    pub scope: Option<String>,
    pub validity: Duration,
    pub period: Duration,
}

impl Issuer {
    pub async fn run(self) {
        // The services with pods at the last pass: one gone since gets its Secret removed.
        let mut known = BTreeSet::new();
        loop {
            if let Err(e) = self.pass(&mut known).await {
                warn!(
                    error = format!("{e:#}"),
                    "issuing workload certificates failed; retrying"
                );
            }
            tokio::time::sleep(self.period).await;
        }
    }

    async fn pass(&self, known: &mut BTreeSet<(String, String)>) -> anyhow::Result<usize> {
        let ca = crate::webhook::certs::read(&self.ca_secrets, &self.ca_secret_name).await?;
        let scope = self.scope.as_deref();
        issue_all(
            &self.client,
            scope,
            &ca.ca_cert,
            &ca.ca_key,
            self.validity,
            known,
        )
        .await
    }
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
    let services = services_with_pods(client, scope).await?;
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
        let secret = workload_secret(
            existing.as_ref(),
            &name,
            &service,
            ca_cert,
            &cert,
            &key,
            not_after,
        );
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
            // Written meanwhile (e.g. by a previous leader); the next pass checks it.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                warn!(%namespace, %service, error = %e, "could not write the workload certificate")
            }
        }
    }
    Ok(issued)
}

/// The (namespace, service) of every pod labelled with a service.
async fn services_with_pods(
    client: &kube::Client,
    scope: Option<&str>,
) -> Result<BTreeSet<(String, String)>, kube::Error> {
    let pods: Api<Pod> = match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = pods
        .list_metadata(&ListParams::default().labels(SERVICE_LABEL))
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|p| {
            let ns = p.metadata.namespace.clone()?;
            let svc = p.metadata.labels.as_ref()?.get(SERVICE_LABEL)?.clone();
            Some((ns, svc))
        })
        .collect())
}

/// The identity Secret with a new certificate, keeping what else the existing one has
/// (its resourceVersion makes the replace fail rather than overwrite a newer one).
fn workload_secret(
    existing: Option<&Secret>,
    name: &str,
    service: &str,
    ca_cert: &str,
    cert: &str,
    key: &str,
    not_after: Timestamp,
) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut secret = existing.cloned().unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some({
                let mut labels = crate::labels::managed_by();
                labels.insert(SERVICE_LABEL.to_string(), service.to_string());
                labels
            }),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        ..Default::default()
    });
    secret.data = Some(BTreeMap::from([
        ("ca.crt".to_string(), bytes(ca_cert)),
        ("tls.crt".to_string(), bytes(cert)),
        ("tls.key".to_string(), bytes(key)),
    ]));
    secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(NOT_AFTER.to_string(), not_after.to_string());
    secret
}

/// Deletes the identity Secret of a service that has no pod left, if we made it.
async fn remove(client: &kube::Client, namespace: &str, service: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret_name(service);
    let ours = match secrets.get_opt(&name).await {
        Ok(Some(secret)) => {
            crate::labels::is_managed_by_streamgate(secret.metadata.labels.as_ref())
        }
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
