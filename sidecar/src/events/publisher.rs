//! Getting accepted events durable: straight to JetStream when NATS is up and nothing is
//! spooled, else (or when the ack does not come within `publishTimeout`) into the spool.
//!
//! A batch is sent as a whole before any ack is awaited, and concurrent callers share
//! one [`Window`] of outstanding acks, so throughput is not one round trip per event.
//! An event whose ack timed out may have been stored anyway; spooling it again is safe
//! because it is resent with the same `Nats-Msg-Id`.

use super::envelope::Outgoing;
use super::metrics::EventMetrics;
use super::spool::{Spool, SpoolError};
use super::trace;
use async_nats::connection::State;
use async_nats::jetstream::{self, message::PublishMessage};
use std::sync::Arc;
use std::time::Instant;
use streamgate_telemetry::Traces;
use tokio::sync::Semaphore;

/// Where an accepted event is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    Acked,
    Spooled,
}

pub struct Publisher {
    js: jetstream::Context,
    window: Window,
    spool: Arc<Spool>,
    metrics: Arc<EventMetrics>,
    traces: Option<Arc<Traces>>,
}

impl Publisher {
    /// The spool behind this publisher (what a shutdown waits to see emptied).
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }
}

impl Publisher {
    pub fn new(
        js: jetstream::Context,
        window: Window,
        spool: Arc<Spool>,
        metrics: Arc<EventMetrics>,
        traces: Option<Arc<Traces>>,
    ) -> Self {
        Publisher {
            js,
            window,
            spool,
            metrics,
            traces,
        }
    }

    /// Makes every event durable, in order, or fails (spool full or unwritable); on
    /// failure some events may be durable already, and a retry with the same ids is safe.
    pub async fn publish(&self, events: Vec<Outgoing>) -> Result<Vec<Durable>, SpoolError> {
        let started = Instant::now();
        let count = events.len() as u64;
        let direct =
            !self.spool.is_active() && self.js.client().connection_state() == State::Connected;
        let outcome = if direct {
            self.direct(events).await
        } else {
            self.to_spool(events).await
        };
        let elapsed = started.elapsed().as_secs_f64();
        match &outcome {
            Ok(_) => {
                self.metrics.published.inc_by(count);
                self.metrics.publish_duration.observe(elapsed);
            }
            Err(SpoolError::Full { .. }) => {
                self.metrics.spool_full.inc();
            }
            Err(_) => {}
        }
        outcome
    }

    async fn direct(&self, events: Vec<Outgoing>) -> Result<Vec<Durable>, SpoolError> {
        let spans = trace::sends(self.traces.as_ref(), &events, false);
        let acks = send_all(&self.js, &self.window, &events).await;
        trace::sent(spans, &acks);
        let mut results = Vec::with_capacity(events.len());
        let mut failed = Vec::new();
        // An unpublishable one (the server's limit fell since the door checked it) is
        // spooled too: the flusher moves it to the dead-letter file, in order.
        for (event, sent) in events.into_iter().zip(acks) {
            if sent == Sent::Stored {
                results.push(Durable::Acked);
            } else {
                results.push(Durable::Spooled);
                failed.push(event);
            }
        }
        let acked = (results.len() - failed.len()) as u64;
        self.metrics.acked.inc_by(acked);
        if !failed.is_empty() {
            tracing::debug!(count = failed.len(), "no JetStream ack: spooling");
            self.append(failed).await?;
        }
        Ok(results)
    }

    async fn to_spool(&self, events: Vec<Outgoing>) -> Result<Vec<Durable>, SpoolError> {
        let count = events.len();
        self.append(events).await?;
        Ok(vec![Durable::Spooled; count])
    }

    async fn append(&self, events: Vec<Outgoing>) -> Result<(), SpoolError> {
        let spans = trace::spooling(self.traces.as_ref(), &events);
        let appended = self.spool.append(events).await;
        let error = appended.as_ref().err().map(ToString::to_string);
        trace::spooled(spans, error.as_deref());
        appended
    }
}

/// The acks awaited at once, shared by every publisher and the flusher.
///
/// A batch takes its permits in one step before sending, and gives them back when its
/// acks are in. Taking them one by one while sending (async-nats's own backpressure)
/// deadlocks once concurrent batches hold the whole window between them, each waiting
/// for room that only their own unawaited acks would free.
#[derive(Clone)]
pub struct Window {
    permits: Arc<Semaphore>,
    size: usize,
}

impl Window {
    pub fn new(size: usize) -> Self {
        let size = size.clamp(1, Semaphore::MAX_PERMITS);
        Window {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }
}

/// What became of one sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// JetStream stored it (or already had it: a duplicate id is as good as stored).
    Stored,
    /// Not now (no ack in time, no connection, no stream yet): try again later.
    Failed,
    /// Never, as it is (larger than the server's `max_payload`): retrying cannot help.
    Unpublishable(String),
}

/// Sends every event, then awaits every ack, a window's worth at a time.
pub async fn send_all(js: &jetstream::Context, window: &Window, events: &[Outgoing]) -> Vec<Sent> {
    let mut results = Vec::with_capacity(events.len());
    for chunk in events.chunks(window.size) {
        let Ok(_permits) = window.permits.acquire_many(chunk.len() as u32).await else {
            results.extend(std::iter::repeat_n(Sent::Failed, chunk.len()));
            continue;
        };
        results.extend(send_chunk(js, chunk).await);
    }
    results
}

async fn send_chunk(js: &jetstream::Context, events: &[Outgoing]) -> Vec<Sent> {
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let message = PublishMessage::build()
            .payload(event.payload.clone())
            .message_id(event.id.as_str());
        pending.push(js.send_publish(event.subject.clone(), message).await);
    }
    let acks = pending.into_iter().map(|sent| async move {
        use async_nats::jetstream::context::PublishErrorKind;
        match sent {
            Ok(ack) => match ack.await {
                Ok(_) => Sent::Stored,
                Err(e) => {
                    tracing::debug!(error = %e, "publish ack");
                    Sent::Failed
                }
            },
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Sent::Unpublishable(format!(
                    "larger than the NATS server's max_payload ({} bytes)",
                    js.client().server_info().max_payload
                ))
            }
            Err(e) => {
                tracing::debug!(error = %e, "publish");
                Sent::Failed
            }
        }
    });
    futures::future::join_all(acks).await
}
