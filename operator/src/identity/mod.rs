//! Workload identities, the Linkerd way: a sidecar makes its private key in memory and
//! never lets it leave the pod; it proves who it is with a projected ServiceAccount token
//! (audience `streamgate`) and gets a short-lived certificate from [`issue`], served by
//! every replica beside the webhook. The certificate names
//! `spiffe://streamgate/ns/<namespace>/sa/<serviceaccount>` (what `allowedCallers` is
//! checked against) and `<service>.<namespace>.streamgate` (what a caller checks as the
//! server name), both taken from the TokenReview and the pod the token is bound to, never
//! from the request.
//!
//! - [`ca`]: the endpoint's CA (rendered into sidecars) and the workload CA that
//!   issues, with its trust bundle, as this replica holds them.
//! - [`sign`]: a certificate request signed into a workload certificate (pure).
//! - [`issue`]: the HTTPS endpoint: token review, pod check, signing.

pub mod ca;
pub mod issue;
pub mod sign;

pub use ca::Authorities;

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

/// Where sidecars reach the identity endpoint behind the Service `name` in `namespace`:
/// its cluster IP (stable for the Service's life, and reachable without cluster DNS),
/// else its DNS name.
pub async fn service_url(client: &kube::Client, namespace: &str, name: &str, port: i32) -> String {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    match services.get_opt(name).await {
        Ok(Some(service)) => {
            let ip = service.spec.and_then(|spec| spec.cluster_ip);
            if let Some(ip) = ip.filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()) {
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip
                };
                return format!("https://{host}:{port}");
            }
        }
        Ok(None) => {
            tracing::warn!(%namespace, service = %name, "the webhook Service does not exist: sidecars will need cluster DNS to reach the identity endpoint")
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the webhook Service: sidecars will need cluster DNS to reach the identity endpoint")
        }
    }
    format!("https://{name}.{namespace}.svc:{port}")
}
