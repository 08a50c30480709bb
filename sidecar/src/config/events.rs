//! The event relay's settings: NATS URL and credentials directory, the spool directory,
//! and the `nats.relay` tuning, each with its default and checked.

use super::EnvLookup;
use std::path::PathBuf;
use std::time::Duration;
use streamgate_crds::FieldError;
use streamgate_crds::contract::events::Subjects;
use streamgate_crds::sidecar_config::{EventRelayConfig, SidecarConfig};

/// NATS's own default, used when the service has events and nothing names a server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

#[derive(Debug, Clone)]
pub struct EventSettings {
    /// False when the service neither publishes nor subscribes: no NATS connection at all.
    pub enabled: bool,
    /// Every subject the relay uses: `streamgate.<type>` of each published and subscribed
    /// type, and each subscription's dead-letter subject. Each must be captured by some
    /// stream (StreamGate's own, or one that exists already, e.g. the seed's).
    pub subjects: Vec<String>,
    /// Whether the sidecar may create its stream and add subjects (run alone), or only
    /// binds to the operator's streams.
    pub manage_streams: bool,
    pub url: String,
    pub credentials_dir: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub stream: String,
    pub stream_max_age: Duration,
    pub duplicate_window: Duration,
    pub spool_max_bytes: u64,
    pub publish_in_flight: usize,
    pub publish_timeout: Duration,
    pub delivery_in_flight: usize,
    pub delivery_timeout: Duration,
}

/// Fills in `nats.url` and `spoolDir` (written back so `/config` shows them) and checks
/// the relay's tuning.
pub fn resolve(doc: &mut SidecarConfig, env: EnvLookup<'_>) -> Result<EventSettings, FieldError> {
    let events = &doc.service.events;
    let enabled = !events.publish.is_empty() || !events.subscribe.is_empty();
    let url = match doc.nats.url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => url.to_string(),
        None => DEFAULT_NATS_URL.to_string(),
    };
    if enabled {
        doc.nats.url = Some(url.clone());
    }
    let spool_dir = match doc.spool_dir.as_deref().filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        // By hand beside a local app: a directory of its own per pod, never shared.
        None => env("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join("streamgate-spool")
            .join(format!("{}-{}", doc.pod.namespace, doc.pod.name)),
    };
    if enabled {
        doc.spool_dir = Some(spool_dir.display().to_string());
    }
    let relay = doc.nats.relay.clone().unwrap_or_default();
    check(&relay)?;
    let subjects = Subjects::of(&doc.service.service_name, events).all();
    Ok(EventSettings {
        enabled,
        subjects,
        manage_streams: relay.manage_streams,
        url,
        credentials_dir: doc
            .nats
            .credentials_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        spool_dir,
        stream: relay.stream,
        stream_max_age: relay.stream_max_age.as_duration(),
        duplicate_window: relay.duplicate_window.as_duration(),
        spool_max_bytes: relay.spool_max_bytes.unsigned_abs(),
        publish_in_flight: relay.publish_in_flight.unsigned_abs() as usize,
        publish_timeout: relay.publish_timeout.as_duration(),
        delivery_in_flight: relay.delivery_in_flight.unsigned_abs() as usize,
        delivery_timeout: relay.delivery_timeout.as_duration(),
    })
}

fn check(relay: &EventRelayConfig) -> Result<(), FieldError> {
    let stream_ok = !relay.stream.is_empty()
        && relay.stream.len() <= 64
        && relay
            .stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !stream_ok {
        return Err(FieldError::new(
            "nats.relay.stream",
            format!("{:?} is not a JetStream stream name", relay.stream),
        ));
    }
    let positive = [
        ("nats.relay.spoolMaxBytes", relay.spool_max_bytes),
        ("nats.relay.publishInFlight", relay.publish_in_flight.into()),
        (
            "nats.relay.deliveryInFlight",
            relay.delivery_in_flight.into(),
        ),
    ];
    for (field, value) in positive {
        if value < 1 {
            return Err(FieldError::new(
                field,
                format!("must be at least 1, got {value}"),
            ));
        }
    }
    let durations = [
        ("nats.relay.publishTimeout", relay.publish_timeout),
        ("nats.relay.deliveryTimeout", relay.delivery_timeout),
        ("nats.relay.duplicateWindow", relay.duplicate_window),
    ];
    for (field, value) in durations {
        if value.as_duration() < Duration::from_millis(10) {
            return Err(FieldError::new(
                field,
                format!("{value} is shorter than 10ms"),
            ));
        }
    }
    if relay.duplicate_window.as_duration() > relay.stream_max_age.as_duration() {
        return Err(FieldError::new(
            "nats.relay.duplicateWindow",
            format!(
                "{} is longer than streamMaxAge {}",
                relay.duplicate_window, relay.stream_max_age
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_yaml(text: &str) -> Result<EventSettings, FieldError> {
        let mut doc = crate::config::parse_document(text)?;
        doc.pod.name = "p".into();
        doc.pod.namespace = "ns".into();
        resolve(&mut doc, &|_| None)
    }

    #[test]
    fn defaults_apply_when_the_service_has_events() {
        let s =
            resolve_yaml("service: {serviceName: a, port: 1, events: {publish: [file.uploaded]}}")
                .unwrap();
        assert!(s.enabled);
        assert_eq!(s.url, DEFAULT_NATS_URL);
        assert_eq!(s.stream, "STREAMGATE");
        assert_eq!(s.duplicate_window, Duration::from_secs(120));
        assert!(
            s.spool_dir.ends_with("streamgate-spool/ns-p"),
            "{:?}",
            s.spool_dir
        );
        let s = resolve_yaml("service: {serviceName: a, port: 1}").unwrap();
        assert!(!s.enabled);
    }

    #[test]
    fn bad_tuning_names_its_field() {
        for (relay, field) in [
            ("{spoolMaxBytes: 0}", "nats.relay.spoolMaxBytes"),
            ("{stream: 'a.b'}", "nats.relay.stream"),
            ("{publishTimeout: 1ms}", "nats.relay.publishTimeout"),
            (
                "{duplicateWindow: 2h, streamMaxAge: 1h}",
                "nats.relay.duplicateWindow",
            ),
        ] {
            let text = format!("service: {{serviceName: a, port: 1}}\nnats: {{relay: {relay}}}");
            assert_eq!(resolve_yaml(&text).unwrap_err().field, field, "{relay}");
        }
    }
}
