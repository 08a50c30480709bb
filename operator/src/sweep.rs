//! The ghost sweep: Consul instances that StreamGate registered in this cluster for a pod
//! that no longer exists (killed without a clean shutdown, node lost) are deregistered.
//!
//! Rules, each against a way a sweep removes a live instance: only this cluster's
//! instances (meta `k8s-cluster`; another cluster sharing the Consul has other pods); a
//! passing instance registered through an agent stays even when its pod is not found
//! (its sidecar is alive and refreshing the TTL check; once it is gone the check runs
//! out and the next pass removes it), while one written to the catalog (agentless mode)
//! goes once its pod is confirmed gone, since no TTL ever fails it; an instance of a pod re-created under the same name (another UID) is removed, but
//! only after reading it again right before, since the new pod's sidecar re-registers
//! the same ID with its own UID. An instance StreamGate does not manage is never touched.
//!
//! Pods are read from a watch cache of their metadata (pods with the
//! `streamgate.io/service` label), not one GET per instance; a pod the cache does not
//! have is looked up once more before its instance goes, since a pod created moments
//! ago may not be in the cache yet.

use crate::consul::{Consul, ConsulError, RegisteredInstance};
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::time::Duration;
use tracing::{info, warn};

/// What the sweep knows of a pod: its metadata.
pub type PodMeta = PartialObjectMeta<Pod>;

/// Why an instance is a ghost, or `None` when it stays.
pub fn ghost_reason(instance: &RegisteredInstance, pod: Option<&ObjectMeta>) -> Option<String> {
    let pod_name = instance.pod()?;
    match pod {
        // A passing agent instance proves a live sidecar refreshing its TTL; a catalog
        // instance has no TTL, so its status proves nothing once its pod is gone.
        None if instance.is_passing() && !instance.registered_in_catalog() => None,
        None => Some(format!(
            "pod {pod_name} no longer exists and the instance is {}",
            instance.status
        )),
        Some(pod) => {
            let uid = pod.uid.as_deref().unwrap_or("");
            match instance.pod_uid() {
                // A pod of the same name but another uid (e.g. a StatefulSet's replacement).
                Some(expected) if !expected.is_empty() && expected != uid => Some(format!(
                    "pod {pod_name} was replaced (uid {expected} is gone)"
                )),
                _ => None,
            }
        }
    }
}

/// One pass over every service in Consul (only instances of pods in `namespace` when the
/// operator watches one namespace); returns how many ghosts were removed.
pub async fn sweep_once(
    client: &kube::Client,
    consul: &Consul,
    metrics: &Metrics,
    namespace: Option<&str>,
    pods: &Store<PodMeta>,
) -> Result<usize, ConsulError> {
    let node = consul.agent_node().await?;
    let mut removed = 0;
    for service in consul.services().await? {
        for instance in consul.instances(&service).await? {
            if !consul.is_ours(&instance) {
                continue;
            }
            let (Some(pod_namespace), Some(pod_name)) = (instance.namespace(), instance.pod())
            else {
                continue;
            };
            if namespace.is_some_and(|watched| watched != pod_namespace) {
                continue;
            }
            let cached = pods.get(&ObjectRef::new(pod_name).within(pod_namespace));
            let lookup = async || {
                let api: Api<Pod> = Api::namespaced(client.clone(), pod_namespace);
                match api.get_metadata_opt(pod_name).await {
                    Ok(found) => Some(found.map(|p| p.metadata)),
                    Err(e) => {
                        warn!(error = %e, pod = pod_name, "sweep: could not read pod");
                        None
                    }
                }
            };
            let reread = async || consul.instance(&service, &instance.id).await;
            let cached = cached.map(|p| p.metadata.clone());
            if let Some((ghost, reason)) = judge(&instance, cached, lookup, reread).await? {
                consul.deregister(&ghost, node.as_deref()).await?;
                metrics.ghosts_deregistered.inc();
                removed += 1;
                info!(service = %ghost.service, id = %ghost.id, %reason, "deregistered ghost Consul instance");
            }
        }
    }
    Ok(removed)
}

/// Whether a listed instance is a ghost to remove now: the instance as Consul has it
/// right before removal, and why. `lookup` reads the pod from the API when the cache
/// does not have it (`None`: the read failed, so nothing is decided); `reread` reads the
/// instance again, since the pod's new sidecar may have registered the same ID with its
/// own UID since the list was taken.
pub async fn judge(
    listed: &RegisteredInstance,
    cached: Option<ObjectMeta>,
    lookup: impl AsyncFnOnce() -> Option<Option<ObjectMeta>>,
    reread: impl AsyncFnOnce() -> Result<Option<RegisteredInstance>, ConsulError>,
) -> Result<Option<(RegisteredInstance, String)>, ConsulError> {
    let mut pod = cached;
    if ghost_reason(listed, pod.as_ref()).is_none() {
        return Ok(None);
    }
    if pod.is_none() {
        // Not in the cache: maybe too new for it. Unknown is not gone.
        let Some(found) = lookup().await else {
            return Ok(None);
        };
        pod = found;
        if ghost_reason(listed, pod.as_ref()).is_none() {
            return Ok(None);
        }
    }
    let Some(current) = reread().await? else {
        return Ok(None);
    };
    Ok(ghost_reason(&current, pod.as_ref()).map(|reason| (current, reason)))
}

/// Sweeps every `interval` until the process stops, once its pod cache is filled.
pub async fn run(
    client: kube::Client,
    consul: Consul,
    metrics: Metrics,
    interval: Duration,
    namespace: Option<String>,
) {
    let (pods, writer) = reflector::store::<PodMeta>();
    // Metadata only: an Api of PartialObjectMeta asks for nothing else.
    let api: Api<PodMeta> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let labelled = watcher::Config::default().labels(crate::labels::SERVICE_LABEL);
    tokio::spawn(
        watcher(api, labelled)
            .default_backoff()
            .modify(|p| {
                p.metadata.managed_fields = None;
                p.metadata.annotations = None;
            })
            .reflect(writer)
            .for_each(|event| {
                if let Err(e) = event {
                    warn!(error = %e, "sweep: the pod watch failed; retrying with backoff");
                }
                std::future::ready(())
            }),
    );
    // An empty cache would make every pod look gone.
    if pods.wait_until_ready().await.is_err() {
        warn!("the sweep's pod cache never filled; not sweeping");
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let swept = sweep_once(&client, &consul, &metrics, namespace.as_deref(), &pods).await;
        if let Err(e) = swept {
            warn!(error = %e, "ghost sweep failed; retrying next period");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn instance(pod: &str, uid: &str) -> RegisteredInstance {
        instance_with(pod, uid, "critical")
    }

    fn instance_with(pod: &str, uid: &str, status: &str) -> RegisteredInstance {
        RegisteredInstance {
            id: format!("upload-{pod}"),
            service: "upload".into(),
            node: "n".into(),
            meta: BTreeMap::from([
                ("managed-by".into(), "streamgate".into()),
                ("k8s-namespace".into(), "media".into()),
                ("k8s-pod".into(), pod.into()),
                ("k8s-pod-uid".into(), uid.into()),
            ]),
            status: status.into(),
        }
    }

    fn pod(uid: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    #[test]
    fn instance_of_a_missing_pod_is_a_ghost() {
        assert!(ghost_reason(&instance("p1", "u1"), None).is_some());
    }

    #[test]
    fn instance_of_a_live_pod_is_kept_even_when_critical() {
        assert!(ghost_reason(&instance("p1", "u1"), Some(&pod("u1"))).is_none());
    }

    #[test]
    fn instance_of_a_replaced_pod_is_a_ghost() {
        assert!(ghost_reason(&instance("p1", "u1"), Some(&pod("u2"))).is_some());
    }

    #[test]
    fn a_passing_instance_stays_even_when_its_pod_is_not_found() {
        // Its sidecar refreshes the check: it lives, the pod is elsewhere or not yet seen.
        assert!(ghost_reason(&instance_with("p1", "u1", "passing"), None).is_none());
        assert!(ghost_reason(&instance_with("p1", "u1", "warning"), None).is_some());
    }

    #[test]
    fn a_passing_catalog_instance_goes_once_its_pod_is_gone() {
        // No TTL fails a catalog instance: passing says nothing about its sidecar.
        let mut catalog = instance_with("p1", "u1", "passing");
        catalog
            .meta
            .insert("streamgate-registration".into(), "catalog".into());
        assert!(ghost_reason(&catalog, None).is_some());
        assert!(ghost_reason(&catalog, Some(&pod("u1"))).is_none());
    }

    /// The race the re-read exists for: the sweep lists the old pod's instance, the pod
    /// is re-created under the same name and its sidecar registers the same ID with the
    /// new UID, then the sweep decides. The live instance stays.
    #[tokio::test]
    async fn a_live_instance_of_a_re_created_pod_is_never_removed() {
        let listed = instance("p1", "u1");
        let recreated = pod("u2");
        let registered_again = instance_with("p1", "u2", "passing");
        let verdict = judge(
            &listed,
            Some(recreated.clone()),
            async || panic!("the cache had the pod"),
            async || Ok(Some(registered_again.clone())),
        )
        .await
        .unwrap();
        assert_eq!(verdict, None, "the new pod's instance must stay");

        // Without a new registration the replaced pod's instance goes, as it was re-read.
        let verdict = judge(
            &listed,
            Some(recreated),
            async || panic!("the cache had the pod"),
            async || Ok(Some(listed.clone())),
        )
        .await
        .unwrap();
        assert_eq!(verdict.map(|(i, _)| i.id), Some(listed.id.clone()));
    }

    #[tokio::test]
    async fn a_pod_the_cache_misses_is_looked_up_and_a_failed_lookup_decides_nothing() {
        let listed = instance("p1", "u1");
        let verdict = judge(
            &listed,
            None,
            async || Some(Some(pod("u1"))),
            async || panic!("the pod exists: no re-read"),
        )
        .await
        .unwrap();
        assert_eq!(verdict, None);
        let verdict = judge(
            &listed,
            None,
            async || None,
            async || panic!("unknown is not gone"),
        )
        .await
        .unwrap();
        assert_eq!(verdict, None);
        let verdict = judge(
            &listed,
            None,
            async || Some(None),
            async || Ok(Some(listed.clone())),
        )
        .await
        .unwrap();
        assert!(
            verdict.is_some(),
            "a critical instance of a pod that is gone goes"
        );
    }

    #[test]
    fn only_this_clusters_managed_instances_are_ours() {
        let consul = Consul::new("127.0.0.1:8500", None, "c1").unwrap();
        let mut mine = instance("p1", "u1");
        mine.meta.insert("k8s-cluster".into(), "c1".into());
        assert!(consul.is_ours(&mine));
        let mut theirs = mine.clone();
        theirs.meta.insert("k8s-cluster".into(), "c2".into());
        assert!(!consul.is_ours(&theirs));
        // Older sidecars registered no cluster: not ours to remove.
        assert!(!consul.is_ours(&instance("p1", "u1")));
        let mut unmanaged = mine.clone();
        unmanaged.meta.remove("managed-by");
        assert!(!consul.is_ours(&unmanaged));
    }
}
