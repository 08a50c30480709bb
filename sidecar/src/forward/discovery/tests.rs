//! Discovery against a stand-in Consul: parsing, blocking queries, errors, index resets.

use super::*;
use serde_json::json;

fn body(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap_or_default()
}

fn entry(
    id: &str,
    node_address: &str,
    address: &str,
    port: u16,
    meta: serde_json::Value,
) -> serde_json::Value {
    json!({
        "Node": {"Node": "node-1", "Address": node_address, "Datacenter": "dc1"},
        "Service": {"ID": id, "Service": "upload", "Tags": ["v1"], "Address": address,
                    "Port": port, "Meta": meta},
        "Checks": [{"Status": "passing"}]
    })
}

#[test]
fn parses_ipv4_and_ipv6_instances_with_their_meta() {
    let answer = body(json!([
        entry(
            "b",
            "10.0.0.1",
            "127.0.0.3",
            15006,
            json!({"k8s-namespace": "media", "streamgate-inbound": "mtls"})
        ),
        entry(
            "a",
            "10.0.0.1",
            "::1",
            15007,
            json!({"streamgate-inbound": "plain"})
        ),
    ]));
    let endpoints = parse_health(&answer).expect("valid answer");
    assert_eq!(
        endpoints,
        [
            Endpoint {
                id: "a".into(),
                addr: "[::1]:15007".parse().expect("literal"),
                namespace: None,
                mtls: false,
            },
            Endpoint {
                id: "b".into(),
                addr: "127.0.0.3:15006".parse().expect("literal"),
                namespace: Some("media".into()),
                mtls: true,
            },
        ]
    );
}

#[test]
fn an_instance_without_address_is_at_its_node_address() {
    let answer = body(json!([entry("a", "10.1.2.3", "", 9091, json!(null))]));
    let endpoints = parse_health(&answer).expect("valid answer");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].addr, "10.1.2.3:9091".parse().expect("literal"));
    assert_eq!(endpoints[0].namespace, None);
}

#[test]
fn host_names_are_kept_to_resolve_and_what_cannot_be_dialled_is_skipped_and_named() {
    let answer = body(json!([
        entry(
            "host",
            "10.0.0.1",
            "upload.example.com",
            80,
            json!({"k8s-namespace": "media"})
        ),
        entry("garbage", "10.0.0.1", "upload service!", 80, json!({})),
        entry("no-port", "10.0.0.1", "127.0.0.2", 0, json!({})),
        entry("ok", "10.0.0.1", "127.0.0.2", 80, json!({})),
    ]));
    let answer = parse_health_answer(&answer).expect("valid answer");
    assert_eq!(
        answer
            .endpoints
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>(),
        ["ok"]
    );
    assert_eq!(answer.named.len(), 1);
    let named = &answer.named[0];
    assert_eq!(
        (named.host.as_str(), named.port),
        ("upload.example.com", 80)
    );
    assert_eq!(named.endpoint.namespace.as_deref(), Some("media"));
    assert_eq!(
        answer.skipped,
        [
            Skipped {
                id: "garbage".into(),
                address: "upload service!:80".into()
            },
            Skipped {
                id: "no-port".into(),
                address: "127.0.0.2:0".into()
            },
        ]
    );
}

#[test]
fn duplicates_are_removed_and_an_empty_answer_is_no_instance() {
    let one = entry("a", "10.0.0.1", "127.0.0.2", 80, json!({}));
    let answer = body(json!([one.clone(), one]));
    assert_eq!(parse_health(&answer).expect("valid").len(), 1);
    assert_eq!(parse_health(b"[]").expect("valid"), []);
}

#[test]
fn malformed_answers_are_errors() {
    assert!(parse_health(b"").is_err());
    assert!(parse_health(b"{}").is_err());
    assert!(
        parse_health(br#"[{"Service": {"Port": 80}}]"#).is_err(),
        "no ID"
    );
}

#[test]
fn only_a_changed_set_is_published() {
    let (sender, mut receiver) = watch::channel(Resolution::Pending);
    let a = Endpoint {
        id: "a".into(),
        addr: "127.0.0.2:80".parse().expect("literal"),
        namespace: None,
        mtls: false,
    };
    publish(&sender, vec![a.clone()]);
    assert!(receiver.has_changed().unwrap_or(false));
    receiver.borrow_and_update();
    publish(&sender, vec![a]);
    assert!(!receiver.has_changed().unwrap_or(true));
    publish(&sender, Vec::new());
    assert!(receiver.has_changed().unwrap_or(false));
    assert_eq!(*receiver.borrow(), Resolution::Known(Arc::from(Vec::new())));
}

#[tokio::test]
async fn later_watchers_share_the_first_channel_and_an_unreachable_consul_stays_pending() {
    // Port 9 on loopback: nothing listens, the connection is refused at once.
    let discovery = Discovery::new("http://127.0.0.1:9".into(), None);
    let first = discovery.watch("upload");
    let second = discovery.watch("upload");
    assert!(first.same_channel(&second));
    assert_eq!(discovery.shared.lock_watches().len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*first.borrow(), Resolution::Pending);
    let bad = discovery.watch("Not A Name");
    assert_eq!(*bad.borrow(), Resolution::Known(Arc::from(Vec::new())));
}

/// A stand-in for Consul's health endpoint: answers at once without `index` or
/// when the index is stale, else holds the query until the set changes.
mod fake_consul {
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::IntoResponse;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use tokio::sync::Notify;

    #[derive(Default)]
    pub struct State {
        pub index: u64,
        pub body: String,
        pub failing: bool,
        pub queries: Vec<String>,
        pub tokens: Vec<Option<String>>,
    }

    #[derive(Default, Clone)]
    pub struct Consul {
        pub state: Arc<Mutex<State>>,
        changed: Arc<Notify>,
    }

    impl Consul {
        pub fn set(&self, index: u64, body: &str, failing: bool) {
            if let Ok(mut state) = self.state.lock() {
                state.index = index;
                state.body = body.to_string();
                state.failing = failing;
            }
            self.changed.notify_waiters();
        }

        pub fn queries(&self) -> Vec<String> {
            self.state
                .lock()
                .map(|s| s.queries.clone())
                .unwrap_or_default()
        }

        pub async fn serve(&self) -> SocketAddr {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("local address");
            let consul = self.clone();
            let router = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
                let consul = consul.clone();
                async move { consul.answer(uri, headers).await }
            });
            tokio::spawn(async move { axum::serve(listener, router).await });
            addr
        }

        async fn answer(&self, uri: Uri, headers: HeaderMap) -> axum::response::Response {
            let query = uri.query().unwrap_or_default().to_string();
            let asked: Option<u64> = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("index="))
                .and_then(|v| v.parse().ok());
            let changed = self.changed.notified();
            let token = headers
                .get("X-Consul-Token")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let current = {
                let mut state = self.state.lock().expect("state");
                state.queries.push(format!("{}?{query}", uri.path()));
                state.tokens.push(token);
                state.index
            };
            if asked == Some(current) {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), changed).await;
            }
            let state = self.state.lock().expect("state");
            if state.failing {
                return (StatusCode::INTERNAL_SERVER_ERROR, "no leader").into_response();
            }
            (
                [("X-Consul-Index", state.index.to_string())],
                state.body.clone(),
            )
                .into_response()
        }
    }
}

async fn next_resolution(receiver: &mut watch::Receiver<Resolution>) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(3), receiver.changed())
        .await
        .expect("a change within 3 s")
        .expect("the task lives");
    match &*receiver.borrow_and_update() {
        Resolution::Known(endpoints) => endpoints.iter().map(|e| e.id.clone()).collect(),
        Resolution::Pending => vec!["pending".into()],
    }
}

fn answer_with(ids: &[&str]) -> String {
    let entries: Vec<_> = ids
        .iter()
        .map(|id| entry(id, "10.0.0.1", "127.0.0.2", 15006, json!({})))
        .collect();
    serde_json::Value::Array(entries).to_string()
}

#[tokio::test]
async fn follows_changes_with_blocking_queries_and_keeps_the_set_through_errors() {
    let consul = fake_consul::Consul::default();
    consul.set(10, &answer_with(&["a"]), false);
    let addr = consul.serve().await;
    let discovery = Discovery::new(format!("http://{addr}/"), Some("secret".into()));
    let mut receiver = discovery.watch("upload");
    assert_eq!(next_resolution(&mut receiver).await, ["a"]);

    consul.set(11, &answer_with(&["b", "a"]), false);
    assert_eq!(next_resolution(&mut receiver).await, ["a", "b"]);

    // Consul fails: nothing is published, the set stays.
    consul.set(12, "", true);
    let quiet = tokio::time::timeout(Duration::from_millis(400), receiver.changed()).await;
    assert!(quiet.is_err(), "an error published something");
    assert_eq!(
        *receiver.borrow(),
        Resolution::Known(Arc::from(
            parse_health(answer_with(&["a", "b"]).as_bytes()).unwrap_or_default()
        ))
    );

    // Consul restarted with a lower index and another set: the index starts over.
    consul.set(3, &answer_with(&["c"]), false);
    assert_eq!(next_resolution(&mut receiver).await, ["c"]);

    // After the reset: one query without index, then blocking on Consul's new index.
    let blocking_again = "/v1/health/service/upload?passing=true&index=3&wait=30s";
    for _ in 0..200 {
        if consul.queries().iter().any(|q| q == blocking_again) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queries = consul.queries();
    assert_eq!(queries[0], "/v1/health/service/upload?passing=true");
    assert_eq!(
        queries[1],
        "/v1/health/service/upload?passing=true&index=10&wait=30s"
    );
    let reblocked = queries.iter().position(|q| q == blocking_again);
    let restarted = reblocked.and_then(|i| queries.get(i.checked_sub(1)?));
    assert_eq!(
        restarted.map(String::as_str),
        Some("/v1/health/service/upload?passing=true"),
        "{queries:?}"
    );
    let tokens = consul
        .state
        .lock()
        .map(|s| s.tokens.clone())
        .unwrap_or_default();
    assert!(tokens.iter().all(|t| t.as_deref() == Some("secret")));
}

#[tokio::test]
async fn the_task_ends_when_nobody_watches_and_a_new_watch_starts_again() {
    let consul = fake_consul::Consul::default();
    consul.set(5, &answer_with(&["a"]), false);
    let addr = consul.serve().await;
    let discovery = Discovery::new(format!("http://{addr}"), None);
    let mut receiver = discovery.watch("upload");
    assert_eq!(next_resolution(&mut receiver).await, ["a"]);
    drop(receiver);
    // The blocking query is cut short by the last receiver going away.
    for _ in 0..100 {
        if discovery.shared.lock_watches().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        discovery.shared.lock_watches().is_empty(),
        "the task still runs"
    );
    let mut again = discovery.watch("upload");
    assert_eq!(next_resolution(&mut again).await, ["a"]);
}
