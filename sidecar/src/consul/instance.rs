//! The pod's instance as Consul sees it, built from the settings (pure, unit-tested).

use crate::config::Settings;
use std::time::Duration;

use streamgate_consul::contract::{
    MANAGED_BY_STREAMGATE, META_CLUSTER, META_MANAGED_BY, META_NAMESPACE, META_POD, META_POD_UID,
    check_id, instance_id,
};
pub use streamgate_consul::registry::{CheckStatus, Instance as PodInstance};

/// The shortest TTL: enough for the sidecar to refresh the check three times.
pub const MIN_TTL: Duration = Duration::from_secs(3);

/// The TTL for a probe period: three periods, so one slow or lost refresh never flips
/// the check, and at least [`MIN_TTL`].
pub fn ttl_for(period: Duration) -> Duration {
    (period * 3).max(MIN_TTL)
}

/// The pod's instance: named after the service, namespace and pod, at the pod's
/// inbound listener, with the meta the operator finds and cleans instances by.
pub fn pod_instance(s: &Settings) -> PodInstance {
    let doc = &s.document;
    let id = instance_id(&doc.service.service_name, &doc.pod.namespace, &doc.pod.name);
    let mut meta = doc.service.meta.clone();
    // Ours win over the user's: the operator finds and cleans instances by them.
    meta.insert(META_NAMESPACE.into(), doc.pod.namespace.clone());
    meta.insert(META_POD.into(), doc.pod.name.clone());
    if !doc.pod.uid.is_empty() {
        meta.insert(META_POD_UID.into(), doc.pod.uid.clone());
    }
    if let Some(cluster) = &doc.consul.cluster_id {
        meta.insert(META_CLUSTER.into(), cluster.clone());
    }
    meta.insert(META_MANAGED_BY.into(), MANAGED_BY_STREAMGATE.into());
    PodInstance {
        check_id: check_id(&id),
        id,
        name: doc.service.service_name.clone(),
        address: s.pod_ip.to_string(),
        port: s.listen.inbound.port(),
        tags: doc.service.tags.clone(),
        meta,
        ttl: ttl_for(s.health.period),
        deregister_critical_after: s.consul.deregister_critical_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(extra: &str) -> Settings {
        let doc = crate::config::parse_document(&format!(
            "service: {{serviceName: upload, port: 9091, tags: [v1], meta: {{team: media, managed-by: me}}}}\n\
             pod: {{name: upload-7d9f-x2, namespace: media, uid: u-1, ip: 127.0.0.2}}\n{extra}"
        ))
        .unwrap();
        crate::config::resolve::resolve(doc, &|_| None).unwrap()
    }

    #[test]
    fn the_instance_carries_pod_identity_and_the_ttl() {
        let instance = pod_instance(&settings(
            "consul: {deregisterCriticalAfter: 90s, clusterId: 5f1c-uid}",
        ));
        assert_eq!(instance.id, "upload.media.upload-7d9f-x2");
        assert_eq!(instance.check_id, "service:upload.media.upload-7d9f-x2");
        assert_eq!(instance.name, "upload");
        assert_eq!(instance.address, "127.0.0.2");
        assert_eq!(instance.port, 15006);
        assert_eq!(instance.tags, vec!["v1".to_string()]);
        let expected: BTreeMap<String, String> = [
            ("team", "media"),
            ("managed-by", "streamgate"),
            ("k8s-namespace", "media"),
            ("k8s-pod", "upload-7d9f-x2"),
            ("k8s-pod-uid", "u-1"),
            ("k8s-cluster", "5f1c-uid"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(instance.meta, expected);
        assert_eq!(instance.ttl, Duration::from_secs(15));
        assert_eq!(instance.deregister_critical_after, Duration::from_secs(90));
    }

    #[test]
    fn port_follows_the_inbound_listener() {
        let instance = pod_instance(&settings("listen: {inbound: '127.0.0.2:25006'}"));
        assert_eq!(instance.port, 25006);
    }

    #[test]
    fn ttl_is_three_periods_but_never_below_the_minimum() {
        assert_eq!(ttl_for(Duration::from_secs(5)), Duration::from_secs(15));
        assert_eq!(ttl_for(Duration::from_secs(1)), MIN_TTL);
    }
}
