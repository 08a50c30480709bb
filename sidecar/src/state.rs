//! Readiness: the sidecar holds its mTLS certificate (when the operator issues one) AND
//! the app is healthy AND the instance is registered in Consul AND the pod
//! is not shutting down AND the event relay can work (its streams and consumers could be
//! set up on a reachable NATS). `/readyz` answers from here, and so does the `ready`
//! metric.
//!
//! Independent writers (health checker, registration, shutdown, relay parts) each own
//! their flag; atomics keep them from ever waiting on each other, and the relay's
//! problems sit behind a lock of their own, held only to copy a string.

use crate::metrics::Metrics;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Readiness {
    /// False while a sidecar that gets its certificate from the operator has none yet.
    certificate_held: AtomicBool,
    app_healthy: AtomicBool,
    registered: AtomicBool,
    draining: AtomicBool,
    /// What keeps the event relay from working, by the part that found it (the stream,
    /// each subscription's consumer). Empty when it works or only waits for NATS.
    relay_problems: Mutex<BTreeMap<String, String>>,
    metrics: Arc<Metrics>,
}

/// Why the sidecar is not ready, for `/readyz`'s body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Draining,
    NoCertificate,
    AppUnhealthy,
    NotRegistered,
    RelayBroken,
}

impl NotReady {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::Draining => "shutting down",
            NotReady::NoCertificate => "no mTLS certificate from the identity endpoint yet",
            NotReady::AppUnhealthy => "the app is not healthy",
            NotReady::NotRegistered => "the instance is not registered in Consul",
            NotReady::RelayBroken => "the event relay cannot work",
        }
    }
}

impl Readiness {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Readiness {
            certificate_held: AtomicBool::new(true),
            app_healthy: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            relay_problems: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    /// Records (or, with `None`, clears) why the relay part `part` cannot work.
    pub fn set_relay_problem(&self, part: &str, problem: Option<String>) {
        let mut problems = self.lock_relay();
        let changed = match problem {
            Some(problem) => problems.insert(part.to_string(), problem.clone()) != Some(problem),
            None => problems.remove(part).is_some(),
        };
        let broken = !problems.is_empty();
        drop(problems);
        if changed {
            self.metrics.event_relay_working.set((!broken).into());
            self.publish();
        }
    }

    /// What keeps relay part `part` from working, if anything.
    pub fn relay_problem(&self, part: &str) -> Option<String> {
        self.lock_relay().get(part).cloned()
    }

    /// Why the sidecar is not ready, in full: the reason and, for the relay, what it met.
    pub fn explain(&self) -> Option<String> {
        let why = self.check().err()?;
        let mut text = why.as_str().to_string();
        if why == NotReady::RelayBroken {
            for (part, problem) in self.lock_relay().iter() {
                text.push_str(&format!("; {part}: {problem}"));
            }
        }
        Some(text)
    }

    fn lock_relay(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.relay_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn check(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Acquire) {
            Err(NotReady::Draining)
        } else if !self.certificate_held.load(Ordering::Acquire) {
            Err(NotReady::NoCertificate)
        } else if !self.app_healthy.load(Ordering::Acquire) {
            Err(NotReady::AppUnhealthy)
        } else if !self.registered.load(Ordering::Acquire) {
            Err(NotReady::NotRegistered)
        } else if !self.lock_relay().is_empty() {
            Err(NotReady::RelayBroken)
        } else {
            Ok(())
        }
    }

    pub fn set_certificate_held(&self, held: bool) {
        self.certificate_held.store(held, Ordering::Release);
        self.publish();
    }

    pub fn set_app_healthy(&self, healthy: bool) {
        self.app_healthy.store(healthy, Ordering::Release);
        self.metrics.app_healthy.set(healthy.into());
        self.publish();
    }

    pub fn set_registered(&self, registered: bool) {
        self.registered.store(registered, Ordering::Release);
        self.metrics.consul_registered.set(registered.into());
        self.publish();
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.publish();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn publish(&self) {
        self.metrics.ready.set(self.check().is_ok().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_healthy_registered_and_not_draining() {
        let r = Readiness::new(Arc::new(Metrics::new()));
        assert_eq!(r.check(), Err(NotReady::AppUnhealthy));
        r.set_app_healthy(true);
        assert_eq!(r.check(), Err(NotReady::NotRegistered));
        r.set_registered(true);
        assert_eq!(r.check(), Ok(()));
        r.set_relay_problem("stream", Some("subjects overlap".into()));
        r.set_relay_problem("consumer a", Some("no stream captures x".into()));
        assert_eq!(r.check(), Err(NotReady::RelayBroken));
        let why = r.explain().unwrap();
        assert!(
            why.contains("subjects overlap") && why.contains("consumer a"),
            "{why}"
        );
        r.set_relay_problem("stream", None);
        assert_eq!(
            r.check(),
            Err(NotReady::RelayBroken),
            "one part still cannot work"
        );
        r.set_relay_problem("consumer a", None);
        assert_eq!(r.check(), Ok(()));
        r.start_draining();
        assert_eq!(r.check(), Err(NotReady::Draining));
    }
}
