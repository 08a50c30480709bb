//! Reading a PEM certificate bundle (the webhook's `caBundle`).

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The earliest expiry (unix seconds) of the certificates in `pem`.
pub fn not_after(pem: &[u8]) -> Result<i64, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    certs
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .map(|(_, cert)| cert.validity().not_after.timestamp())
                .map_err(|e| format!("not a certificate: {e}"))
        })
        .try_fold(None, |earliest: Option<i64>, expiry| {
            let expiry = expiry?;
            Ok::<_, String>(Some(earliest.map_or(expiry, |e| e.min(expiry))))
        })?
        .ok_or_else(|| "empty".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_expiry_of_a_bundle_is_found_and_garbage_refused() {
        let cert = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let pem = cert.cert.pem();
        let expiry = not_after(pem.as_bytes()).unwrap();
        assert!(expiry > 0);
        assert_eq!(not_after(b"").unwrap_err(), "empty");
        assert!(
            not_after(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
