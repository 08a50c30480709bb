//! The sidecar's side of identity issuance: a key made in memory (it never leaves the
//! process), a CSR for it, sent to the operator's identity endpoint with the pod's
//! projected ServiceAccount token; the certificate and trust bundle that come back are
//! installed in the [`IdentityStore`]. Renewed at half-life with a fresh key, no
//! restart; a failed attempt is retried (1 s doubling to 30 s) while the current
//! certificate stays in use.
//!
//! The endpoint is verified with the CA the operator rendered into the configuration
//! (its webhook's); peers with the workload trust bundle each answer brings, so roots
//! rolled in by a rotation of the workload CA reach running sidecars at their next
//! renewal.

use super::tls::{Identity, IdentityStore};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use streamgate_crds::contract::identity::{ISSUE_PATH, IssueRequest, IssueResponse};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no certificate was obtained this time.
#[derive(Debug, thiserror::Error)]
pub enum IssuanceError {
    #[error("identity.endpointCa: {0}")]
    EndpointCa(String),
    #[error("cannot read the ServiceAccount token {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a key or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("identity endpoint {endpoint}: {}", crate::error_chain(source))]
    Unreachable {
        endpoint: String,
        source: reqwest::Error,
    },
    #[error("identity endpoint {endpoint} refused ({status}): {message}")]
    Refused {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("the issued certificate is unusable: {0}")]
    Unusable(#[from] super::tls::PartError),
}

/// Obtains and renews this sidecar's certificate.
pub struct Issuance {
    endpoint: String,
    token_file: PathBuf,
    /// The roots the endpoint is verified with.
    endpoint_ca: String,
    metrics: Arc<super::metrics::ForwardMetrics>,
}

impl Issuance {
    pub fn new(
        endpoint: &str,
        endpoint_ca: &str,
        token_file: PathBuf,
        metrics: Arc<super::metrics::ForwardMetrics>,
    ) -> Self {
        Issuance {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token_file,
            endpoint_ca: endpoint_ca.to_string(),
            metrics,
        }
    }

    /// Gets certificates into `store` for as long as it is in use: the first one as soon
    /// as possible, then each at the previous one's half-life.
    pub fn spawn(self, store: Arc<IdentityStore>) {
        let store = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            loop {
                let Some(held) = store.upgrade() else { return };
                let wait = match self.obtain().await {
                    Ok(identity) => {
                        let renew_in = renewal_delay(identity.not_before, identity.not_after);
                        tracing::info!(
                            namespace = %identity.workload.namespace,
                            service_account = %identity.workload.service_account,
                            renew_in_s = renew_in.as_secs(),
                            trust_roots = identity.trust_roots,
                            "mTLS certificate issued"
                        );
                        self.metrics.certificate_installed(&identity);
                        held.install(identity);
                        retry = FIRST_RETRY;
                        renew_in
                    }
                    Err(e) => {
                        self.metrics.issuance_failed();
                        tracing::warn!(error = %e, retry_in_s = retry.as_secs(), "no mTLS certificate this time");
                        let wait = retry;
                        retry = (retry * 2).min(LONGEST_RETRY);
                        wait
                    }
                };
                drop(held);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// One issuance: a new key, its CSR, the token, the endpoint's answer.
    pub async fn obtain(&self) -> Result<Identity, IssuanceError> {
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
            .serialize_request(&key)?
            .pem()?;
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|source| IssuanceError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let response = self.request(token.trim(), csr).await?;
        let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Identity::new(
            response.trust_bundle.as_bytes(),
            response.certificate.as_bytes(),
            private_key,
        )?)
    }

    async fn request(&self, token: &str, csr: String) -> Result<IssueResponse, IssuanceError> {
        let unreachable = |source| IssuanceError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        };
        let client = crate::http_client()
            .tls_backend_preconfigured(self.endpoint_tls()?)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(unreachable)?;
        let response = client
            .post(format!("{}{ISSUE_PATH}", self.endpoint))
            .bearer_auth(token)
            .json(&IssueRequest { csr })
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let message = response.text().await.unwrap_or_default();
            return Err(IssuanceError::Refused {
                endpoint: self.endpoint.clone(),
                status: status.as_u16(),
                message: message.chars().take(500).collect(),
            });
        }
        response.json().await.map_err(unreachable)
    }

    /// TLS to the endpoint, verified with the endpoint's CA only.
    fn endpoint_tls(&self) -> Result<rustls::ClientConfig, IssuanceError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.endpoint_ca.as_bytes()) {
            let cert = cert.map_err(|e| IssuanceError::EndpointCa(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| IssuanceError::EndpointCa(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(IssuanceError::EndpointCa("no root certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IssuanceError::EndpointCa(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// How long until a certificate valid from `not_before` to `not_after` (seconds since
/// the epoch) is renewed: at half its lifetime, at least a second from now.
pub fn renewal_delay(not_before: i64, not_after: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let half_life = not_before + (not_after - not_before) / 2;
    Duration::from_secs(u64::try_from(half_life - now).unwrap_or(0).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_half_life() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let day = 86_400;
        let delay = renewal_delay(now, now + day);
        assert!(
            (day / 2 - 2..=day / 2).contains(&(delay.as_secs() as i64)),
            "{delay:?}"
        );
        // Issued a while ago, past half-life: renew at once (next second).
        assert_eq!(renewal_delay(now - day, now + 10), Duration::from_secs(1));
    }
}
