//! The few calls of Consul's agent HTTP API the sidecar makes (API of Consul 1.8 and
//! later), each with a timeout, the ACL token and a metric per call.

use super::instance::CheckStatus;
use crate::config::ConsulSettings;
use crate::metrics::Metrics;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Every call but the blocking watch: the agent is local, so anything slower means
/// it is in trouble and a retry is better than waiting.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the agent holds a blocking watch open when nothing changes.
pub const WATCH_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("Consul at {address} is unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    /// The agent does not know the service or check: it lost our registration.
    #[error("Consul does not know {0}")]
    NotFound(String),
    #[error("Consul answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    metrics: Arc<Metrics>,
}

impl ConsulClient {
    pub fn new(settings: &ConsulSettings, metrics: Arc<Metrics>) -> Result<Self, reqwest::Error> {
        let http = crate::http_client()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(ConsulClient {
            http,
            base: settings.address.clone(),
            token: settings.token.as_ref().map(|t| t.0.clone()),
            metrics,
        })
    }

    pub fn address(&self) -> &str {
        &self.base
    }

    /// Registers (or replaces) the instance and its check.
    pub async fn register(&self, body: &Value) -> Result<(), ConsulError> {
        let url = format!(
            "{}/v1/agent/service/register?replace-existing-checks=true",
            self.base
        );
        let request = self.request(Method::PUT, &url).json(body);
        self.call("register", request, "the service")
            .await
            .map(drop)
    }

    /// Sets the TTL check's status, with `output` as its note; refreshes the TTL.
    pub async fn update_check(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), ConsulError> {
        let url = format!("{}/v1/agent/check/update/{check_id}", self.base);
        let body = serde_json::json!({"Status": status.as_str(), "Output": output});
        let request = self.request(Method::PUT, &url).json(&body);
        self.call("update_check", request, check_id).await.map(drop)
    }

    /// Removes the instance; an instance Consul no longer knows counts as removed.
    pub async fn deregister(&self, service_id: &str) -> Result<(), ConsulError> {
        let url = format!("{}/v1/agent/service/deregister/{service_id}", self.base);
        match self
            .call("deregister", self.request(Method::PUT, &url), service_id)
            .await
        {
            Ok(_) | Err(ConsulError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A blocking query on the agent's copy of the instance: returns its content hash
    /// when it changed (at once when `hash` is `None`) or after `wait`. A restarted
    /// agent drops the connection, so a lost registration is noticed at once without
    /// polling; [`ConsulError::NotFound`] when the agent does not have the instance.
    pub async fn watch_service(
        &self,
        service_id: &str,
        hash: Option<String>,
        wait: Duration,
    ) -> Result<String, ConsulError> {
        let mut url = format!("{}/v1/agent/service/{service_id}", self.base);
        if let Some(hash) = &hash {
            url.push_str(&format!("?hash={hash}&wait={}s", wait.as_secs()));
        }
        let request = self
            .request(Method::GET, &url)
            // The agent adds up to wait/16 of jitter to a blocking query.
            .timeout(wait + wait / 8 + CALL_TIMEOUT);
        let response = self.call("watch", request, service_id).await?;
        Ok(response
            .headers()
            .get("X-Consul-ContentHash")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string())
    }

    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let request = self.http.request(method, url).timeout(CALL_TIMEOUT);
        match &self.token {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        }
    }

    async fn call(
        &self,
        operation: &'static str,
        request: RequestBuilder,
        subject: &str,
    ) -> Result<Response, ConsulError> {
        let result = self.send(request, subject).await;
        self.metrics.observe_consul(operation, result.is_ok());
        result
    }

    async fn send(&self, request: RequestBuilder, subject: &str) -> Result<Response, ConsulError> {
        let response = request.send().await.map_err(|e| ConsulError::Unreachable {
            address: self.base.clone(),
            reason: crate::error_chain(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        // Consul 1.8 answers an update of a check it does not have with a 500 and
        // "does not have associated TTL"; later versions with a 404.
        let lost = status == StatusCode::NOT_FOUND
            || body.contains("does not have associated TTL")
            || body.to_ascii_lowercase().contains("unknown check");
        if lost {
            Err(ConsulError::NotFound(subject.to_string()))
        } else {
            Err(ConsulError::Status {
                status,
                body: body.trim().chars().take(300).collect(),
            })
        }
    }
}
