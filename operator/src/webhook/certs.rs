//! The webhook's PKI, kept in a Secret so every replica serves the same CA: a long-lived
//! CA and a short-lived serving certificate it signs, reissued before it expires. The
//! CA's certificate is the MutatingWebhookConfiguration's `caBundle`; reissuing the
//! serving certificate leaves it unchanged, so rotation needs no other write.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Secret annotation recording when the serving certificate expires (read back without
/// parsing X.509).
const NOT_AFTER: &str = "streamgate.io/serving-not-after";
const HOSTS: &str = "streamgate.io/serving-hosts";
const CA_COMMON_NAME: &str = "streamgate-ca";
const CA_VALIDITY_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Kubernetes API error on the webhook Secret: {0}")]
    Kube(#[from] kube::Error),
    #[error("the webhook Secret is missing {0}")]
    Missing(&'static str),
}

/// The PEM material the webhook serves and publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    pub not_after: Timestamp,
    pub hosts: Vec<String>,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A new CA (certificate, key) in PEM.
pub fn new_ca() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = ca_params()?;
    let now = time_now();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A serving certificate for `hosts` (DNS names or IPs), valid for `validity`, signed by
/// the CA whose key is `ca_key`.
pub fn issue_serving(
    ca_key: &str,
    hosts: &[String],
    validity: Duration,
) -> Result<(String, String, Timestamp), rcgen::Error> {
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(ca_key)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "streamgate-webhook");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time_now();
    let validity = time::Duration::try_from(validity).unwrap_or(time::Duration::days(1));
    // A little slack backwards for clocks that run behind ours.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + validity;
    let cert = params.signed_by(&key, &issuer)?;
    let not_after = Timestamp::from_second(params.not_after.unix_timestamp())
        .unwrap_or_else(|_| Timestamp::now());
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// Whether `material` must be reissued: it serves other hosts, or less than a third of
/// `validity` is left.
pub fn needs_renewal(
    material: &Material,
    hosts: &[String],
    validity: Duration,
    now: Timestamp,
) -> bool {
    let left = material.not_after.duration_since(now);
    let threshold = SignedDuration::try_from(validity / 3).unwrap_or(SignedDuration::ZERO);
    material.hosts != hosts || left < threshold
}

fn get(data: &BTreeMap<String, ByteString>, key: &'static str) -> Result<String, CertError> {
    data.get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .ok_or(CertError::Missing(key))
}

fn from_secret(secret: &Secret) -> Result<Material, CertError> {
    let data = secret.data.clone().unwrap_or_default();
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    Ok(Material {
        ca_cert: get(&data, "ca.crt")?,
        ca_key: get(&data, "ca.key")?,
        cert: get(&data, "tls.crt")?,
        key: get(&data, "tls.key")?,
        not_after: annotations
            .get(NOT_AFTER)
            .and_then(|t| t.parse().ok())
            .unwrap_or(Timestamp::UNIX_EPOCH),
        hosts: annotations
            .get(HOSTS)
            .map(|h| h.split(',').map(String::from).collect())
            .unwrap_or_default(),
    })
}

fn to_secret(name: &str, material: &Material, base: Option<&Secret>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut secret = base.cloned().unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(crate::labels::managed_by()),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        ..Default::default()
    });
    secret.data = Some(BTreeMap::from([
        ("ca.crt".to_string(), bytes(&material.ca_cert)),
        ("ca.key".to_string(), bytes(&material.ca_key)),
        ("tls.crt".to_string(), bytes(&material.cert)),
        ("tls.key".to_string(), bytes(&material.key)),
    ]));
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(NOT_AFTER.to_string(), material.not_after.to_string());
    annotations.insert(HOSTS.to_string(), material.hosts.join(","));
    secret
}

/// The material in the Secret as it is, renewing nothing (for readers of the CA).
pub async fn read(api: &Api<Secret>, name: &str) -> Result<Material, CertError> {
    from_secret(&api.get(name).await?)
}

/// Reads the Secret, creating or reissuing what is missing or about to expire. Replicas
/// racing here converge: writes carry the resourceVersion read, and a loser re-reads.
pub async fn ensure(
    api: &Api<Secret>,
    name: &str,
    hosts: &[String],
    validity: Duration,
) -> Result<Material, CertError> {
    for _ in 0..5 {
        let existing = api.get_opt(name).await?;
        let current = existing
            .as_ref()
            .map(from_secret)
            .transpose()
            .ok()
            .flatten();
        if let Some(material) = &current
            && !needs_renewal(material, hosts, validity, Timestamp::now())
        {
            return Ok(material.clone());
        }
        let (ca_cert, ca_key) = match &current {
            Some(m) => (m.ca_cert.clone(), m.ca_key.clone()),
            None => new_ca()?,
        };
        let (cert, key, not_after) = issue_serving(&ca_key, hosts, validity)?;
        let material = Material {
            ca_cert,
            ca_key,
            cert,
            key,
            not_after,
            hosts: hosts.to_vec(),
        };
        let secret = to_secret(name, &material, existing.as_ref());
        let written = match existing {
            Some(_) => api.replace(name, &PostParams::default(), &secret).await,
            None => api.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => return Ok(material),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let secret = api.get(name).await?;
    from_secret(&secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_certificate_is_signed_for_the_hosts_and_renewed_in_its_last_third() {
        let (ca_cert, ca_key) = new_ca().unwrap();
        let hosts = vec![
            "127.0.0.1".to_string(),
            "webhook.streamgate.svc".to_string(),
        ];
        let (cert, _, not_after) = issue_serving(&ca_key, &hosts, Duration::from_secs(60)).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let material = Material {
            ca_cert,
            ca_key,
            cert,
            key: String::new(),
            not_after,
            hosts: hosts.clone(),
        };
        let validity = Duration::from_secs(60);
        assert!(!needs_renewal(
            &material,
            &hosts,
            validity,
            Timestamp::now()
        ));
        let late = Timestamp::now() + SignedDuration::from_secs(45);
        assert!(needs_renewal(&material, &hosts, validity, late));
        assert!(needs_renewal(
            &material,
            &["other".to_string()],
            validity,
            Timestamp::now()
        ));
    }
}
