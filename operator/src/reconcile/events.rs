//! Kubernetes Events about a reconcile: for people, so recorded in the background.

use super::children::Applied;
use super::{Context, Subject};
use crate::apply::Applied as Action;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

/// One Event per reconcile that changed something, e.g. "Created Deployment and Service
/// upload".
pub(super) async fn announce_changes(ctx: &Context, target: &Subject, applied: &Applied) {
    let Some((first, _)) = applied.changes.first() else {
        return;
    };
    let reason = if *first == Action::Created {
        "Created"
    } else {
        "Updated"
    };
    let note = if applied.changes.iter().all(|(action, _)| action == first) {
        let kinds: Vec<&str> = applied.changes.iter().map(|(_, kind)| *kind).collect();
        let action = capitalized(first.as_str());
        format!("{action} {} {}", kinds.join(" and "), target.name)
    } else {
        // Mixed, e.g. "updated Deployment, deleted NetworkPolicy of upload".
        let each: Vec<String> = applied
            .changes
            .iter()
            .map(|(action, kind)| format!("{} {kind}", action.as_str()))
            .collect();
        format!("{} of {}", each.join(", "), target.name)
    };
    publish(ctx, target, EventType::Normal, reason, &note).await;
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// Records an Event in the background: a slow events API must not slow reconciles down.
pub(super) async fn publish(
    ctx: &Context,
    target: &Subject,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    let recorder = ctx.recorder.clone();
    let reference = target.reference.clone();
    let reason = reason.to_string();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(error = %e, reason, "could not publish an Event");
        }
    });
}
