//! The workload identity for mTLS between sidecars.
//!
//! The operator issues one certificate per service and namespace from its CA and mounts
//! the Secret at `/etc/streamgate/mtls` (`ca.crt`, `tls.crt`, `tls.key`). The
//! certificate names the service twice: DNS `<service>.<namespace>.streamgate`, which a
//! caller checks as the server name, and URI `spiffe://streamgate/ns/<ns>/svc/<service>`,
//! which a server reads as the caller's identity for `allowedCallers`.
//!
//! With the files present the inbound listener accepts only TLS peers whose certificate
//! the same CA signed (a plaintext or wrong-CA peer fails the handshake), and the
//! outbound side dials instances that advertise mTLS with the same certificate.

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

/// This sidecar's certificate, key and CA, ready as rustls configurations.
pub struct Identity {
    /// The service the certificate names.
    pub service: String,
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("service", &self.service)
            .finish_non_exhaustive()
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
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca)
        .and_then(|certs| certs.collect())
        .map_err(|e| named(&ca, &e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| named(&cert, &e))?;
    let private_key = PrivateKeyDer::from_pem_file(&key).map_err(|e| named(&key, &e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| named(&cert, &"no certificate in the file"))?;
    let service = spiffe_workload(leaf)
        .map(|workload| workload.service)
        .ok_or_else(|| {
            named(
                &cert,
                &"the certificate has no spiffe://streamgate/ns/<ns>/svc/<service> URI",
            )
        })?;

    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root).map_err(|e| named(&ca, &e))?;
    }
    let store = Arc::new(store);
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let verifier = WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
        .build()
        .map_err(|e| named(&ca, &e))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| named(&key, &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), private_key.clone_key())
        .map_err(|e| named(&key, &e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| named(&key, &e))?
        .with_root_certificates(store)
        .with_client_auth_cert(chain, private_key)
        .map_err(|e| named(&key, &e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];

    Ok(Some(Identity {
        service,
        client: Arc::new(client),
        server: Arc::new(server),
    }))
}

/// The identity as currently mounted. The operator reissues certificates well before
/// they expire and the kubelet rewrites the mounted files in place, so the store reads
/// them again when they change ([`IdentityStore::spawn_reload`]); a pod started before
/// its Secret existed gets its identity once the files appear. Connections opened
/// after a reload use the new certificate.
pub struct IdentityStore {
    dir: std::path::PathBuf,
    current: std::sync::RwLock<Option<Arc<Identity>>>,
    /// The certificate file's contents at the last load, to notice a change.
    loaded: std::sync::Mutex<Vec<u8>>,
}

/// How often the mounted files are checked for a renewed certificate.
const RELOAD_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

impl IdentityStore {
    /// Loads the identity from `dir` (`Ok` with none when no certificate is mounted).
    pub fn open(dir: &Path) -> Result<Arc<Self>, IdentityError> {
        let store = Arc::new(IdentityStore {
            dir: dir.to_path_buf(),
            current: std::sync::RwLock::new(None),
            loaded: std::sync::Mutex::new(Vec::new()),
        });
        store.reload()?;
        Ok(store)
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
        let cert = std::fs::read(self.dir.join("tls.crt")).unwrap_or_default();
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cert == *loaded {
            return Ok(false);
        }
        let identity = load(&self.dir)?;
        *loaded = cert;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = identity.map(Arc::new);
        Ok(true)
    }

    /// Checks the files every few seconds for as long as the store is in use.
    pub fn spawn_reload(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_PERIOD).await;
                let Some(store) = weak.upgrade() else { return };
                match store.reload() {
                    Ok(true) => {
                        tracing::info!(dir = %store.dir.display(), "mTLS identity reloaded")
                    }
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

/// The workload a certificate names: its `spiffe://streamgate/ns/<ns>/svc/<service>` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service: String,
}

/// The workload named by the certificate's SPIFFE URI, if it has one of ours.
pub fn spiffe_workload(cert: &CertificateDer<'_>) -> Option<Workload> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => workload_from_uri(uri),
        _ => None,
    })
}

fn workload_from_uri(uri: &str) -> Option<Workload> {
    let (namespace, service) = identity::parse_spiffe_id(uri)?;
    Some(Workload {
        namespace: namespace.to_string(),
        service: service.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_comes_from_the_spiffe_uri_namespace_included() {
        assert_eq!(
            workload_from_uri("spiffe://streamgate/ns/prod/svc/upload"),
            Some(Workload {
                namespace: "prod".into(),
                service: "upload".into()
            })
        );
        assert_eq!(workload_from_uri("spiffe://other/ns/prod/svc/upload"), None);
        assert_eq!(workload_from_uri("spiffe://streamgate/ns/prod/svc/"), None);
        assert_eq!(
            workload_from_uri("spiffe://streamgate/ns/prod/svc/a/b"),
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
        let uri = format!("spiffe://streamgate/ns/ns/svc/{service}");
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
        assert_eq!(store.current().unwrap().service, "upload");
        assert!(
            !store.reload().unwrap(),
            "unchanged files are not read again"
        );

        // A half-written update keeps the identity in use.
        std::fs::write(dir.join("tls.crt"), "-----BEGIN CERT").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(store.current().unwrap().service, "upload");

        write_identity(&dir, "upload-v2");
        assert!(store.reload().unwrap());
        assert_eq!(store.current().unwrap().service, "upload-v2");
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
