//! Writing an instance to Consul, in either of the two registration modes:
//!
//! - **agent**: through a Consul agent's `/v1/agent/...` API. The agent owns the instance
//!   (its anti-entropy keeps the catalog in step) and runs its TTL check, which goes
//!   critical by itself when the sidecar stops refreshing it.
//! - **catalog**: agentless, straight into the catalog with `/v1/catalog/register`, for
//!   Consul installs without client agents (consul-k8s's default since Consul 1.14). The
//!   instance lives on a node named after the Kubernetes node, created on first use and
//!   marked synthetic; its check is written by the sidecar on every change of the app's
//!   health. The catalog runs no TTL, so nothing fails an instance whose sidecar died
//!   without leaving: the operator's sweep removes it once its pod is gone.
//!
//! Either way the instance carries meta `streamgate-registration` naming the mode, so the
//! sweep knows which rule applies.

use crate::contract::{
    META_REGISTRATION, NODE_META_SYNTHETIC, REGISTERED_BY_AGENT, REGISTERED_IN_CATALOG,
};
use crate::http::{ConsulError, ConsulHttp, Seen};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

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

/// One instance as StreamGate registers it, with its one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub check_id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// Agent mode: the check goes critical when not refreshed within this.
    pub ttl: Duration,
    /// Agent mode: Consul removes an instance whose check stayed critical this long.
    pub deregister_critical_after: Duration,
}

/// Where instances are written: which API, and for the catalog, which node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Agent,
    Catalog {
        /// The Kubernetes node's name: one Consul node per Kubernetes node, whichever
        /// Consul server the sidecar happens to talk to.
        node: String,
        /// The Kubernetes node's address.
        node_address: String,
    },
}

impl Target {
    pub fn mode(&self) -> &'static str {
        match self {
            Target::Agent => REGISTERED_BY_AGENT,
            Target::Catalog { .. } => REGISTERED_IN_CATALOG,
        }
    }
}

const CHECK_NAME: &str = "StreamGate app health";
const CHECK_NOTES: &str = "Driven by the StreamGate sidecar from its health checks of the app";

/// Registration, check updates, removal and a watch of one instance in one mode.
#[derive(Clone, Debug)]
pub struct Registry {
    http: ConsulHttp,
    target: Target,
}

impl Registry {
    pub fn new(http: ConsulHttp, target: Target) -> Self {
        Registry { http, target }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn address(&self) -> &str {
        self.http.base()
    }

    /// Registers (or replaces) the instance with its check in `status`, so a
    /// re-registration never flaps a healthy instance.
    pub async fn register(
        &self,
        instance: &Instance,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), ConsulError> {
        match &self.target {
            Target::Agent => {
                let body = agent_registration(instance, status);
                self.http
                    .put(
                        "/v1/agent/service/register?replace-existing-checks=true",
                        Some(&body),
                    )
                    .await?;
                // The registration cannot carry the check's output; the update does.
                self.set_check(instance, status, output).await
            }
            Target::Catalog { node, node_address } => {
                self.catalog_write(instance, node, node_address, status, output)
                    .await
            }
        }
    }

    async fn catalog_write(
        &self,
        instance: &Instance,
        node: &str,
        node_address: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), ConsulError> {
        let body = catalog_registration(instance, node, node_address, status, output);
        self.http
            .put("/v1/catalog/register", Some(&body))
            .await
            .map(drop)
    }

    /// Sets the check's status and output (agent mode: also refreshes its TTL).
    pub async fn set_check(
        &self,
        instance: &Instance,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), ConsulError> {
        match &self.target {
            Target::Agent => {
                let path = format!("/v1/agent/check/update/{}", instance.check_id);
                let body = json!({"Status": status.as_str(), "Output": output});
                self.http.put(&path, Some(&body)).await.map(drop)
            }
            // A catalog write of the whole instance: the catalog has no check-only
            // update, and the whole write also restores an instance someone removed.
            Target::Catalog { node, node_address } => {
                self.catalog_write(instance, node, node_address, status, output)
                    .await
            }
        }
    }

    /// Whether the mode needs the check refreshed to keep it passing (a TTL).
    pub fn needs_refresh(&self) -> bool {
        matches!(self.target, Target::Agent)
    }

    /// Removes the instance; one Consul no longer has counts as removed.
    pub async fn deregister(&self, id: &str) -> Result<(), ConsulError> {
        let result = match &self.target {
            Target::Agent => agent_deregister(&self.http, id).await,
            Target::Catalog { node, .. } => catalog_deregister(&self.http, node, id).await,
        };
        match result {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// A blocking query on the instance: answers when it changed (at once without
    /// `seen`) or after `wait`, with what to pass next time; [`ConsulError::NotFound`]
    /// when Consul does not have it (an agent that restarted, a catalog entry removed).
    pub async fn watch(
        &self,
        instance: &Instance,
        seen: Option<&Seen>,
        wait: Duration,
    ) -> Result<Seen, ConsulError> {
        match &self.target {
            Target::Agent => {
                let path = format!("/v1/agent/service/{}", instance.id);
                let answer = self.http.get_blocking(&path, seen, wait).await?;
                Ok(Seen::Hash(answer.content_hash.unwrap_or_default()))
            }
            Target::Catalog { node, .. } => {
                let path = format!(
                    "/v1/catalog/service/{}?filter={}",
                    instance.name,
                    url_encode(&format!(
                        "ServiceID == \"{}\" and Node == \"{node}\"",
                        instance.id
                    ))
                );
                let answer = self.http.get_blocking(&path, seen, wait).await?;
                let entries: Vec<Value> = answer.json(&format!("GET {path}"))?;
                if entries.is_empty() {
                    return Err(ConsulError::NotFound {
                        what: format!("instance {} on node {node}", instance.id),
                    });
                }
                Ok(Seen::Index(answer.index.unwrap_or(0).max(1)))
            }
        }
    }
}

/// Removes an instance through the agent that holds it.
pub async fn agent_deregister(http: &ConsulHttp, id: &str) -> Result<(), ConsulError> {
    let path = format!("/v1/agent/service/deregister/{id}");
    http.put(&path, None).await.map(drop)
}

/// Removes an instance from the catalog (an agent holding it would restore it: use
/// [`agent_deregister`] through that agent instead).
pub async fn catalog_deregister(
    http: &ConsulHttp,
    node: &str,
    id: &str,
) -> Result<(), ConsulError> {
    let body = json!({"Node": node, "ServiceID": id});
    http.put("/v1/catalog/deregister", Some(&body))
        .await
        .map(drop)
}

/// What the agent at an address is, for the `auto` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    /// A client agent, or a single dev agent (the seed's setup): register through it.
    Local,
    /// A server, or an address that refuses the agent API to our token: no local agent.
    NoLocalAgent,
}

/// Asks `/v1/agent/self` what answers at the configured address. A server is not a
/// local agent (instances registered through it would all hang off the server's node),
/// unless it runs in dev mode, Consul's one-process setup.
pub async fn detect_agent(http: &ConsulHttp) -> Result<AgentKind, ConsulError> {
    let answer = match http.get("/v1/agent/self").await {
        Ok(answer) => answer,
        // An agentless install's token has no agent rights.
        Err(ConsulError::Status { status: 403, .. }) => return Ok(AgentKind::NoLocalAgent),
        Err(e) => return Err(e),
    };
    let me: Value = answer.json("GET /v1/agent/self")?;
    let server = me["Config"]["Server"].as_bool().unwrap_or(false);
    let dev = me["DebugConfig"]["DevMode"].as_bool().unwrap_or(false);
    Ok(if server && !dev {
        AgentKind::NoLocalAgent
    } else {
        AgentKind::Local
    })
}

fn meta_with_mode(instance: &Instance, mode: &str) -> BTreeMap<String, String> {
    let mut meta = instance.meta.clone();
    meta.insert(META_REGISTRATION.to_string(), mode.to_string());
    meta
}

/// The body of `PUT /v1/agent/service/register`.
fn agent_registration(instance: &Instance, status: CheckStatus) -> Value {
    json!({
        "ID": instance.id,
        "Name": instance.name,
        "Address": instance.address,
        "Port": instance.port,
        "Tags": instance.tags,
        "Meta": meta_with_mode(instance, REGISTERED_BY_AGENT),
        "Check": {
            "CheckID": instance.check_id,
            "Name": CHECK_NAME,
            "Notes": CHECK_NOTES,
            "TTL": go_duration(instance.ttl),
            "Status": status.as_str(),
            "DeregisterCriticalServiceAfter": go_duration(instance.deregister_critical_after),
        },
    })
}

/// The body of `PUT /v1/catalog/register`: node, instance and check in one write.
fn catalog_registration(
    instance: &Instance,
    node: &str,
    node_address: &str,
    status: CheckStatus,
    output: &str,
) -> Value {
    json!({
        "Node": node,
        "Address": node_address,
        "NodeMeta": {NODE_META_SYNTHETIC: "true"},
        "Service": {
            "ID": instance.id,
            "Service": instance.name,
            "Address": instance.address,
            "Port": instance.port,
            "Tags": instance.tags,
            "Meta": meta_with_mode(instance, REGISTERED_IN_CATALOG),
        },
        "Check": {
            "Node": node,
            "CheckID": instance.check_id,
            "Name": CHECK_NAME,
            "Notes": CHECK_NOTES,
            "Status": status.as_str(),
            "Output": output,
            "ServiceID": instance.id,
        },
    })
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Percent-encodes a query parameter's value (RFC 3986 unreserved characters stay).
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        Instance {
            id: "upload.media.upload-7d9f-x2".into(),
            check_id: "service:upload.media.upload-7d9f-x2".into(),
            name: "upload".into(),
            address: "10.1.0.7".into(),
            port: 15006,
            tags: vec!["v1".into()],
            meta: BTreeMap::from([("k8s-pod".into(), "upload-7d9f-x2".into())]),
            ttl: Duration::from_secs(15),
            deregister_critical_after: Duration::from_secs(90),
        }
    }

    #[test]
    fn an_agent_registration_carries_the_ttl_check_and_its_mode() {
        let body = agent_registration(&instance(), CheckStatus::Critical);
        assert_eq!(body["ID"], "upload.media.upload-7d9f-x2");
        assert_eq!(body["Meta"]["streamgate-registration"], "agent");
        assert_eq!(body["Meta"]["k8s-pod"], "upload-7d9f-x2");
        assert_eq!(body["Check"]["TTL"], "15000ms");
        assert_eq!(body["Check"]["Status"], "critical");
        assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "90000ms");
    }

    #[test]
    fn a_catalog_registration_puts_the_instance_on_the_kubernetes_node_without_a_ttl() {
        let body = catalog_registration(
            &instance(),
            "node-1",
            "192.168.5.2",
            CheckStatus::Passing,
            "HTTP GET /health: 200",
        );
        assert_eq!(body["Node"], "node-1");
        assert_eq!(body["Address"], "192.168.5.2");
        assert_eq!(body["NodeMeta"]["synthetic-node"], "true");
        assert_eq!(body["Service"]["Service"], "upload");
        assert_eq!(body["Service"]["Address"], "10.1.0.7");
        assert_eq!(
            body["Service"]["Meta"]["streamgate-registration"],
            "catalog"
        );
        let check = &body["Check"];
        assert_eq!(check["ServiceID"], "upload.media.upload-7d9f-x2");
        assert_eq!(check["Status"], "passing");
        assert_eq!(check["Output"], "HTTP GET /health: 200");
        assert!(
            check.get("TTL").is_none(),
            "the catalog runs no TTL: {check}"
        );
    }

    #[test]
    fn a_filter_expression_is_percent_encoded() {
        assert_eq!(
            url_encode("ServiceID == \"a.b\""),
            "ServiceID%20%3D%3D%20%22a.b%22"
        );
    }
}
