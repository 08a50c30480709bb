//! Readiness: the app is healthy AND the instance is registered in Consul AND the pod
//! is not shutting down. `/readyz` answers from here, and so does the `ready` metric.
//!
//! Three independent writers (health checker, registration, shutdown) each own one
//! flag; atomics keep them from ever waiting on each other.

use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Readiness {
    app_healthy: AtomicBool,
    registered: AtomicBool,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Why the sidecar is not ready, for `/readyz`'s body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Draining,
    AppUnhealthy,
    NotRegistered,
}

impl NotReady {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::Draining => "shutting down",
            NotReady::AppUnhealthy => "the app is not healthy",
            NotReady::NotRegistered => "the instance is not registered in Consul",
        }
    }
}

impl Readiness {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Readiness {
            app_healthy: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn check(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Acquire) {
            Err(NotReady::Draining)
        } else if !self.app_healthy.load(Ordering::Acquire) {
            Err(NotReady::AppUnhealthy)
        } else if !self.registered.load(Ordering::Acquire) {
            Err(NotReady::NotRegistered)
        } else {
            Ok(())
        }
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
        r.start_draining();
        assert_eq!(r.check(), Err(NotReady::Draining));
    }
}
