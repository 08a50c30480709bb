//! Termination signals and the drain of in-flight work.
//!
//! Kubernetes sends SIGTERM once and SIGKILL after the grace period; a person at a
//! terminal presses Ctrl-C. The first signal starts the graceful sequence in
//! [`crate::run`]; a second one means "now", so [`Signals::next`] is awaited for both.
//!
//! [`Drain`] counts in-flight work (proxied calls, relayed events) so shutdown can wait
//! for it: each piece holds an [`InFlight`] guard while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;

/// SIGTERM and SIGINT, listened to from start-up so none is missed.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn listen() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and names it.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Counts in-flight work and wakes waiters when it reaches zero.
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<DrainInner>,
}

#[derive(Default)]
struct DrainInner {
    active: AtomicUsize,
    idle: Notify,
}

/// Held while one piece of work runs.
pub struct InFlight {
    inner: Arc<DrainInner>,
}

impl Drain {
    pub fn track(&self) -> InFlight {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        InFlight {
            inner: self.inner.clone(),
        }
    }

    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Returns once no work is in flight.
    pub async fn idle(&self) {
        loop {
            // Register interest before checking, so a guard dropped in between is seen.
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_every_guard() {
        let drain = Drain::default();
        drain.idle().await; // nothing in flight: returns at once
        let a = drain.track();
        let b = drain.track();
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one guard is still held");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(drain.active(), 0);
    }
}
