//! The event relay between the app and NATS JetStream (DESIGN.md, "NATS").
//!
//! Publishing, app → JetStream: [`api`] takes the app's events (HTTP and gRPC) and
//! [`envelope`] checks and wraps them; [`publisher`] makes each durable, acked by
//! JetStream or written to the bounded on-disk [`spool`]; [`flusher`] empties the spool
//! in order when NATS is back.
//!
//! Subscribing, JetStream → app: [`subscriber`] pulls from one durable consumer per
//! (service, type) shared by all replicas, while the app is healthy; [`delivery`] hands
//! each event to the app ([`receiver`]: HTTP POST or gRPC `EventHandler/Handle`) and
//! acks, naks with backoff or dead-letters it; [`dedupe`] keeps an id the app accepted
//! from reaching it twice.
//!
//! [`connect`] owns the connection, credentials and the stream; [`metrics`] counts it all;
//! [`error`] names what failed.

pub mod api;
pub mod connect;
pub mod dedupe;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod flusher;
pub mod metrics;
pub mod publisher;
pub mod receiver;
pub mod spool;
pub mod subscriber;
pub mod trace;

use crate::config::Settings;
use crate::health::AppHealth;
use crate::shutdown::Drain;
use crate::state::Readiness;
use api::EventsApi;
use async_nats::jetstream;
use delivery::DeliveryTarget;
pub use error::StartError;
use metrics::EventMetrics;
use receiver::AppReceiver;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use streamgate_crds::events::EventDelivery;
use streamgate_crds::service::Protocol;
use streamgate_telemetry::Traces;
use tokio::sync::watch;

/// The relay part that reports on the streams in `/readyz`.
pub const STREAM_PART: &str = "stream";

/// Most ids remembered per subscription for dedupe, whatever the window.
const DEDUPE_ENTRIES: usize = 200_000;

/// Connects (in the background), opens the spool, starts the flusher and one
/// subscriber per subscription, and returns the publish API. With no events
/// configured, nothing connects and every publish is refused as forbidden.
pub async fn start(
    settings: &Settings,
    health: watch::Receiver<AppHealth>,
    metrics: Arc<EventMetrics>,
    readiness: Arc<Readiness>,
    drain: Drain,
    stop: watch::Receiver<bool>,
    traces: Option<Arc<Traces>>,
) -> Result<EventsApi, StartError> {
    let service = &settings.document.service;
    let mut api = EventsApi {
        traces: traces.clone(),
        service: service.service_name.as_str().into(),
        allowed: service.events.publish.clone().into(),
        publisher: None,
        drain,
        max_payload: Arc::new(AtomicUsize::new(api::DEFAULT_MAX_PAYLOAD)),
        closing: Arc::default(),
    };
    if !settings.events.enabled {
        return Ok(api);
    }
    let (js, connected) = connect_relay(settings, api.max_payload.clone(), &readiness).await?;
    if !service.events.publish.is_empty() {
        api.publisher = Some(start_publisher(
            settings,
            &js,
            connected,
            metrics.clone(),
            readiness.clone(),
            traces.clone(),
        )?);
    }
    let shared = Shared {
        metrics,
        readiness,
        traces,
    };
    start_subscribers(settings, &js, health, shared, stop)?;
    Ok(api)
}

/// The JetStream context over a connection made in the background, the stream created
/// now if NATS is up (else by the flusher and subscribers later), and the server's
/// `max_payload` followed into `max_payload`.
async fn connect_relay(
    settings: &Settings,
    max_payload: Arc<AtomicUsize>,
    readiness: &Readiness,
) -> Result<(jetstream::Context, watch::Receiver<bool>), StartError> {
    let events = &settings.events;
    let name = format!(
        "streamgate-sidecar {}/{}",
        settings.document.pod.namespace, settings.document.pod.name
    );
    let (client, connected) = connect::connect(events, &name).await?;
    let js = connect::context(client, events);
    tokio::spawn(track_max_payload(
        js.client().clone(),
        connected.clone(),
        max_payload,
    ));
    if connected.borrow().to_owned()
        || js.client().connection_state() == async_nats::connection::State::Connected
    {
        // Best effort now; the flusher and subscribers retry until the stream exists.
        let ensured = connect::ensure_stream(&js, events).await;
        connect::report_stream(&js, readiness, STREAM_PART, &ensured);
    }
    Ok((js, connected))
}

/// The spool, its flusher, and the publisher the app's events go through.
fn start_publisher(
    settings: &Settings,
    js: &jetstream::Context,
    connected: watch::Receiver<bool>,
    metrics: Arc<EventMetrics>,
    readiness: Arc<Readiness>,
    traces: Option<Arc<Traces>>,
) -> Result<Arc<publisher::Publisher>, StartError> {
    let events = &settings.events;
    let spool = spool::Spool::open(&events.spool_dir, events.spool_max_bytes, metrics.clone())
        .map_err(|source| StartError::Spool {
            dir: events.spool_dir.clone(),
            source,
        })?;
    let window = publisher::Window::new(events.publish_in_flight);
    let flusher = flusher::Flusher {
        js: js.clone(),
        spool: spool.clone(),
        window: window.clone(),
        settings: events.clone(),
        metrics: metrics.clone(),
        readiness,
        traces: traces.clone(),
    };
    tokio::spawn(flusher::run(flusher, connected));
    Ok(Arc::new(publisher::Publisher::new(
        js.clone(),
        window,
        spool,
        metrics,
        traces,
    )))
}

/// One subscriber per subscription, delivering to the app's path for it.
/// What every subscriber shares.
struct Shared {
    metrics: Arc<EventMetrics>,
    readiness: Arc<Readiness>,
    traces: Option<Arc<Traces>>,
}

fn start_subscribers(
    settings: &Settings,
    js: &jetstream::Context,
    health: watch::Receiver<AppHealth>,
    shared: Shared,
    stop: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let Shared {
        metrics,
        readiness,
        traces,
    } = shared;
    let (events, service) = (&settings.events, &settings.document.service);
    let http = crate::http_client()
        .timeout(events.delivery_timeout)
        .build()
        .map_err(StartError::HttpClient)?;
    let authority = settings.health.authority_for(service.port);
    for subscription in &service.events.subscribe {
        let by_grpc = match subscription.delivery {
            Some(delivery) => delivery == EventDelivery::Grpc,
            None => service.protocol == Protocol::Grpc,
        };
        let app = if by_grpc {
            AppReceiver::grpc(&authority, events.delivery_timeout)
                .map_err(StartError::AppEndpoint)?
        } else {
            AppReceiver::Http {
                url: format!("http://{authority}{}", subscription.path),
                client: http.clone(),
            }
        };
        let target = Arc::new(DeliveryTarget {
            service: service.service_name.clone(),
            event_type: subscription.event_type.clone(),
            app,
            max_deliver: subscription.max_deliver.into(),
            ack_wait: events.delivery_timeout + std::time::Duration::from_secs(20),
            js: js.clone(),
            health: health.clone(),
            dedupe: Mutex::new(dedupe::Dedupe::new(events.duplicate_window, DEDUPE_ENTRIES)),
            metrics: metrics.clone(),
            traces: traces.clone(),
        });
        tokio::spawn(subscriber::run(
            js.clone(),
            events.clone(),
            target,
            events.delivery_in_flight,
            readiness.clone(),
            stop.clone(),
        ));
    }
    Ok(())
}

/// Keeps `limit` at the connected server's `max_payload` (servers of a cluster, or one
/// restarted with another setting, may differ).
async fn track_max_payload(
    client: async_nats::Client,
    mut connected: watch::Receiver<bool>,
    limit: Arc<AtomicUsize>,
) {
    loop {
        if *connected.borrow_and_update() {
            let max = client.server_info().max_payload;
            if max > 0 {
                limit.store(max, Ordering::Relaxed);
            }
        }
        if connected.changed().await.is_err() {
            return;
        }
    }
}
