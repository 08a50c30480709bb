//! The HTTPS admission endpoint: AdmissionReview in, the injection decision out.

use super::inject::{Decision, InjectionScope, decide};
use super::registration::{PATH_NAMESPACE, PATH_POD};
use crate::identity::issue::IssuerState;
use crate::sidecar_defaults::SidecarDefaults;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use std::sync::Arc;
use streamgate_crds::contract::identity::ISSUE_PATH;
use tracing::{info, warn};

pub struct WebhookState {
    pub sidecar_defaults: SidecarDefaults,
    pub operator_namespace: String,
}

/// The admission endpoints, and the identity endpoint sidecars get certificates from.
pub fn router(state: Arc<WebhookState>, issuer: Arc<IssuerState>) -> Router {
    let identity = Router::new()
        .route(ISSUE_PATH, post(crate::identity::issue::certificate))
        .with_state(issuer);
    Router::new()
        .route(PATH_NAMESPACE, post(namespace_enabled))
        .route(PATH_POD, post(pod_annotated))
        .with_state(state)
        .merge(identity)
}

async fn namespace_enabled(
    State(state): State<Arc<WebhookState>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(review_pod(&state, review, true))
}

async fn pod_annotated(
    State(state): State<Arc<WebhookState>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(review_pod(&state, review, false))
}

/// Answers one review; never fails open on bad input (an invalid review is refused).
pub fn review_pod(
    state: &WebhookState,
    review: AdmissionReview<Pod>,
    namespace_enabled: bool,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let response = AdmissionResponse::from(&request);
    let Some(pod) = &request.object else {
        return response.into_review();
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    let target = InjectionScope {
        namespace: &namespace,
        namespace_enabled,
        operator_namespace: &state.operator_namespace,
    };
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    match decide(pod, &target, &state.sidecar_defaults) {
        Decision::Skip(reason) => {
            tracing::debug!(%namespace, pod = %pod_name, reason, "not injecting");
            response.into_review()
        }
        Decision::Inject(patch) => match response.clone().with_patch(patch) {
            Ok(patched) => {
                info!(%namespace, pod = %pod_name, "injected the sidecar");
                patched.into_review()
            }
            Err(e) => response
                .deny(format!("streamgate: cannot encode the sidecar patch: {e}"))
                .into_review(),
        },
        Decision::Reject(error) => {
            warn!(%namespace, pod = %pod_name, %error, "refused: bad annotation");
            response
                .deny(format!(
                    "streamgate sidecar injection: annotation {}: {}",
                    error.field, error.reason
                ))
                .into_review()
        }
    }
}
