//! The workload identity for mTLS between sidecars.
//!
//! A sidecar's certificate names it twice: DNS `<service>.<namespace>.streamgate`,
//! which a caller checks as the server name, and URI
//! `spiffe://streamgate/ns/<ns>/sa/<serviceaccount>`, which a server reads as the
//! caller's identity for `allowedCallers`. It comes from the operator's identity endpoint
//! ([`super::issuance`], the key made in memory), or from files in a directory
//! (`ca.crt`, `tls.crt`, `tls.key`) for a sidecar run without the operator.
//!
//! The inbound listener then accepts only TLS peers whose certificate the trust bundle
//! verifies (a plaintext or wrong-CA peer fails the handshake), and the outbound side
//! dials with the same certificate.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

use streamgate_crds::contract::identity;

/// A mounted identity file that cannot be used, and why (parse and rustls errors have
/// no common type; the reason is their message).
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct IdentityError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

/// Which part of an identity is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    TrustBundle,
    Certificate,
    Key,
}

/// An unusable identity part, and why.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct PartError {
    pub part: Part,
    pub reason: String,
}

/// This sidecar's certificate, key and trust bundle, ready as rustls configurations.
pub struct Identity {
    /// Who the certificate says this sidecar is.
    pub workload: Workload,
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
    /// The certificate's validity, seconds since the epoch: renewal is planned from it.
    pub not_before: i64,
    pub not_after: i64,
    /// How many roots peers are verified with (two while a CA is rotated).
    pub trust_roots: usize,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("workload", &self.workload)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds the rustls configurations from PEM roots, a PEM chain (leaf first) and the
    /// private key.
    pub fn new(
        trust_bundle: &[u8],
        chain: &[u8],
        private_key: PrivateKeyDer<'static>,
    ) -> Result<Identity, PartError> {
        let failed = |part: Part| {
            move |e: &dyn std::fmt::Display| PartError {
                part,
                reason: e.to_string(),
            }
        };
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(trust_bundle)
            .collect::<Result<_, _>>()
            .map_err(|e| failed(Part::TrustBundle)(&e))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<_, _>>()
            .map_err(|e| failed(Part::Certificate)(&e))?;
        let leaf = chain
            .first()
            .ok_or_else(|| failed(Part::Certificate)(&"no certificate"))?;
        let (workload, not_before, not_after) = describe(leaf).ok_or_else(|| {
            failed(Part::Certificate)(
                &"the certificate has no spiffe://streamgate/ns/<ns>/sa/<serviceaccount> URI",
            )
        })?;
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root).map_err(|e| failed(Part::TrustBundle)(&e))?;
        }
        if store.is_empty() {
            return Err(failed(Part::TrustBundle)(&"no root certificate"));
        }
        let trust_roots = store.len();
        let store = Arc::new(store);
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let verifier = WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|e| failed(Part::TrustBundle)(&e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(Part::Key)(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private_key.clone_key())
            .map_err(|e| failed(Part::Key)(&e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(Part::Key)(&e))?
            .with_root_certificates(store)
            .with_client_auth_cert(chain, private_key)
            .map_err(|e| failed(Part::Key)(&e))?;
        client.alpn_protocols = vec![b"h2".to_vec()];

        Ok(Identity {
            workload,
            client: Arc::new(client),
            server: Arc::new(server),
            not_before,
            not_after,
            trust_roots,
        })
    }
}

/// Loads the identity from `dir`; `Ok(None)` when the directory holds no certificate
/// (mTLS off), an error naming the file when it holds a broken one.
pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let (ca, cert, key) = (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"));
    if !cert.exists() {
        return Ok(None);
    }
    let named = |path: &Path, e: &dyn std::fmt::Display| IdentityError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| named(path, &e));
    let (roots, chain) = (read(&ca)?, read(&cert)?);
    let private_key = PrivateKeyDer::from_pem_file(&key).map_err(|e| named(&key, &e))?;
    Identity::new(&roots, &chain, private_key)
        .map(Some)
        .map_err(|e| {
            let path = match e.part {
                Part::TrustBundle => &ca,
                Part::Certificate => &cert,
                Part::Key => &key,
            };
            named(path, &e.reason)
        })
}

/// The identity in use. Issued identities are installed by [`super::issuance`] (renewed
/// at half-life); files are read again when they change ([`IdentityStore::spawn_reload`]),
/// so certificates rotated on disk are picked up. Connections opened after a change use
/// the new certificate.
pub struct IdentityStore {
    /// The directory of the files; `None` for an issued identity.
    dir: Option<std::path::PathBuf>,
    current: std::sync::RwLock<Option<Arc<Identity>>>,
    /// The certificate file's contents at the last load, to notice a change.
    loaded: std::sync::Mutex<Vec<u8>>,
    /// Whether an identity is held (flips once, from the first one on).
    held: tokio::sync::watch::Sender<bool>,
}

/// How often the mounted files are checked for a renewed certificate.
const RELOAD_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

impl IdentityStore {
    /// Loads the identity from `dir` (`Ok` with none when no certificate is mounted).
    pub fn open(dir: &Path) -> Result<Arc<Self>, IdentityError> {
        let store = Arc::new(Self::with_dir(Some(dir.to_path_buf())));
        store.reload()?;
        Ok(store)
    }

    /// An empty store for an identity the operator issues.
    pub fn issued() -> Arc<Self> {
        Arc::new(Self::with_dir(None))
    }

    fn with_dir(dir: Option<std::path::PathBuf>) -> Self {
        IdentityStore {
            dir,
            current: std::sync::RwLock::new(None),
            loaded: std::sync::Mutex::new(Vec::new()),
            held: tokio::sync::watch::channel(false).0,
        }
    }

    /// Puts `identity` in use for new connections.
    pub fn install(&self, identity: Identity) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(identity));
        self.held.send_replace(true);
    }

    /// Waits until an identity is held.
    pub async fn held(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| *held).await;
    }

    pub fn current(&self) -> Option<Arc<Identity>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again if the certificate changed; a broken new set keeps the
    /// old identity (and is reported), so a half-written update never drops mTLS.
    fn reload(&self) -> Result<bool, IdentityError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let cert = std::fs::read(dir.join("tls.crt")).unwrap_or_default();
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cert == *loaded {
            return Ok(false);
        }
        let identity = load(dir)?;
        *loaded = cert;
        let held = identity.is_some();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = identity.map(Arc::new);
        if held {
            self.held.send_replace(true);
        }
        Ok(true)
    }

    /// Checks the files every few seconds for as long as the store is in use.
    pub fn spawn_reload(self: &Arc<Self>) {
        if self.dir.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_PERIOD).await;
                let Some(store) = weak.upgrade() else { return };
                match store.reload() {
                    Ok(true) => tracing::info!("mTLS identity reloaded from its files"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "mTLS identity not reloaded"),
                }
            }
        });
    }
}

/// The server name a caller checks: `<service>.<namespace>.streamgate`.
pub fn server_name(service: &str, namespace: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(identity::server_name(namespace, service)).ok()
}

/// The workload a certificate names: its SPIFFE URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
}

/// The workload named by the certificate's SPIFFE URI, if it has one of ours.
pub fn spiffe_workload(cert: &CertificateDer<'_>) -> Option<Workload> {
    describe(cert).map(|(workload, _, _)| workload)
}

/// The workload and the validity (seconds since the epoch) of a certificate.
fn describe(cert: &CertificateDer<'_>) -> Option<(Workload, i64, i64)> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    let workload = sans
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => workload_from_uri(uri),
            _ => None,
        })?;
    let validity = parsed.validity();
    Some((
        workload,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

fn workload_from_uri(uri: &str) -> Option<Workload> {
    let (namespace, service_account) = identity::parse_spiffe_id(uri)?;
    Some(Workload {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_comes_from_the_spiffe_uri_namespace_included() {
        assert_eq!(
            workload_from_uri("spiffe://streamgate/ns/prod/sa/upload"),
            Some(Workload {
                namespace: "prod".into(),
                service_account: "upload".into()
            })
        );
        assert_eq!(workload_from_uri("spiffe://other/ns/prod/sa/upload"), None);
        assert_eq!(workload_from_uri("spiffe://streamgate/ns/prod/sa/"), None);
        assert_eq!(
            workload_from_uri("spiffe://streamgate/ns/prod/sa/a/b"),
            None
        );
    }

    #[test]
    fn a_directory_without_certificates_means_mtls_off() {
        let dir = std::env::temp_dir().join(format!("sg-no-mtls-{}", std::process::id()));
        assert!(load(&dir).unwrap().is_none());
    }

    /// A CA and a workload certificate for `service`, as PEM files in `dir`.
    fn write_identity(dir: &Path, service: &str) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![format!("{service}.ns.streamgate")]).unwrap();
        let uri = format!("spiffe://streamgate/ns/ns/sa/{service}");
        leaf.subject_alt_names
            .push(SanType::URI(uri.as_str().try_into().unwrap()));
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    }

    #[test]
    fn the_store_picks_up_a_certificate_that_appears_or_changes() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = std::env::temp_dir().join(format!("sg-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = IdentityStore::open(&dir).unwrap();
        assert!(store.current().is_none(), "nothing mounted yet");

        write_identity(&dir, "upload");
        assert!(store.reload().unwrap());
        assert_eq!(store.current().unwrap().workload.service_account, "upload");
        assert!(
            !store.reload().unwrap(),
            "unchanged files are not read again"
        );

        // A half-written update keeps the identity in use.
        std::fs::write(dir.join("tls.crt"), "-----BEGIN CERT").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(store.current().unwrap().workload.service_account, "upload");

        write_identity(&dir, "upload-v2");
        assert!(store.reload().unwrap());
        assert_eq!(
            store.current().unwrap().workload.service_account,
            "upload-v2"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_certificate_is_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("sg-bad-mtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
        let error = load(&dir).unwrap_err();
        let file = error.path.file_name().and_then(|f| f.to_str());
        assert!(matches!(file, Some("ca.crt" | "tls.crt")), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
