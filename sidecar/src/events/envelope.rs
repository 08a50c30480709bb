//! The wire format shared with the seed's Go services: subject `streamgate.<type>` and a
//! JSON envelope `{type, source, timestamp, data, id}`, `id` also sent as `Nats-Msg-Id`.
//!
//! Publishing builds the envelope once, as bytes, so the spool, JetStream and the
//! subscriber all carry the exact same text.
//!
//! A W3C trace context given on publish (`traceparent`, `tracestate`) travels inside the
//! envelope as two more fields (the seed's Go decoders ignore fields they do not know),
//! so it survives the spool unchanged, and is handed to the subscriber as the same two
//! headers: a subscriber's work joins the publisher's trace.

use serde::{Deserialize, Serialize};
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

impl Refused {
    /// Why, for the app and the event's span.
    pub fn message(&self) -> &str {
        match self {
            Refused::Invalid(m) | Refused::Forbidden(m) | Refused::TooLarge(m) => m,
        }
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
}

/// A W3C trace context (<https://www.w3.org/TR/trace-context/>) carried with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context from a request's `traceparent` and `tracestate`, when `traceparent` is
    /// well-formed. A malformed one is ignored, as the W3C recommendation says (the event
    /// is not refused for it); a `tracestate` without a valid parent goes with it.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent?.trim();
        if !is_valid_traceparent(traceparent) {
            return None;
        }
        let tracestate = tracestate.map(str::trim).filter(|s| {
            !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        });
        Some(TraceContext {
            traceparent: traceparent.to_string(),
            tracestate: tracestate.map(str::to_string),
        })
    }

    /// The context an envelope carries, if any (checked again: the envelope may come
    /// from any publisher).
    pub fn from_envelope(payload: &[u8]) -> Option<Self> {
        let carried: Carried = serde_json::from_slice(payload).ok()?;
        Self::from_headers(
            carried.traceparent.as_deref(),
            carried.tracestate.as_deref(),
        )
    }
}

/// Just the trace fields of an envelope; everything else is skipped.
#[derive(Deserialize)]
struct Carried {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// `version-traceid-parentid-flags`: lower-case hex of 2, 32, 16 and 2 digits; version
/// `ff` and all-zero ids are invalid.
fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        [version, trace, parent, flags, rest @ ..] => {
            hex(version, 2)
                && *version != "ff"
                // Version 00 has exactly four fields; later versions may add more.
                && (rest.is_empty() || *version != "00")
                && hex(trace, 32)
                && nonzero(trace)
                && hex(parent, 16)
                && nonzero(parent)
                && hex(flags, 2)
        }
        _ => false,
    }
}

/// The `data` of an event with none.
const EMPTY_OBJECT: &str = "{}";

/// Checks the type against the format and the allowed list, parses `data` (empty means
/// `{}`), and builds the envelope with `id` (generated when empty) and the trace context.
pub fn build(
    allowed: &[String],
    source: &str,
    event_type: &str,
    data: &[u8],
    id: &str,
    trace: Option<&TraceContext>,
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
        traceparent: trace.map(|t| t.traceparent.as_str()),
        tracestate: trace.and_then(|t| t.tracestate.as_deref()),
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
        let out = build(
            &allowed(),
            "upload",
            "file.uploaded",
            br#"{"k":1}"#,
            "abc",
            None,
        )
        .unwrap();
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
        let a = build(&allowed(), "s", "file.uploaded", b"", "", None).unwrap();
        let b = build(&allowed(), "s", "file.uploaded", b" ", "", None).unwrap();
        assert_eq!(a.id.len(), 32);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn refusals_say_why() {
        let r = |t: &str, d: &[u8], id: &str| build(&allowed(), "s", t, d, id, None).unwrap_err();
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

    #[test]
    fn a_trace_context_travels_in_the_envelope_and_comes_back_out() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::from_headers(Some(parent), Some("congo=t61rcWkgMzE")).unwrap();
        let out = build(&allowed(), "s", "file.uploaded", b"{}", "x", Some(&trace)).unwrap();
        let envelope: Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(envelope["traceparent"], parent);
        assert_eq!(envelope["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(TraceContext::from_envelope(&out.payload), Some(trace));
        // Seed-style envelopes carry none, and no field is added without one.
        let plain = build(&allowed(), "s", "file.uploaded", b"{}", "y", None).unwrap();
        assert!(!String::from_utf8_lossy(&plain.payload).contains("trace"));
        assert_eq!(TraceContext::from_envelope(&plain.payload), None);
    }

    #[test]
    fn a_malformed_traceparent_is_ignored_not_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::from_headers(Some(bad), None), None, "{bad}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceContext::from_headers(Some(later), None).is_some());
    }
}
