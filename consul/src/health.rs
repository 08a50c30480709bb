//! What `/v1/health/service/<name>` answers: each instance with its node and checks.
//! The operator reads status and meta from it, the sidecar's discovery addresses.

use serde::Deserialize;
use std::collections::BTreeMap;

/// One instance of a health answer.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    #[serde(default)]
    pub node: Node,
    pub service: Service,
    #[serde(default)]
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub address: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    /// Consul 1.8 answers `null` for an instance without meta.
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    pub status: String,
    /// What the check last said (a TTL check's note, an HTTP check's answer).
    #[serde(default)]
    pub output: String,
}

impl HealthEntry {
    /// `passing`, `warning` or `critical`: the worst of its checks (none counts as
    /// passing, as Consul does).
    pub fn status(&self) -> &str {
        let rank = |s: &str| match s {
            "critical" => 2,
            "warning" => 1,
            _ => 0,
        };
        self.checks
            .iter()
            .map(|c| c.status.as_str())
            .max_by_key(|s| rank(s))
            .unwrap_or("passing")
    }

    /// The address to dial: the instance's own, else its node's (an instance registered
    /// without an address is reachable at its node's).
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.service.meta.as_ref()?.get(key).map(String::as_str)
    }
}

/// The path of the health query for `service`, only passing instances when asked.
pub fn service_path(service: &str, passing_only: bool) -> String {
    if passing_only {
        format!("/v1/health/service/{service}?passing=true")
    } else {
        format!("/v1/health/service/{service}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_takes_the_worst_check() {
        let body = r#"[{"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"ID":"up-1",
            "Service":"upload","Address":"","Port":15006,
            "Meta":{"managed-by":"streamgate","k8s-namespace":"media"}},
            "Checks":[{"Status":"passing"},{"Status":"critical"}]},
            {"Node":{"Node":"n1"},"Service":{"ID":"up-2","Service":"upload","Meta":null},
            "Checks":[{"Status":"passing"},{"Status":"warning"}]},
            {"Service":{"ID":"up-3"}}]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(body).unwrap();
        assert_eq!(entries[0].status(), "critical");
        assert_eq!(entries[0].address(), "10.0.0.1");
        assert_eq!(entries[0].meta("k8s-namespace"), Some("media"));
        assert_eq!(entries[1].status(), "warning");
        assert_eq!(entries[1].meta("k8s-namespace"), None);
        assert_eq!(entries[2].status(), "passing");
    }
}
