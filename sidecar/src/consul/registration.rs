//! Keeps the pod's instance true in Consul for the pod's whole life.
//!
//! Two phases in a loop: *register* (retrying with backoff until Consul accepts), then
//! *maintain*: the check follows every change of the app's health (in agent mode also
//! refreshed well within its TTL), while a blocking query on the instance notices at once
//! when the agent restarts or Consul forgets the instance. Any failure sends the loop back to
//! *register*; registering is idempotent, so "when in doubt, register again" is safe
//! and needs no case analysis of what Consul lost.

use super::client::ConsulClient;
use super::instance::{CheckStatus, PodInstance};
use crate::backoff::Backoff;
use crate::health::AppHealth;
use crate::metrics::Metrics;
use crate::state::Readiness;
use std::sync::Arc;
use std::time::Duration;
use streamgate_consul::{ConsulError, Seen};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Retries while Consul is away: quick at first, and capped at 1 s so that a Consul
/// that comes back sees the instance again within 2 s.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

pub struct Registrar {
    client: ConsulClient,
    instance: PodInstance,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

impl Registrar {
    pub fn new(
        client: ConsulClient,
        instance: PodInstance,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Registrar {
            client,
            instance,
            readiness,
            metrics,
        }
    }

    pub fn instance(&self) -> &PodInstance {
        &self.instance
    }

    /// Registers and maintains the instance until `stop` turns true.
    pub async fn maintain(
        &self,
        mut health: watch::Receiver<AppHealth>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        let mut registrations = 0u64;
        loop {
            if !self
                .register_until_accepted(&mut health, &mut stop, &mut backoff)
                .await
            {
                return;
            }
            registrations += 1;
            self.metrics.consul_registrations.inc();
            if registrations == 1 {
                tracing::info!(id = %self.instance.id, consul = %self.client.address(), "registered in Consul");
            } else {
                tracing::info!(id = %self.instance.id, "registered in Consul again");
            }
            self.readiness.set_registered(true);
            match self.follow(&mut health, &mut stop).await {
                None => return,
                Some(e) => {
                    tracing::warn!(error = %e, "registration in Consul lost or in doubt; registering again");
                    self.readiness.set_registered(false);
                }
            }
        }
    }

    /// Returns false when asked to stop first.
    async fn register_until_accepted(
        &self,
        health: &mut watch::Receiver<AppHealth>,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> bool {
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return false;
            }
            let current = health.borrow_and_update().clone();
            match self.register(&current).await {
                Ok(()) => {
                    backoff.reset();
                    return true;
                }
                Err(e) => {
                    failures += 1;
                    // Once per outage at warn; the retries themselves are metrics.
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot register in Consul; retrying with backoff");
                    } else {
                        tracing::debug!(error = %e, failures, "registration retry failed");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.changed() => return false,
            }
        }
    }

    /// Registration followed by the check's status and note, so the instance carries the
    /// latest output from the first moment.
    async fn register(&self, current: &AppHealth) -> Result<(), ConsulError> {
        self.client
            .register(&self.instance, status_of(current), &current.output)
            .await
    }

    /// Maintains a registered instance; returns the error that put it in doubt, or
    /// `None` when asked to stop.
    async fn follow(
        &self,
        health: &mut watch::Receiver<AppHealth>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<ConsulError> {
        // Agent mode refreshes the TTL check; the catalog runs no TTL, so a refresh
        // there would only wake every caller's blocking query for nothing.
        let refreshes = match self.client.needs_refresh().await {
            Ok(refreshes) => refreshes,
            Err(e) => return Some(e),
        };
        let mut refresh = tokio::time::interval(self.instance.ttl / 3);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        refresh.tick().await; // the first tick is immediate; the check was just set
        let mut watch = Box::pin(self.client.watch(&self.instance, None));
        loop {
            let result = tokio::select! {
                _ = stop.changed() => return None,
                changed = health.changed() => {
                    if changed.is_err() {
                        return None; // the health checker is gone: the process is ending
                    }
                    let current = health.borrow_and_update().clone();
                    self.update(&current).await
                }
                _ = refresh.tick(), if refreshes => {
                    let current = health.borrow().clone();
                    self.update(&current).await
                }
                seen = &mut watch => seen.map(|seen: Seen| {
                    watch = Box::pin(self.client.watch(&self.instance, Some(seen)));
                }),
            };
            if let Err(e) = result {
                return Some(e);
            }
        }
    }

    async fn update(&self, current: &AppHealth) -> Result<(), ConsulError> {
        self.client
            .set_check(&self.instance, status_of(current), &current.output)
            .await
    }

    /// On shutdown: the check goes critical first, so discovery stops choosing this
    /// instance even if the deregistration cannot get through, then the instance is
    /// removed. Retries until it succeeds; the caller bounds it with the drain deadline.
    pub async fn leave(&self) {
        self.readiness.set_registered(false);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        loop {
            let critical = self
                .client
                .set_check(
                    &self.instance,
                    CheckStatus::Critical,
                    "the pod is shutting down",
                )
                .await;
            if let Err(e) = &critical {
                tracing::debug!(error = %e, "could not set the check critical before deregistering");
            }
            match self.client.deregister(&self.instance).await {
                Ok(()) => {
                    tracing::info!(id = %self.instance.id, "deregistered from Consul");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot deregister from Consul; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

fn status_of(health: &AppHealth) -> CheckStatus {
    if health.health.is_healthy() {
        CheckStatus::Passing
    } else {
        CheckStatus::Critical
    }
}
