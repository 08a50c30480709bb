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
    fn duplicate_subscription_is_named() {
        let events: Events = serde_json::from_value(serde_json::json!({
            "subscribe": [{"type": "a.b"}, {"type": "a.b"}]
        }))
        .unwrap();
        let err = events.validate("events").unwrap_err();
        assert_eq!(err.field, "events.subscribe[1].type");
    }
}
