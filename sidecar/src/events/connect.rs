//! The NATS connection: credentials from a mounted Secret directory, TLS when the URL
//! says `tls://`, a background (re)connect that never blocks start-up, and the stream
//! over `streamgate.>` created or updated idempotently.
//!
//! Credentials directory, first match wins (the Secret's keys become file names):
//! `creds` or `nats.creds` (a JWT creds file), `nkey` or `nkey.seed` (an nkey seed),
//! `token`, `username` + `password`. `ca.crt`, when present, is trusted for TLS.

use super::error::{StartError, StreamError};
use crate::config::events::EventSettings;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event};
use std::path::Path;
use tokio::sync::watch;

/// How the sidecar proves itself to NATS (the secret itself never leaves this module).
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    None,
    CredsFile(std::path::PathBuf),
    Nkey,
    Token,
    UserPassword,
}

/// Reads the credentials directory into connect options.
pub async fn options(dir: Option<&Path>) -> Result<(ConnectOptions, Credentials), StartError> {
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
        return Err(StartError::CredentialsNotADirectory(dir.to_path_buf()));
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
            StartError::CredentialsFile {
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

/// Connects in the background; the returned watch is true while connected.
pub async fn connect(
    settings: &EventSettings,
    name: &str,
) -> Result<(async_nats::Client, watch::Receiver<bool>), StartError> {
    let (options, credentials) = options(settings.credentials_dir.as_deref()).await?;
    let (tx, rx) = watch::channel(false);
    let options = options
        .name(name)
        .require_tls(settings.url.starts_with("tls://"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Reconnect quickly: every second offline is a second of spooling.
        .reconnect_delay_callback(|attempts| {
            std::time::Duration::from_millis((100 * attempts as u64).min(2_000))
        })
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!("connected to NATS");
                        let _ = tx.send(true);
                    }
                    Event::Disconnected => {
                        tracing::warn!("disconnected from NATS");
                        let _ = tx.send(false);
                    }
                    other => tracing::debug!(event = %other, "NATS"),
                }
            }
        });
    tracing::info!(url = %settings.url, credentials = ?credentials, "connecting to NATS");
    let client = options
        .connect(settings.url.as_str())
        .await
        .map_err(|source| StartError::Connect {
            url: settings.url.clone(),
            source,
        })?;
    Ok((client, rx))
}

/// The JetStream context publishes go through: acks awaited for at most
/// `publishTimeout`. The publishers' own [`super::publisher::Window`] bounds the acks
/// outstanding; the context's limit sits above it (room for dead-letter publishes) and
/// waits rather than fails if ever reached.
pub fn context(client: async_nats::Client, settings: &EventSettings) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(settings.publish_timeout)
        .max_ack_inflight(settings.publish_in_flight * 2 + 64)
        .backpressure_on_inflight(true)
        .build(client)
}

/// Makes sure a stream captures every subject the relay uses (`settings.subjects`).
///
/// A subject some stream captures already is left to it: StreamGate's own stream from an
/// earlier sidecar (or an older one over `streamgate.>`), or another application's, such
/// as the seed's `TRANSCODING` on `streamgate.transcoding.tasks`. Publishing needs no
/// more than that, and subscriptions bind their consumer to whichever stream it is
/// ([`stream_of`]). The subjects no stream captures are added to StreamGate's own stream
/// (created with the relay's settings if it does not exist). An existing stream's other
/// settings are never touched: no sidecar can shrink the retention others rely on, and
/// capturing only declared subjects leaves the rest of `streamgate.>` to other streams.
/// Sidecars extending the stream at once may overwrite each other's additions; the
/// check-then-add repeats until every subject is captured, so the last one settles it.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &EventSettings,
) -> Result<(), StreamError> {
    let error = |reason: String| StreamError {
        stream: settings.stream.clone(),
        reason,
    };
    for _ in 0..5 {
        let mut uncaptured = Vec::new();
        for subject in &settings.subjects {
            if stream_of(js, subject).await.map_err(error)?.is_none() {
                uncaptured.push(subject.clone());
            }
        }
        if uncaptured.is_empty() {
            return Ok(());
        }
        capture(js, settings, uncaptured).await.map_err(error)?;
    }
    Err(error(
        "other sidecars keep changing the stream's subjects; trying again".into(),
    ))
}

/// Tells readiness how setting up the streams went. A failure only counts against the
/// relay while NATS is connected: while it is not, events spool and nothing is broken.
pub fn report_stream(
    js: &jetstream::Context,
    readiness: &crate::state::Readiness,
    part: &str,
    result: &Result<(), StreamError>,
) {
    match result {
        Ok(()) => readiness.set_relay_problem(part, None),
        Err(e) if js.client().connection_state() == async_nats::connection::State::Connected => {
            let problem = e.to_string();
            // Once per distinct problem; the retries themselves are not news.
            if readiness.relay_problem(part).as_deref() != Some(problem.as_str()) {
                tracing::warn!(error = %problem, "the event relay cannot set up its stream");
            }
            readiness.set_relay_problem(part, Some(problem));
        }
        Err(e) => tracing::debug!(error = %e, "stream not set up yet: NATS is not connected"),
    }
}

/// The stream capturing `subject`, if any.
pub async fn stream_of(js: &jetstream::Context, subject: &str) -> Result<Option<String>, String> {
    use async_nats::jetstream::context::GetStreamByNameErrorKind;
    match js.stream_by_subject(subject).await {
        Ok(name) => Ok(Some(name)),
        Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("looking up the stream of {subject}: {e}")),
    }
}

/// Adds `subjects` to StreamGate's own stream, creating it when there is none.
async fn capture(
    js: &jetstream::Context,
    settings: &EventSettings,
    subjects: Vec<String>,
) -> Result<(), String> {
    match js.get_stream(&settings.stream).await {
        Ok(stream) => {
            let mut config = stream
                .get_info()
                .await
                .map_err(|e| format!("reading its configuration: {e}"))?
                .config;
            for subject in subjects {
                if !config.subjects.contains(&subject) {
                    config.subjects.push(subject);
                }
            }
            tracing::info!(stream = %settings.stream, subjects = ?config.subjects, "adding subjects to the stream");
            js.update_stream(config)
                .await
                .map(drop)
                .map_err(|e| format!("adding subjects: {e}"))
        }
        Err(_) => {
            let config = stream::Config {
                name: settings.stream.clone(),
                subjects,
                max_age: settings.stream_max_age,
                duplicate_window: settings.duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            tracing::info!(stream = %settings.stream, subjects = ?config.subjects, "creating the stream");
            js.create_stream(config)
                .await
                .map(drop)
                .map_err(|e| format!("creating it: {e}"))
        }
    }
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
