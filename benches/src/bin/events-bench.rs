//! `events-bench`: the event relay's figures for `make bench`, each beside a baseline
//! measured in the same run: an app publishing straight to JetStream with async-nats.
//!
//! - throughput: 50,000 events through the sidecar (gRPC PublishBatch of 100, 10 calls
//!   in flight: as many events outstanding as the direct publisher's 1,024 acks) beside
//!   async-nats pipelined JetStream publishes, three alternated rounds, the median
//!   round's ratio reported (target >= 0.8x);
//! - added latency at a fixed 1,000 events/s for 3 s: unary Publish through the sidecar
//!   minus a direct publish-and-ack at the same rate, p50 and p99 (target p99 <= 1 ms).
//!
//! Run the release build: `cargo build --release --workspace --bins && target/release/events-bench`
//! (the sidecar is found beside it). NATS comes from `NATS_URL`, else a nats-server with
//! JetStream is started, as the tests start theirs, from `STREAMGATE_NATS_BIN`, the
//! `make tools` cache or `nats-server` on the PATH.
//! Exits 1 when a figure misses its target, 2 when the bench cannot run.

use anyhow::{Context, Result, ensure};
use async_nats::jetstream;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};
use streamgate_benches::figures::{exit_code, micros, verdict};
use streamgate_benches::running::Running;
use streamgate_benches::work_dir::WorkDir;
use streamgate_benches::{siblings, tools};
use streamgate_proto::sidecar::v1::events_client::EventsClient;
use streamgate_proto::sidecar::v1::{PublishBatchRequest, PublishRequest};
use streamgate_tests::nats_server::NatsServer;
use streamgate_tests::ports::free_port;
use streamgate_tests::wait::eventually;

/// Events per throughput round: long enough (about half a second) that one scheduling
/// hiccup on a shared machine does not decide the figure.
const EVENTS: usize = 50_000;
/// Rounds of (direct, sidecar), alternated so a noisy moment hits both; the median
/// round's ratio is reported.
const ROUNDS: usize = 3;
/// Acks the direct publisher keeps outstanding (the sidecar's default window).
const DIRECT_WINDOW: usize = 1024;
/// Events per PublishBatch call.
const BATCH: usize = 100;
/// Batch calls the app keeps in flight: as many events outstanding as the direct
/// publisher keeps acks (10 × 100 ≈ 1,024), so both sides get the same pipelining.
const CALLS_IN_FLIGHT: usize = DIRECT_WINDOW / BATCH;
const RATE_SECONDS: u64 = 3;
const THROUGHPUT_TARGET: f64 = 0.8;
const P99_TARGET: Duration = Duration::from_millis(1);

type Events = EventsClient<tonic::transport::Channel>;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime");
    exit_code(
        "events-bench",
        runtime.and_then(|runtime| runtime.block_on(bench())),
    )
}

async fn bench() -> Result<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sidecar_bin = siblings::binary("streamgate-sidecar")?;
    let work = WorkDir::new("events-bench")?;
    let (nats_url, _nats) = nats(&work).await?;
    let event_type = format!("bench{}.event", std::process::id());
    let subject = format!("streamgate.{event_type}");

    let app_listen = format!("127.0.0.1:{}", free_port()?);
    let _sidecar = spawn_sidecar(&sidecar_bin, &nats_url, &app_listen, &event_type, &work)?;

    let client = async_nats::connect(&nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let js = jetstream::new(client);
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{app_listen}"))?.connect_lazy();
    let grpc = EventsClient::new(channel);
    wait_publish_works(&grpc, &event_type).await?;
    let payload = envelope(&event_type);

    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let direct = direct_throughput(&js, &subject, &payload).await?;
        let relayed = sidecar_throughput(&grpc, &event_type).await?;
        rounds.push((relayed / direct, direct, relayed));
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, direct, relayed) = rounds[rounds.len() / 2];
    let all_ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.0)).collect();
    let direct_lat = at_rate(|| {
        let js = js.clone();
        let (subject, payload) = (subject.clone(), payload.clone());
        async move {
            let ack = js
                .send_publish(
                    subject,
                    jetstream::message::PublishMessage::build()
                        .payload(payload.into())
                        .message_id(new_id()),
                )
                .await?;
            ack.await?;
            Ok(())
        }
    })
    .await?;
    let relayed_lat = at_rate(|| {
        let mut grpc = grpc.clone();
        let event_type = event_type.clone();
        async move {
            grpc.publish(request(&event_type)).await?;
            Ok(())
        }
    })
    .await?;

    let (d50, d99) = (percentile(&direct_lat, 0.50), percentile(&direct_lat, 0.99));
    let (s50, s99) = (
        percentile(&relayed_lat, 0.50),
        percentile(&relayed_lat, 0.99),
    );
    let added50 = s50.saturating_sub(d50);
    let added99 = s99.saturating_sub(d99);
    let throughput_ok = ratio >= THROUGHPUT_TARGET;
    let latency_ok = added99 <= P99_TARGET;
    row("events", "value", "baseline (same run)", "target");
    row(
        "publish throughput, gRPC batched",
        &format!("{relayed:.0}/s"),
        &format!(
            "async-nats JetStream direct {direct:.0}/s (median ratio {ratio:.2} of {})",
            all_ratios.join(", ")
        ),
        &verdict(throughput_ok, ">= 0.8x"),
    );
    row(
        "publish latency p50 at 1,000/s",
        &micros(s50),
        &format!("direct {} (added {})", micros(d50), micros(added50)),
        "",
    );
    row(
        "publish latency p99 at 1,000/s",
        &micros(s99),
        &format!("direct {} (added {})", micros(d99), micros(added99)),
        &verdict(latency_ok, "added p99 <= 1 ms (Dapr: 1.87 ms)"),
    );
    Ok(throughput_ok && latency_ok)
}

/// A seed-shaped envelope of realistic size (~200 bytes).
fn envelope(event_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": event_type, "source": "bench", "timestamp": 1_700_000_000u64,
        "data": {"fileId": "f-0123456789", "size": 1048576, "path": "/uploads/2024/video.mp4"},
        "id": new_id(),
    }))
    .unwrap_or_default()
}

fn request(event_type: &str) -> PublishRequest {
    PublishRequest {
        r#type: event_type.to_string(),
        data_json: r#"{"fileId":"f-0123456789","size":1048576,"path":"/uploads/2024/video.mp4"}"#
            .into(),
        id: String::new(),
    }
}

fn new_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Pipelined publishes with the sidecar's own window ([`DIRECT_WINDOW`] acks in flight).
async fn direct_throughput(js: &jetstream::Context, subject: &str, payload: &[u8]) -> Result<f64> {
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(DIRECT_WINDOW);
    for _ in 0..EVENTS {
        if pending.len() >= DIRECT_WINDOW
            && let Some(ack) = pending.pop_front()
        {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.to_vec().into())
            .message_id(new_id());
        pending.push_back(js.send_publish(subject.to_string(), message).await?);
    }
    for ack in pending {
        ack.await?;
    }
    Ok(EVENTS as f64 / started.elapsed().as_secs_f64())
}

async fn sidecar_throughput(grpc: &Events, event_type: &str) -> Result<f64> {
    let started = Instant::now();
    let calls = EVENTS / BATCH;
    let mut tasks = Vec::new();
    for worker in 0..CALLS_IN_FLIGHT {
        let mut grpc = grpc.clone();
        let event_type = event_type.to_string();
        tasks.push(tokio::spawn(async move {
            for _ in (worker..calls).step_by(CALLS_IN_FLIGHT) {
                let events = (0..BATCH).map(|_| request(&event_type)).collect();
                grpc.publish_batch(PublishBatchRequest { events }).await?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(EVENTS as f64 / started.elapsed().as_secs_f64())
}

/// Starts one call per millisecond for RATE_SECONDS; returns each call's latency.
async fn at_rate<F, Fut>(call: F) -> Result<Vec<Duration>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for _ in 0..RATE_SECONDS * 1000 {
        tick.tick().await;
        let fut = call();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            fut.await.map(|()| started.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        latencies.push(task.await??);
    }
    latencies.sort();
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted.get(index).copied().unwrap_or_default()
}

/// Until a Publish is sent on to NATS rather than spooled (the sidecar has connected).
async fn wait_publish_works(grpc: &Events, event_type: &str) -> Result<()> {
    eventually(
        "the sidecar publishes to NATS",
        Duration::from_secs(30),
        || {
            let mut grpc = grpc.clone();
            let request = request(event_type);
            async move {
                let reply = grpc.publish(request).await?;
                ensure!(!reply.get_ref().spooled, "spooled: NATS not connected yet");
                Ok(Some(()))
            }
        },
    )
    .await
}

fn row(name: &str, value: &str, baseline: &str, target: &str) {
    println!("{name:<36} {value:>10}   {baseline:<52} {target}");
}

fn spawn_sidecar(
    bin: &Path,
    nats: &str,
    app_listen: &str,
    event_type: &str,
    work: &WorkDir,
) -> Result<Running> {
    // Consul at a port where nothing listens: registration retries in the background
    // and does not touch the events path being measured.
    let document = format!(
        "service: {{serviceName: bench, port: {app_port}, events: {{publish: [{event_type}]}}}}\n\
         pod: {{name: bench-0, namespace: bench, ip: 127.0.0.1}}\n\
         listen: {{app: '{app_listen}', inbound: '127.0.0.1:{inbound}', admin: '127.0.0.1:{admin}'}}\n\
         consul: {{address: 'http://127.0.0.1:{consul}'}}\n\
         nats: {{url: '{nats}'}}\nspoolDir: '{spool}'\nlogLevel: warn\n",
        app_port = free_port()?,
        inbound = free_port()?,
        admin = free_port()?,
        consul = free_port()?,
        spool = work.join("spool").display(),
    );
    let mut command = Command::new(bin);
    command.env_clear().env("STREAMGATE_CONFIG", document);
    Running::spawn(
        "sidecar",
        command,
        &work.join("sidecar.log"),
        Duration::ZERO,
    )
}

/// `NATS_URL`, else a nats-server with JetStream of our own, started as the tests start
/// theirs and stopped when the returned value is dropped.
async fn nats(work: &WorkDir) -> Result<(String, Option<NatsServer>)> {
    if let Ok(url) = std::env::var("NATS_URL") {
        return Ok((url, None));
    }
    let bin = tools::NATS_SERVER.locate()?;
    let server = NatsServer::start_new(&bin, &work.join("nats"), None)
        .await
        .with_context(|| format!("starting nats-server ({})", bin.display()))?;
    Ok((server.url(), Some(server)))
}
