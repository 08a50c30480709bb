//! JetStream streams that capture the subjects services declare.
//!
//! Every subject a relay uses must be captured by some stream. A subject that a stream
//! captures already is left to it, whoever made it: StreamGate's own stream, or another
//! application's, such as the seed's `TRANSCODING` on `streamgate.transcoding.tasks`
//! (subscriptions bind their consumer to whichever stream it is, [`stream_of`]). The
//! subjects no stream captures are added to the StreamGate stream [`Want`]ed for them.
//! Subjects are only ever added: a subject of a service that went away stays captured
//! (bounded by the stream's limits), so events other publishers still send to it are
//! kept rather than refused.
//!
//! What a caller may change depends on its [`Authority`]: the operator owns the streams
//! and brings their settings (replicas, age, size, duplicate window) to its
//! configuration; a sidecar under the operator only binds and reports what is missing;
//! a sidecar run without the operator creates its stream and adds its subjects, but never
//! touches an existing stream's settings, so no sidecar can shrink the retention others
//! rely on.

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;
use std::time::Duration;

/// Why a relay's subjects are not all captured by a stream (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream {stream}: {reason}")]
pub struct StreamError {
    pub stream: String,
    pub reason: String,
}

/// The settings of a StreamGate stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// How long the stream keeps a message.
    pub max_age: Duration,
    /// The stream's size limit in bytes; -1 for none.
    pub max_bytes: i64,
    /// A second publish with the same `Nats-Msg-Id` within this window is dropped.
    pub duplicate_window: Duration,
    /// Copies kept in a JetStream cluster (1 on a single server).
    pub replicas: usize,
}

/// A StreamGate stream and the subjects it should capture unless another stream does.
#[derive(Debug, Clone)]
pub struct Want {
    pub stream: String,
    pub subjects: Vec<String>,
    pub settings: StreamSettings,
}

/// What the caller may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Nothing: every subject must be captured already (a sidecar under the operator).
    Bind,
    /// Create the stream, add subjects; never change an existing stream's settings (a
    /// sidecar run without the operator).
    AddSubjects,
    /// Create, add subjects, and bring the settings to the wanted ones (the operator).
    Own,
}

/// One write to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(stream::Config),
    /// The new configuration, and what in it changed (for the log).
    Update(stream::Config, Vec<&'static str>),
}

impl Action {
    fn stream(&self) -> &str {
        match self {
            Action::Create(c) | Action::Update(c, _) => &c.name,
        }
    }
}

/// True when a stream subject (which may hold `*` and `>` wildcards) captures `subject`.
pub fn captures(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in filter.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (part, Some(token)) if part == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// The writes that make `wants` hold over the `existing` stream configurations, or the
/// subjects nothing captures when `authority` is [`Authority::Bind`].
pub fn plan(
    existing: &[stream::Config],
    wants: &[Want],
    authority: Authority,
) -> Result<Vec<Action>, StreamError> {
    let moves = if authority == Authority::Own {
        moves(existing, wants)
    } else {
        Vec::new()
    };
    let moved = |stream: &str, subject: &str| {
        moves
            .iter()
            .any(|(from, s)| from.as_str() == stream && s.as_str() == subject)
    };
    let captured = |subject: &str| {
        existing
            .iter()
            .any(|c| c.subjects.iter().any(|f| captures(f, subject)) && !moved(&c.name, subject))
    };
    let mut actions = Vec::new();
    let mut taken: Vec<&str> = Vec::new();
    for want in wants {
        let missing: Vec<String> = want
            .subjects
            .iter()
            .filter(|s| !captured(s) && !taken.contains(&s.as_str()))
            .cloned()
            .collect();
        taken.extend(want.subjects.iter().map(String::as_str));
        if authority == Authority::Bind {
            if let Some(first) = missing.first() {
                return Err(StreamError {
                    stream: want.stream.clone(),
                    reason: format!(
                        "no stream captures {first}{}; the operator creates the streams \
                         (is it running and connected to NATS?)",
                        match missing.len() {
                            1 => String::new(),
                            n => format!(" (and {} more)", n - 1),
                        }
                    ),
                });
            }
            continue;
        }
        match existing.iter().find(|c| c.name == want.stream) {
            Some(current) => {
                let mut config = current.clone();
                let mut changed = Vec::new();
                let before = config.subjects.len();
                config.subjects.retain(|s| !moved(&want.stream, s));
                if config.subjects.len() != before || !missing.is_empty() {
                    config.subjects.extend(missing);
                    changed.push("subjects");
                }
                if authority == Authority::Own {
                    changed.extend(converge(&mut config, &want.settings));
                }
                if !changed.is_empty() {
                    actions.push(Action::Update(config, changed));
                }
            }
            // A stream without subjects would capture its own name: make none yet.
            None if missing.is_empty() => {}
            None => actions.push(Action::Create(new_stream(want, missing))),
        }
    }
    // A stream giving subjects up goes first: NATS refuses two streams capturing one
    // subject, so the one taking them over must wait.
    actions.sort_by_key(|a| match a {
        Action::Update(config, _) => !moves.iter().any(|(from, _)| *from == config.name),
        Action::Create(_) => true,
    });
    Ok(actions)
}

/// Subjects one of the wanted streams holds (by name, as an older StreamGate put them
/// there: dead letters in STREAMGATE) that another wanted stream should have, as
/// (stream, subject). A stream is never emptied by it (NATS would give it its own name
/// as subject).
fn moves(existing: &[stream::Config], wants: &[Want]) -> Vec<(String, String)> {
    let mut moves: Vec<(String, String)> = Vec::new();
    for want in wants {
        for subject in &want.subjects {
            let holder = existing.iter().find(|c| {
                c.name != want.stream
                    && wants.iter().any(|w| w.stream == c.name)
                    && c.subjects.contains(subject)
            });
            if let Some(holder) = holder {
                let leaving = moves
                    .iter()
                    .filter(|(from, _)| *from == holder.name)
                    .count();
                if leaving + 1 < holder.subjects.len() {
                    moves.push((holder.name.clone(), subject.clone()));
                }
            }
        }
    }
    moves
}

fn new_stream(want: &Want, subjects: Vec<String>) -> stream::Config {
    let mut config = stream::Config {
        name: want.stream.clone(),
        subjects,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    converge(&mut config, &want.settings);
    config
}

/// Sets the settings StreamGate owns, naming the ones that changed.
fn converge(config: &mut stream::Config, settings: &StreamSettings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if config.max_age != settings.max_age {
        config.max_age = settings.max_age;
        changed.push("max_age");
    }
    if config.max_bytes != settings.max_bytes {
        config.max_bytes = settings.max_bytes;
        changed.push("max_bytes");
    }
    if config.duplicate_window != settings.duplicate_window {
        config.duplicate_window = settings.duplicate_window;
        changed.push("duplicate_window");
    }
    if config.num_replicas != settings.replicas {
        config.num_replicas = settings.replicas;
        changed.push("replicas");
    }
    changed
}

/// Makes `wants` hold with `authority`, returning the writes made. Writers racing (many
/// sidecars starting at once) may overwrite each other's additions: the read-plan-write
/// round repeats until nothing is left to do.
pub async fn ensure(
    js: &jetstream::Context,
    wants: &[Want],
    authority: Authority,
) -> Result<Vec<Action>, StreamError> {
    let error = |stream: &str, reason: String| StreamError {
        stream: stream.to_string(),
        reason,
    };
    let first = wants.first().map(|w| w.stream.as_str()).unwrap_or_default();
    let mut done = Vec::new();
    for _ in 0..5 {
        let existing: Vec<stream::Config> = js
            .streams()
            .map_ok(|info| info.config)
            .try_collect()
            .await
            .map_err(|e| error(first, format!("listing the streams: {e}")))?;
        let actions = plan(&existing, wants, authority)?;
        if actions.is_empty() {
            return Ok(done);
        }
        // One stream's refusal (e.g. replicas on a single server) does not hold the
        // others back; the first refusal is reported after the round.
        let mut refused = None;
        for action in actions {
            let name = action.stream().to_string();
            let written = match &action {
                Action::Create(config) => {
                    tracing::info!(stream = %name, subjects = ?config.subjects, "creating the stream");
                    js.create_stream(config.clone())
                        .await
                        .map(drop)
                        .map_err(|e| error(&name, format!("creating it: {e}")))
                }
                Action::Update(config, changed) => {
                    tracing::info!(stream = %name, ?changed, subjects = ?config.subjects, "updating the stream");
                    js.update_stream(config.clone())
                        .await
                        .map(drop)
                        .map_err(|e| error(&name, format!("updating {changed:?}: {e}")))
                }
            };
            match written {
                Ok(()) => done.push(action),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
    }
    Err(error(
        first,
        "other writers keep changing the streams' subjects; trying again".into(),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> StreamSettings {
        StreamSettings {
            max_age: Duration::from_secs(3_600),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }

    fn want(stream: &str, subjects: &[&str]) -> Want {
        Want {
            stream: stream.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            settings: settings(),
        }
    }

    fn existing(name: &str, subjects: &[&str], max_age_s: u64) -> stream::Config {
        stream::Config {
            name: name.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            max_age: Duration::from_secs(max_age_s),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
            num_replicas: 1,
            ..Default::default()
        }
    }

    #[test]
    fn wildcards_capture_like_nats() {
        assert!(captures("streamgate.>", "streamgate.file.uploaded"));
        assert!(captures(
            "streamgate.*.tasks",
            "streamgate.transcoding.tasks"
        ));
        assert!(captures("a.b", "a.b"));
        assert!(!captures("streamgate.>", "streamgate"));
        assert!(!captures("streamgate.*", "streamgate.a.b"));
        assert!(!captures("a.b", "a.b.c"));
        assert!(!captures("a.b.c", "a.b"));
    }

    #[test]
    fn subjects_another_stream_captures_are_left_to_it() {
        let seed = existing("TRANSCODING", &["streamgate.transcoding.tasks"], 60);
        let wants = [want(
            "STREAMGATE",
            &["streamgate.file.uploaded", "streamgate.transcoding.tasks"],
        )];
        let actions = plan(&[seed], &wants, Authority::AddSubjects).unwrap();
        let [Action::Create(config)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(config.subjects, ["streamgate.file.uploaded"]);
        assert_eq!(config.max_age, Duration::from_secs(3_600));
    }

    #[test]
    fn a_sidecar_adds_subjects_but_never_changes_settings() {
        let ours = existing("STREAMGATE", &["streamgate.a.b"], 60);
        let wants = [want("STREAMGATE", &["streamgate.a.b"])];
        assert_eq!(
            plan(std::slice::from_ref(&ours), &wants, Authority::AddSubjects).unwrap(),
            []
        );
        let wants = [want("STREAMGATE", &["streamgate.a.b", "streamgate.c.d"])];
        let actions = plan(&[ours], &wants, Authority::AddSubjects).unwrap();
        let [Action::Update(config, changed)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(changed, &["subjects"]);
        assert_eq!(config.max_age, Duration::from_secs(60), "retention kept");
    }

    #[test]
    fn the_owner_brings_settings_to_its_configuration() {
        let ours = existing("STREAMGATE", &["streamgate.a.b"], 60);
        let wants = [want("STREAMGATE", &["streamgate.a.b"])];
        let actions = plan(&[ours], &wants, Authority::Own).unwrap();
        let [Action::Update(config, changed)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(changed, &["max_age"]);
        assert_eq!(config.max_age, Duration::from_secs(3_600));
    }

    #[test]
    fn a_bound_sidecar_names_the_first_missing_subject_and_writes_nothing() {
        let ours = existing("STREAMGATE", &["streamgate.a.b"], 60);
        let wants = [want(
            "STREAMGATE",
            &["streamgate.a.b", "streamgate.c.d", "streamgate.e.f"],
        )];
        let err = plan(std::slice::from_ref(&ours), &wants, Authority::Bind).unwrap_err();
        assert!(
            err.reason
                .contains("no stream captures streamgate.c.d (and 1 more)"),
            "{err}"
        );
        let wants = [want("STREAMGATE", &["streamgate.a.b"])];
        assert_eq!(plan(&[ours], &wants, Authority::Bind).unwrap(), []);
    }

    #[test]
    fn the_owner_moves_dead_letters_an_older_sidecar_put_in_the_events_stream() {
        let events = existing(
            "STREAMGATE",
            &["streamgate.a.b", "streamgate.dlq.s.a.b"],
            3_600,
        );
        let wants = [
            want("STREAMGATE", &["streamgate.a.b"]),
            want("STREAMGATE_DLQ", &["streamgate.dlq.s.a.b"]),
        ];
        let actions = plan(std::slice::from_ref(&events), &wants, Authority::Own).unwrap();
        let [Action::Update(shrunk, _), Action::Create(dlq)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(shrunk.subjects, ["streamgate.a.b"], "given up first");
        assert_eq!(dlq.subjects, ["streamgate.dlq.s.a.b"]);
        // A sidecar never moves anything.
        let actions = plan(&[events], &wants, Authority::AddSubjects).unwrap();
        assert_eq!(actions, []);
    }

    #[test]
    fn no_stream_is_made_without_subjects_and_a_subject_goes_to_one_stream() {
        assert_eq!(
            plan(&[], &[want("STREAMGATE_DLQ", &[])], Authority::Own).unwrap(),
            []
        );
        let wants = [want("A", &["x.y"]), want("B", &["x.y", "x.z"])];
        let actions = plan(&[], &wants, Authority::Own).unwrap();
        let subjects: Vec<_> = actions
            .iter()
            .map(|a| match a {
                Action::Create(c) => (c.name.as_str(), c.subjects.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            subjects,
            [
                ("A", vec!["x.y".to_string()]),
                ("B", vec!["x.z".to_string()])
            ]
        );
    }
}
