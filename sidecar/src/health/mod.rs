//! The app health checker: probes the app every period ([`probe`]), judges the results
//! with thresholds ([`thresholds`]) and publishes the [`AppHealth`] on a watch channel
//! that Consul registration and readiness follow.
//!
//! Probes run one after another, never overlapping: timeoutSeconds < periodSeconds, so
//! a slow app cannot pile probes up. State changes are logged once; a steady state is
//! only counted in metrics.

pub mod probe;
pub mod thresholds;

use crate::config::HealthSettings;
use crate::metrics::Metrics;
use crate::state::Readiness;
use probe::Probe;
use std::sync::Arc;
use thresholds::{Health, Thresholds};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// The app's health and the latest probe's output (the Consul check's note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealth {
    pub health: Health,
    pub output: String,
}

impl AppHealth {
    pub fn starting() -> Self {
        AppHealth {
            health: Health::Unknown,
            output: "waiting for the first health check of the app".into(),
        }
    }
}

/// Probes until the process ends.
pub async fn run(
    settings: HealthSettings,
    mut probe: Probe,
    tx: watch::Sender<AppHealth>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
) {
    let mut thresholds = Thresholds::new(settings.failure_threshold, settings.success_threshold);
    // The first probe runs at once: a sidecar started beside a healthy app is ready in
    // milliseconds, not a period later.
    let mut ticks = tokio::time::interval(settings.period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let result = probe.check(settings.timeout).await;
        metrics.observe_check(result.ok, started.elapsed());
        let change = thresholds.observe(result.ok);
        if let Some(health) = change {
            metrics.health_transitions.inc();
            match health {
                Health::Healthy => tracing::info!(output = %result.output, "app is healthy"),
                _ => tracing::warn!(output = %result.output, "app is not healthy"),
            }
            readiness.set_app_healthy(health.is_healthy());
        } else {
            tracing::debug!(ok = result.ok, output = %result.output, "health probe");
        }
        let health = thresholds.state();
        // Subscribers wake only when something they report changed.
        tx.send_if_modified(|current| {
            if current.health == health && current.output == result.output {
                return false;
            }
            *current = AppHealth {
                health,
                output: result.output,
            };
            true
        });
    }
}
