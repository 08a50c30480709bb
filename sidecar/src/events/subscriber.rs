//! One durable pull consumer per (service, type), named `<service>--<type>` with dots as
//! `_`, shared by every replica of the service: JetStream hands each event to one of
//! them. Each replica pulls only as many events as it has free delivery slots, and pulls
//! nothing while the app is unhealthy, so events wait in the stream for a healthy
//! replica instead of piling up in one that cannot take them.

use super::connect::ensure_stream;
use super::delivery::{self, DeliveryTarget};
use super::error::PullError;
use crate::backoff::Backoff;
use crate::config::events::EventSettings;
use crate::health::thresholds::Health;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// How long one pull request stays open waiting for events.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

pub fn consumer_name(service: &str, event_type: &str) -> String {
    format!("{service}--{}", event_type.replace('.', "_"))
}

/// Pulls and delivers until `stop` turns true; recreates the consumer after errors.
pub async fn run(
    js: jetstream::Context,
    settings: EventSettings,
    target: Arc<DeliveryTarget>,
    in_flight: usize,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let name = consumer_name(&target.service, &target.event_type);
    while !*stop.borrow() {
        // The stream first: a sidecar that only subscribes may be the first to connect.
        let ensured = match ensure_stream(&js, &settings).await {
            Ok(()) => ensure_consumer(&js, &settings.stream, &name, &target).await,
            Err(e) => Err(e.into()),
        };
        let consumer = match ensured {
            Ok(consumer) => consumer,
            Err(e) => {
                tracing::debug!(consumer = %name, error = %e, "consumer not ready");
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

async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    target: &DeliveryTarget,
) -> Result<consumer::PullConsumer, PullError> {
    let config = consumer::pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: format!("streamgate.{}", target.event_type),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: target.ack_wait,
        // The sidecar counts attempts itself and dead-letters after the last one.
        max_deliver: -1,
        deliver_policy: consumer::DeliverPolicy::New,
        ..Default::default()
    };
    js.create_consumer_on_stream(config, stream)
        .await
        .map_err(PullError::Consumer)
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
