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

/// Where the operator mounts the workload certificate.
pub const DEFAULT_DIR: &str = "/etc/streamgate/mtls";
/// Consul meta key an instance sets when its inbound listener requires mTLS.
pub const INBOUND_META: &str = "streamgate-inbound";
/// The value of [`INBOUND_META`] for an mTLS inbound listener.
pub const INBOUND_MTLS: &str = "mtls";
const SPIFFE_PREFIX: &str = "spiffe://streamgate/ns/";

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
pub fn load(dir: &Path) -> Result<Option<Identity>, String> {
    let (ca, cert, key) = (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"));
    if !cert.exists() {
        return Ok(None);
    }
    let named = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
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
    let service = spiffe_service(leaf).ok_or_else(|| {
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
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), private_key.clone_key())
        .map_err(|e| named(&key, &e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
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

/// The server name a caller checks: `<service>.<namespace>.streamgate`.
pub fn server_name(service: &str, namespace: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(format!("{service}.{namespace}.streamgate")).ok()
}

/// The service named by the certificate's `spiffe://streamgate/ns/<ns>/svc/<service>` URI.
pub fn spiffe_service(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => service_from_uri(uri),
        _ => None,
    })
}

fn service_from_uri(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
    let (_namespace, service) = rest.split_once("/svc/")?;
    (!service.is_empty() && !service.contains('/')).then(|| service.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_comes_from_the_spiffe_uri() {
        assert_eq!(
            service_from_uri("spiffe://streamgate/ns/prod/svc/upload").as_deref(),
            Some("upload")
        );
        assert_eq!(service_from_uri("spiffe://other/ns/prod/svc/upload"), None);
        assert_eq!(service_from_uri("spiffe://streamgate/ns/prod/svc/"), None);
        assert_eq!(
            service_from_uri("spiffe://streamgate/ns/prod/svc/a/b"),
            None
        );
    }

    #[test]
    fn a_directory_without_certificates_means_mtls_off() {
        let dir = std::env::temp_dir().join(format!("sg-no-mtls-{}", std::process::id()));
        assert!(load(&dir).unwrap().is_none());
    }

    #[test]
    fn a_broken_certificate_is_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("sg-bad-mtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
        let error = load(&dir).unwrap_err();
        assert!(
            error.contains("ca.crt") || error.contains("tls.crt"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
