//! The event relay against real nats-server JetStream: publish → a subscribing
//! service's app, replicas sharing one durable consumer, NATS outages with the spool,
//! redelivery and dead letters, pausing for an unhealthy app, seed-style publishers,
//! refusals and token auth. Sidecars and demo apps run as processes.

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use streamgate_tests::TestEnv;
use streamgate_tests::nats_server::NatsServer;
use streamgate_tests::ports::free_port;
use streamgate_tests::sidecar::{DemoApp, Sidecar, SidecarOptions, log_dir, pod_ip};
use streamgate_tests::wait::eventually;

const STREAM: &str = "STREAMGATE";

/// One pod: the demo app and its sidecar, the app publishing through the sidecar.
struct Pod {
    app: DemoApp,
    sidecar: Sidecar,
    options: SidecarOptions,
    dir: PathBuf,
}

struct PodSpec<'a> {
    service: &'a str,
    consul: &'a str,
    /// `service.events`, e.g. `{publish: [a.b]}`.
    events: String,
    /// The `nats:` mapping.
    nats: String,
    pod_name: Option<String>,
}

impl Pod {
    async fn start(dir: &Path, spec: PodSpec<'_>) -> Result<Pod> {
        let pod = Self::launch(dir, spec).await?;
        pod.sidecar.wait_ready(Duration::from_secs(30)).await?;
        Ok(pod)
    }

    /// The app and its sidecar, without waiting for the sidecar to be ready.
    async fn launch(dir: &Path, spec: PodSpec<'_>) -> Result<Pod> {
        let ip = pod_ip();
        let app_listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let app_addr: SocketAddr = format!("{ip}:{}", free_port()?).parse()?;
        let app = DemoApp::start_for_events(dir, app_addr, app_listen).await?;
        let mut options = SidecarOptions::new(spec.service, &ip, app.addr, spec.consul);
        let pod_name = spec
            .pod_name
            .unwrap_or_else(|| format!("{}-pod", spec.service));
        options.app_listen = app_listen;
        options.events = spec.events;
        options.extra = format!(
            "nats: {}\nspoolDir: '{}'\n",
            spec.nats,
            dir.join(format!("spool-{pod_name}")).display()
        );
        options.pod_name = Some(pod_name);
        let sidecar = Sidecar::start(dir, &options)?;
        Ok(Pod {
            app,
            sidecar,
            options,
            dir: dir.to_path_buf(),
        })
    }

    /// SIGKILLs the sidecar and starts a new one with the same document (same spool).
    async fn restart_sidecar_after_kill(&mut self) -> Result<()> {
        self.sidecar.signal(Signal::SIGKILL);
        self.sidecar.wait_exit(Duration::from_secs(10)).await?;
        self.sidecar = Sidecar::start(&self.dir, &self.options)?;
        self.sidecar.wait_ready(Duration::from_secs(30)).await
    }

    /// `POST /v1/events/{type}` on the sidecar: status and JSON body.
    async fn publish_http(
        &self,
        event_type: &str,
        body: &str,
        id: Option<&str>,
    ) -> Result<(u16, Value)> {
        let mut request = http()
            .post(format!(
                "http://{}/v1/events/{event_type}",
                self.sidecar.app_listen
            ))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(id) = id {
            request = request.header("streamgate-event-id", id);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// Publishes through the app's gRPC client (`/admin/publish`, see the demo app).
    async fn publish_grpc(&self, body: Value) -> Result<Value> {
        Ok(http()
            .post(format!("http://{}/admin/publish", self.app.addr))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Every delivery the app recorded.
    async fn received(&self) -> Result<Vec<Value>> {
        let body: Value = http()
            .get(format!("http://{}/admin/events", self.app.addr))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(body["events"].as_array().cloned().unwrap_or_default())
    }

    /// Ids of the deliveries the app accepted, with how often each was accepted.
    async fn accepted(&self) -> Result<HashMap<String, usize>> {
        let mut ids = HashMap::new();
        for record in self.received().await? {
            if record["accepted"] == true {
                let id = record["event"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                *ids.entry(id).or_insert(0) += 1;
            }
        }
        Ok(ids)
    }

    async fn fail_deliveries(&self, status: u16) -> Result<()> {
        http()
            .post(format!("http://{}/admin/events/fail", self.app.addr))
            .json(&json!({ "status": status }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn metric(&self, name: &str) -> Result<f64> {
        self.sidecar
            .metric(&format!("streamgate_sidecar_{name}"))
            .await
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(180))
        .build()
        .expect("HTTP client")
}

fn nats(url: &str) -> String {
    format!("{{url: '{url}'}}")
}

/// A unique event type per test: the shared stream serves every test of the binary.
fn event_type(env: &TestEnv, name: &str) -> String {
    format!("{name}{}.happened", env.suffix)
}

fn subscribe(event_type: &str, max_deliver: u32) -> String {
    format!("{{subscribe: [{{type: {event_type}, path: /events, maxDeliver: {max_deliver}}}]}}")
}

fn publish(event_type: &str) -> String {
    format!("{{publish: [{event_type}]}}")
}

/// Waits until the subscriber's durable consumer exists: events published before it
/// do not reach a brand-new consumer (it starts with new events).
async fn wait_consumer(nats_url: &str, service: &str, event_type: &str) -> Result<()> {
    wait_consumer_with(
        async_nats::ConnectOptions::new(),
        nats_url,
        service,
        event_type,
    )
    .await
}

async fn wait_consumer_with(
    options: async_nats::ConnectOptions,
    nats_url: &str,
    service: &str,
    event_type: &str,
) -> Result<()> {
    let client = options.connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let name = format!("{service}--{}", event_type.replace('.', "_"));
    eventually(
        &format!("consumer {name} exists"),
        Duration::from_secs(30),
        || async {
            let stream = js.get_stream(STREAM).await?;
            Ok(stream.consumer_info(&name).await.ok().map(|_| ()))
        },
    )
    .await
}

/// Waits until the app has accepted `count` distinct ids; returns them with counts.
async fn wait_accepted(
    pod: &Pod,
    count: usize,
    timeout: Duration,
) -> Result<HashMap<String, usize>> {
    eventually(
        &format!("the app accepted {count} events"),
        timeout,
        || async {
            let ids = pod.accepted().await?;
            Ok((ids.len() >= count).then_some(ids))
        },
    )
    .await
    .with_context(|| pod.sidecar.log_tail(30))
}

#[tokio::test]
async fn published_event_reaches_the_subscriber_with_its_envelope_intact() -> Result<()> {
    let env = TestEnv::new("events-envelope").await?;
    let dir = log_dir("events-envelope");
    let t = event_type(&env, "file");
    let (upload, meta) = (env.unique("upload"), env.unique("meta"));
    let spec = |service, events| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(env.nats_url()),
        pod_name: None,
    };
    // HTTP delivery, asked for by the subscription (the service's protocol is gRPC).
    let http_delivery =
        format!("{{subscribe: [{{type: {t}, path: /events, maxDeliver: 5, delivery: http}}]}}");
    let subscriber = Pod::start(&dir, spec(&meta, http_delivery)).await?;
    wait_consumer(env.nats_url(), &meta, &t).await?;
    let publisher = Pod::start(&dir, spec(&upload, publish(&t))).await?;

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (status, body) = publisher
        .publish_http(&t, r#"{"fileId":"f1","size":42}"#, None)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spooled"], false, "NATS is up: acked, not spooled");
    let http_id = body["id"].as_str().context("an id")?.to_string();
    let grpc = publisher
        .publish_grpc(json!({"type": t, "data": {"n": 2}, "id": "grpc-one"}))
        .await?;
    assert_eq!(grpc["ok"], true, "{grpc}");
    assert_eq!(grpc["ids"], json!(["grpc-one"]));

    wait_accepted(&subscriber, 2, Duration::from_secs(30)).await?;
    let received = subscriber.received().await?;
    let first = received
        .iter()
        .find(|r| r["event"]["id"] == http_id.as_str())
        .context("the HTTP-published event")?;
    let event = &first["event"];
    assert_eq!(event["type"], t.as_str());
    assert_eq!(event["source"], upload.as_str());
    assert_eq!(event["data"], json!({"fileId": "f1", "size": 42}));
    let ts = event["timestamp"].as_u64().context("unix seconds")?;
    assert!(
        ts >= before && ts <= before + 60,
        "timestamp {ts}, published at {before}"
    );
    assert_eq!(first["path"], "/events");
    assert_eq!(first["eventId"], http_id.as_str());
    let second = received
        .iter()
        .find(|r| r["event"]["id"] == "grpc-one")
        .context("gRPC event")?;
    assert_eq!(second["event"]["data"], json!({"n": 2}));
    assert_eq!(publisher.metric("events_published_total").await?, 2.0);
    assert_eq!(publisher.metric("events_acked_total").await?, 2.0);
    assert_eq!(subscriber.metric("events_delivered_total").await?, 2.0);
    Ok(())
}

#[tokio::test]
async fn replicas_share_one_durable_consumer() -> Result<()> {
    let env = TestEnv::new("events-replicas").await?;
    let dir = log_dir("events-replicas");
    let t = event_type(&env, "job");
    let (publisher_name, worker) = (env.unique("jobs"), env.unique("worker"));
    let spec = |service, events, pod_name: Option<String>| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(env.nats_url()),
        pod_name,
    };
    let a = Pod::start(
        &dir,
        spec(&worker, subscribe(&t, 5), Some(format!("{worker}-a"))),
    )
    .await?;
    let b = Pod::start(
        &dir,
        spec(&worker, subscribe(&t, 5), Some(format!("{worker}-b"))),
    )
    .await?;
    wait_consumer(env.nats_url(), &worker, &t).await?;
    let publisher = Pod::start(&dir, spec(&publisher_name, publish(&t), None)).await?;
    for round in 0..10 {
        let r = publisher
            .publish_grpc(
                json!({"type": t, "count": 20, "batch": 5, "idPrefix": format!("r{round}")}),
            )
            .await?;
        assert_eq!(r["ok"], true, "{r}");
    }
    let all = eventually(
        "200 events reached the replicas",
        Duration::from_secs(60),
        || async {
            let (ia, ib) = (a.accepted().await?, b.accepted().await?);
            Ok((ia.len() + ib.len() >= 200).then_some((ia, ib)))
        },
    )
    .await?;
    let (ia, ib) = all;
    let sa: BTreeSet<_> = ia.keys().cloned().collect();
    let sb: BTreeSet<_> = ib.keys().cloned().collect();
    assert!(
        sa.is_disjoint(&sb),
        "an event reached both replicas: {:?}",
        sa.intersection(&sb).collect::<Vec<_>>()
    );
    assert_eq!(sa.len() + sb.len(), 200, "none lost, none extra");
    assert!(
        !sa.is_empty() && !sb.is_empty(),
        "both replicas took a share: {} / {}",
        sa.len(),
        sb.len()
    );
    Ok(())
}

#[tokio::test]
async fn nats_restart_during_10000_publishes_loses_nothing() -> Result<()> {
    let env = TestEnv::new("events-outage").await?;
    let dir = log_dir("events-outage");
    let server = NatsServer::start_new(
        &env.platform.info.tools.nats_server,
        &dir.join("nats"),
        None,
    )
    .await?;
    let t = event_type(&env, "bulk");
    let (producer, consumer) = (env.unique("producer"), env.unique("consumer"));
    let spec = |service, events| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(&server.url()),
        pod_name: None,
    };
    let subscriber = Pod::start(&dir, spec(&consumer, subscribe(&t, 5))).await?;
    wait_consumer(&server.url(), &consumer, &t).await?;
    let publisher = Pod::start(&dir, spec(&producer, publish(&t))).await?;

    const TOTAL: usize = 10_000;
    let publishing = tokio::spawn({
        let url = format!("http://{}/admin/publish", publisher.app.addr);
        let body = json!({"type": t, "count": TOTAL, "batch": 100, "idPrefix": "e"});
        async move {
            http()
                .post(url)
                .json(&body)
                .send()
                .await?
                .json::<Value>()
                .await
        }
    });
    eventually(
        "1,000 events acked before the outage",
        Duration::from_secs(60),
        || async { Ok((publisher.metric("events_acked_total").await? >= 1000.0).then_some(())) },
    )
    .await?;
    server.stop();
    eventually(
        "events spooled while NATS is down",
        Duration::from_secs(60),
        || async { Ok((publisher.metric("events_spooled_total").await? > 0.0).then_some(())) },
    )
    .await
    .with_context(|| publisher.sidecar.log_tail(20))?;
    server.start().await?;

    let result = publishing.await??;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["ids"].as_array().map(Vec::len), Some(TOTAL));
    let accepted = wait_accepted(&subscriber, TOTAL, Duration::from_secs(120)).await?;
    let expected: BTreeSet<String> = (0..TOTAL).map(|n| format!("e-{n}")).collect();
    let got: BTreeSet<String> = accepted.keys().cloned().collect();
    assert_eq!(
        got, expected,
        "every published id arrived, and nothing else"
    );
    let repeated: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once after dedupe: {repeated:?}"
    );
    assert!(publisher.metric("events_flushed_total").await? > 0.0);
    Ok(())
}

/// NATS up while the subscriber creates its consumer, then down while publishing.
async fn subscriber_then_outage(
    env: &TestEnv,
    dir: &Path,
    t: &str,
    relay: &str,
) -> Result<(NatsServer, Pod, Pod)> {
    let server = NatsServer::start_new(
        &env.platform.info.tools.nats_server,
        &dir.join("nats"),
        None,
    )
    .await?;
    let consumer = env.unique("sink");
    let subscriber = Pod::start(
        dir,
        PodSpec {
            service: &consumer,
            consul: env.consul_addr(),
            events: subscribe(t, 5),
            nats: nats(&server.url()),
            pod_name: None,
        },
    )
    .await?;
    wait_consumer(&server.url(), &consumer, t).await?;
    server.stop();
    let publisher = Pod::start(
        dir,
        PodSpec {
            service: &env.unique("source"),
            consul: env.consul_addr(),
            events: publish(t),
            nats: format!("{{url: '{}', relay: {relay}}}", server.url()),
            pod_name: None,
        },
    )
    .await?;
    Ok((server, subscriber, publisher))
}

#[tokio::test]
async fn full_spool_refuses_publishes_and_drops_nothing() -> Result<()> {
    let env = TestEnv::new("events-spool-full").await?;
    let dir = log_dir("events-spool-full");
    let t = event_type(&env, "full");
    let (server, subscriber, publisher) =
        subscriber_then_outage(&env, &dir, &t, "{spoolMaxBytes: 4096}").await?;

    let mut accepted = BTreeSet::new();
    let refusal = loop {
        let id = format!("s-{}", accepted.len());
        let (status, body) = publisher
            .publish_http(&t, r#"{"payload":"0123456789abcdef"}"#, Some(&id))
            .await?;
        if status != 200 {
            break (status, body);
        }
        assert_eq!(body["spooled"], true, "NATS is down: {body}");
        accepted.insert(id);
        if accepted.len() > 100 {
            bail!("4 KiB of spool took over 100 events");
        }
    };
    assert_eq!(refusal.0, 503, "{}", refusal.1);
    assert!(
        refusal.1["error"]
            .as_str()
            .unwrap_or_default()
            .contains("spool is full"),
        "{}",
        refusal.1
    );
    let grpc = publisher
        .publish_grpc(json!({"type": t, "id": "refused-grpc",
            "data": {"payload": "0123456789abcdef0123456789abcdef"}}))
        .await?;
    assert_eq!(grpc["code"], "ResourceExhausted", "{grpc}");
    assert!(publisher.metric("events_spool_full_total").await? >= 2.0);

    server.start().await?;
    let got = wait_accepted(&subscriber, accepted.len(), Duration::from_secs(60)).await?;
    let got: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(
        got, accepted,
        "every accepted event arrived; no refused one did"
    );
    // Room again once flushed.
    eventually("the spool is empty", Duration::from_secs(30), || async {
        Ok((publisher.metric("event_spool_bytes").await? == 0.0).then_some(()))
    })
    .await?;
    let (status, body) = publisher.publish_http(&t, "{}", None).await?;
    assert_eq!((status, &body["spooled"]), (200, &json!(false)), "{body}");
    Ok(())
}

#[tokio::test]
async fn spooled_events_survive_a_killed_sidecar() -> Result<()> {
    let env = TestEnv::new("events-spool-kill").await?;
    let dir = log_dir("events-spool-kill");
    let t = event_type(&env, "kept");
    let (server, subscriber, mut publisher) = subscriber_then_outage(&env, &dir, &t, "{}").await?;
    let r = publisher
        .publish_grpc(json!({"type": t, "count": 50, "batch": 10, "idPrefix": "k"}))
        .await?;
    assert_eq!((&r["ok"], &r["spooled"]), (&json!(true), &json!(50)), "{r}");

    publisher.restart_sidecar_after_kill().await?;
    assert!(
        publisher.metric("event_spool_bytes").await? > 0.0,
        "the new sidecar found the spool"
    );
    server.start().await?;
    let got = wait_accepted(&subscriber, 50, Duration::from_secs(60)).await?;
    let expected: BTreeSet<String> = (0..50).map(|n| format!("k-{n}")).collect();
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected);
    Ok(())
}

/// SIGTERM while 5,000 events wait in the spool and NATS is back: the sidecar flushes
/// them all to JetStream before it exits (a rollout during an outage loses nothing).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_the_spool_to_jetstream_before_exiting() -> Result<()> {
    let env = TestEnv::new("events-sigterm-flush").await?;
    let dir = log_dir("events-sigterm-flush");
    let t = event_type(&env, "flush");
    let (server, _subscriber, mut publisher) = subscriber_then_outage(&env, &dir, &t, "{}").await?;
    let r = publisher
        .publish_grpc(json!({"type": t, "count": 5000, "batch": 100, "idPrefix": "f"}))
        .await?;
    assert_eq!(
        (&r["ok"], &r["spooled"]),
        (&json!(true), &json!(5000)),
        "{r}"
    );
    // The same spool under a sidecar with time to flush (the tests' default is 5 s).
    publisher.options.drain_timeout = "60s".into();
    publisher.restart_sidecar_after_kill().await?;

    server.start().await?;
    publisher.sidecar.signal(Signal::SIGTERM);
    let status = publisher.sidecar.wait_exit(Duration::from_secs(90)).await?;
    assert!(
        status.success(),
        "exit {status}: {}",
        publisher.sidecar.log_tail(20)
    );
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
    let stored = js
        .get_stream(STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    ensure!(
        stored >= 5000,
        "only {stored} of 5000 events were in JetStream when the sidecar exited"
    );
    Ok(())
}

/// SIGTERM while NATS stays down: new publishes are refused (503) at once, the sidecar
/// exits when `drainTimeout` runs out saying how many events stay on disk, and the next
/// sidecar on the same volume sends them.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_nats_down_leaves_the_spool_to_the_next_sidecar() -> Result<()> {
    let env = TestEnv::new("events-sigterm-down").await?;
    let dir = log_dir("events-sigterm-down");
    let t = event_type(&env, "left");
    let (server, subscriber, mut publisher) = subscriber_then_outage(&env, &dir, &t, "{}").await?;
    let r = publisher
        .publish_grpc(json!({"type": t, "count": 200, "batch": 50, "idPrefix": "d"}))
        .await?;
    assert_eq!(
        (&r["ok"], &r["spooled"]),
        (&json!(true), &json!(200)),
        "{r}"
    );

    publisher.sidecar.signal(Signal::SIGTERM);
    // A publish that arrives before the signal is handled is still spooled: count it.
    let mut expected: BTreeSet<String> = (0..200).map(|n| format!("d-{n}")).collect();
    let mut refused = None;
    for n in 0..1000 {
        let id = format!("x-{n}");
        let (status, body) = publisher.publish_http(&t, "{}", Some(&id)).await?;
        if status == 503 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 200, "{body}");
        expected.insert(id);
    }
    let refused = refused.context("no publish was refused after SIGTERM")?;
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{refused}"
    );
    let status = publisher.sidecar.wait_exit(Duration::from_secs(30)).await?;
    assert!(!status.success(), "the drain could not complete: exit 1");
    let log = publisher.sidecar.log_tail(20);
    assert!(
        log.contains("events stay in the spool unsent")
            && log.contains(&format!("events={}", expected.len())),
        "the exit names what stays on disk ({} events): {log}",
        expected.len()
    );

    publisher.sidecar = Sidecar::start(&publisher.dir, &publisher.options)?;
    publisher
        .sidecar
        .wait_ready(Duration::from_secs(30))
        .await?;
    server.start().await?;
    let got = wait_accepted(&subscriber, expected.len(), Duration::from_secs(60)).await?;
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected);
    Ok(())
}

/// A W3C trace context given on publish reaches the subscriber as the same headers,
/// through the spool (NATS down while publishing) and JetStream; seed-style events
/// without one are delivered without.
#[tokio::test(flavor = "multi_thread")]
async fn the_publishers_trace_context_reaches_the_subscriber_through_the_spool() -> Result<()> {
    let env = TestEnv::new("events-trace").await?;
    let dir = log_dir("events-trace");
    let t = event_type(&env, "traced");
    let (server, subscriber, publisher) = subscriber_then_outage(&env, &dir, &t, "{}").await?;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = http()
        .post(format!(
            "http://{}/v1/events/{t}",
            publisher.sidecar.app_listen
        ))
        .header("content-type", "application/json")
        .header("streamgate-event-id", "traced-1")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=opaque")
        .body("{}")
        .send()
        .await?;
    let body: Value = response.json().await?;
    assert_eq!(body["spooled"], true, "NATS is down: {body}");
    let (status, body) = publisher.publish_http(&t, "{}", Some("plain-1")).await?;
    assert_eq!(status, 200, "{body}");

    server.start().await?;
    wait_accepted(&subscriber, 2, Duration::from_secs(60)).await?;
    let received = subscriber.received().await?;
    let traced = received
        .iter()
        .find(|r| r["eventId"] == "traced-1")
        .context("the traced event")?;
    assert_eq!(traced["traceparent"], traceparent);
    assert_eq!(traced["tracestate"], "vendor=opaque");
    let plain = received
        .iter()
        .find(|r| r["eventId"] == "plain-1")
        .context("the plain event")?;
    assert_eq!(plain["traceparent"], "", "no context was given: {plain}");
    Ok(())
}

/// A gRPC app (the default protocol) receives its events through
/// `streamgate.app.v1.EventHandler/Handle` with the event's fields and envelope; a RETRY
/// answer is redelivered with backoff until it is handled; DEAD_LETTER dead-letters at
/// once, without using up the remaining attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_app_receives_events_and_its_answers_settle_them() -> Result<()> {
    let env = TestEnv::new("events-grpc").await?;
    let dir = log_dir("events-grpc");
    let t = event_type(&env, "grpc");
    let (source, sink) = (env.unique("source"), env.unique("sink"));
    let spec = |service, events| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(env.nats_url()),
        pod_name: None,
    };
    let subscriber = Pod::start(&dir, spec(&sink, subscribe(&t, 5))).await?;
    wait_consumer(env.nats_url(), &sink, &t).await?;
    let publisher = Pod::start(&dir, spec(&source, publish(&t))).await?;
    let attempts_of = |records: &[Value], id: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["eventId"] == id)
            .map(|r| r["attempt"].as_str().unwrap_or_default().to_string())
            .collect()
    };

    let (status, body) = publisher
        .publish_http(&t, r#"{"n":1}"#, Some("g-1"))
        .await?;
    assert_eq!(status, 200, "{body}");
    wait_accepted(&subscriber, 1, Duration::from_secs(30)).await?;
    let received = subscriber.received().await?;
    let first = received
        .iter()
        .find(|r| r["eventId"] == "g-1")
        .context("g-1")?;
    assert_eq!(first["path"], "streamgate.app.v1.EventHandler/Handle");
    assert_eq!(first["grpc"]["type"], t.as_str());
    assert_eq!(first["grpc"]["source"], source.as_str());
    assert_eq!(first["grpc"]["data"], json!({"n": 1}));
    assert_eq!(first["event"]["id"], "g-1", "the whole envelope: {first}");

    // RETRY: redelivered (250 ms, then doubling) until the app takes it.
    subscriber.fail_deliveries(503).await?;
    publisher.publish_http(&t, "{}", Some("g-2")).await?;
    eventually("g-2 is redelivered", Duration::from_secs(30), || async {
        let attempts = attempts_of(&subscriber.received().await?, "g-2");
        Ok((attempts.len() >= 2).then_some(()))
    })
    .await?;
    subscriber.fail_deliveries(0).await?;
    let accepted = wait_accepted(&subscriber, 2, Duration::from_secs(30)).await?;
    assert!(accepted.contains_key("g-2"), "{accepted:?}");
    assert!(subscriber.metric("events_redelivered_total").await? >= 1.0);

    // DEAD_LETTER: one attempt, then the dead letter with the app's reason.
    http()
        .post(format!("http://{}/admin/events/fail", subscriber.app.addr))
        .json(&json!({"status": 422, "deadLetter": true}))
        .send()
        .await?
        .error_for_status()?;
    publisher.publish_http(&t, "{}", Some("g-3")).await?;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats_url()).await?);
    let letter = dead_letter(&js, &format!("streamgate.dlq.{sink}.{t}")).await?;
    assert_eq!(letter["event"]["id"], "g-3", "{letter}");
    assert!(
        letter["error"]
            .as_str()
            .unwrap_or_default()
            .contains("refuses this event for good"),
        "{letter}"
    );
    assert_eq!(attempts_of(&subscriber.received().await?, "g-3"), ["1"]);
    Ok(())
}

/// A nats-server of the test's own, and a JetStream context on it.
async fn own_nats(
    env: &TestEnv,
    dir: &Path,
) -> Result<(NatsServer, async_nats::jetstream::Context)> {
    let server = NatsServer::start_new(
        &env.platform.info.tools.nats_server,
        &dir.join("nats"),
        None,
    )
    .await?;
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
    Ok((server, js))
}

/// The seed's work queue as its Go services create it (the issue's account of them):
/// stream `TRANSCODING` on `streamgate.transcoding.tasks`, work-queue retention, file
/// storage; `TRANSCODING_DLQ` on `streamgate.transcoding.dlq`.
async fn create_seed_queue(js: &async_nats::jetstream::Context) -> Result<()> {
    use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
    for (name, subject) in [
        ("TRANSCODING", "streamgate.transcoding.tasks"),
        ("TRANSCODING_DLQ", "streamgate.transcoding.dlq"),
    ] {
        js.create_stream(Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the seed's {name} the seed's way"))?;
    }
    Ok(())
}

/// The seed's queue exists before the sidecars: a subscription to its subject binds to
/// it, everything else goes to StreamGate's stream, which captures only declared subjects
/// (not `streamgate.>`, which would overlap the seed's), and events flow both ways.
#[tokio::test(flavor = "multi_thread")]
async fn sidecars_bind_to_the_seeds_queue_when_it_exists_first() -> Result<()> {
    let env = TestEnv::new("events-seed-first").await?;
    let dir = log_dir("events-seed-first");
    let (server, js) = own_nats(&env, &dir).await?;
    create_seed_queue(&js).await?;

    let (worker, gateway) = (env.unique("worker"), env.unique("gateway"));
    let spec = |service, events| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(&server.url()),
        pod_name: None,
    };
    let subscriber = Pod::start(
        &dir,
        spec(
            &worker,
            "{subscribe: [{type: transcoding.tasks, path: /events, maxDeliver: 5}, {type: file.uploaded, path: /events, maxDeliver: 5}]}".into(),
        ),
    )
    .await?;
    let publisher = Pod::start(
        &dir,
        spec(
            &gateway,
            "{publish: [transcoding.tasks, file.uploaded]}".into(),
        ),
    )
    .await?;
    let consumer = format!("{worker}--transcoding_tasks");
    let queue = js.get_stream("TRANSCODING").await?;
    queue.consumer_info(&consumer).await.with_context(|| {
        format!(
            "the subscription's consumer is on the seed's stream: {}",
            subscriber.sidecar.log_tail(20)
        )
    })?;

    for (t, id) in [("transcoding.tasks", "task-1"), ("file.uploaded", "file-1")] {
        let (status, body) = publisher.publish_http(t, "{}", Some(id)).await?;
        assert_eq!(
            (status, &body["spooled"]),
            (200, &json!(false)),
            "{t}: {body}"
        );
    }
    let got = wait_accepted(&subscriber, 2, Duration::from_secs(30)).await?;
    assert!(
        got.contains_key("task-1") && got.contains_key("file-1"),
        "{got:?}"
    );
    let ours = js
        .get_stream(STREAM)
        .await?
        .info()
        .await?
        .config
        .subjects
        .clone();
    assert!(
        !ours
            .iter()
            .any(|s| s.contains('>') || s == "streamgate.transcoding.tasks"),
        "StreamGate's stream leaves the seed's subject alone: {ours:?}"
    );
    assert!(
        ours.contains(&"streamgate.file.uploaded".to_string()),
        "{ours:?}"
    );
    Ok(())
}

/// The sidecars first, the seed's queue after: the seed creates it without "subjects
/// overlap", its messages land in it, and the sidecars' events keep flowing. A sidecar
/// cannot change the stream's retention either.
#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_queue_can_be_created_after_the_sidecars() -> Result<()> {
    let env = TestEnv::new("events-seed-after").await?;
    let dir = log_dir("events-seed-after");
    let (server, js) = own_nats(&env, &dir).await?;
    // StreamGate's stream exists with an operator's retention (1 h) and another subject.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["streamgate.job.submitted".into()],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await?;
    let (sink, source) = (env.unique("sink"), env.unique("source"));
    let spec = |service, events| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(&server.url()),
        pod_name: None,
    };
    let subscriber = Pod::start(&dir, spec(&sink, subscribe("file.uploaded", 5))).await?;
    wait_consumer(&server.url(), &sink, "file.uploaded").await?;
    let publisher = Pod::start(&dir, spec(&source, publish("file.uploaded"))).await?;

    create_seed_queue(&js).await?;
    js.publish("streamgate.transcoding.tasks", "{}".into())
        .await?
        .await
        .context("the seed's task lands in its own queue")?;
    assert_eq!(
        js.get_stream("TRANSCODING")
            .await?
            .info()
            .await?
            .state
            .messages,
        1
    );
    let (status, body) = publisher
        .publish_http("file.uploaded", "{}", Some("f-1"))
        .await?;
    assert_eq!(status, 200, "{body}");
    let got = wait_accepted(&subscriber, 1, Duration::from_secs(30)).await?;
    assert!(got.contains_key("f-1"), "{got:?}");

    let config = js.get_stream(STREAM).await?.info().await?.config.clone();
    assert_eq!(
        config.max_age,
        Duration::from_secs(3600),
        "retention untouched"
    );
    assert!(
        config
            .subjects
            .contains(&"streamgate.job.submitted".to_string())
    );
    assert!(
        config
            .subjects
            .contains(&"streamgate.file.uploaded".to_string())
    );
    Ok(())
}

/// A subscription that cannot start on a reachable NATS (the seed's work queue already
/// has an unfiltered consumer, so no other may read it) keeps the sidecar not ready,
/// and `/readyz` and the metric say why.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_that_cannot_start_keeps_the_sidecar_not_ready_saying_why() -> Result<()> {
    let env = TestEnv::new("events-cannot-start").await?;
    let dir = log_dir("events-cannot-start");
    let (server, js) = own_nats(&env, &dir).await?;
    create_seed_queue(&js).await?;
    js.create_consumer_on_stream(
        async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("seed-worker".into()),
            ..Default::default()
        },
        "TRANSCODING",
    )
    .await?;
    let worker = env.unique("worker");
    let pod = Pod::launch(
        &dir,
        PodSpec {
            service: &worker,
            consul: env.consul_addr(),
            events: subscribe("transcoding.tasks", 5),
            nats: nats(&server.url()),
            pod_name: None,
        },
    )
    .await?;
    let why = eventually(
        "/readyz says the relay cannot work",
        Duration::from_secs(30),
        || async {
            let response = http()
                .get(format!("http://{}/readyz", pod.sidecar.admin))
                .send()
                .await?;
            let (status, body) = (response.status().as_u16(), response.text().await?);
            Ok((status == 503 && body.contains("event relay")).then_some(body))
        },
    )
    .await?;
    assert!(
        why.contains("subscription transcoding.tasks") && why.contains("TRANSCODING"),
        "{why}"
    );
    assert_eq!(pod.metric("event_relay_working").await?, 0.0);
    Ok(())
}

/// A spooled event NATS can no longer take (its server's `max_payload` was lowered while
/// it waited) is moved to the spool's dead-letter file, named in the log and counted,
/// and the 1,000 events behind it are delivered: it never jams the relay.
#[tokio::test(flavor = "multi_thread")]
async fn an_unpublishable_spooled_event_is_set_aside_and_the_rest_flows() -> Result<()> {
    let env = TestEnv::new("events-unpublishable").await?;
    let dir = log_dir("events-unpublishable");
    let t = event_type(&env, "jam");
    let (server, subscriber, publisher) = subscriber_then_outage(&env, &dir, &t, "{}").await?;
    // 600 KiB: within the 1 MiB the sidecar assumes while NATS has not told it otherwise.
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(600 * 1024));
    let (status, body) = publisher.publish_http(&t, &big, Some("big-1")).await?;
    assert_eq!((status, &body["spooled"]), (200, &json!(true)), "{body}");
    let r = publisher
        .publish_grpc(json!({"type": t, "count": 1000, "batch": 100, "idPrefix": "after"}))
        .await?;
    assert_eq!(
        (&r["ok"], &r["spooled"]),
        (&json!(true), &json!(1000)),
        "{r}"
    );

    server.set_max_payload(256 * 1024)?;
    server.start().await?;
    let got = wait_accepted(&subscriber, 1000, Duration::from_secs(120)).await?;
    let expected: BTreeSet<String> = (0..1000).map(|n| format!("after-{n}")).collect();
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected);

    let spool = dir.join(format!(
        "spool-{}",
        publisher.options.pod_name.clone().unwrap_or_default()
    ));
    let letters = std::fs::read_to_string(spool.join("dead-letters.jsonl"))?;
    let letter: Value = serde_json::from_str(letters.lines().next().context("a dead letter")?)?;
    assert_eq!(letter["id"], "big-1", "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("max_payload"),
        "{letter}"
    );
    assert_eq!(publisher.metric("events_unpublishable_total").await?, 1.0);
    let log =
        std::fs::read_to_string(dir.join(format!("sidecar-{}.log", publisher.options.service)))?;
    assert!(
        log.lines()
            .any(|l| l.contains("dead-letter file") && l.contains("big-1")),
        "the log names the event"
    );
    Ok(())
}

/// A small tmpfs mounted at a directory for one test (the spool's disk), unmounted when
/// dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Result<SmallDisk> {
        std::fs::create_dir_all(path)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()?;
        ensure!(status.success(), "mounting a tmpfs at {}", path.display());
        Ok(SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// Gives the disk room again, as freeing space on a node does.
    fn grow(&self, size: &str) -> Result<()> {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()?;
        ensure!(
            status.success(),
            "growing the tmpfs at {}",
            self.path.display()
        );
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The spool's disk fills up during an outage: publishes are refused with 503 (never a
/// false "spooled"), and once the disk has room again and the sidecar restarted, every
/// event that was accepted arrives and none that was refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_publishes_and_loses_nothing_accepted() -> Result<()> {
    let env = TestEnv::new("events-disk-full").await?;
    let dir = log_dir("events-disk-full");
    let t = event_type(&env, "disk");
    let source = env.unique("source");
    // The spool directory Pod::start gives the publisher, on a 256 KiB disk.
    let disk = SmallDisk::mount(&dir.join(format!("spool-{source}-pod")), "256k")?;
    let server = NatsServer::start_new(
        &env.platform.info.tools.nats_server,
        &dir.join("nats"),
        None,
    )
    .await?;
    let sink = env.unique("sink");
    let spec = |service, events| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(&server.url()),
        pod_name: None,
    };
    let subscriber = Pod::start(&dir, spec(&sink, subscribe(&t, 5))).await?;
    wait_consumer(&server.url(), &sink, &t).await?;
    server.stop();
    let mut publisher = Pod::start(&dir, spec(&source, publish(&t))).await?;

    let payload = format!("{{\"pad\": \"{}\"}}", "p".repeat(4000));
    let mut accepted = BTreeSet::new();
    let refusal = loop {
        let id = format!("d-{}", accepted.len());
        let (status, body) = publisher.publish_http(&t, &payload, Some(&id)).await?;
        if status != 200 {
            break (status, body);
        }
        assert_eq!(body["spooled"], true, "NATS is down: {body}");
        accepted.insert(id);
        ensure!(
            accepted.len() < 200,
            "a 256 KiB disk took 200 events of 4 KB"
        );
    };
    assert_eq!(refusal.0, 503, "{}", refusal.1);
    assert!(
        refusal.1["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be written"),
        "{}",
        refusal.1
    );

    disk.grow("8m")?;
    let (status, body) = publisher
        .publish_http(&t, &payload, Some("after-room"))
        .await?;
    assert_eq!(status, 200, "room again: {body}");
    accepted.insert("after-room".into());
    publisher.restart_sidecar_after_kill().await?;
    server.start().await?;
    let got = wait_accepted(&subscriber, accepted.len(), Duration::from_secs(60)).await?;
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        accepted,
        "every accepted event arrived, no refused one did"
    );
    Ok(())
}

/// The last dead letter on `subject`, once it is in the stream.
async fn dead_letter(js: &async_nats::jetstream::Context, subject: &str) -> Result<Value> {
    let letter = eventually(
        "the dead letter is in the stream",
        Duration::from_secs(30),
        || async {
            let stream = js.get_stream(STREAM).await?;
            Ok(stream.get_last_raw_message_by_subject(subject).await.ok())
        },
    )
    .await?;
    Ok(serde_json::from_slice(&letter.payload)?)
}

#[tokio::test]
async fn failing_app_gets_redeliveries_then_the_event_is_dead_lettered() -> Result<()> {
    let env = TestEnv::new("events-dlq").await?;
    let dir = log_dir("events-dlq");
    let t = event_type(&env, "poison");
    let (source, sink) = (env.unique("source"), env.unique("sink"));
    let spec = |service, events| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(env.nats_url()),
        pod_name: None,
    };
    let subscriber = Pod::start(&dir, spec(&sink, subscribe(&t, 3))).await?;
    subscriber.fail_deliveries(500).await?;
    wait_consumer(env.nats_url(), &sink, &t).await?;
    let publisher = Pod::start(&dir, spec(&source, publish(&t))).await?;
    let (status, body) = publisher
        .publish_http(&t, r#"{"bad":true}"#, Some("dead-1"))
        .await?;
    assert_eq!(status, 200, "{body}");

    let dlq = format!("streamgate.dlq.{sink}.{t}");
    let js = async_nats::jetstream::new(async_nats::connect(env.nats_url()).await?);
    let letter = dead_letter(&js, &dlq).await?;
    assert_eq!(letter["event"]["id"], "dead-1", "{letter}");
    assert_eq!(letter["attempts"], 3, "{letter}");
    assert!(
        letter["error"].as_str().unwrap_or_default().contains("500"),
        "{letter}"
    );
    let attempts: Vec<String> = subscriber
        .received()
        .await?
        .iter()
        .map(|r| r["attempt"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"], "three attempts, then no more");
    assert_eq!(subscriber.metric("events_redelivered_total").await?, 2.0);
    assert_eq!(subscriber.metric("events_dead_lettered_total").await?, 1.0);
    Ok(())
}

#[tokio::test]
async fn an_event_too_large_for_its_dead_letter_is_dead_lettered_by_reference_once() -> Result<()> {
    let env = TestEnv::new("events-dlq-big").await?;
    let dir = log_dir("events-dlq-big");
    let t = event_type(&env, "huge");
    let sink = env.unique("sink");
    let subscriber = Pod::start(
        &dir,
        PodSpec {
            service: &sink,
            consul: env.consul_addr(),
            events: subscribe(&t, 2),
            nats: nats(env.nats_url()),
            pod_name: None,
        },
    )
    .await?;
    subscriber.fail_deliveries(500).await?;
    wait_consumer(env.nats_url(), &sink, &t).await?;
    // A seed service publishes straight to NATS (no sidecar at the door), close to the
    // server's max_payload: the event itself fits, a dead letter wrapping it does not.
    let client = async_nats::connect(env.nats_url()).await?;
    let room = client.server_info().max_payload - 512;
    let filler = "x".repeat(room - 100);
    let body =
        json!({"id": "huge-1", "type": t, "source": "upload-service", "data": {"blob": filler}});
    let js = async_nats::jetstream::new(client);
    js.publish(format!("streamgate.{t}"), body.to_string().into())
        .await?
        .await?;

    let dlq = format!("streamgate.dlq.{sink}.{t}");
    let letter = dead_letter(&js, &dlq).await?;
    assert!(letter["event"].is_null(), "the event is left out: {letter}");
    assert!(
        letter["streamSequence"].as_u64().unwrap_or(0) > 0,
        "{letter}"
    );
    assert!(
        letter["eventOmitted"]
            .as_str()
            .unwrap_or_default()
            .contains("max_payload"),
        "{letter}"
    );
    assert_eq!(letter["attempts"], 2, "{letter}");
    assert_eq!(subscriber.metric("events_dead_lettered_total").await?, 1.0);
    let attempts = subscriber.received().await?.len();
    assert_eq!(attempts, 2, "two deliveries to the app, then none");
    Ok(())
}

#[tokio::test]
async fn delivery_pauses_while_the_app_is_unhealthy() -> Result<()> {
    let env = TestEnv::new("events-pause").await?;
    let dir = log_dir("events-pause");
    let t = event_type(&env, "held");
    let (source, sink) = (env.unique("source"), env.unique("sink"));
    let spec = |service, events| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats(env.nats_url()),
        pod_name: None,
    };
    let subscriber = Pod::start(&dir, spec(&sink, subscribe(&t, 2))).await?;
    wait_consumer(env.nats_url(), &sink, &t).await?;
    let publisher = Pod::start(&dir, spec(&source, publish(&t))).await?;
    subscriber.app.set_healthy(false).await?;
    eventually(
        "the sidecar sees the app unhealthy",
        Duration::from_secs(20),
        || async { Ok((subscriber.metric("app_healthy").await? == 0.0).then_some(())) },
    )
    .await?;
    let r = publisher
        .publish_grpc(json!({"type": t, "count": 5, "batch": 5, "idPrefix": "p"}))
        .await?;
    assert_eq!(
        (&r["ok"], &r["spooled"]),
        (&json!(true), &json!(0)),
        "acked by JetStream: {r}"
    );
    // Nothing to await here: the claim is that nothing happens for a while (two
    // health periods), so the test watches for that long.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        subscriber.received().await?.is_empty(),
        "delivered to an unhealthy app"
    );
    subscriber.app.set_healthy(true).await?;
    let got = wait_accepted(&subscriber, 5, Duration::from_secs(30)).await?;
    assert_eq!(got.len(), 5);
    assert_eq!(
        subscriber.metric("events_dead_lettered_total").await?,
        0.0,
        "pausing spent no attempts"
    );
    Ok(())
}

#[tokio::test]
async fn seed_style_plain_nats_publish_is_delivered() -> Result<()> {
    let env = TestEnv::new("events-seed").await?;
    let dir = log_dir("events-seed");
    let t = event_type(&env, "seed");
    let sink = env.unique("sink");
    let subscriber = Pod::start(
        &dir,
        PodSpec {
            service: &sink,
            consul: env.consul_addr(),
            events: subscribe(&t, 5),
            nats: nats(env.nats_url()),
            pod_name: None,
        },
    )
    .await?;
    wait_consumer(env.nats_url(), &sink, &t).await?;
    // What `nats pub streamgate.<type> '{"type":...,"source":"upload-service"}'` sends.
    let client = async_nats::connect(env.nats_url()).await?;
    let body = json!({"type": t, "source": "upload-service"}).to_string();
    client
        .publish(format!("streamgate.{t}"), body.into())
        .await?;
    client.flush().await?;
    let received = eventually(
        "the seed-style event arrives",
        Duration::from_secs(30),
        || async {
            let r = subscriber.received().await?;
            Ok((!r.is_empty()).then_some(r))
        },
    )
    .await?;
    assert_eq!(
        received[0]["event"],
        json!({"type": t, "source": "upload-service"})
    );
    assert_eq!(received[0]["accepted"], true);
    Ok(())
}

#[tokio::test]
async fn forbidden_and_malformed_publishes_are_refused_with_their_codes() -> Result<()> {
    let env = TestEnv::new("events-refused").await?;
    let dir = log_dir("events-refused");
    let t = event_type(&env, "ok");
    let publisher = Pod::start(
        &dir,
        PodSpec {
            service: &env.unique("source"),
            consul: env.consul_addr(),
            events: publish(&t),
            nats: nats(env.nats_url()),
            pod_name: None,
        },
    )
    .await?;
    let other = event_type(&env, "other");
    let cases = [
        (other.as_str(), "{}", 403, "events.publish"),
        ("File.Uploaded", "{}", 400, "dotted lower-case"),
        (t.as_str(), "[1,2]", 400, "JSON object"),
        (t.as_str(), "{", 400, "not JSON"),
    ];
    for (event_type, body, code, reason) in cases {
        let (status, answer) = publisher.publish_http(event_type, body, None).await?;
        assert_eq!(status, code, "{event_type} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{event_type} {body}: {error}");
    }
    let (status, _) = publisher.publish_http(&t, "{}", Some("has space")).await?;
    assert_eq!(status, 400, "an id with a space");
    let denied = publisher.publish_grpc(json!({"type": other})).await?;
    assert_eq!(denied["code"], "PermissionDenied", "{denied}");
    let invalid = publisher
        .publish_grpc(json!({"type": t, "data": [1]}))
        .await?;
    assert_eq!(invalid["code"], "InvalidArgument", "{invalid}");
    let batch = publisher
        .publish_grpc(json!({"type": "Bad.Type", "count": 2, "batch": 2}))
        .await?;
    assert_eq!(batch["code"], "InvalidArgument", "{batch}");
    assert_eq!(
        publisher.metric("events_published_total").await?,
        0.0,
        "nothing refused was published"
    );

    // Larger than the NATS server's max_payload (1 MiB by default) but within the HTTP
    // body limit: refused at the door naming the limit, never spooled as safe; the relay
    // keeps flowing for the next event.
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(1536 * 1024));
    let (status, answer) = publisher.publish_http(&t, &big, None).await?;
    assert_eq!(status, 413, "oversized event: {answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("max_payload"), "{error}");
    // Far larger (past what the HTTP server would buffer by default): refused the same
    // way, from its length, before it is read whole.
    let huge = format!("{{\"blob\": \"{}\"}}", "x".repeat(3 * 1024 * 1024));
    let (status, answer) = publisher.publish_http(&t, &huge, None).await?;
    assert_eq!(status, 413, "huge event: {answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("max_payload"),
        "{answer}"
    );
    let (status, answer) = publisher.publish_http(&t, "{}", None).await?;
    assert_eq!(status, 200, "the next event: {answer}");
    Ok(())
}

#[tokio::test]
async fn token_authenticated_nats_works_with_a_credentials_directory() -> Result<()> {
    let env = TestEnv::new("events-token").await?;
    let dir = log_dir("events-token");
    let token = "s3cret-token";
    let server = NatsServer::start_new(
        &env.platform.info.tools.nats_server,
        &dir.join("nats"),
        Some(token),
    )
    .await?;
    let creds = dir.join("nats-credentials");
    std::fs::create_dir_all(&creds)?;
    std::fs::write(creds.join("token"), format!("{token}\n"))?;
    let with_creds = format!(
        "{{url: '{}', credentialsDir: '{}'}}",
        server.url(),
        creds.display()
    );
    let t = event_type(&env, "auth");
    let (source, sink) = (env.unique("source"), env.unique("sink"));
    let spec = |service, events, nats: &str| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats: nats.to_string(),
        pod_name: None,
    };
    let subscriber = Pod::start(&dir, spec(&sink, subscribe(&t, 5), &with_creds)).await?;
    let options = async_nats::ConnectOptions::with_token(token.into());
    wait_consumer_with(options, &server.url(), &sink, &t).await?;
    let publisher = Pod::start(&dir, spec(&source, publish(&t), &with_creds)).await?;
    let (status, body) = publisher
        .publish_http(&t, r#"{"secure":true}"#, Some("auth-1"))
        .await?;
    assert_eq!((status, &body["spooled"]), (200, &json!(false)), "{body}");
    let got = wait_accepted(&subscriber, 1, Duration::from_secs(30)).await?;
    assert!(got.contains_key("auth-1"));

    // Without the token the server refuses the connection: events wait in the spool.
    let anonymous = Pod::start(
        &dir,
        spec(&env.unique("anon"), publish(&t), &nats(&server.url())),
    )
    .await?;
    let (status, body) = anonymous.publish_http(&t, "{}", None).await?;
    assert_eq!((status, &body["spooled"]), (200, &json!(true)), "{body}");
    Ok(())
}

/// NATS users as docs/events.md gives them: the operator's with only
/// [`operator_permissions`], and one per sidecar with only [`sidecar_permissions`] of
/// its service.
fn least_privilege_users(sidecars: &[(&str, &str, &streamgate_crds::Events)]) -> String {
    use streamgate_crds::contract::events::{operator_permissions, sidecar_permissions};
    let quoted = |list: &[String]| {
        list.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let operator = operator_permissions();
    let mut users = vec![format!(
        "    {{user: operator, password: operator-pw, permissions: {{publish: {{allow: [{}]}}, subscribe: {{allow: [{}]}}}}}}",
        quoted(&operator.publish),
        quoted(&operator.subscribe)
    )];
    for (service, password, events) in sidecars {
        let p = sidecar_permissions(service, events);
        users.push(format!(
            "    {{user: {service:?}, password: {password:?}, permissions: {{publish: {{allow: [{}]}}, subscribe: {{allow: [{}]}}}}}}",
            quoted(&p.publish),
            quoted(&p.subscribe)
        ));
    }
    format!(
        "authorization {{\n  users: [\n{}\n  ]\n}}\n",
        users.join(",\n")
    )
}

/// Under the operator (`manageStreams: false`) a sidecar only binds: with no stream for
/// its subject it is not ready and `/readyz` names the subject; once the streams exist
/// (made here the way the operator makes them) events flow, with each sidecar on a NATS
/// user holding only the documented permissions, which cannot change the stream.
#[tokio::test(flavor = "multi_thread")]
async fn under_the_operator_sidecars_only_bind_with_least_privilege_users() -> Result<()> {
    use streamgate_nats::streams::{self, Authority, StreamSettings, Want};
    let env = TestEnv::new("events-bind").await?;
    let dir = log_dir("events-bind");
    let t = event_type(&env, "bound");
    let (source, sink) = (env.unique("source"), env.unique("sink"));
    let source_events: streamgate_crds::Events = serde_yaml::from_str(&publish(&t))?;
    let sink_events: streamgate_crds::Events = serde_yaml::from_str(&subscribe(&t, 3))?;
    let server = NatsServer::start_with_authorization(
        &env.platform.info.tools.nats_server,
        &dir.join("nats"),
        &least_privilege_users(&[
            (&source, "source-pw", &source_events),
            (&sink, "sink-pw", &sink_events),
        ]),
    )
    .await?;
    let nats_as = |user: &str, password: &str| -> Result<String> {
        let creds = dir.join(format!("nats-{user}"));
        std::fs::create_dir_all(&creds)?;
        std::fs::write(creds.join("username"), user)?;
        std::fs::write(creds.join("password"), password)?;
        Ok(format!(
            "{{url: '{}', credentialsDir: '{}', relay: {{manageStreams: false}}}}",
            server.url(),
            creds.display()
        ))
    };
    let spec = |service, events, nats| PodSpec {
        service,
        consul: env.consul_addr(),
        events,
        nats,
        pod_name: None,
    };
    let subscriber = Pod::launch(
        &dir,
        spec(&sink, subscribe(&t, 3), nats_as(&sink, "sink-pw")?),
    )
    .await?;
    let why = eventually(
        "/readyz names the subject no stream captures",
        Duration::from_secs(30),
        || async {
            let response = http()
                .get(format!("http://{}/readyz", subscriber.sidecar.admin))
                .send()
                .await?;
            let (status, body) = (response.status().as_u16(), response.text().await?);
            Ok((status == 503 && body.contains("no stream captures")).then_some(body))
        },
    )
    .await?;
    assert!(why.contains(&format!("streamgate.{t}")), "{why}");
    let operator =
        async_nats::ConnectOptions::with_user_and_password("operator".into(), "operator-pw".into())
            .connect(server.url())
            .await?;
    let js = async_nats::jetstream::new(operator);
    assert!(
        js.get_stream(STREAM).await.is_err(),
        "the bound sidecar created no stream"
    );

    let settings = StreamSettings {
        max_age: Duration::from_secs(7_200),
        max_bytes: -1,
        duplicate_window: Duration::from_secs(120),
        replicas: 1,
    };
    let wants = [
        Want {
            stream: STREAM.into(),
            subjects: vec![format!("streamgate.{t}")],
            settings: settings.clone(),
        },
        Want {
            stream: "STREAMGATE_DLQ".into(),
            subjects: vec![format!("streamgate.dlq.{sink}.{t}")],
            settings,
        },
    ];
    streams::ensure(&js, &wants, Authority::Own).await?;
    subscriber
        .sidecar
        .wait_ready(Duration::from_secs(30))
        .await?;
    let publisher = Pod::start(
        &dir,
        spec(&source, publish(&t), nats_as(&source, "source-pw")?),
    )
    .await?;
    let (status, body) = publisher.publish_http(&t, "{}", Some("b-1")).await?;
    assert_eq!((status, &body["spooled"]), (200, &json!(false)), "{body}");
    let got = wait_accepted(&subscriber, 1, Duration::from_secs(30)).await?;
    assert!(got.contains_key("b-1"), "{got:?}");

    // The sidecar's user cannot shorten the retention others rely on.
    let as_sidecar =
        async_nats::ConnectOptions::with_user_and_password(sink.clone(), "sink-pw".into())
            .connect(server.url())
            .await?;
    let sidecar_js = async_nats::jetstream::new(as_sidecar);
    let mut shorter = js.get_stream(STREAM).await?.info().await?.config.clone();
    shorter.max_age = Duration::from_secs(1);
    assert!(sidecar_js.update_stream(shorter).await.is_err());
    let kept = js.get_stream(STREAM).await?.info().await?.config.max_age;
    assert_eq!(kept, Duration::from_secs(7_200));
    Ok(())
}
