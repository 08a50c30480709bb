//! The sidecar injection webhook: existing workloads annotated `streamgate.io/inject:
//! "true"` (or in a namespace labelled `streamgate.io/inject=enabled`) get the same
//! sidecar a StreamGateService gets.
//!
//! - [`annotations`]: `streamgate.io/*` annotations → sidecar configuration.
//! - [`inject`]: the decision and the JSON patch (pure).
//! - [`certs`]: CA and serving certificate in a Secret, reissued before expiry.
//! - [`registration`]: the MutatingWebhookConfiguration, applied server-side.
//! - [`server`]: the HTTPS endpoint.
//!
//! [`run`] ties them together: certificates first, then the configuration, then the
//! server, and a loop that renews the serving certificate and reloads it in place.

pub mod annotations;
pub mod certs;
pub mod inject;
pub mod registration;
pub mod server;

use crate::settings::SidecarSettings;
use anyhow::{Context, Result};
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use registration::{Endpoint, Registration};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Everything the webhook needs from the command line.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub endpoint: Endpoint,
    pub registration_name: String,
    pub secret_name: String,
    pub operator_namespace: String,
    pub failure_policy: String,
    pub timeout_seconds: i32,
    pub cert_validity: Duration,
    pub only_namespace: Option<String>,
}

/// The names the serving certificate must cover.
pub fn serving_hosts(config: &WebhookConfig) -> Vec<String> {
    match &config.endpoint {
        Endpoint::Url(url) => {
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
            vec![host.trim_matches(['[', ']']).to_string()]
        }
        Endpoint::Service { namespace, name } => vec![
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ],
    }
}

/// Serves the webhook until the process stops. `listening` fires once the server
/// accepts connections with its certificate loaded (the replica's readiness waits for it:
/// a Service must not send the API server's calls to a replica that cannot answer).
pub async fn run(
    client: kube::Client,
    config: WebhookConfig,
    settings: SidecarSettings,
    listening: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.operator_namespace);
    let hosts = serving_hosts(&config);
    let material = certs::ensure(&secrets, &config.secret_name, &hosts, config.cert_validity)
        .await
        .context("preparing the webhook certificates")?;
    let registration = Registration {
        name: config.registration_name.clone(),
        endpoint: config.endpoint.clone(),
        failure_policy: config.failure_policy.clone(),
        timeout_seconds: config.timeout_seconds,
        only_namespace: config.only_namespace.clone(),
        excluded_namespaces: vec!["kube-system".to_string(), config.operator_namespace.clone()],
    };
    let tls = RustlsConfig::from_pem(
        material.cert.clone().into_bytes(),
        material.key.clone().into_bytes(),
    )
    .await
    .context("loading the webhook's serving certificate")?;
    registration::apply(&client, &registration, &material.ca_cert)
        .await
        .context("applying the MutatingWebhookConfiguration")?;

    let state = Arc::new(server::WebhookState {
        settings,
        operator_namespace: config.operator_namespace.clone(),
    });
    let listen = config.listen;
    let renewal = {
        let tls = tls.clone();
        let mut served = material.cert.clone();
        // One loop reads the Secret once a period: it renews the serving certificate and
        // issues the services' identities from the same CA.
        let period =
            (config.cert_validity / 6).clamp(Duration::from_secs(1), Duration::from_secs(15));
        let scope = config.only_namespace.clone();
        // The services with pods at the last pass: one gone since gets its Secret removed.
        let mut identities = std::collections::BTreeSet::new();
        async move {
            loop {
                match certs::ensure(&secrets, &config.secret_name, &hosts, config.cert_validity)
                    .await
                {
                    Ok(current) => {
                        if current.cert != served {
                            match tls
                                .reload_from_pem(
                                    current.cert.clone().into_bytes(),
                                    current.key.clone().into_bytes(),
                                )
                                .await
                            {
                                Ok(()) => {
                                    info!(not_after = %current.not_after, "serving a renewed webhook certificate");
                                    served = current.cert.clone();
                                }
                                Err(e) => {
                                    warn!(error = %e, "could not load the renewed webhook certificate")
                                }
                            }
                        }
                        if let Err(e) =
                            registration::apply(&client, &registration, &current.ca_cert).await
                        {
                            warn!(error = %e, "could not apply the MutatingWebhookConfiguration");
                        }
                        if let Err(e) = crate::identity::issue_all(
                            &client,
                            scope.as_deref(),
                            &current.ca_cert,
                            &current.ca_key,
                            config.cert_validity,
                            &mut identities,
                        )
                        .await
                        {
                            warn!(
                                error = format!("{e:#}"),
                                "issuing workload certificates failed; retrying"
                            );
                        }
                    }
                    Err(e) => warn!(error = %e, "webhook certificate check failed; retrying"),
                }
                tokio::time::sleep(period).await;
            }
        }
    };
    tokio::spawn(renewal);

    let handle = axum_server::Handle::new();
    let bound = handle.clone();
    tokio::spawn(async move {
        if bound.listening().await.is_some() {
            info!(%listen, "serving the injection webhook");
            let _ = listening.send(());
        }
    });
    axum_server::bind_rustls(listen, tls)
        .handle(handle)
        .serve(server::router(state).into_make_service())
        .await
        .context("webhook server")?;
    Ok(())
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
            failure_policy: "Fail".into(),
            timeout_seconds: 5,
            cert_validity: Duration::from_secs(60),
            only_namespace: None,
        }
    }

    #[test]
    fn serving_hosts_follow_the_endpoint() {
        let url = config(Endpoint::Url("https://127.0.0.1:9443".into()));
        assert_eq!(serving_hosts(&url), vec!["127.0.0.1"]);
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
