//! The local cluster's PKI: one CA, the API server's serving certificate, a client
//! certificate per component, and the service-account signing key — all made fresh for
//! each platform so nothing secret is checked in or shared between runs.

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A PEM certificate and key written to disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every file the control plane needs.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    pub ca_cert: PathBuf,
    pub apiserver: CertFiles,
    pub admin: CertFiles,
    pub controller_manager: CertFiles,
    pub scheduler: CertFiles,
    pub kwok: CertFiles,
    pub kubelet: CertFiles,
    pub kube_proxy: CertFiles,
    /// ECDSA P-256 key (PKCS#8 PEM) that signs service-account tokens.
    pub service_account_key: PathBuf,
    /// Its public half, which verifies them.
    pub service_account_pub: PathBuf,
}

/// The identities of the control plane's clients: (file stem, user, groups).
const CLIENTS: [(&str, &str, &[&str]); 6] = [
    ("admin", "streamgate-admin", &["system:masters"]),
    ("controller-manager", "system:kube-controller-manager", &[]),
    ("scheduler", "system:kube-scheduler", &[]),
    // kwok plays every node's kubelet; the node authorizer knows no such identity, so it
    // gets cluster-admin rights through system:masters.
    ("kwok", "kwok", &["system:masters"]),
    // The real node's kubelet: the node authorizer's identity for it.
    (
        "kubelet",
        "system:node:streamgate-node-0",
        &["system:nodes"],
    ),
    // Bound to system:node-proxier by the API server's default RBAC.
    ("kube-proxy", "system:kube-proxy", &[]),
];

impl ClusterPki {
    /// Makes the CA and every certificate under `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "streamgate-local-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let ca_cert = dir.join("ca.crt");
        std::fs::write(&ca_cert, ca.pem())?;

        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
            "10.96.0.1".to_string(),
            // The real node's address on the pod bridge, where pods reach the API server.
            crate::node::NODE_IP.to_string(),
        ])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let apiserver = write_leaf(dir, "apiserver", serving, &ca)?;

        let clients = CLIENTS.iter().map(|(stem, user, groups)| {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, *user);
            for group in *groups {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, *group);
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            write_leaf(dir, stem, params, &ca)
        });
        let clients: Vec<CertFiles> = clients.collect::<Result<_>>()?;
        let [
            admin,
            controller_manager,
            scheduler,
            kwok,
            kubelet,
            kube_proxy,
        ]: [CertFiles; 6] = clients.try_into().expect("one entry per client");

        let service_account_key = dir.join("service-account.key");
        let service_account_pub = dir.join("service-account.pub");
        let signing = KeyPair::generate()?;
        std::fs::write(&service_account_key, signing.serialize_pem())?;
        std::fs::write(&service_account_pub, signing.public_key_pem())?;

        Ok(ClusterPki {
            ca_cert,
            apiserver,
            admin,
            controller_manager,
            scheduler,
            kwok,
            kubelet,
            kube_proxy,
            service_account_key,
            service_account_pub,
        })
    }
}

fn write_leaf(
    dir: &Path,
    stem: &str,
    params: CertificateParams,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> Result<CertFiles> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    let files = CertFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_certificate_and_key() {
        let dir = std::env::temp_dir().join(format!("sg-pki-{}", std::process::id()));
        let pki = ClusterPki::generate(&dir).unwrap();
        for path in [
            &pki.ca_cert,
            &pki.apiserver.cert,
            &pki.admin.key,
            &pki.kwok.cert,
            &pki.service_account_key,
            &pki.service_account_pub,
        ] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(
                text.starts_with("-----BEGIN"),
                "{} is not PEM",
                path.display()
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
