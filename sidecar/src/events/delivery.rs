//! One event to the app (by HTTP or gRPC, see [`super::receiver`]), then ack when it was
//! handled, nak with a growing delay when not, and after `maxDeliver` attempts (or at
//! once when a gRPC app answers DEAD_LETTER) publish it to
//! `streamgate.dlq.<service>.<type>` with the last error and stop its redelivery.

use super::dedupe::Dedupe;
use super::envelope::id_of;
use super::error::DeadLetterError;
use super::metrics::EventMetrics;
use super::receiver::{AppReceiver, NotTaken};
use crate::backoff::Backoff;
use crate::health::AppHealth;
use crate::health::thresholds::Health;
use async_nats::jetstream::{self, AckKind, Message};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What one subscription's deliveries share.
pub struct DeliveryTarget {
    pub service: String,
    pub event_type: String,
    pub app: AppReceiver,
    pub max_deliver: i64,
    pub ack_wait: Duration,
    pub js: jetstream::Context,
    pub health: watch::Receiver<AppHealth>,
    pub dedupe: Mutex<Dedupe>,
    pub metrics: Arc<EventMetrics>,
    pub traces: Option<Arc<streamgate_telemetry::Traces>>,
}

impl DeliveryTarget {
    pub fn dlq_subject(&self) -> String {
        streamgate_crds::contract::events::dead_letter_subject(&self.service, &self.event_type)
    }
}

/// Delivers one message and settles it with JetStream.
pub async fn deliver(target: &DeliveryTarget, message: Message) {
    let (attempt, sequence) = match message.info() {
        Ok(info) => (info.delivered, info.stream_sequence),
        Err(_) => (1, 0),
    };
    // Seed-style events carry no id: the stream sequence still tells a redelivery apart.
    let id = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_string())
        .or_else(|| id_of(&message.payload))
        .unwrap_or_else(|| format!("seq-{sequence}"));
    if lock(&target.dedupe).contains(&id, Instant::now()) {
        target.metrics.duplicates.inc();
        settle(&message, AckKind::Ack).await;
        return;
    }
    if attempt > target.max_deliver {
        // The app had its attempts and dead-lettering failed before: retry only that.
        let error = format!("the app refused it {} times", target.max_deliver);
        return dead_letter_or_give_up(target, &message, &id, attempt, sequence, &error).await;
    }
    wait_healthy(target, &message).await;

    let started = Instant::now();
    let (span, handed) = match &target.traces {
        Some(traces) => {
            let (span, handed) =
                super::trace::deliver(traces, &message.subject, &id, attempt, &message.payload);
            (Some(span), Some(handed))
        }
        None => (None, None),
    };
    let result = target.app.deliver(&message, &id, attempt, handed).await;
    if let Some(span) = span {
        super::trace::delivered(span, &result);
    }
    target
        .metrics
        .delivery_duration
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            lock(&target.dedupe).insert(id, Instant::now());
            target.metrics.delivered.inc();
            settle(&message, AckKind::Ack).await;
        }
        Err(NotTaken::DeadLetter(reason)) => {
            tracing::warn!(%id, attempt, %reason, subject = %target.dlq_subject(), "dead-lettering at the app's word");
            dead_letter_or_give_up(target, &message, &id, attempt, sequence, &reason).await;
        }
        Err(NotTaken::Retry(error)) if attempt >= target.max_deliver => {
            tracing::warn!(%id, attempt, %error, subject = %target.dlq_subject(), "dead-lettering");
            let error = error.to_string();
            dead_letter_or_give_up(target, &message, &id, attempt, sequence, &error).await;
        }
        Err(NotTaken::Retry(error)) => {
            let delay = redelivery_delay(attempt);
            tracing::debug!(%id, attempt, %error, ?delay, "delivery failed: redelivering");
            target.metrics.redelivered.inc();
            settle(&message, AckKind::Nak(Some(delay))).await;
        }
    }
}

/// How many times publishing an event's dead letter is tried before the event is given
/// up (it stays in the stream until its max age).
const DEAD_LETTER_ATTEMPTS: i64 = 5;

/// Publishes the dead letter and terminates the event; a failed publish is retried
/// with the redelivery backoff (JetStream redelivers the event, which is not handed to
/// the app again), and after [`DEAD_LETTER_ATTEMPTS`] the event is given up, loudly:
/// never an endless loop.
async fn dead_letter_or_give_up(
    target: &DeliveryTarget,
    message: &Message,
    id: &str,
    attempt: i64,
    sequence: u64,
    error: &str,
) {
    let attempts = attempt.min(target.max_deliver);
    match dead_letter(target, message, id, attempts, sequence, error).await {
        Ok(()) => {
            target.metrics.dead_lettered.inc();
            settle(message, AckKind::Term).await;
        }
        Err(e) if attempt - target.max_deliver + 1 >= DEAD_LETTER_ATTEMPTS => {
            tracing::error!(%id, stream_sequence = sequence, error = %e,
                "giving the event up: its dead letter cannot be published; it stays in the stream until its max age");
            target.metrics.dead_letter_failed.inc();
            settle(message, AckKind::Term).await;
        }
        Err(e) => {
            let delay = redelivery_delay(attempt - target.max_deliver + 1);
            tracing::warn!(%id, error = %e, ?delay, "dead-letter publish failed; retrying");
            settle(message, AckKind::Nak(Some(delay))).await;
        }
    }
}

/// 250 ms, 500 ms, 1 s, ... up to 30 s, with jitter.
fn redelivery_delay(attempt: i64) -> Duration {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    for _ in 1..attempt.clamp(1, 32) {
        backoff.next_delay_with(1.0);
    }
    backoff.next_delay()
}

/// Holds the message while the app is unhealthy, telling JetStream it is still being
/// worked on so it is not handed to another replica meanwhile.
async fn wait_healthy(target: &DeliveryTarget, message: &Message) {
    let mut health = target.health.clone();
    while health.borrow_and_update().health != Health::Healthy {
        let changed = tokio::time::timeout(target.ack_wait / 2, health.changed()).await;
        match changed {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => settle(message, AckKind::Progress).await,
        }
    }
}

async fn dead_letter(
    target: &DeliveryTarget,
    message: &Message,
    id: &str,
    attempts: i64,
    sequence: u64,
    error: &str,
) -> Result<(), DeadLetterError> {
    let max_payload = target.js.client().server_info().max_payload;
    let body = dead_letter_body(message, target, attempts, sequence, error, max_payload);
    let publish = jetstream::message::PublishMessage::build()
        .payload(serde_json::to_vec(&body).unwrap_or_default().into())
        .message_id(format!("dlq-{}-{id}", target.service))
        .header("Streamgate-Error", error.replace(['\r', '\n'], " "));
    target
        .js
        .send_publish(target.dlq_subject(), publish)
        .await
        .map_err(DeadLetterError)?
        .await
        .map(|_| ())
        .map_err(DeadLetterError)
}

/// Room kept under `max_payload` for the dead letter's headers (its id and error).
const DEAD_LETTER_HEADER_ROOM: usize = 1024;

/// The dead letter: the event, why and how often it failed, and its stream sequence. An
/// event too large to travel inside it (e.g. published straight to NATS by a seed
/// service, near `max_payload`) is left out: the sequence fetches it from the stream.
fn dead_letter_body(
    message: &Message,
    target: &DeliveryTarget,
    attempts: i64,
    sequence: u64,
    error: &str,
    max_payload: usize,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "event": null,
        "error": error,
        "attempts": attempts,
        "subject": message.subject.as_str(),
        "service": target.service,
        "streamSequence": sequence,
    });
    let wrapper = body.to_string().len() + DEAD_LETTER_HEADER_ROOM;
    if message.payload.len() + wrapper <= max_payload {
        body["event"] = serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
            String::from_utf8_lossy(&message.payload)
                .into_owned()
                .into()
        });
    } else {
        body["eventOmitted"] = format!(
            "the event ({} bytes) does not fit in a dead letter under the server's max_payload ({max_payload}); read it from the stream at sequence {sequence}",
            message.payload.len()
        )
        .into();
    }
    body
}

async fn settle(message: &Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // JetStream redelivers after ackWait; the dedupe window catches a repeat.
        tracing::debug!(error = %e, "ack failed");
    }
}

fn lock(dedupe: &Mutex<Dedupe>) -> std::sync::MutexGuard<'_, Dedupe> {
    dedupe.lock().unwrap_or_else(|e| e.into_inner())
}
