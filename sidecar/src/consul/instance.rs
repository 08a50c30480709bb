//! The pod's instance as Consul sees it, built from the settings (pure, unit-tested).

use crate::config::Settings;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

use streamgate_crds::contract::consul::{
    MANAGED_BY_STREAMGATE, META_CLUSTER, META_MANAGED_BY, META_NAMESPACE, META_POD, META_POD_UID,
    check_id, instance_id,
};
/// The shortest TTL: enough for the sidecar to refresh the check three times.
pub const MIN_TTL: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Passing,
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInstance {
    pub service_id: String,
    pub check_id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// The sidecar refreshes the check well within this; if the sidecar dies, the check
    /// goes critical when it runs out.
    pub ttl: Duration,
    pub deregister_critical_after: Duration,
}

/// The TTL for a probe period: three periods, so one slow or lost refresh never flips
/// the check, and at least [`MIN_TTL`].
pub fn ttl_for(period: Duration) -> Duration {
    (period * 3).max(MIN_TTL)
}

impl PodInstance {
    pub fn from_settings(s: &Settings) -> PodInstance {
        let doc = &s.document;
        let service_id = instance_id(&doc.service.service_name, &doc.pod.namespace, &doc.pod.name);
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
            check_id: check_id(&service_id),
            service_id,
            name: doc.service.service_name.clone(),
            address: s.pod_ip.to_string(),
            port: s.listen.inbound.port(),
            tags: doc.service.tags.clone(),
            meta,
            ttl: ttl_for(s.health.period),
            deregister_critical_after: s.consul.deregister_critical_after,
        }
    }

    /// The body of `PUT /v1/agent/service/register`; the check starts in `status` so
    /// a re-registration never flaps a healthy instance to critical.
    pub fn registration(&self, status: CheckStatus) -> Value {
        json!({
            "ID": self.service_id,
            "Name": self.name,
            "Address": self.address,
            "Port": self.port,
            "Tags": self.tags,
            "Meta": self.meta,
            "Check": {
                "CheckID": self.check_id,
                "Name": "StreamGate app health",
                "Notes": "Driven by the StreamGate sidecar from its health checks of the app",
                "TTL": go_duration(self.ttl),
                "Status": status.as_str(),
                "DeregisterCriticalServiceAfter": go_duration(self.deregister_critical_after),
            },
        })
    }
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let doc = crate::config::parse_document(&format!(
            "service: {{serviceName: upload, port: 9091, tags: [v1], meta: {{team: media, managed-by: me}}}}\n\
             pod: {{name: upload-7d9f-x2, namespace: media, uid: u-1, ip: 127.0.0.2}}\n{extra}"
        ))
        .unwrap();
        crate::config::resolve::resolve(doc, &|_| None).unwrap()
    }

    #[test]
    fn registration_carries_pod_identity_and_the_ttl_check() {
        let instance = PodInstance::from_settings(&settings(
            "consul: {deregisterCriticalAfter: 90s, clusterId: 5f1c-uid}",
        ));
        let body = instance.registration(CheckStatus::Critical);
        assert_eq!(body["ID"], "upload.media.upload-7d9f-x2");
        assert_eq!(body["Name"], "upload");
        assert_eq!(body["Address"], "127.0.0.2");
        assert_eq!(body["Port"], 15006);
        assert_eq!(body["Tags"], json!(["v1"]));
        assert_eq!(
            body["Meta"],
            json!({"team": "media", "managed-by": "streamgate", "k8s-namespace": "media",
                   "k8s-pod": "upload-7d9f-x2", "k8s-pod-uid": "u-1", "k8s-cluster": "5f1c-uid"})
        );
        let check = &body["Check"];
        assert_eq!(check["CheckID"], "service:upload.media.upload-7d9f-x2");
        assert_eq!(check["Status"], "critical");
        assert_eq!(check["TTL"], "15000ms");
        assert_eq!(check["DeregisterCriticalServiceAfter"], "90000ms");
    }

    #[test]
    fn port_follows_the_inbound_listener() {
        let instance =
            PodInstance::from_settings(&settings("listen: {inbound: '127.0.0.2:25006'}"));
        assert_eq!(instance.port, 25006);
    }

    #[test]
    fn ttl_is_three_periods_but_never_below_the_minimum() {
        assert_eq!(ttl_for(Duration::from_secs(5)), Duration::from_secs(15));
        assert_eq!(ttl_for(Duration::from_secs(1)), MIN_TTL);
    }
}
