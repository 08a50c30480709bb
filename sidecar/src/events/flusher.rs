//! Empties the spool into JetStream, oldest first, whenever NATS is reachable.
//!
//! Each round reads a window of records, sends them all, and moves the spool's cursor
//! past the longest prefix JetStream acked; the rest are retried next round (those
//! stored already come back as duplicates, which JetStream drops by `Nats-Msg-Id`). A
//! record NATS can never take (over the server's `max_payload`, which may have fallen
//! since the record was accepted) counts as done once it is written to the spool's
//! dead-letter file: it never holds up the events behind it.

use super::connect::{ensure_stream, report_stream};
use super::metrics::EventMetrics;
use super::publisher::{Sent, Window, send_all};
use super::spool::Spool;
use super::spool::log::Record;
use super::trace;
use crate::backoff::Backoff;
use crate::config::events::EventSettings;
use async_nats::jetstream;
use std::sync::Arc;
use std::time::Duration;
use streamgate_telemetry::Traces;
use tokio::sync::watch;

/// Records sent per round: large enough to fill the ack window, small enough to bound
/// memory and the work redone after a failure.
const ROUND: usize = 512;

/// What the flusher works with.
pub struct Flusher {
    pub js: jetstream::Context,
    pub spool: Arc<Spool>,
    pub window: Window,
    pub settings: EventSettings,
    pub metrics: Arc<EventMetrics>,
    pub readiness: Arc<crate::state::Readiness>,
    pub traces: Option<Arc<Traces>>,
}

pub async fn run(flusher: Flusher, mut connected: watch::Receiver<bool>) {
    let Flusher {
        js,
        spool,
        window,
        settings,
        metrics,
        readiness,
        traces,
    } = flusher;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut stream_ready = false;
    loop {
        // Register interest before looking, so an append in between wakes us.
        let appended = spool.appended.notified();
        if spool.deactivate_if_empty() {
            appended.await;
            continue;
        }
        if !*connected.borrow_and_update() {
            // Either the connection comes back or a timer fires (the callback can be
            // missed for the very first connection).
            let _ = tokio::time::timeout(Duration::from_secs(1), connected.changed()).await;
            if js.client().connection_state() != async_nats::connection::State::Connected {
                continue;
            }
        }
        if !stream_ready {
            let ensured = ensure_stream(&js, &settings).await;
            report_stream(&js, &readiness, super::STREAM_PART, &ensured);
            if ensured.is_err() {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            stream_ready = true;
        }
        let round = flush_round(
            &js,
            &window,
            &spool,
            &metrics,
            &settings.spool_dir,
            traces.as_ref(),
        );
        match round.await {
            Ok(Round::AllAcked) => backoff.reset(),
            Ok(Round::Refused) => {
                // JetStream refused part of the round: maybe the stream went away.
                stream_ready = false;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Ok(Round::NothingReadable(pending_bytes)) => {
                // Bytes are counted as pending but no record can be read: never spin on
                // it; the log says so and the next round looks again.
                tracing::warn!(pending_bytes, "spool: pending bytes but no readable record");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "spool read failed");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// How a flush round went.
enum Round {
    /// Every record read was acked (or there was none and nothing is pending).
    AllAcked,
    /// JetStream refused or did not ack part of the round.
    Refused,
    /// The spool counts these pending bytes but yields no record.
    NothingReadable(u64),
}

async fn flush_round(
    js: &jetstream::Context,
    window: &Window,
    spool: &Arc<Spool>,
    metrics: &EventMetrics,
    spool_dir: &std::path::Path,
    traces: Option<&Arc<Traces>>,
) -> std::io::Result<Round> {
    let reader = spool.clone();
    let (records, pending) = tokio::task::spawn_blocking(move || reader.read_round(ROUND))
        .await
        .map_err(std::io::Error::other)??;
    if records.is_empty() {
        return Ok(match pending {
            0 => Round::AllAcked,
            bytes => Round::NothingReadable(bytes),
        });
    }
    let events: Vec<_> = records.iter().map(|r| r.event.clone()).collect();
    let spans = trace::sends(traces, &events, true);
    let sent = send_all(js, window, &events).await;
    trace::sent(spans, &sent);
    // The prefix that is done with: stored, or never publishable and set aside.
    let acked = sent.iter().take_while(|s| **s != Sent::Failed).count();
    let unpublishable: Vec<(&Record, &str)> = records[..acked]
        .iter()
        .zip(&sent)
        .filter_map(|(record, sent)| match sent {
            Sent::Unpublishable(reason) => Some((record, reason.as_str())),
            _ => None,
        })
        .collect();
    if !unpublishable.is_empty() {
        // Set aside before the commit: a crash in between resends, never loses.
        set_aside(spool_dir, &unpublishable, metrics).await?;
    }
    if acked > 0 {
        let next = records[acked - 1].next;
        let bytes = records[..acked].iter().map(|r| r.size).sum();
        let committer = spool.clone();
        let count = acked as u64;
        tokio::task::spawn_blocking(move || committer.commit(next, bytes, count))
            .await
            .map_err(std::io::Error::other)??;
        metrics.flushed.inc_by(acked as u64);
        metrics.acked.inc_by(acked as u64);
        tracing::debug!(count = acked, "flushed spooled events");
    }
    Ok(if acked == records.len() {
        Round::AllAcked
    } else {
        Round::Refused
    })
}

/// The spool's dead-letter file: one JSON line per event NATS can never take.
pub const DEAD_LETTER_FILE: &str = "dead-letters.jsonl";

/// Appends the unpublishable records to the dead-letter file (fsynced), each with why,
/// and says so once per event: the relay moves on past them instead of retrying the
/// head of the spool forever.
async fn set_aside(
    spool_dir: &std::path::Path,
    records: &[(&Record, &str)],
    metrics: &EventMetrics,
) -> std::io::Result<()> {
    let path = spool_dir.join(DEAD_LETTER_FILE);
    let mut lines = String::new();
    for (record, reason) in records {
        let event = &record.event;
        let line = serde_json::json!({
            "id": event.id,
            "subject": event.subject,
            "reason": reason,
            "envelope": String::from_utf8_lossy(&event.payload),
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let write_path = path.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&write_path)?;
        file.write_all(lines.as_bytes())?;
        file.sync_data()
    })
    .await
    .map_err(std::io::Error::other)??;
    // Said once it is true: a failed write leaves the records to the next round.
    for (record, reason) in records {
        let event = &record.event;
        tracing::error!(id = %event.id, subject = %event.subject, %reason, file = %path.display(),
            "an event NATS can never take was moved to the spool's dead-letter file");
    }
    metrics.unpublishable.inc_by(records.len() as u64);
    Ok(())
}
