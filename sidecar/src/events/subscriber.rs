//! One durable pull consumer per (service, type), named `<service>--<type>` with dots as
//! `_`, shared by every replica of the service: JetStream hands each event to one of
//! them. Each replica pulls only as many events as it has free delivery slots, and pulls
//! nothing while the app is unhealthy, so events wait in the stream for a healthy
//! replica instead of piling up in one that cannot take them.

use super::connect::{ensure_stream, stream_of};
use super::delivery::{self, DeliveryTarget};
use super::error::PullError;
use crate::backoff::Backoff;
use crate::config::events::EventSettings;
use crate::health::thresholds::Health;
use crate::state::Readiness;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// How long one pull request stays open waiting for events.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

pub use streamgate_crds::contract::events::consumer_name;

/// Pulls and delivers until `stop` turns true; recreates the consumer after errors.
pub async fn run(
    js: jetstream::Context,
    settings: EventSettings,
    target: Arc<DeliveryTarget>,
    in_flight: usize,
    readiness: Arc<Readiness>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let name = consumer_name(&target.service, &target.event_type);
    while !*stop.borrow() {
        // The stream first: a sidecar that only subscribes may be the first to connect.
        let ensured = match ensure_stream(&js, &settings).await {
            Ok(()) => ensure_consumer(&js, &name, &target).await,
            Err(e) => Err(e.into()),
        };
        let part = format!("subscription {}", target.event_type);
        let consumer = match ensured {
            Ok(consumer) => {
                readiness.set_relay_problem(&part, None);
                consumer
            }
            Err(e) => {
                // Only a reachable NATS that refuses counts: an outage just waits.
                if js.client().connection_state() == async_nats::connection::State::Connected {
                    if readiness.relay_problem(&part).as_deref() != Some(&e.to_string()) {
                        tracing::warn!(consumer = %name, error = %e, "the subscription cannot start");
                    }
                    readiness.set_relay_problem(&part, Some(e.to_string()));
                } else {
                    tracing::debug!(consumer = %name, error = %e, "consumer not ready");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        tracing::info!(consumer = %name, to = %target.app.describe(), "delivering events");
        backoff.reset();
        let outcome = tokio::select! {
            outcome = pull_loop(&consumer, &target, &slots) => outcome,
            _ = stop.changed() => return,
        };
        if let Err(e) = outcome {
            tracing::warn!(consumer = %name, error = %e, "pulling stopped; starting over");
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The durable consumer on whichever stream captures the subscription's subject.
async fn ensure_consumer(
    js: &jetstream::Context,
    name: &str,
    target: &DeliveryTarget,
) -> Result<consumer::PullConsumer, PullError> {
    let subject = streamgate_crds::contract::events::subject(&target.event_type);
    let stream = stream_of(js, &subject)
        .await
        .map_err(PullError::NoStream)?
        .ok_or_else(|| PullError::NoStream(format!("no stream captures {subject}")))?;
    // A work-queue stream (e.g. the seed's TRANSCODING) takes only consumers that start
    // at its first message: what it still holds is what nobody has taken yet.
    let retention = js
        .get_stream(&stream)
        .await
        .map_err(|e| PullError::NoStream(format!("reading stream {stream}: {e}")))?
        .cached_info()
        .config
        .retention;
    let deliver_policy = if retention == jetstream::stream::RetentionPolicy::WorkQueue {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::New
    };
    let config = consumer::pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: subject,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: target.ack_wait,
        // The sidecar counts attempts itself and dead-letters after the last one.
        max_deliver: -1,
        deliver_policy,
        ..Default::default()
    };
    js.create_consumer_on_stream(config, &stream)
        .await
        .map_err(|source| PullError::Consumer { stream, source })
}

/// Pulls batches as long as slots are free and the app is healthy.
async fn pull_loop(
    consumer: &consumer::PullConsumer,
    target: &Arc<DeliveryTarget>,
    slots: &Arc<Semaphore>,
) -> Result<(), PullError> {
    let mut health = target.health.clone();
    loop {
        while health.borrow_and_update().health != Health::Healthy {
            health
                .changed()
                .await
                .map_err(|_| PullError::HealthStopped)?;
        }
        // Wait for one free slot, then ask for as many events as there are free slots.
        drop(slots.acquire().await.map_err(|_| PullError::SlotsClosed)?);
        let want = slots.available_permits().max(1);
        let mut batch = consumer
            .batch()
            .max_messages(want)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(PullError::Batch)?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(PullError::Receive)?;
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| PullError::SlotsClosed)?;
            let target = target.clone();
            tokio::spawn(async move {
                delivery::deliver(&target, message).await;
                drop(slot);
            });
        }
    }
}
