//! The events a service publishes and subscribes to (NATS subjects `streamgate.<type>`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A dotted lower-case event type such as `file.uploaded` or `transcoding.completed`.
pub const EVENT_TYPE_PATTERN: &str =
    r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?)+$";

/// Events the app publishes and the ones delivered to it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.subscribe) || self.subscribe.all(s, self.subscribe.exists_one(t, t.type == s.type))",
     "message": "each event type may be subscribed to once", "fieldPath": ".subscribe"}
]))]
pub struct Events {
    /// Event types the app may publish (dotted lower-case, e.g. `file.uploaded`). A publish
    /// of any other type is refused with PERMISSION_DENIED.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = EVENT_TYPE_PATTERN), length(max = 128)))]
    pub publish: Vec<String>,
    /// Event types delivered to the app: by a call of `streamgate.app.v1.EventHandler/Handle`
    /// for gRPC apps, by HTTP POST to the subscription's `path` for HTTP apps (each
    /// subscription's `delivery` may choose otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub subscribe: Vec<Subscription>,
    /// Where published events wait while NATS cannot take them. Default: 256Mi on an
    /// emptyDir (sized above the spool, so the kubelet never evicts the pod for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolVolume>,
}

/// The on-disk spool of events not yet in JetStream (`spec.events.spool`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpoolVolume {
    /// Unsent events the spool holds (a byte quantity such as `512Mi` or `2Gi`); beyond,
    /// publishes are refused with 503 / UNAVAILABLE. The volume gets room above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SPOOL_SIZE_PATTERN))]
    pub size: Option<String>,
    /// A StorageClass for the spool: a generic ephemeral volume of this class replaces the
    /// emptyDir, off the node's ephemeral storage. Unsent events survive the pod's
    /// deletion only where the class's `reclaimPolicy` is `Retain` (see docs/events.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class: Option<String>,
}

/// A whole number of bytes, with an optional binary (`Ki`..`Ti`) or decimal (`k`..`T`)
/// suffix.
pub const SPOOL_SIZE_PATTERN: &str = r"^[1-9][0-9]{0,15}(Ki|Mi|Gi|Ti|k|M|G|T)?$";

/// The smallest spool accepted: one event of NATS's default `max_payload` with room.
pub const MIN_SPOOL_BYTES: u64 = 4 << 20;

impl SpoolVolume {
    /// The spool's size in bytes, if set and valid.
    pub fn bytes(&self) -> Option<Result<u64, String>> {
        self.size.as_deref().map(parse_bytes)
    }
}

/// Reads a [`SPOOL_SIZE_PATTERN`] quantity.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => return Err(format!("{text:?}: unknown suffix {other:?}")),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte quantity like 512Mi"))?;
    let bytes = number
        .checked_mul(unit)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes < MIN_SPOOL_BYTES {
        return Err(format!("{text:?} is smaller than 4Mi"));
    }
    Ok(bytes)
}

/// One subscribed event type. All replicas of the service share one durable consumer, so
/// each event reaches one replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// The event type (dotted lower-case, e.g. `transcoding.completed`).
    #[serde(rename = "type")]
    #[schemars(regex(pattern = EVENT_TYPE_PATTERN), length(max = 128))]
    pub event_type: String,
    /// The app's HTTP path that receives the event envelope as a POST body (HTTP delivery).
    #[serde(default = "default_path")]
    #[schemars(regex(pattern = r"^/"), length(min = 1, max = 1024))]
    pub path: String,
    /// How the event reaches the app: `grpc` (`streamgate.app.v1.EventHandler/Handle`) or
    /// `http` (POST to `path`). Default: the service's `protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<EventDelivery>,
    /// Delivery attempts before the event goes to `streamgate.dlq.<service>.<type>`.
    #[serde(default = "default_max_deliver")]
    #[schemars(range(min = 1, max = 100))]
    pub max_deliver: i32,
}

/// How subscribed events reach the app.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventDelivery {
    Grpc,
    Http,
}

fn default_path() -> String {
    "/events".to_string()
}
fn default_max_deliver() -> i32 {
    5
}

/// True when `text` is a valid event type.
pub fn is_valid_event_type(text: &str) -> bool {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
    };
    text.len() <= 128 && text.contains('.') && text.split('.').all(segment_ok)
}

impl Events {
    /// The CEL and schema rules, for configurations that bypass the API server.
    pub fn validate(&self, field: &str) -> Result<(), crate::FieldError> {
        use crate::FieldError;
        for (i, t) in self.publish.iter().enumerate() {
            if !is_valid_event_type(t) {
                return Err(FieldError::new(
                    format!("{field}.publish[{i}]"),
                    format!("{t:?} is not a dotted lower-case event type like file.uploaded"),
                ));
            }
        }
        for (i, s) in self.subscribe.iter().enumerate() {
            let at = format!("{field}.subscribe[{i}]");
            if !is_valid_event_type(&s.event_type) {
                return Err(FieldError::new(
                    format!("{at}.type"),
                    format!(
                        "{:?} is not a dotted lower-case event type like file.uploaded",
                        s.event_type
                    ),
                ));
            }
            if !s.path.starts_with('/') {
                return Err(FieldError::new(
                    format!("{at}.path"),
                    format!("must start with '/', got {:?}", s.path),
                ));
            }
            if !(1..=100).contains(&s.max_deliver) {
                return Err(FieldError::new(
                    format!("{at}.maxDeliver"),
                    format!("must be between 1 and 100, got {}", s.max_deliver),
                ));
            }
            if self.subscribe[..i]
                .iter()
                .any(|o| o.event_type == s.event_type)
            {
                return Err(FieldError::new(
                    format!("{at}.type"),
                    format!("{:?} is subscribed to twice", s.event_type),
                ));
            }
        }
        if let Some(Err(reason)) = self.spool.as_ref().and_then(SpoolVolume::bytes) {
            return Err(FieldError::new(format!("{field}.spool.size"), reason));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_dotted_lower_case() {
        for ok in [
            "file.uploaded",
            "transcoding.completed",
            "a.b.c",
            "job-x.done_1",
        ] {
            assert!(is_valid_event_type(ok), "{ok}");
        }
        for bad in [
            "file",
            "File.Uploaded",
            "file..uploaded",
            ".x",
            "x.",
            "a.*",
            "a.>",
            "a b.c",
        ] {
            assert!(!is_valid_event_type(bad), "{bad}");
        }
    }

    #[test]
    fn spool_sizes_are_byte_quantities() {
        let size = |s: &str| {
            SpoolVolume {
                size: Some(s.into()),
                storage_class: None,
            }
            .bytes()
            .unwrap()
        };
        assert_eq!(size("512Mi"), Ok(512 << 20));
        assert_eq!(size("2G"), Ok(2_000_000_000));
        assert_eq!(size("8388608"), Ok(8 << 20));
        for bad in ["1Mi", "12Xi", "99999999999999999Ti", "Mi"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        let events: Events =
            serde_json::from_value(serde_json::json!({"spool": {"size": "1Ki"}})).unwrap();
        assert_eq!(
            events.validate("events").unwrap_err().field,
            "events.spool.size"
        );
    }

    #[test]
    fn duplicate_subscription_is_named() {
        let events: Events = serde_json::from_value(serde_json::json!({
            "subscribe": [{"type": "a.b"}, {"type": "a.b"}]
        }))
        .unwrap();
        let err = events.validate("events").unwrap_err();
        assert_eq!(err.field, "events.subscribe[1].type");
    }
}
