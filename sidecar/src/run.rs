//! Wires the parts together and runs the shutdown sequence:
//!
//! 1. start: signal handlers, admin server, health checker, event relay and the app
//!    listener, Consul registration (once the sidecar holds its mTLS certificate, when
//!    the operator issues it);
//! 2. the app container's `preStop` hook (`/leave`, see [`crate::departure`]): the
//!    instance leaves Consul, serves for `leaveDelay`, then inbound stops taking calls —
//!    all before the kubelet stops the app;
//! 3. first SIGTERM/SIGINT (after the app exited): the same departure if no hook ran,
//!    subscriptions stop pulling, new publishes are refused (503), in-flight publishes
//!    and deliveries drain, and the spool is flushed to JetStream;
//! 4. exit 0 when all that is done, or at once (exit 1) on a second signal or when
//!    `drainTimeout` runs out, saying how many events stay in the spool for the next
//!    sidecar on the same volume.

use crate::EXIT_FAILURE;
use crate::admin::{self, AdminState};
use crate::app_listener;
use crate::config::Settings;
use crate::consul::{ConsulClient, PodInstance, Registrar, pod_instance};
use crate::departure::{Departure, LeaveCallers};
use crate::error::StartError;
use crate::health::{self, AppHealth, probe::Probe};
use crate::metrics::Metrics;
use crate::shutdown::{Drain, Signals};
use crate::state::Readiness;
use std::sync::{Arc, OnceLock};
use streamgate_telemetry::Traces;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Runs the sidecar until it is told to stop; returns the process exit code.
pub async fn run(settings: Settings) -> u8 {
    init_logging(&settings);
    match start_and_wait(settings, Drain::default()).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            EXIT_FAILURE
        }
    }
}

async fn start_and_wait(settings: Settings, drain: Drain) -> Result<u8, StartError> {
    let mut signals = Signals::listen().map_err(StartError::Signals)?;
    let running = start(&settings, drain).await?;
    let signal = signals.next().await;
    tracing::info!(signal, drain_timeout = ?settings.drain_timeout, "shutting down");
    let code = running.stop(&mut signals, settings.drain_timeout).await;
    let (records, bytes) = running.events.unsent();
    if records > 0 {
        tracing::warn!(
            events = records,
            bytes,
            spool = %settings.events.spool_dir.display(),
            "events stay in the spool unsent; the next sidecar started on the same volume sends them"
        );
    }
    Ok(code)
}

/// What runs once the sidecar has started, and what its shutdown needs.
struct Running {
    departure: Arc<Departure>,
    /// Stops the event relay's subscriptions.
    stop: watch::Sender<bool>,
    drain: Drain,
    /// The publish API: closed and its spool flushed on shutdown.
    events: crate::events::api::EventsApi,
    /// The span exporter: what it holds is sent before the process exits.
    traces: Option<Arc<Traces>>,
}

/// Starts every part in order: admin server, health checker, event relay, forwarding
/// and its listeners, then the Consul registration (the last, so callers find an
/// instance only once it can answer).
async fn start(settings: &Settings, drain: Drain) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let service_name = &settings.document.service.service_name;
    let traces = Traces::from_env(service_name, metrics.traces.clone())?;
    let readiness = Arc::new(Readiness::new(metrics.clone()));
    let mut instance = pod_instance(settings);
    let listener = admin::bind(settings.listen.admin)
        .await
        .map_err(listen_error("listen.admin", settings.listen.admin))?;
    let departure_slot = Arc::new(OnceLock::new());
    let admin_state = AdminState {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        config_json: effective_config(settings, &instance).into(),
        departure: departure_slot.clone(),
        leave_callers: LeaveCallers {
            pod_ip: settings.pod_ip,
            host_ip: settings.host_ip,
        },
    };
    tokio::spawn(admin::serve(listener, admin_state));

    let (health_tx, health_rx) = watch::channel(AppHealth::starting());
    let probe = Probe::new(&settings.health)?;
    tokio::spawn(health::run(
        settings.health.clone(),
        probe,
        health_tx,
        readiness.clone(),
        metrics.clone(),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let events = crate::events::start(
        settings,
        health_rx.clone(),
        metrics.events.clone(),
        readiness.clone(),
        drain.clone(),
        stop_rx,
        traces.clone(),
    )
    .await?;
    let forwarding =
        crate::forward::start(settings, metrics.forward.clone(), traces.clone()).await?;
    if forwarding.mtls {
        instance.meta.insert(
            streamgate_consul::contract::META_INBOUND.to_string(),
            streamgate_consul::contract::INBOUND_MTLS.to_string(),
        );
    }
    serve_listeners(settings, &forwarding, events.clone()).await?;

    let node_address = settings.host_ip.unwrap_or(settings.pod_ip);
    let client = ConsulClient::new(&settings.consul, node_address, metrics.clone())
        .map_err(StartError::ConsulClient)?;
    let registrar = Arc::new(Registrar::new(
        client,
        instance,
        readiness.clone(),
        metrics.clone(),
    ));
    let (stop_registration, registration_stopped) = watch::channel(false);
    if forwarding.issued.is_some() {
        readiness.set_certificate_held(false);
    }
    let maintain = tokio::spawn({
        let registrar = registrar.clone();
        let issued = forwarding.issued.clone();
        let readiness = readiness.clone();
        async move {
            // Callers find the instance only once it can answer them over mTLS.
            if let Some(store) = issued {
                let mut stopped = registration_stopped.clone();
                tokio::select! {
                    _ = store.held() => readiness.set_certificate_held(true),
                    _ = stopped.wait_for(|stopped| *stopped) => return,
                }
            }
            registrar.maintain(health_rx, registration_stopped).await
        }
    });
    let departure = Departure::new(
        registrar.clone(),
        stop_registration,
        maintain,
        readiness.clone(),
        forwarding.inbound.clone(),
        settings.leave_delay,
    );
    let _ = departure_slot.set(departure.clone());
    tracing::info!(
        service = %settings.document.service.service_name,
        id = %registrar.instance().id,
        admin = %settings.listen.admin,
        "sidecar started"
    );
    Ok(Running {
        departure,
        stop: stop_tx,
        drain,
        events,
        traces,
    })
}

/// The inbound listener (other sidecars' calls) and the app-facing one (the app's calls
/// and events).
async fn serve_listeners(
    settings: &Settings,
    forwarding: &crate::forward::Forwarding,
    events: crate::events::api::EventsApi,
) -> Result<(), StartError> {
    let inbound_listener = TcpListener::bind(settings.listen.inbound)
        .await
        .map_err(listen_error("listen.inbound", settings.listen.inbound))?;
    tokio::spawn(forwarding.inbound.clone().serve(inbound_listener));
    let app_listener = app_listener::bind(settings.listen.app)
        .await
        .map_err(listen_error("listen.app", settings.listen.app))?;
    tokio::spawn(app_listener::serve(
        app_listener,
        app_listener::router(events, forwarding.outbound.clone()),
    ));
    Ok(())
}

impl Running {
    /// The drain sequence; the exit code says whether it completed in time.
    async fn stop(&self, signals: &mut Signals, drain_timeout: std::time::Duration) -> u8 {
        // Usually a no-op: the preStop hook made the pod leave while the app still ran.
        self.departure.start_leaving();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        let drain = self.drain.clone();
        let graceful = async {
            let _ = self.stop.send(true);
            self.events.close();
            self.departure.left_consul(drain_timeout).await;
            self.departure.stop_inbound().await;
            drain.idle().await;
            let (records, _) = self.events.unsent();
            if records > 0 {
                tracing::info!(
                    events = records,
                    "flushing the spool to JetStream before exiting"
                );
            }
            self.events.flushed().await;
            if let Some(traces) = self.traces.clone() {
                // The exporter's last batch; blocking (its own thread), so not on a worker.
                let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
            }
        };
        tokio::select! {
            _ = graceful => {
                tracing::info!("shutdown complete");
                0
            }
            signal = signals.next() => {
                tracing::warn!(signal, in_flight = drain.active(), "second signal: exiting now");
                EXIT_FAILURE
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(in_flight = drain.active(), "drainTimeout reached: exiting now");
                EXIT_FAILURE
            }
        }
    }
}

fn listen_error(
    field: &'static str,
    addr: std::net::SocketAddr,
) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Listen {
        field,
        addr,
        source,
    }
}

/// `/config`'s body: the effective document, the resolved Consul address and
/// instance, and whether a token is set, never the token itself.
fn effective_config(settings: &Settings, instance: &PodInstance) -> String {
    let value = serde_json::json!({
        "config": settings.document,
        "consul": {
            "address": settings.consul.address,
            "token": settings.consul.token.as_ref().map(|_| "<redacted>"),
            "mode": settings.consul.mode.as_str(),
            "instanceId": instance.id,
            "checkId": instance.check_id,
            "ttl": format!("{}ms", instance.ttl.as_millis()),
        },
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// Logs to stderr; `RUST_LOG`, when set, wins over `logLevel`.
fn init_logging(settings: &Settings) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_level.as_str()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
