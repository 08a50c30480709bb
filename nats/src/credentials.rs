//! NATS credentials from a mounted Secret directory (the Secret's keys become file
//! names), first match wins: `creds` or `nats.creds` (a JWT creds file), `nkey` or
//! `nkey.seed` (an nkey seed), `token`, `username` + `password`. `ca.crt` (or `ca.pem`),
//! when present, is trusted for TLS. The secret itself never leaves this module.

use async_nats::ConnectOptions;
use std::path::{Path, PathBuf};

/// A credentials directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: {source}", path.display())]
    CredsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the client proves itself to NATS (the secret itself never leaves this module).
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    None,
    CredsFile(PathBuf),
    Nkey,
    Token,
    UserPassword,
}

/// Reads the credentials directory into connect options.
pub async fn options(
    dir: Option<&Path>,
) -> Result<(ConnectOptions, Credentials), CredentialsError> {
    let mut options = ConnectOptions::new();
    let Some(dir) = dir else {
        return Ok((options, Credentials::None));
    };
    let read = |name: &str| -> Option<String> {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if !dir.is_dir() {
        return Err(CredentialsError::NotADirectory(dir.to_path_buf()));
    }
    if let Some(ca) = ["ca.crt", "ca.pem"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
    {
        options = options.add_root_certificates(ca);
    }
    let creds = ["creds", "nats.creds"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists());
    let found = if let Some(path) = creds {
        options = options.credentials_file(&path).await.map_err(|source| {
            CredentialsError::CredsFile {
                path: path.clone(),
                source,
            }
        })?;
        Credentials::CredsFile(path)
    } else if let Some(seed) = read("nkey").or_else(|| read("nkey.seed")) {
        options = options.nkey(seed);
        Credentials::Nkey
    } else if let Some(token) = read("token") {
        options = options.token(token);
        Credentials::Token
    } else if let (Some(user), Some(password)) = (read("username"), read("password")) {
        options = options.user_and_password(user, password);
        Credentials::UserPassword
    } else {
        Credentials::None
    };
    Ok((options, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_directory_is_read_by_precedence() {
        let dir = std::env::temp_dir().join(format!("sg-nats-creds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(options(Some(&dir)).await.unwrap().1, Credentials::None);
        std::fs::write(dir.join("username"), "u\n").unwrap();
        std::fs::write(dir.join("password"), "p\n").unwrap();
        assert_eq!(
            options(Some(&dir)).await.unwrap().1,
            Credentials::UserPassword
        );
        std::fs::write(dir.join("token"), "t\n").unwrap();
        assert_eq!(options(Some(&dir)).await.unwrap().1, Credentials::Token);
        assert!(options(Some(&dir.join("missing"))).await.is_err());
        assert_eq!(options(None).await.unwrap().1, Credentials::None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
