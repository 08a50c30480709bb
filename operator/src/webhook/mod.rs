//! The sidecar injection webhook: existing workloads annotated `streamgate.io/inject:
//! "true"` (or in a namespace labelled `streamgate.io/inject=enabled`) get the same
//! sidecar a StreamGateService gets.
//!
//! - [`annotations`]: `streamgate.io/*` annotations → sidecar configuration.
//! - [`inject`]: the decision and the JSON patch (pure).
//! - [`certs`]: CA and serving certificate in a Secret, reissued before expiry.
//! - [`registration`]: the MutatingWebhookConfiguration, applied server-side.
//! - [`server`]: the HTTPS endpoint (which also serves the identity endpoint,
//!   [`crate::identity::issue`]).
//!
//! - [`renewal`]: the task that renews the serving certificate and reloads it in place.
//!
//! [`Webhook::prepare`] ties them together: certificates first, then the configuration;
//! the run module then starts [`Webhook::serve`] and the renewal on every replica.

pub mod annotations;
pub mod certs;
pub mod inject;
pub mod registration;
pub mod renewal;
pub mod server;

use crate::identity::Authorities;
use crate::identity::issue::IssuerState;
use crate::sidecar_defaults::SidecarDefaults;
use anyhow::{Context, Result};
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use registration::{Endpoint, Registration};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Everything the webhook needs from the command line.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub endpoint: Endpoint,
    pub registration_name: String,
    pub secret_name: String,
    pub operator_namespace: String,
    pub failure_policy: crate::cli::FailurePolicy,
    pub timeout_seconds: i32,
    pub cert_validity: Duration,
    pub only_namespace: Option<String>,
    /// Where sidecars reach the identity endpoint this server also serves.
    pub identity_url: String,
    /// Validity of the workload certificates issued there.
    pub workload_cert_validity: Duration,
    /// The workload CA's Secret (operator namespace).
    pub identity_ca_secret: String,
}

/// The names the serving certificate must cover: the API server's and the sidecars'
/// ways in.
pub fn serving_hosts(config: &WebhookConfig) -> Vec<String> {
    let mut hosts = match &config.endpoint {
        Endpoint::Url(url) => vec![url_host(url)],
        Endpoint::Service { namespace, name } => vec![
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ],
    };
    let identity = url_host(&config.identity_url);
    if !identity.is_empty() && !hosts.contains(&identity) {
        hosts.push(identity);
    }
    hosts
}

/// The host of `scheme://host:port/path` (an IPv6 address without its brackets).
fn url_host(url: &str) -> String {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("");
    // host:port, or [v6]:port
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    host.trim_matches(['[', ']']).to_string()
}

/// The webhook of one replica, prepared: its certificate loaded and the
/// MutatingWebhookConfiguration applied with its CA.
pub struct Webhook {
    client: kube::Client,
    config: WebhookConfig,
    state: Arc<server::WebhookState>,
    registration: Registration,
    tls: RustlsConfig,
    served_cert: String,
    issuer: Arc<IssuerState>,
}

impl Webhook {
    /// Certificates first (created on the first replica's start, shared through the
    /// Secret), then the configuration that points the API server here.
    pub async fn prepare(
        client: kube::Client,
        config: WebhookConfig,
        sidecar_defaults: SidecarDefaults,
        ca: Authorities,
    ) -> Result<Webhook> {
        let material = certs::ensure(
            &secrets(&client, &config),
            &config.secret_name,
            &serving_hosts(&config),
            config.cert_validity,
        )
        .await
        .context("preparing the webhook certificates")?;
        let tls = RustlsConfig::from_pem(
            material.cert.clone().into_bytes(),
            material.key.clone().into_bytes(),
        )
        .await
        .context("loading the webhook's serving certificate")?;
        let registration = registration_of(&config);
        registration::apply(&client, &registration, &material.ca_cert)
            .await
            .context("applying the MutatingWebhookConfiguration")?;
        let issuer = crate::identity::ca::ensure_issuer(
            &secrets(&client, &config),
            &config.identity_ca_secret,
        )
        .await
        .context("preparing the workload CA")?;
        ca.set_endpoint_ca(&material.ca_cert);
        ca.set_issuer(issuer);
        let issuer = Arc::new(IssuerState {
            client: client.clone(),
            ca,
            validity: config.workload_cert_validity,
            scope: config.only_namespace.clone(),
        });
        let state = Arc::new(server::WebhookState {
            sidecar_defaults,
            operator_namespace: config.operator_namespace.clone(),
        });
        Ok(Webhook {
            client,
            config,
            state,
            registration,
            tls,
            served_cert: material.cert,
            issuer,
        })
    }

    /// The task that keeps this replica's serving certificate fresh (every replica runs
    /// one: each serves its own copy).
    pub fn renewal(&self) -> renewal::Renewal {
        renewal::Renewal {
            client: self.client.clone(),
            secrets: secrets(&self.client, &self.config),
            secret_name: self.config.secret_name.clone(),
            hosts: serving_hosts(&self.config),
            validity: self.config.cert_validity,
            registration: self.registration.clone(),
            tls: self.tls.clone(),
            served_cert: self.served_cert.clone(),
            ca: self.issuer.ca.clone(),
            identity_ca_secret: self.config.identity_ca_secret.clone(),
        }
    }

    /// Serves until the process stops. `listening` fires once the server accepts
    /// connections with its certificate loaded (the replica's readiness waits for it: a
    /// Service must not send the API server's calls to a replica that cannot answer).
    pub async fn serve(self, listening: tokio::sync::oneshot::Sender<()>) -> Result<()> {
        let listen = self.config.listen;
        let handle = axum_server::Handle::new();
        let bound = handle.clone();
        tokio::spawn(async move {
            if bound.listening().await.is_some() {
                info!(%listen, "serving the injection webhook");
                let _ = listening.send(());
            }
        });
        axum_server::bind_rustls(listen, self.tls)
            .handle(handle)
            .serve(server::router(self.state, self.issuer).into_make_service())
            .await
            .context("webhook server")
    }
}

/// The Secrets of the operator's namespace, where the webhook's PKI lives.
pub fn secrets(client: &kube::Client, config: &WebhookConfig) -> Api<Secret> {
    Api::namespaced(client.clone(), &config.operator_namespace)
}

/// How often the serving certificate and the workload CA are looked at: often
/// enough that a certificate is renewed well within its last third.
pub fn check_period(config: &WebhookConfig) -> Duration {
    (config.cert_validity / 6).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

fn registration_of(config: &WebhookConfig) -> Registration {
    Registration {
        name: config.registration_name.clone(),
        endpoint: config.endpoint.clone(),
        failure_policy: config.failure_policy,
        timeout_seconds: config.timeout_seconds,
        only_namespace: config.only_namespace.clone(),
        excluded_namespaces: vec!["kube-system".to_string(), config.operator_namespace.clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Endpoint) -> WebhookConfig {
        WebhookConfig {
            listen: "127.0.0.1:9443".parse().unwrap(),
            endpoint,
            registration_name: "x".into(),
            secret_name: "x".into(),
            operator_namespace: "streamgate-system".into(),
            failure_policy: crate::cli::FailurePolicy::Fail,
            timeout_seconds: 5,
            cert_validity: Duration::from_secs(60),
            only_namespace: None,
            identity_url: "https://10.96.0.20:443".into(),
            workload_cert_validity: Duration::from_secs(60),
            identity_ca_secret: "x".into(),
        }
    }

    #[test]
    fn serving_hosts_follow_the_endpoint() {
        let url = config(Endpoint::Url("https://127.0.0.1:9443".into()));
        assert_eq!(serving_hosts(&url), vec!["127.0.0.1", "10.96.0.20"]);
        let svc = config(Endpoint::Service {
            namespace: "streamgate-system".into(),
            name: "streamgate-operator-webhook".into(),
        });
        assert_eq!(
            serving_hosts(&svc)[0],
            "streamgate-operator-webhook.streamgate-system.svc"
        );
    }
}
