//! The serving certificate's renewal, on every replica: each pass reads the shared
//! Secret (reissuing the certificate in its last third, as [`certs::ensure`] decides),
//! reloads this replica's TLS configuration in place when the certificate changed, and
//! re-applies the MutatingWebhookConfiguration so a lost or edited `caBundle` heals.

use super::certs;
use super::registration::{self, Registration};
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use std::time::Duration;
use tracing::{info, warn};

pub struct Renewal {
    pub client: kube::Client,
    pub secrets: Api<Secret>,
    pub secret_name: String,
    pub hosts: Vec<String>,
    pub validity: Duration,
    pub registration: Registration,
    pub tls: RustlsConfig,
    /// The certificate this replica serves now.
    pub served_cert: String,
    /// The identity endpoint's authorities, refreshed from their Secrets.
    pub ca: crate::identity::Authorities,
    /// The workload CA's Secret.
    pub identity_ca_secret: String,
}

impl Renewal {
    /// Checks once a `period`, forever; failures are logged and retried next pass.
    pub async fn run(mut self, period: Duration) {
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = self.pass().await {
                warn!(error = %e, "webhook certificate check failed; retrying");
            }
        }
    }

    async fn pass(&mut self) -> Result<(), certs::CertError> {
        let current =
            certs::ensure(&self.secrets, &self.secret_name, &self.hosts, self.validity).await?;
        if current.cert != self.served_cert {
            let (cert, key) = (current.cert.clone(), current.key.clone());
            match self
                .tls
                .reload_from_pem(cert.into_bytes(), key.into_bytes())
                .await
            {
                Ok(()) => {
                    info!(not_after = %current.not_after, "serving a renewed webhook certificate");
                    self.served_cert = current.cert.clone();
                }
                Err(e) => warn!(error = %e, "could not load the renewed webhook certificate"),
            }
        }
        self.ca.set_endpoint_ca(&current.ca_cert);
        match crate::identity::ca::ensure_issuer(&self.secrets, &self.identity_ca_secret).await {
            Ok(issuer) => {
                if self.ca.set_issuer(issuer) {
                    info!(secret = %self.identity_ca_secret, "the workload CA or its trust bundle changed: issuing with it");
                }
            }
            // The last good issuer stays in use.
            Err(e) => {
                warn!(error = %e, "the workload CA is unusable; issuing with the last good one")
            }
        }
        if let Err(e) =
            registration::apply(&self.client, &self.registration, &current.ca_cert).await
        {
            warn!(error = %e, "could not apply the MutatingWebhookConfiguration");
        }
        Ok(())
    }
}
