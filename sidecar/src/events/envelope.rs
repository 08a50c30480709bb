//! The wire format shared with the seed's Go services: subject `streamgate.<type>` and a
//! JSON envelope `{type, source, timestamp, data, id}`, `id` also sent as `Nats-Msg-Id`.
//!
//! Publishing builds the envelope once, as bytes, so the spool, JetStream and the
//! subscriber all carry the exact same text.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::{SystemTime, UNIX_EPOCH};
use streamgate_crds::events::is_valid_event_type;

/// Subject prefix of every event; the relay's stream covers `streamgate.>`.
pub const SUBJECT_PREFIX: &str = "streamgate.";

/// An event ready to publish: its subject, id and envelope bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub subject: String,
    pub id: String,
    /// Shared, not copied, when handed to JetStream (and again on a retry).
    pub payload: bytes::Bytes,
}

/// Why an event was refused before it reached NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Malformed type, data or id: INVALID_ARGUMENT / 400.
    Invalid(String),
    /// A well-formed type outside `events.publish`: PERMISSION_DENIED / 403.
    Forbidden(String),
    /// Larger than the NATS server takes in one message: RESOURCE_EXHAUSTED / 413.
    TooLarge(String),
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    source: &'a str,
    timestamp: u64,
    /// The app's JSON object as it sent it: checked, not rebuilt.
    data: &'a RawValue,
    id: &'a str,
}

/// The `data` of an event with none.
const EMPTY_OBJECT: &str = "{}";

/// Checks the type against the format and the allowed list, parses `data` (empty means
/// `{}`), and builds the envelope with `id` (generated when empty).
pub fn build(
    allowed: &[String],
    source: &str,
    event_type: &str,
    data: &[u8],
    id: &str,
) -> Result<Outgoing, Refused> {
    if !is_valid_event_type(event_type) {
        return Err(Refused::Invalid(format!(
            "{event_type:?} is not a dotted lower-case event type like file.uploaded"
        )));
    }
    if !allowed.iter().any(|t| t == event_type) {
        return Err(Refused::Forbidden(format!(
            "{event_type:?} is not in this service's events.publish list"
        )));
    }
    // Validated without building a tree: the hot path of every publish. The slower
    // parse below only words the refusal.
    let data: &RawValue = if data.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_str(EMPTY_OBJECT).map_err(|e| Refused::Invalid(e.to_string()))?
    } else {
        match serde_json::from_slice::<&RawValue>(data) {
            Ok(raw) if raw.get().starts_with('{') => raw,
            Ok(_) => {
                let other: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
                return Err(Refused::Invalid(format!(
                    "data must be a JSON object, got {}",
                    kind(&other)
                )));
            }
            Err(e) => return Err(Refused::Invalid(format!("data is not JSON: {e}"))),
        }
    };
    let id = if id.is_empty() {
        new_id()
    } else {
        check_id(id)?;
        id.to_string()
    };
    let envelope = Envelope {
        event_type,
        source,
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        data,
        id: &id,
    };
    let payload = serde_json::to_vec(&envelope)
        .map_err(|e| Refused::Invalid(format!("data cannot be encoded: {e}")))?;
    Ok(Outgoing {
        subject: format!("{SUBJECT_PREFIX}{event_type}"),
        id,
        payload: payload.into(),
    })
}

/// A caller's id travels as a NATS header value: printable ASCII without spaces.
fn check_id(id: &str) -> Result<(), Refused> {
    if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Refused::Invalid(format!(
            "id {id:?} must be at most 128 printable ASCII characters without spaces"
        )))
    }
}

/// 128 random bits in hex: unique without coordination between replicas.
pub fn new_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The `id` of a received envelope, if it has one (seed-style events may not).
pub fn id_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_slice::<IdOnly>(payload)
        .ok()?
        .id
        .filter(|id| !id.is_empty())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["file.uploaded".into()]
    }

    #[test]
    fn envelope_carries_the_seed_fields_and_the_id() {
        let out = build(&allowed(), "upload", "file.uploaded", br#"{"k":1}"#, "abc").unwrap();
        assert_eq!(out.subject, "streamgate.file.uploaded");
        assert_eq!(out.id, "abc");
        let v: Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(v["type"], "file.uploaded");
        assert_eq!(v["source"], "upload");
        assert_eq!(v["data"]["k"], 1);
        assert_eq!(v["id"], "abc");
        assert!(v["timestamp"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(id_of(&out.payload).as_deref(), Some("abc"));
    }

    #[test]
    fn empty_data_is_an_empty_object_and_ids_are_generated() {
        let a = build(&allowed(), "s", "file.uploaded", b"", "").unwrap();
        let b = build(&allowed(), "s", "file.uploaded", b" ", "").unwrap();
        assert_eq!(a.id.len(), 32);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn refusals_say_why() {
        let r = |t: &str, d: &[u8], id: &str| build(&allowed(), "s", t, d, id).unwrap_err();
        assert!(matches!(r("File.Uploaded", b"{}", ""), Refused::Invalid(_)));
        assert!(matches!(r("job.done", b"{}", ""), Refused::Forbidden(_)));
        assert!(
            matches!(r("file.uploaded", b"[1]", ""), Refused::Invalid(m) if m.contains("an array"))
        );
        assert!(
            matches!(r("file.uploaded", b"{", ""), Refused::Invalid(m) if m.contains("not JSON"))
        );
        assert!(matches!(
            r("file.uploaded", b"{}", "a b"),
            Refused::Invalid(_)
        ));
    }

    #[test]
    fn seed_style_events_have_no_id() {
        assert_eq!(
            id_of(br#"{"type":"file.uploaded","source":"upload-service"}"#),
            None
        );
        assert_eq!(id_of(b"not json"), None);
    }
}
