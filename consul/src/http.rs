//! The Consul HTTP API client of both the operator and the sidecar: one base URL, the ACL
//! token on every request, a timeout on every call, blocking queries by index or content
//! hash, and one way of telling what went wrong ([`ConsulError`]).

use bytes::Bytes;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long the client waits: to connect, and for an answer to a call that does not block.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub call: Duration,
}

/// A blocking query's condition: answer once the result differs from what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Catalog and health endpoints: the `X-Consul-Index` of the last answer.
    Index(u64),
    /// Agent endpoints: the `X-Consul-ContentHash` of the last answer.
    Hash(String),
}

/// One answer of Consul's, with what a next blocking query needs.
#[derive(Clone, Debug)]
pub struct Answer {
    pub body: Bytes,
    /// `X-Consul-Index`, when Consul sent one.
    pub index: Option<u64>,
    /// `X-Consul-ContentHash`, when Consul sent one.
    pub content_hash: Option<String>,
}

impl Answer {
    /// The body as the JSON document `what` documents.
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, ConsulError> {
        serde_json::from_slice(&self.body).map_err(|e| ConsulError::Decode {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("the Consul HTTP client could not be built: {0}")]
    Client(String),
    /// What the caller was told to do cannot be done with what it knows (e.g. catalog
    /// registration without the node's name).
    #[error("Consul registration cannot start: {0}")]
    Setup(String),
    #[error("Consul at {address} is unreachable ({what}): {reason}")]
    Unreachable {
        address: String,
        what: String,
        reason: String,
    },
    /// Consul does not have the instance or check the request names (it lost it, or
    /// it was never there).
    #[error("Consul does not know what {what} names")]
    NotFound { what: String },
    #[error("Consul answered {status} to {what}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("Consul's answer to {what} is not what its API documents: {reason}")]
    Decode { what: String, reason: String },
}

impl ConsulError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConsulError::NotFound { .. })
    }
}

/// `http://host:port` from Consul's address as users write it (`CONSUL_HTTP_ADDR`
/// accepts a bare `host:port`), without a trailing slash.
pub fn base_url(address: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

#[derive(Clone, Debug)]
pub struct ConsulHttp {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeouts: Timeouts,
}

impl ConsulHttp {
    /// `address` as [`base_url`] takes it; an empty token counts as none.
    pub fn new(
        address: &str,
        token: Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self, ConsulError> {
        // reqwest is built without a bundled crypto provider; ring is the workspace's
        // one. Installing fails only when one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // Consul is reached directly; an HTTP_PROXY meant for the app must not apply.
            .no_proxy()
            .connect_timeout(timeouts.connect)
            .build()
            .map_err(|e| ConsulError::Client(error_chain(&e)))?;
        Ok(ConsulHttp {
            http,
            base: base_url(address),
            token: token.filter(|t| !t.is_empty()),
            timeouts,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:8500`.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> Result<Answer, ConsulError> {
        let request = self.request(Method::GET, path, self.timeouts.call);
        self.send(&format!("GET {path}"), request).await
    }

    /// A blocking query: with `seen`, Consul answers once the result differs from it or
    /// `wait` passed; without, at once (the first query of a watch).
    pub async fn get_blocking(
        &self,
        path: &str,
        seen: Option<&Seen>,
        wait: Duration,
    ) -> Result<Answer, ConsulError> {
        let Some(seen) = seen else {
            return self.get(path).await;
        };
        let separator = if path.contains('?') { '&' } else { '?' };
        let condition = match seen {
            Seen::Index(index) => format!("index={index}"),
            Seen::Hash(hash) => format!("hash={hash}"),
        };
        let path = format!("{path}{separator}{condition}&wait={}s", wait.as_secs());
        // Consul adds up to wait/16 of jitter to a blocking query.
        let timeout = wait + wait / 16 + self.timeouts.call;
        let request = self.request(Method::GET, &path, timeout);
        self.send(&format!("GET {path}"), request).await
    }

    /// A PUT, with `body` as JSON when given.
    pub async fn put(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ConsulError> {
        let mut request = self.request(Method::PUT, path, self.timeouts.call);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(&format!("PUT {path}"), request).await
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        match &self.token {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        }
    }

    async fn send(&self, what: &str, request: RequestBuilder) -> Result<Answer, ConsulError> {
        let unreachable = |e: reqwest::Error| ConsulError::Unreachable {
            address: self.base.clone(),
            what: what.to_string(),
            reason: error_chain(&e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let index = header("X-Consul-Index").and_then(|v| v.parse().ok());
        let content_hash = header("X-Consul-ContentHash");
        let body = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(Answer {
                body,
                index,
                content_hash,
            });
        }
        Err(classify(what, status, &body))
    }
}

/// What a refusal means. Consul 1.8 answers an update of a check it does not have with
/// a 500 and "does not have associated TTL"; later versions with a 404.
fn classify(what: &str, status: StatusCode, body: &[u8]) -> ConsulError {
    let text = String::from_utf8_lossy(body);
    let lost = status == StatusCode::NOT_FOUND
        || text.contains("does not have associated TTL")
        || text.to_ascii_lowercase().contains("unknown check");
    if lost {
        ConsulError::NotFound {
            what: what.to_string(),
        }
    } else {
        ConsulError::Status {
            what: what.to_string(),
            status: status.as_u16(),
            body: text.trim().chars().take(300).collect(),
        }
    }
}

/// An error with its causes on one line: reqwest's own message hides the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_host_port_gets_a_scheme_and_no_trailing_slash() {
        assert_eq!(base_url("127.0.0.1:8500"), "http://127.0.0.1:8500");
        assert_eq!(base_url("https://consul:8501/"), "https://consul:8501");
    }

    #[test]
    fn a_lost_check_is_not_found_in_either_consul_generation() {
        let old = classify(
            "PUT /v1/agent/check/update/x",
            StatusCode::INTERNAL_SERVER_ERROR,
            b"CheckID \"x\" does not have associated TTL",
        );
        let new = classify(
            "PUT /v1/agent/check/update/x",
            StatusCode::NOT_FOUND,
            b"Unknown check ID \"x\"",
        );
        assert!(old.is_not_found() && new.is_not_found());
        let denied = classify(
            "GET /v1/agent/self",
            StatusCode::FORBIDDEN,
            b"Permission denied",
        );
        assert!(
            matches!(denied, ConsulError::Status { status: 403, .. }),
            "{denied:?}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_consul_names_its_address_and_the_request() {
        let consul = ConsulHttp::new(
            "127.0.0.1:9",
            None,
            Timeouts {
                connect: Duration::from_millis(200),
                call: Duration::from_millis(500),
            },
        )
        .unwrap();
        let error = consul.get("/v1/status/leader").await.unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("http://127.0.0.1:9") && text.contains("GET /v1/status/leader"),
            "{text}"
        );
    }
}
