//! The bounded on-disk spool: where accepted events wait while NATS is unreachable.
//!
//! [`log`] is the file format. [`Spool`] puts it behind one writer thread that commits
//! in groups: every append queued while an fsync runs is written and fsynced together
//! by the next one, so a burst of publishes during an outage costs a few fsyncs, not
//! one each. Reads and commits come from the flusher, on the blocking pool.
//!
//! While the spool holds anything, new publishes are spooled too ([`Spool::is_active`]),
//! so one caller's events reach JetStream in the order it published them.

pub mod log;

use super::envelope::Outgoing;
use crate::events::metrics::EventMetrics;
use log::{Log, Position, Record};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::{Notify, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({pending} of {max} bytes waiting for NATS)")]
    Full { pending: u64, max: u64 },
    #[error("the spool cannot be written: {0}")]
    Io(String),
}

type Append = (Vec<Outgoing>, oneshot::Sender<Result<(), SpoolError>>);

pub struct Spool {
    log: Mutex<Log>,
    max_bytes: u64,
    active: AtomicBool,
    /// Wakes the flusher when something was spooled.
    pub appended: Notify,
    /// Wakes a shutdown waiting for the spool to empty when the flusher sent some.
    committed: Notify,
    writer: Mutex<mpsc::Sender<Append>>,
    metrics: Arc<EventMetrics>,
}

impl Spool {
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<EventMetrics>,
    ) -> std::io::Result<Arc<Spool>> {
        let log = Log::open(dir)?;
        let pending = log.pending_bytes();
        metrics
            .spool_bytes
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        metrics
            .spool_events
            .set(i64::try_from(log.pending_records()).unwrap_or(i64::MAX));
        let (tx, rx) = mpsc::channel::<Append>();
        let spool = Arc::new(Spool {
            log: Mutex::new(log),
            max_bytes,
            active: AtomicBool::new(pending > 0),
            appended: Notify::new(),
            committed: Notify::new(),
            writer: Mutex::new(tx),
            metrics,
        });
        let weak = Arc::downgrade(&spool);
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(&weak, &rx))?;
        Ok(spool)
    }

    /// True while events wait in the spool: new publishes must queue behind them.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Appends the events durably (fsynced) or refuses them all when they do not fit.
    pub async fn append(&self, events: Vec<Outgoing>) -> Result<(), SpoolError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.lock_writer().send((events, tx));
        if sent.is_err() {
            return Err(SpoolError::Io("the spool writer stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(SpoolError::Io("the spool writer stopped".into())))
    }

    /// Up to `max` unsent records, oldest first, and the bytes still pending when none
    /// could be read, both under one lock (so an append in between cannot look like an
    /// unreadable record). Blocking: call from the blocking pool.
    pub fn read_round(&self, max: usize) -> std::io::Result<(Vec<Record>, u64)> {
        let log = self.lock_log();
        let records = log.read(max)?;
        let pending = if records.is_empty() {
            log.pending_bytes()
        } else {
            0
        };
        Ok((records, pending))
    }

    /// The `records` up to `next` were acked by JetStream (blocking).
    pub fn commit(&self, next: Position, bytes: u64, records: u64) -> std::io::Result<()> {
        let mut log = self.lock_log();
        log.commit(next, bytes, records)?;
        self.publish_size(&log);
        drop(log);
        self.committed.notify_waiters();
        Ok(())
    }

    /// What waits to be sent: records and bytes.
    pub fn unsent(&self) -> (u64, u64) {
        let log = self.lock_log();
        (log.pending_records(), log.pending_bytes())
    }

    /// Returns once nothing waits in the spool (at once when nothing does).
    pub async fn emptied(&self) {
        loop {
            // Register interest before looking, so a commit in between is seen.
            let committed = self.committed.notified();
            if self.unsent().1 == 0 {
                return;
            }
            committed.await;
        }
    }

    /// Turns direct publishing back on once nothing waits; decided under the log's lock,
    /// so an append cannot slip in between the check and the switch unseen.
    pub fn deactivate_if_empty(&self) -> bool {
        let log = self.lock_log();
        let empty = log.pending_bytes() == 0;
        if empty {
            self.active.store(false, Ordering::Release);
        }
        empty
    }

    fn publish_size(&self, log: &Log) {
        self.metrics
            .spool_bytes
            .set(i64::try_from(log.pending_bytes()).unwrap_or(i64::MAX));
        self.metrics
            .spool_events
            .set(i64::try_from(log.pending_records()).unwrap_or(i64::MAX));
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, mpsc::Sender<Append>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer thread: takes every queued append, writes those that fit, fsyncs once,
/// answers them all. Ends when the spool is dropped.
fn write_loop(spool: &std::sync::Weak<Spool>, rx: &mpsc::Receiver<Append>) {
    while let Ok(first) = rx.recv() {
        let Some(spool) = spool.upgrade() else { return };
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let mut log = spool.lock_log();
        let mut accepted = Vec::new();
        let mut answers = Vec::new();
        let mut pending = log.pending_bytes();
        for (events, reply) in group {
            let size: u64 = events.iter().map(Log::record_size).sum();
            if pending + size > spool.max_bytes {
                let _ = reply.send(Err(SpoolError::Full {
                    pending,
                    max: spool.max_bytes,
                }));
                continue;
            }
            pending += size;
            accepted.extend(events);
            answers.push(reply);
        }
        let count = accepted.len() as u64;
        let result = if accepted.is_empty() {
            Ok(())
        } else {
            log.append(&accepted)
                .map_err(|e| SpoolError::Io(e.to_string()))
        };
        if result.is_ok() && count > 0 {
            spool.active.store(true, Ordering::Release);
            spool.metrics.spooled.inc_by(count);
            spool.publish_size(&log);
        }
        drop(log);
        if count > 0 {
            spool.appended.notify_one();
        }
        for reply in answers {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(SpoolError::Io(e)) => Err(SpoolError::Io(e.clone())),
                Err(SpoolError::Full { pending, max }) => Err(SpoolError::Full {
                    pending: *pending,
                    max: *max,
                }),
            });
        }
    }
}
