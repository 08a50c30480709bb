//! The identity endpoint (`POST /v1/identity/certificate` on the webhook's HTTPS
//! server, every replica). A sidecar sends a CSR with its projected ServiceAccount token
//! as the bearer; the token is checked with a TokenReview (audience `streamgate`, bound to
//! a pod that still exists with the same uid and runs as that account), and the
//! certificate names that account and the pod's StreamGate service.
//!
//! What a token proves is the Kubernetes trust boundary: whoever may create pods in a
//! namespace may run them as any of its accounts and with any label, so a namespace is
//! the unit of trust, and a name in another namespace can never be claimed.

use super::Authorities;
use super::sign::{self, Workload};
use crate::labels::SERVICE_LABEL;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::time::Duration;
use streamgate_crds::StreamGateService;
use streamgate_crds::contract::identity::{
    IssueRequest, IssueResponse, TOKEN_AUDIENCE, parse_service_account_user,
};
use tracing::{info, warn};

/// The TokenReview extras naming the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

pub struct IssuerState {
    pub client: kube::Client,
    pub ca: Authorities,
    /// How long an issued certificate is valid (sidecars renew at half of it).
    pub validity: Duration,
    /// The only namespace served, when the operator watches one.
    pub scope: Option<String>,
}

/// Why a request got no certificate; the message goes back to the sidecar (never the
/// token itself).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no bearer token: send the projected ServiceAccount token (audience {TOKEN_AUDIENCE})")]
    NoToken,
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Request(#[from] sign::SignError),
    #[error("the workload CA is not loaded yet")]
    NoCa,
    #[error("the Kubernetes API failed: {0}")]
    Kube(#[from] kube::Error),
}

impl IntoResponse for IssueError {
    fn into_response(self) -> Response {
        let status = match &self {
            IssueError::NoToken => StatusCode::UNAUTHORIZED,
            IssueError::Refused(_) => StatusCode::FORBIDDEN,
            IssueError::Request(sign::SignError::Request(_)) => StatusCode::BAD_REQUEST,
            IssueError::Request(sign::SignError::Ca(_)) | IssueError::Kube(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            IssueError::NoCa => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, self.to_string()).into_response()
    }
}

pub async fn certificate(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    Json(request): Json<IssueRequest>,
) -> Result<Json<IssueResponse>, IssueError> {
    let result = issue(&state, &headers, &request).await;
    if let Err(e) = &result {
        warn!(error = %e, "workload certificate not issued");
    }
    result.map(Json)
}

async fn issue(
    state: &IssuerState,
    headers: &HeaderMap,
    request: &IssueRequest,
) -> Result<IssueResponse, IssueError> {
    let token = bearer(headers).ok_or(IssueError::NoToken)?;
    let user = review(&state.client, token).await?;
    let workload = verified_workload(state, &user).await?;
    let issuer = state.ca.issuer().ok_or(IssueError::NoCa)?;
    let (leaf, not_after) = sign::workload_certificate(
        &issuer.cert,
        &issuer.key,
        &request.csr,
        &workload,
        state.validity,
    )?;
    info!(
        namespace = %workload.namespace,
        service_account = %workload.service_account,
        service = %workload.service,
        %not_after,
        "issued a workload certificate"
    );
    // The signing certificate follows the leaf: with an intermediate CA (one provided
    // from outside), peers that trust only the root can still build the chain.
    Ok(IssueResponse {
        certificate: format!("{leaf}{}", issuer.cert),
        trust_bundle: issuer.trust_bundle,
        not_after: not_after.to_string(),
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// The user a token belongs to, if the API server vouches for it with our audience.
async fn review(client: &kube::Client, token: &str) -> Result<UserInfo, IssueError> {
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
        },
        ..Default::default()
    };
    let status = reviews
        .create(&PostParams::default(), &review)
        .await?
        .status
        .unwrap_or_default();
    let for_us = status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == TOKEN_AUDIENCE));
    if status.authenticated != Some(true) || !for_us {
        let reason = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(IssueError::Refused(format!(
            "the token is not a valid token for audience {TOKEN_AUDIENCE}: {reason}"
        )));
    }
    status
        .user
        .ok_or_else(|| IssueError::Refused("the token review names no user".into()))
}

/// The workload a reviewed token stands for: a ServiceAccount's token bound to a pod
/// that exists with that uid and runs as that account.
async fn verified_workload(state: &IssuerState, user: &UserInfo) -> Result<Workload, IssueError> {
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, account) = parse_service_account_user(username)
        .ok_or_else(|| IssueError::Refused(format!("{username} is not a ServiceAccount")))?;
    if state
        .scope
        .as_deref()
        .is_some_and(|scope| scope != namespace)
    {
        return Err(IssueError::Refused(format!(
            "namespace {namespace} is outside the operator's scope"
        )));
    }
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(key))
            .and_then(|values| values.first())
            .cloned()
    };
    let (Some(pod_name), Some(pod_uid)) = (extra(POD_NAME_EXTRA), extra(POD_UID_EXTRA)) else {
        return Err(IssueError::Refused(
            "the token is not bound to a pod (mount a projected ServiceAccount token)".into(),
        ));
    };
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
    let pod = pods.get_opt(&pod_name).await?.ok_or_else(|| {
        IssueError::Refused(format!("pod {namespace}/{pod_name} no longer exists"))
    })?;
    if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
        return Err(IssueError::Refused(format!(
            "pod {namespace}/{pod_name} was replaced since the token was issued"
        )));
    }
    let runs_as = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .unwrap_or("default");
    if runs_as != account {
        return Err(IssueError::Refused(format!(
            "pod {namespace}/{pod_name} runs as {runs_as}, not {account}"
        )));
    }
    let service = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_LABEL))
        .ok_or_else(|| {
            IssueError::Refused(format!(
                "pod {namespace}/{pod_name} has no {SERVICE_LABEL} label"
            ))
        })?;
    check_service_account(state, namespace, service, account).await?;
    Ok(Workload {
        namespace: namespace.to_string(),
        service_account: account.to_string(),
        service: service.clone(),
    })
}

/// A pod that names a StreamGateService of its namespace in its label must run as that
/// service's account: a label alone (which anyone who may create pods can write) does
/// not make a pod one of the service's servers.
async fn check_service_account(
    state: &IssuerState,
    namespace: &str,
    service: &str,
    account: &str,
) -> Result<(), IssueError> {
    let services: Api<StreamGateService> = Api::namespaced(state.client.clone(), namespace);
    let Some(sgs) = services.get_opt(service).await? else {
        return Ok(());
    };
    let expected = sgs
        .spec
        .pod_template
        .service_account_name
        .clone()
        .unwrap_or_else(|| service.to_string());
    if sgs.consul_name() == service && expected != account {
        return Err(IssueError::Refused(format!(
            "the pod claims service {service} but runs as {account}; {service}'s pods run as {expected}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_is_taken() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc.def"));
    }
}
