//! The operator's view of Consul: the instances StreamGate registered for a service, and
//! their removal. Every call has a timeout; callers decide about retries.

use std::collections::BTreeMap;
use std::time::Duration;

use streamgate_consul::contract::{
    MANAGED_BY_STREAMGATE, META_CLUSTER, META_MANAGED_BY, META_NAMESPACE, META_POD, META_POD_UID,
    META_REGISTRATION, REGISTERED_IN_CATALOG,
};
use streamgate_consul::health::{self, HealthEntry};
use streamgate_consul::registry::{agent_deregister, catalog_deregister};
pub use streamgate_consul::{ConsulError, ConsulHttp, Seen, Timeouts};

/// How long Consul holds a blocking query open when nothing changes.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(30);

/// One registered instance, with the health of its checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredInstance {
    pub id: String,
    pub service: String,
    pub node: String,
    pub meta: BTreeMap<String, String>,
    /// `passing`, `warning` or `critical`: the worst of its checks.
    pub status: String,
}

impl RegisteredInstance {
    pub fn is_managed(&self) -> bool {
        self.meta.get(META_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_STREAMGATE)
    }
    pub fn namespace(&self) -> Option<&str> {
        self.meta.get(META_NAMESPACE).map(String::as_str)
    }
    pub fn pod(&self) -> Option<&str> {
        self.meta.get(META_POD).map(String::as_str)
    }
    pub fn cluster(&self) -> Option<&str> {
        self.meta.get(META_CLUSTER).map(String::as_str)
    }
    pub fn pod_uid(&self) -> Option<&str> {
        self.meta.get(META_POD_UID).map(String::as_str)
    }
    pub fn is_passing(&self) -> bool {
        self.status == "passing"
    }
    /// Written straight into the catalog: no TTL fails it when its sidecar is gone.
    pub fn registered_in_catalog(&self) -> bool {
        self.meta.get(META_REGISTRATION).map(String::as_str) == Some(REGISTERED_IN_CATALOG)
    }
}

impl From<HealthEntry> for RegisteredInstance {
    fn from(entry: HealthEntry) -> Self {
        RegisteredInstance {
            status: entry.status().to_string(),
            id: entry.service.id,
            service: entry.service.service,
            node: entry.node.node,
            meta: entry.service.meta.unwrap_or_default(),
        }
    }
}

/// The operator's Consul client, for one cluster's instances.
#[derive(Clone, Debug)]
pub struct Consul {
    http: ConsulHttp,
    /// This cluster's id (meta `k8s-cluster`): other clusters' instances are not ours.
    cluster: String,
}

impl Consul {
    /// `address` is `http://host:port` or a bare `host:port`.
    pub fn new(address: &str, token: Option<String>, cluster: &str) -> Result<Self, ConsulError> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            call: Duration::from_secs(5),
        };
        Ok(Consul {
            http: ConsulHttp::new(address, token, timeouts)?,
            cluster: cluster.to_string(),
        })
    }

    /// Whether StreamGate registered `instance` in this cluster: the only instances the
    /// operator ever removes. One without a cluster id (a sidecar older than the id)
    /// is left to Consul's own critical-instance reaping.
    pub fn is_ours(&self, instance: &RegisteredInstance) -> bool {
        instance.is_managed() && instance.cluster() == Some(self.cluster.as_str())
    }

    /// Every instance of `service`, passing or not.
    pub async fn instances(&self, service: &str) -> Result<Vec<RegisteredInstance>, ConsulError> {
        self.instances_after(service, None)
            .await
            .map(|(instances, _)| instances)
    }

    /// Every instance of `service`; with `after` (an `X-Consul-Index` seen before), a
    /// blocking query that answers once something changed or [`BLOCKING_WAIT`] passed.
    /// Returns the answer's index for the next one.
    pub async fn instances_after(
        &self,
        service: &str,
        after: Option<u64>,
    ) -> Result<(Vec<RegisteredInstance>, Option<u64>), ConsulError> {
        let path = health::service_path(service, false);
        let seen = after.map(Seen::Index);
        let answer = self
            .http
            .get_blocking(&path, seen.as_ref(), BLOCKING_WAIT)
            .await?;
        let entries: Vec<HealthEntry> = answer.json(&format!("GET {path}"))?;
        let instances = entries.into_iter().map(RegisteredInstance::from).collect();
        Ok((instances, answer.index))
    }

    /// The instance `id` of `service` as Consul has it now, if it still exists.
    pub async fn instance(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<RegisteredInstance>, ConsulError> {
        Ok(self
            .instances(service)
            .await?
            .into_iter()
            .find(|i| i.id == id))
    }

    /// The instances of `service` that StreamGate registered for pods of `namespace`
    /// in this cluster.
    pub async fn managed_instances(
        &self,
        service: &str,
        namespace: &str,
    ) -> Result<Vec<RegisteredInstance>, ConsulError> {
        Ok(self
            .instances(service)
            .await?
            .into_iter()
            .filter(|i| self.is_ours(i) && i.namespace() == Some(namespace))
            .collect())
    }

    /// Names of every service in the catalog.
    pub async fn services(&self) -> Result<Vec<String>, ConsulError> {
        let path = "/v1/catalog/services";
        let map: BTreeMap<String, serde_json::Value> =
            self.http.get(path).await?.json(&format!("GET {path}"))?;
        Ok(map.into_keys().collect())
    }

    /// The node name of the agent we talk to; `None` when the address refuses the agent
    /// API to our token (an agentless install), where every instance is the catalog's.
    pub async fn agent_node(&self) -> Result<Option<String>, ConsulError> {
        let path = "/v1/agent/self";
        let answer = match self.http.get(path).await {
            Ok(answer) => answer,
            Err(ConsulError::Status { status: 403, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let value: serde_json::Value = answer.json(&format!("GET {path}"))?;
        Ok(value["Config"]["NodeName"].as_str().map(str::to_string))
    }

    /// Removes `instance`. An instance registered through the agent we talk to is removed
    /// through that agent (else its anti-entropy would restore it); one on another node
    /// (or written to the catalog) is removed from the catalog.
    pub async fn deregister(
        &self,
        instance: &RegisteredInstance,
        agent_node: Option<&str>,
    ) -> Result<(), ConsulError> {
        let result = if agent_node == Some(instance.node.as_str()) {
            agent_deregister(&self.http, &instance.id).await
        } else {
            catalog_deregister(&self.http, &instance.node, &instance.id).await
        };
        match result {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_read_from_a_health_entry_with_its_worst_status_and_mode() {
        let body = r#"[{"Node":{"Node":"n1"},"Service":{"ID":"up-1","Service":"upload",
            "Meta":{"managed-by":"streamgate","k8s-namespace":"media","k8s-pod":"up-1",
            "streamgate-registration":"catalog"}},
            "Checks":[{"Status":"passing"},{"Status":"critical"}]}]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(body).unwrap();
        let instance = RegisteredInstance::from(entries[0].clone());
        assert_eq!(instance.status, "critical");
        assert_eq!(instance.node, "n1");
        assert!(instance.is_managed() && instance.registered_in_catalog());
        assert_eq!(instance.pod(), Some("up-1"));
    }
}
