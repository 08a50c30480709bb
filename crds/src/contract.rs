//! The contract between the operator and the sidecar that is not part of the sidecar's
//! configuration document (Consul's part lives in `streamgate-consul`'s `contract`): how a
//! workload's identity is spelled in its certificate, and where the operator mounts what
//! the sidecar reads. Both sides use these items and nothing else, so a change here is a
//! change of both (and of the seed-compatible names DESIGN.md fixes).

/// Workload identity: the names a service's certificate carries.
pub mod identity {
    use serde::{Deserialize, Serialize};

    const TRUST_DOMAIN: &str = "streamgate";

    /// The audience of the projected ServiceAccount token a sidecar proves itself with:
    /// a token minted for the API server (or anything else) is refused by the issuer.
    pub const TOKEN_AUDIENCE: &str = "streamgate";
    /// Where the projected token is mounted in the sidecar (file `token`).
    pub const TOKEN_DIR: &str = "/var/run/secrets/streamgate.io/identity";
    /// The token's file name in [`TOKEN_DIR`].
    pub const TOKEN_FILE: &str = "token";
    /// The token's lifetime: the kubelet renews it at 80% of this.
    pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
    /// The operator's issuance endpoint, on its webhook server: `POST` an
    /// [`IssueRequest`] with `Authorization: Bearer <token>`, get an [`IssueResponse`].
    pub const ISSUE_PATH: &str = "/v1/identity/certificate";

    /// A certificate request: a PKCS#10 CSR in PEM. Only its public key is used; every
    /// name in the certificate comes from the verified token and the pod it is bound to.
    #[derive(Serialize, Deserialize, Debug, Clone)]
    #[serde(rename_all = "camelCase")]
    pub struct IssueRequest {
        pub csr: String,
    }

    /// The issued certificate (leaf first, then any intermediate), and the roots the
    /// sidecar verifies peers with from now on (two while the workload CA is rotated).
    #[derive(Serialize, Deserialize, Debug, Clone)]
    #[serde(rename_all = "camelCase")]
    pub struct IssueResponse {
        pub certificate: String,
        pub trust_bundle: String,
        /// RFC 3339.
        pub not_after: String,
    }

    /// The DNS name a caller checks as the server name: `<service>.<namespace>.streamgate`.
    pub fn server_name(namespace: &str, service: &str) -> String {
        format!("{service}.{namespace}.{TRUST_DOMAIN}")
    }

    /// The SPIFFE ID of a workload, the identity `allowedCallers` is checked against:
    /// `spiffe://streamgate/ns/<namespace>/sa/<serviceaccount>`.
    pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
    }

    /// The (namespace, service account) a SPIFFE ID names, if it is one of ours.
    pub fn parse_spiffe_id(uri: &str) -> Option<(&str, &str)> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?;
        let (namespace, account) = rest.strip_prefix("/ns/")?.split_once("/sa/")?;
        let valid = |s: &str| !s.is_empty() && !s.contains('/');
        (valid(namespace) && valid(account)).then_some((namespace, account))
    }

    /// The (namespace, service account) of a Kubernetes ServiceAccount user name,
    /// `system:serviceaccount:<namespace>:<name>`, as a TokenReview reports it.
    pub fn parse_service_account_user(user: &str) -> Option<(&str, &str)> {
        let (namespace, name) = user
            .strip_prefix("system:serviceaccount:")?
            .split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then_some((namespace, name))
    }
}

/// `allowedCallers`: who may call a service, as its inbound side checks a caller's
/// identity (the namespace and ServiceAccount its certificate names).
pub mod callers {
    /// An entry: `name` (the ServiceAccount of that name in the called service's own
    /// namespace; the operator gives each StreamGateService an account named after it)
    /// or `namespace/name` (one in another namespace).
    pub const ENTRY_PATTERN: &str =
        r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

    /// Whether `entry` is a well-formed `allowedCallers` entry.
    pub fn is_valid_entry(entry: &str) -> bool {
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        match entry.split_once('/') {
            Some((namespace, service)) => label(namespace) && label(service),
            None => label(entry),
        }
    }

    /// Whether `entry` admits the caller `caller_service` from `caller_namespace`, for a
    /// service running in `own_namespace`. A bare name never admits another namespace's
    /// service of the same name: a namespace anyone can create pods in cannot borrow a
    /// name another namespace trusts.
    pub fn admits(
        entry: &str,
        own_namespace: &str,
        caller_namespace: &str,
        caller_service: &str,
    ) -> bool {
        match entry.split_once('/') {
            Some((namespace, service)) => {
                namespace == caller_namespace && service == caller_service
            }
            None => entry == caller_service && own_namespace == caller_namespace,
        }
    }

    /// How a caller is named in metrics and to the app: its service, qualified by its
    /// namespace when that is not the called service's own.
    pub fn display(own_namespace: &str, caller_namespace: &str, caller_service: &str) -> String {
        if caller_namespace == own_namespace {
            caller_service.to_string()
        } else {
            format!("{caller_namespace}/{caller_service}")
        }
    }
}

/// NATS subjects and JetStream streams of the event relay: what sidecars publish and
/// consume, and what the operator's streams capture.
pub mod events {
    use crate::events::Events;

    /// StreamGate's stream of events (`streamgate.<type>` of every declared type).
    pub const STREAM: &str = "STREAMGATE";
    /// StreamGate's stream of dead letters (`streamgate.dlq.<service>.<type>`), kept
    /// apart so they can be retained longer than the events themselves.
    pub const DEAD_LETTER_STREAM: &str = "STREAMGATE_DLQ";

    /// The subject events of `event_type` are published on (the seed's convention).
    pub fn subject(event_type: &str) -> String {
        format!("streamgate.{event_type}")
    }

    /// Where an event `service` could not process goes after its last delivery attempt.
    pub fn dead_letter_subject(service: &str, event_type: &str) -> String {
        format!("streamgate.dlq.{service}.{event_type}")
    }

    /// The durable consumer all replicas of `service` share for `event_type`.
    pub fn consumer_name(service: &str, event_type: &str) -> String {
        format!("{service}--{}", event_type.replace('.', "_"))
    }

    /// What a sidecar of `service` may do on NATS when the operator owns the streams:
    /// publish its declared types and its dead letters, look streams up, and create,
    /// read, pull from and ack its own durable consumers. Nothing else: no stream can be
    /// created, changed or deleted, and no other service's consumer touched. The
    /// subjects are NATS's own JetStream API subjects (`$JS.API.*`, `$JS.ACK.*`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NatsPermissions {
        pub publish: Vec<String>,
        pub subscribe: Vec<String>,
    }

    pub fn sidecar_permissions(service: &str, events: &Events) -> NatsPermissions {
        let mut publish: Vec<String> = events.publish.iter().map(|t| subject(t)).collect();
        publish.extend(
            events
                .subscribe
                .iter()
                .map(|s| dead_letter_subject(service, &s.event_type)),
        );
        publish.extend(STREAM_LOOKUP.map(String::from));
        for s in &events.subscribe {
            let c = consumer_name(service, &s.event_type);
            publish.extend([
                format!("$JS.API.CONSUMER.CREATE.*.{c}"),
                format!("$JS.API.CONSUMER.CREATE.*.{c}.>"),
                format!("$JS.API.CONSUMER.DURABLE.CREATE.*.{c}"),
                format!("$JS.API.CONSUMER.INFO.*.{c}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.*.{c}"),
                format!("$JS.ACK.*.{c}.>"),
            ]);
        }
        NatsPermissions {
            publish,
            // Replies to its requests and publishes.
            subscribe: vec!["_INBOX.>".to_string()],
        }
    }

    /// What the operator may do on NATS: look streams up, and create and update its two
    /// streams (never delete one, never touch another's).
    pub fn operator_permissions() -> NatsPermissions {
        let mut publish: Vec<String> = STREAM_LOOKUP.map(String::from).to_vec();
        for stream in [STREAM, DEAD_LETTER_STREAM] {
            publish.push(format!("$JS.API.STREAM.CREATE.{stream}"));
            publish.push(format!("$JS.API.STREAM.UPDATE.{stream}"));
        }
        NatsPermissions {
            publish,
            subscribe: vec!["_INBOX.>".to_string()],
        }
    }

    /// The JetStream API subjects that find and read streams.
    const STREAM_LOOKUP: [&str; 4] = [
        "$JS.API.INFO",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.INFO.*",
    ];

    /// The subjects one service's relay uses, each sorted and without duplicates.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct Subjects {
        /// `streamgate.<type>` of each published and subscribed type.
        pub events: Vec<String>,
        /// The dead-letter subject of each subscription.
        pub dead_letters: Vec<String>,
    }

    impl Subjects {
        pub fn of(service: &str, events: &Events) -> Subjects {
            let mut subjects = Subjects::default();
            subjects.add(service, events);
            subjects
        }

        /// Adds another service's subjects (the operator gathers every service's).
        pub fn add(&mut self, service: &str, events: &Events) {
            let types = events
                .publish
                .iter()
                .chain(events.subscribe.iter().map(|s| &s.event_type));
            self.events.extend(types.map(|t| subject(t)));
            self.dead_letters.extend(
                events
                    .subscribe
                    .iter()
                    .map(|s| dead_letter_subject(service, &s.event_type)),
            );
            for list in [&mut self.events, &mut self.dead_letters] {
                list.sort();
                list.dedup();
            }
        }

        /// Every subject, events first.
        pub fn all(&self) -> Vec<String> {
            self.events
                .iter()
                .chain(&self.dead_letters)
                .cloned()
                .collect()
        }
    }
}

/// The event spool on disk: what the sidecar writes and the operator sizes its volume
/// for.
pub mod spool {
    /// A segment file is closed and a new one started past this size; a segment is
    /// deleted once every record in it was sent.
    pub const SEGMENT_BYTES: u64 = 4 << 20;

    /// The volume size that holds a spool of `max_bytes` unsent events with room to
    /// spare: the already-sent part of the oldest segment (up to one segment) is still
    /// on disk, and the last append may overshoot a segment's size. A volume no larger
    /// than the spool's own limit would get the pod evicted by the kubelet during a long
    /// NATS outage, with the events in it.
    pub fn volume_bytes(max_bytes: u64) -> u64 {
        const FILESYSTEM_SLACK: u64 = 8 << 20;
        max_bytes + 2 * SEGMENT_BYTES + FILESYSTEM_SLACK
    }
}

/// Where the operator mounts what the sidecar reads, and the sidecar's defaults.
pub mod mounts {
    /// Certificate files (`ca.crt`, `tls.crt`, `tls.key`) for a sidecar that is not
    /// issued its identity by the operator (one run by hand, or with certificates from
    /// elsewhere, e.g. a CSI driver).
    pub const MTLS_DIR: &str = "/etc/streamgate/mtls";
    /// The NATS credentials Secret, when the service has one.
    pub const NATS_CREDS_DIR: &str = "/etc/streamgate/nats";
    /// The event spool's volume.
    pub const SPOOL_DIR: &str = "/var/lib/streamgate/spool";
}

/// How a terminating pod leaves the mesh before its app is stopped: the app container's
/// `preStop` hook (rendered by the operator) is an HTTP GET on the sidecar's admin port,
/// answered once the instance is out of Consul and callers had time to see it.
pub mod lifecycle {
    /// The admin server's path the `preStop` hook calls.
    pub const LEAVE_PATH: &str = "/leave";
    /// How long a leaving pod still serves calls routed to it from an older view of
    /// Consul, unless the service says otherwise (`spec.sidecar.leaveDelay`).
    pub const DEFAULT_LEAVE_DELAY_MS: u64 = 3_000;
    /// The longest `leaveDelay` accepted: the hook runs inside the pod's termination
    /// grace period (30 s by default), which also has to cover the app's own shutdown.
    pub const MAX_LEAVE_DELAY_MS: u64 = 60_000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_of_services_are_gathered_sorted_once() {
        let events: crate::Events = serde_json::from_value(serde_json::json!({
            "publish": ["file.uploaded"],
            "subscribe": [{"type": "transcoding.completed"}, {"type": "file.uploaded"}]
        }))
        .unwrap();
        let mut subjects = events::Subjects::of("upload", &events);
        subjects.add("search", &events);
        assert_eq!(
            subjects.events,
            [
                "streamgate.file.uploaded",
                "streamgate.transcoding.completed"
            ]
        );
        assert_eq!(
            subjects.dead_letters,
            [
                "streamgate.dlq.search.file.uploaded",
                "streamgate.dlq.search.transcoding.completed",
                "streamgate.dlq.upload.file.uploaded",
                "streamgate.dlq.upload.transcoding.completed",
            ]
        );
    }

    #[test]
    fn a_spiffe_id_round_trips_and_foreign_ones_are_refused() {
        let id = identity::spiffe_id("media", "upload");
        assert_eq!(id, "spiffe://streamgate/ns/media/sa/upload");
        assert_eq!(identity::parse_spiffe_id(&id), Some(("media", "upload")));
        for foreign in [
            "spiffe://cluster.local/ns/media/sa/upload",
            "spiffe://streamgatex/ns/media/sa/upload",
            "spiffe://streamgate/ns/media/svc/upload",
            "spiffe://streamgate/ns//sa/upload",
            "spiffe://streamgate/ns/media/sa/",
            "spiffe://streamgate/ns/media/sa/a/b",
            "https://streamgate/ns/media/sa/upload",
        ] {
            assert_eq!(identity::parse_spiffe_id(foreign), None, "{foreign}");
        }
        assert_eq!(
            identity::parse_service_account_user("system:serviceaccount:media:upload"),
            Some(("media", "upload"))
        );
        for other in ["system:node:n1", "system:serviceaccount:media", "alice"] {
            assert_eq!(identity::parse_service_account_user(other), None, "{other}");
        }
    }

    #[test]
    fn a_bare_caller_name_admits_only_the_own_namespace() {
        use callers::admits;
        assert!(admits("api-gateway", "media", "media", "api-gateway"));
        assert!(
            !admits("api-gateway", "media", "sandbox", "api-gateway"),
            "a sandbox pod labelled api-gateway is not media's api-gateway"
        );
        assert!(admits("edge/api-gateway", "media", "edge", "api-gateway"));
        assert!(!admits("edge/api-gateway", "media", "media", "api-gateway"));
        assert!(!admits("upload", "media", "media", "api-gateway"));
        for valid in ["api-gateway", "edge/api-gateway", "a/b", "x1"] {
            assert!(callers::is_valid_entry(valid), "{valid}");
        }
        for invalid in ["", "/x", "x/", "a/b/c", "API", "-a", "a_b", "ns/-x"] {
            assert!(!callers::is_valid_entry(invalid), "{invalid}");
        }
        assert_eq!(callers::display("media", "media", "upload"), "upload");
        assert_eq!(callers::display("media", "edge", "api"), "edge/api");
    }
}
