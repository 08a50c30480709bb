//! The operator's view of Consul: the instances StreamGate registered for a service, and
//! their removal. Every call has a timeout; callers decide about retries.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use streamgate_crds::contract::consul::{
    MANAGED_BY_STREAMGATE, META_CLUSTER, META_MANAGED_BY, META_NAMESPACE, META_POD, META_POD_UID,
};

/// How long Consul holds a blocking query open when nothing changes.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("Consul request {what} failed: {source}")]
    Request {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Consul answered {status} to {what}: {body}")]
    Status {
        what: String,
        status: reqwest::StatusCode,
        body: String,
    },
}

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
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: NodeEntry,
    service: ServiceEntry,
    #[serde(default)]
    checks: Vec<CheckEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeEntry {
    node: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckEntry {
    status: String,
}

/// The worst status among checks (no checks counts as passing, as Consul does).
fn aggregate(checks: &[CheckEntry]) -> String {
    let rank = |s: &str| match s {
        "critical" => 2,
        "warning" => 1,
        _ => 0,
    };
    checks
        .iter()
        .map(|c| c.status.as_str())
        .max_by_key(|s| rank(s))
        .unwrap_or("passing")
        .to_string()
}

/// A small Consul HTTP API client, for one cluster's instances.
#[derive(Clone, Debug)]
pub struct Consul {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// This cluster's id (meta `k8s-cluster`): other clusters' instances are not ours.
    cluster: String,
}

impl Consul {
    /// `address` is `http://host:port` or a bare `host:port`.
    pub fn new(
        address: &str,
        token: Option<String>,
        cluster: &str,
    ) -> Result<Self, reqwest::Error> {
        let base = if address.contains("://") {
            address.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", address.trim_end_matches('/'))
        };
        // reqwest is built without a bundled crypto provider; ring is the workspace's one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Consul {
            http,
            base,
            token,
            cluster: cluster.to_string(),
        })
    }

    /// Whether StreamGate registered `instance` in this cluster: the only instances the
    /// operator ever removes. One without a cluster id (a sidecar older than the id)
    /// is left to Consul's own critical-instance reaping.
    pub fn is_ours(&self, instance: &RegisteredInstance) -> bool {
        instance.is_managed() && instance.cluster() == Some(self.cluster.as_str())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        req
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<String, ConsulError> {
        let resp = req.send().await.map_err(|source| ConsulError::Request {
            what: what.to_string(),
            source,
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ConsulError::Status {
                what: what.to_string(),
                status,
                body,
            });
        }
        Ok(body)
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
        let mut path = format!("/v1/health/service/{service}");
        let mut request = self.request(reqwest::Method::GET, &path);
        if let Some(index) = after {
            path.push_str(&format!("?index={index}&wait={}s", BLOCKING_WAIT.as_secs()));
            // Consul adds up to wait/16 of jitter; the client's own timeout is shorter.
            request = self
                .request(reqwest::Method::GET, &path)
                .timeout(BLOCKING_WAIT + BLOCKING_WAIT / 16 + Duration::from_secs(5));
        }
        let what = format!("GET {path}");
        let response = request
            .send()
            .await
            .map_err(|source| ConsulError::Request {
                what: what.clone(),
                source,
            })?;
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ConsulError::Status { what, status, body });
        }
        let entries: Vec<HealthEntry> = serde_json::from_str(&body).unwrap_or_default();
        let instances = entries
            .into_iter()
            .map(|e| RegisteredInstance {
                status: aggregate(&e.checks),
                id: e.service.id,
                service: e.service.service,
                node: e.node.node,
                meta: e.service.meta.unwrap_or_default(),
            })
            .collect();
        Ok((instances, index))
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
        let body = self
            .send(
                "GET /v1/catalog/services",
                self.request(reqwest::Method::GET, "/v1/catalog/services"),
            )
            .await?;
        let map: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&body).unwrap_or_default();
        Ok(map.into_keys().collect())
    }

    /// The node name of the agent we talk to.
    pub async fn agent_node(&self) -> Result<String, ConsulError> {
        let body = self
            .send(
                "GET /v1/agent/self",
                self.request(reqwest::Method::GET, "/v1/agent/self"),
            )
            .await?;
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        Ok(value["Config"]["NodeName"]
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// Removes `instance`. An instance registered through the agent we talk to is removed
    /// through that agent (else its anti-entropy would restore it); one on another node
    /// is removed from the catalog.
    pub async fn deregister(
        &self,
        instance: &RegisteredInstance,
        agent_node: &str,
    ) -> Result<(), ConsulError> {
        if instance.node == agent_node {
            let path = format!("/v1/agent/service/deregister/{}", instance.id);
            self.send(
                &format!("PUT {path}"),
                self.request(reqwest::Method::PUT, &path),
            )
            .await?;
        } else {
            let body = serde_json::json!({"Node": instance.node, "ServiceID": instance.id});
            self.send(
                "PUT /v1/catalog/deregister",
                self.request(reqwest::Method::PUT, "/v1/catalog/deregister")
                    .json(&body),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_health_entries_and_aggregates_check_status() {
        let body = r#"[{"Node":{"Node":"n1"},"Service":{"ID":"up-1","Service":"upload",
            "Meta":{"managed-by":"streamgate","k8s-namespace":"media","k8s-pod":"up-1"}},
            "Checks":[{"Status":"passing"},{"Status":"critical"}]},
            {"Node":{"Node":"n1"},"Service":{"ID":"up-2","Service":"upload","Meta":null},
            "Checks":[{"Status":"passing"}]}]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(body).unwrap();
        assert_eq!(aggregate(&entries[0].checks), "critical");
        assert_eq!(aggregate(&entries[1].checks), "passing");
        assert!(entries[1].service.meta.is_none());
    }

    #[test]
    fn bare_host_port_gets_a_scheme() {
        let c = Consul::new("127.0.0.1:8500", None, "c1").unwrap();
        assert_eq!(c.base, "http://127.0.0.1:8500");
    }
}
