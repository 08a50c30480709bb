//! The ghost sweep: Consul instances that StreamGate registered for a pod that no longer
//! exists (killed without a clean shutdown, node lost) are deregistered. An instance
//! whose pod exists, or one StreamGate does not manage, is never touched.

use crate::consul::{Consul, ConsulError, RegisteredInstance};
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use std::time::Duration;
use tracing::{info, warn};

/// Why an instance is a ghost, or `None` when its pod is alive.
pub fn ghost_reason(instance: &RegisteredInstance, pod: Option<&Pod>) -> Option<String> {
    let pod_name = instance.pod()?;
    match pod {
        None => Some(format!("pod {pod_name} no longer exists")),
        Some(pod) => {
            let uid = pod.metadata.uid.as_deref().unwrap_or("");
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
) -> Result<usize, ConsulError> {
    let node = consul.agent_node().await?;
    let mut removed = 0;
    for service in consul.services().await? {
        for instance in consul.instances(&service).await? {
            if !instance.is_managed() {
                continue;
            }
            let (Some(pod_namespace), Some(pod_name)) = (instance.namespace(), instance.pod())
            else {
                continue;
            };
            if namespace.is_some_and(|watched| watched != pod_namespace) {
                continue;
            }
            let pods: Api<Pod> = Api::namespaced(client.clone(), pod_namespace);
            let pod = match pods.get_opt(pod_name).await {
                Ok(pod) => pod,
                Err(e) => {
                    // Unknown is not gone: leave the instance alone.
                    warn!(error = %e, pod = pod_name, "sweep: could not read pod");
                    continue;
                }
            };
            if let Some(reason) = ghost_reason(&instance, pod.as_ref()) {
                consul.deregister(&instance, &node).await?;
                metrics.ghosts_deregistered.inc();
                removed += 1;
                info!(service = %instance.service, id = %instance.id, %reason, "deregistered ghost Consul instance");
            }
        }
    }
    Ok(removed)
}

/// Sweeps every `interval` until the process stops.
pub async fn run(
    client: kube::Client,
    consul: Consul,
    metrics: Metrics,
    interval: Duration,
    namespace: Option<String>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = sweep_once(&client, &consul, &metrics, namespace.as_deref()).await {
            warn!(error = %e, "ghost sweep failed; retrying next period");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn instance(pod: &str, uid: &str) -> RegisteredInstance {
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
            status: "critical".into(),
        }
    }

    fn pod(uid: &str) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                uid: Some(uid.into()),
                ..Default::default()
            },
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
}
