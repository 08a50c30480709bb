//! A certificate request signed into a workload certificate. Only the request's public
//! key is used (its signature proves the requester holds the private key); every name
//! comes from the caller of [`workload_certificate`], who took them from a verified token.

use k8s_openapi::jiff::Timestamp;
use rcgen::{
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType,
};
use std::time::Duration;
use streamgate_crds::contract::identity;

/// Who a certificate is for, as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    /// The StreamGate service of the pod (its `streamgate.io/service` label).
    pub service: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the certificate request is not a valid, self-signed PKCS#10 CSR in PEM: {0}")]
    Request(rcgen::Error),
    #[error("the workload CA cannot sign: {0}")]
    Ca(rcgen::Error),
}

/// The certificate (PEM) for `workload`, with the key of `csr_pem`, signed by the CA
/// (`ca_cert`, `ca_key`), valid for `validity` (a minute of slack backwards for clocks
/// behind ours); and when it expires.
pub fn workload_certificate(
    ca_cert: &str,
    ca_key: &str,
    csr_pem: &str,
    workload: &Workload,
    validity: Duration,
) -> Result<(String, Timestamp), SignError> {
    let mut request =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(SignError::Request)?;
    let key = KeyPair::from_pem(ca_key).map_err(SignError::Ca)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, key).map_err(SignError::Ca)?;
    let server_name = identity::server_name(&workload.namespace, &workload.service);
    let spiffe = identity::spiffe_id(&workload.namespace, &workload.service_account);
    let mut params =
        rcgen::CertificateParams::new(vec![server_name]).map_err(SignError::Request)?;
    let uri = spiffe.as_str().try_into().map_err(SignError::Request)?;
    params.subject_alt_names.push(SanType::URI(uri));
    params
        .distinguished_name
        .push(DnType::CommonName, workload.service.as_str());
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::try_from(validity).unwrap_or(time::Duration::days(1));
    request.params = params;
    let not_after = Timestamp::from_second(request.params.not_after.unix_timestamp())
        .unwrap_or_else(|_| Timestamp::now());
    let cert = request.signed_by(&issuer).map_err(SignError::Ca)?;
    Ok((cert.pem(), not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn workload() -> Workload {
        Workload {
            namespace: "media".into(),
            service_account: "upload".into(),
            service: "upload".into(),
        }
    }

    #[test]
    fn the_names_come_from_the_verified_workload_not_the_request() {
        let (ca_cert, ca_key) = crate::webhook::certs::new_ca().unwrap();
        let key = KeyPair::generate().unwrap();
        // The request asks for another service's names; they are not used.
        let mut asked =
            CertificateParams::new(vec!["api-gateway.media.streamgate".into()]).unwrap();
        asked.subject_alt_names.push(SanType::URI(
            "spiffe://streamgate/ns/media/sa/api-gateway"
                .try_into()
                .unwrap(),
        ));
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let (pem, _) = workload_certificate(
            &ca_cert,
            &ca_key,
            &csr,
            &workload(),
            Duration::from_secs(3600),
        )
        .unwrap();
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "DNSName(upload.media.streamgate)",
                "URI(spiffe://streamgate/ns/media/sa/upload)"
            ]
        );
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw(),
            "the requester's key, not one made here"
        );
    }

    #[test]
    fn a_request_that_is_not_a_csr_is_refused() {
        let (ca_cert, ca_key) = crate::webhook::certs::new_ca().unwrap();
        let error = workload_certificate(
            &ca_cert,
            &ca_key,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &workload(),
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(matches!(error, SignError::Request(_)), "{error}");
    }
}
