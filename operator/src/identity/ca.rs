//! The two authorities behind the identity endpoint, as this replica holds them:
//!
//! - the **endpoint CA**, the webhook's serving CA: it verifies the endpoint, and is
//!   rendered into every sidecar (so it changes pods only if the webhook's CA does);
//! - the **issuer**, the workload CA of the Secret `--identity-ca-secret` that signs
//!   sidecar certificates, and the **trust bundle** returned with each certificate, the
//!   roots sidecars verify each other with.
//!
//! The issuer's Secret is the operator's own (made with a self-signed CA when missing)
//! or one provided from outside (e.g. a cert-manager CA Certificate's Secret): `tls.crt`
//! and `tls.key` issue; the roots are `ca.crt` if present (else `tls.crt`) plus any in
//! `bundle.pem`, which is how a new CA is rolled in before it issues and an old one kept
//! after it stopped (docs/security.md, "Rotating the workload CA"). Both are reloaded on
//! every check, so a rotation step takes effect within seconds, without a restart.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

/// The Secret keys of the issuer.
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const ROOT_KEY: &str = "ca.crt";
pub const EXTRA_ROOTS_KEY: &str = "bundle.pem";

/// The workload CA that signs, and the roots sidecars trust.
#[derive(Clone, PartialEq, Eq)]
pub struct Issuer {
    /// The signing certificate (PEM), sent after each leaf so peers can build the chain.
    pub cert: String,
    pub key: String,
    /// PEM roots, deduplicated.
    pub trust_bundle: String,
}

/// Never prints the key.
impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").finish_non_exhaustive()
    }
}

#[derive(Clone, Default, PartialEq)]
struct Held {
    endpoint_ca: Option<String>,
    issuer: Option<Issuer>,
}

/// The authorities shared by the endpoint, the renderer and the renewal; empty until
/// loaded.
#[derive(Clone, Default)]
pub struct Authorities(Arc<RwLock<Held>>);

impl Authorities {
    /// With the endpoint CA only (what the command line's offline renderer needs).
    pub fn with_endpoint_ca(pem: &str) -> Self {
        let authorities = Authorities::default();
        authorities.set_endpoint_ca(pem);
        authorities
    }

    /// Returns whether it changed.
    pub fn set_endpoint_ca(&self, pem: &str) -> bool {
        let mut held = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let changed = held.endpoint_ca.as_deref() != Some(pem);
        held.endpoint_ca = Some(pem.to_string());
        changed
    }

    /// Returns whether it changed.
    pub fn set_issuer(&self, issuer: Issuer) -> bool {
        let mut held = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let changed = held.issuer.as_ref() != Some(&issuer);
        held.issuer = Some(issuer);
        changed
    }

    pub fn endpoint_ca(&self) -> Option<String> {
        self.held().endpoint_ca
    }

    pub fn issuer(&self) -> Option<Issuer> {
        self.held().issuer
    }

    fn held(&self) -> Held {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl PartialEq for Authorities {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.held() == other.held()
    }
}

/// Never prints a key.
impl std::fmt::Debug for Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.held();
        f.debug_struct("Authorities")
            .field("endpoint_ca", &held.endpoint_ca.is_some())
            .field("issuer", &held.issuer.is_some())
            .finish()
    }
}

/// Why the issuer's Secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("Secret {secret}: {reason}")]
    Unusable { secret: String, reason: String },
    #[error("Kubernetes API error on Secret {secret}: {source}")]
    Kube {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("making a workload CA: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The issuer from its Secret, made (a self-signed CA) when the Secret does not exist or
/// holds nothing yet (the chart creates it empty, so `helm uninstall` removes it).
pub async fn ensure_issuer(secrets: &Api<Secret>, name: &str) -> Result<Issuer, CaError> {
    let kube_error = |source| CaError::Kube {
        secret: name.to_string(),
        source,
    };
    let unusable = |reason| CaError::Unusable {
        secret: name.to_string(),
        reason,
    };
    // Replicas racing here converge: a write that loses (409) reads again.
    for _ in 0..5 {
        let existing = secrets.get_opt(name).await.map_err(kube_error)?;
        let empty = existing
            .as_ref()
            .is_none_or(|s| s.data.as_ref().is_none_or(|data| data.is_empty()));
        if !empty {
            return issuer_from(existing.as_ref().unwrap_or(&Secret::default())).map_err(unusable);
        }
        let (cert, key) = crate::webhook::certs::new_ca()?;
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        let mut secret = existing.clone().unwrap_or_else(|| Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(crate::labels::managed_by()),
                ..Default::default()
            },
            ..Default::default()
        });
        secret.data = Some(BTreeMap::from([
            (CERT_KEY.to_string(), bytes(&cert)),
            (KEY_KEY.to_string(), bytes(&key)),
        ]));
        let written = match existing {
            Some(_) => secrets.replace(name, &PostParams::default(), &secret).await,
            None => secrets.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(written) => return issuer_from(&written).map_err(unusable),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(kube_error(e)),
        }
    }
    issuer_from(&secrets.get(name).await.map_err(kube_error)?).map_err(unusable)
}

/// The issuer a Secret describes, or what is wrong with it (naming the key).
pub fn issuer_from(secret: &Secret) -> Result<Issuer, String> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>, String> {
        data.get(key)
            .map(|b| String::from_utf8(b.0.clone()).map_err(|_| format!("{key} is not PEM text")))
            .transpose()
    };
    let cert = text(CERT_KEY)?.ok_or_else(|| format!("{CERT_KEY} is missing"))?;
    let key = text(KEY_KEY)?.ok_or_else(|| format!("{KEY_KEY} is missing"))?;
    let signing_key = rcgen::KeyPair::from_pem(&key)
        .map_err(|e| format!("{KEY_KEY} is not a usable key: {e}"))?;
    let signing_cert = pem::parse(&cert).map_err(|e| format!("{CERT_KEY}: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(signing_cert.contents())
        .map_err(|e| format!("{CERT_KEY} is not a certificate: {e}"))?;
    if parsed.public_key().subject_public_key.data.as_ref() != signing_key.public_key_raw() {
        return Err(format!("{KEY_KEY} is not the key of {CERT_KEY}"));
    }
    let mut roots: Vec<pem::Pem> = Vec::new();
    let root_source = match text(ROOT_KEY)? {
        Some(root) if !root.trim().is_empty() => (ROOT_KEY, root),
        _ => (CERT_KEY, cert.clone()),
    };
    let extra = text(EXTRA_ROOTS_KEY)?.unwrap_or_default();
    for (key, pem) in [root_source, (EXTRA_ROOTS_KEY, extra)] {
        for root in pem::parse_many(&pem).map_err(|e| format!("{key}: {e}"))? {
            if root.tag() == "CERTIFICATE" && !roots.contains(&root) {
                roots.push(root);
            }
        }
    }
    if roots.is_empty() {
        return Err(format!("{CERT_KEY} holds no certificate"));
    }
    Ok(Issuer {
        cert,
        key,
        trust_bundle: pem::encode_many(&roots),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn count(bundle: &str) -> usize {
        bundle.matches("BEGIN CERTIFICATE").count()
    }

    #[test]
    fn the_bundle_holds_the_root_and_the_extra_roots_once_each() {
        let (old, old_key) = crate::webhook::certs::new_ca().unwrap();
        let (new, _) = crate::webhook::certs::new_ca().unwrap();
        let alone = issuer_from(&secret(&[(CERT_KEY, &old), (KEY_KEY, &old_key)])).unwrap();
        assert_eq!(count(&alone.trust_bundle), 1);
        let der = |text: &str| pem::parse(text).unwrap().into_contents();
        assert_eq!(der(&alone.trust_bundle), der(&old));

        let both = format!("{new}{old}");
        let rolling = issuer_from(&secret(&[
            (CERT_KEY, &old),
            (KEY_KEY, &old_key),
            (EXTRA_ROOTS_KEY, &both),
        ]))
        .unwrap();
        assert_eq!(count(&rolling.trust_bundle), 2, "old once, new once");
    }

    #[test]
    fn a_broken_issuer_secret_names_the_key() {
        let (cert, key) = crate::webhook::certs::new_ca().unwrap();
        let (_, other_key) = crate::webhook::certs::new_ca().unwrap();
        let missing = issuer_from(&secret(&[(CERT_KEY, &cert)])).unwrap_err();
        assert!(missing.contains(KEY_KEY), "{missing}");
        let garbage = issuer_from(&secret(&[(CERT_KEY, "nope"), (KEY_KEY, &key)])).unwrap_err();
        assert!(garbage.contains(CERT_KEY), "{garbage}");
        let bad_key = issuer_from(&secret(&[(CERT_KEY, &cert), (KEY_KEY, "nope")])).unwrap_err();
        assert!(bad_key.contains(KEY_KEY), "{bad_key}");
        let mismatched =
            issuer_from(&secret(&[(CERT_KEY, &cert), (KEY_KEY, &other_key)])).unwrap_err();
        assert!(mismatched.contains("is not the key of"), "{mismatched}");
    }
}
