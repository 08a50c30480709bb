//! The NATS connection: credentials from a mounted Secret directory
//! ([`streamgate_nats::credentials`]), TLS when the URL says `tls://`, a background
//! (re)connect that never blocks start-up, and the relay's subjects captured by streams
//! ([`streamgate_nats::streams`]).

use super::error::{StartError, StreamError};
use crate::config::events::EventSettings;
use async_nats::Event;
use async_nats::jetstream;
use streamgate_nats::streams::{self, Authority, StreamSettings, Want};
use tokio::sync::watch;

pub use streamgate_nats::streams::stream_of;

/// Connects in the background; the returned watch is true while connected.
pub async fn connect(
    settings: &EventSettings,
    name: &str,
) -> Result<(async_nats::Client, watch::Receiver<bool>), StartError> {
    let (options, credentials) =
        streamgate_nats::credentials::options(settings.credentials_dir.as_deref()).await?;
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

/// Makes sure a stream captures every subject the relay uses (`settings.subjects`): under
/// the operator (`manageStreams: false`) the sidecar only checks, since the operator owns
/// the streams; run alone it adds what is missing to its own stream without touching any
/// stream's settings (see [`streamgate_nats::streams`]).
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &EventSettings,
) -> Result<(), StreamError> {
    let want = Want {
        stream: settings.stream.clone(),
        subjects: settings.subjects.clone(),
        settings: StreamSettings {
            max_age: settings.stream_max_age,
            max_bytes: -1,
            duplicate_window: settings.duplicate_window,
            replicas: 1,
        },
    };
    let authority = if settings.manage_streams {
        Authority::AddSubjects
    } else {
        Authority::Bind
    };
    streams::ensure(js, &[want], authority).await.map(drop)
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
