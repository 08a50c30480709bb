//! OpenTelemetry traces from real sidecar processes to a real collector (the platform's
//! Jaeger, on loopback), read back through Jaeger's query API as a user would:
//! a call through two sidecars and an event from publisher to subscriber make one
//! trace with the expected spans and parent links; with the collector down, calls and
//! events still flow and the dropped spans are counted.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use streamgate_proto::testing::v1::EchoRequest;
use streamgate_proto::testing::v1::echo_client::EchoClient;
use streamgate_tests::TestEnv;
use streamgate_tests::echo::EchoServer;
use streamgate_tests::jaeger::{FoundSpan, JaegerQuery};
use streamgate_tests::ports::free_port;
use streamgate_tests::sidecar::{DemoApp, Sidecar, SidecarOptions, http, log_dir, pod_ip};
use streamgate_tests::wait::eventually;
use tonic::transport::{Channel, Endpoint};

const STARTUP: Duration = Duration::from_secs(30);

/// The standard variables a sidecar exports with: every trace sampled, batches sent
/// every 100 ms (so the test does not wait the default 5 s), `queue` spans at most.
fn otel_env(endpoint: &str, queue: usize) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", queue.to_string()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The platform's Jaeger: its query API, and its OTLP endpoint.
fn platform_jaeger(env: &TestEnv) -> (JaegerQuery, String) {
    let info = &env.platform.info;
    (
        JaegerQuery {
            url: info.jaeger_url.clone(),
        },
        info.otlp_endpoint.clone(),
    )
}

/// The pieces of one trace test: an Echo app behind a server sidecar, a calling
/// sidecar, and a publisher and a subscriber (the demo app behind each sidecar).
struct Mesh {
    caller: Sidecar,
    server: Sidecar,
    publisher: Sidecar,
    subscriber: Sidecar,
    subscriber_app: DemoApp,
    names: Names,
    _echo: EchoServer,
    _publisher_app: DemoApp,
}

struct Names {
    caller: String,
    server: String,
    publisher: String,
    subscriber: String,
    event_type: String,
}

impl Mesh {
    async fn start(env: &TestEnv, dir: &Path, otel: &[(String, String)]) -> Result<Mesh> {
        let consul = env.consul_addr();
        let names = Names {
            caller: env.unique("caller"),
            server: env.unique("echo"),
            publisher: env.unique("publisher"),
            subscriber: env.unique("subscriber"),
            event_type: format!("traces.{}", env.unique("done").replace('-', "_")),
        };
        let echo = EchoServer::start("app", format!("{}:0", pod_ip()).parse()?).await?;
        let mut options = SidecarOptions::new(&names.server, &pod_ip(), echo.addr, consul);
        options.health = "{type: tcp, periodSeconds: 2, timeoutSeconds: 1}".into();
        options.env = otel.to_vec();
        let server = Sidecar::start(dir, &options)?;
        server.wait_ready(STARTUP).await?;

        let nowhere: SocketAddr = format!("{}:{}", pod_ip(), free_port()?).parse()?;
        let mut options = SidecarOptions::new(&names.caller, &pod_ip(), nowhere, consul);
        options.health = "{type: tcp, periodSeconds: 5}".into();
        options.service_extra = format!("  upstreams: [{{service: {}}}]\n", names.server);
        options.env = otel.to_vec();
        let caller = Sidecar::start(dir, &options)?;
        eventually("the calling sidecar is up", STARTUP, || async {
            Ok(caller.admin_get("/livez").await.ok().map(drop))
        })
        .await
        .with_context(|| caller.log_tail(30))?;

        let t = &names.event_type;
        let subscribe =
            format!("{{subscribe: [{{type: {t}, path: /events, maxDeliver: 5, delivery: http}}]}}");
        let (subscriber_app, subscriber) =
            event_pod(dir, env, &names.subscriber, subscribe, otel).await?;
        wait_consumer(env.nats_url(), &names.subscriber, t).await?;
        let (publisher_app, publisher) = event_pod(
            dir,
            env,
            &names.publisher,
            format!("{{publish: [{t}]}}"),
            otel,
        )
        .await?;
        Ok(Mesh {
            caller,
            server,
            publisher,
            subscriber,
            subscriber_app,
            names,
            _echo: echo,
            _publisher_app: publisher_app,
        })
    }

    fn echo(&self) -> Result<EchoClient<Channel>> {
        let channel = Endpoint::from_shared(format!("http://{}", self.caller.app_listen))?
            .origin(format!("http://{}", self.names.server).parse()?)
            .connect_lazy();
        Ok(EchoClient::new(channel))
    }

    /// One unary call with `traceparent`; the metadata the app received.
    async fn call(
        &self,
        traceparent: Option<&str>,
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut request = tonic::Request::new(EchoRequest {
            payload: b"traced".to_vec(),
            count: 0,
            delay_ms: 0,
        });
        if let Some(traceparent) = traceparent {
            request
                .metadata_mut()
                .insert("traceparent", traceparent.parse()?);
        }
        Ok(self.echo()?.unary(request).await?.into_inner().metadata)
    }

    /// Publishes one event through the publisher's sidecar (HTTP API).
    async fn publish(&self, id: &str, traceparent: Option<&str>) -> Result<Value> {
        let mut request = http()
            .post(format!(
                "http://{}/v1/events/{}",
                self.publisher.app_listen, self.names.event_type
            ))
            .header("content-type", "application/json")
            .header("streamgate-event-id", id)
            .body("{}");
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await?;
        ensure!(
            response.status().is_success(),
            "publish: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// The subscriber app's record of the delivery of `id`, once it has one.
    async fn delivered(&self, id: &str) -> Result<Value> {
        eventually(
            "the event reaches the subscriber",
            Duration::from_secs(30),
            || async {
                let body: Value = http()
                    .get(format!("http://{}/admin/events", self.subscriber_app.addr))
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok(body["events"]
                    .as_array()
                    .and_then(|events| events.iter().find(|e| e["eventId"] == id).cloned()))
            },
        )
        .await
    }
}

/// The demo app with a sidecar that publishes or subscribes (`events`).
async fn event_pod(
    dir: &Path,
    env: &TestEnv,
    service: &str,
    events: String,
    otel: &[(String, String)],
) -> Result<(DemoApp, Sidecar)> {
    let ip = pod_ip();
    let app_listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let app_addr: SocketAddr = format!("{ip}:{}", free_port()?).parse()?;
    let app = DemoApp::start_for_events(dir, app_addr, app_listen).await?;
    let mut options = SidecarOptions::new(service, &ip, app.addr, env.consul_addr());
    options.app_listen = app_listen;
    options.events = events;
    options.extra = format!(
        "nats: {{url: '{}'}}\nspoolDir: '{}'\n",
        env.nats_url(),
        dir.join(format!("spool-{service}")).display()
    );
    options.env = otel.to_vec();
    let sidecar = Sidecar::start(dir, &options)?;
    sidecar.wait_ready(STARTUP).await?;
    Ok((app, sidecar))
}

async fn wait_consumer(nats_url: &str, service: &str, event_type: &str) -> Result<()> {
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let name = streamgate_crds::contract::events::consumer_name(service, event_type);
    eventually("the subscriber's consumer exists", STARTUP, || {
        let js = js.clone();
        let name = name.clone();
        async move {
            let stream = js
                .get_stream(streamgate_crds::contract::events::STREAM)
                .await?;
            Ok(stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                .await
                .ok()
                .map(drop))
        }
    })
    .await
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

fn the<'a>(
    spans: &'a [FoundSpan],
    what: &str,
    pick: impl Fn(&FoundSpan) -> bool,
) -> Result<&'a FoundSpan> {
    let found: Vec<&FoundSpan> = spans.iter().filter(|s| pick(s)).collect();
    ensure!(
        found.len() == 1,
        "{what}: expected one span, found {}: {:#?}",
        found.len(),
        streamgate_tests::jaeger::summary(spans)
    );
    Ok(found[0])
}

fn kind(span: &FoundSpan) -> &str {
    span.tag("span.kind").and_then(Value::as_str).unwrap_or("")
}

/// A call through two sidecars and an event from publisher to subscriber, both in the
/// app's trace: the caller's CLIENT span is the child of the app's span, the server's
/// SERVER span the child of that, and the Echo app sees the SERVER span as its parent;
/// the publisher's PRODUCER span, its JetStream send and the subscriber's CONSUMER span
/// follow, and the subscriber app sees the CONSUMER span as its parent.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_and_an_event_make_one_trace_in_jaeger() -> Result<()> {
    let env = TestEnv::new("traces-one-trace").await?;
    let dir = log_dir("traces-one-trace");
    let (jaeger, endpoint) = platform_jaeger(&env);
    let mesh = Mesh::start(&env, &dir, &otel_env(&endpoint, 2048)).await?;
    // Discovery may not have answered at the very first call.
    eventually("a call through the sidecars succeeds", STARTUP, || async {
        Ok(mesh.call(None).await.ok())
    })
    .await?;

    let trace_id = random_hex(16);
    let (app_span, publish_parent) = (random_hex(8), random_hex(8));
    let metadata = mesh
        .call(Some(&format!("00-{trace_id}-{app_span}-01")))
        .await?;
    mesh.publish(
        "traced-event",
        Some(&format!("00-{trace_id}-{publish_parent}-01")),
    )
    .await?;
    let delivery = mesh.delivered("traced-event").await?;

    let names = &mesh.names;
    let spans = jaeger
        .wait_for_trace(&trace_id, Duration::from_secs(30), |spans| {
            let has = |service: &str, prefix: &str| {
                spans
                    .iter()
                    .any(|s| s.service == *service && s.name.starts_with(prefix))
            };
            has(&names.caller, "streamgate.testing.v1.Echo/Unary")
                && has(&names.server, "streamgate.testing.v1.Echo/Unary")
                && has(&names.publisher, "publish ")
                && has(&names.publisher, "send ")
                && has(&names.subscriber, "deliver ")
        })
        .await?;

    let client = the(&spans, "the caller's span", |s| s.service == names.caller)?;
    assert_eq!(kind(client), "client");
    assert_eq!(client.parent.as_deref(), Some(app_span.as_str()));
    assert_eq!(client.tag("rpc.grpc.status_code"), Some(&Value::from(0)));
    assert_eq!(
        client.tag("streamgate.upstream").and_then(Value::as_str),
        Some(names.server.as_str())
    );
    assert!(client.tag("streamgate.instance").is_some(), "{client:?}");
    assert_eq!(client.tag("streamgate.retries"), Some(&Value::from(0)));
    let server = the(&spans, "the server's span", |s| s.service == names.server)?;
    assert_eq!(kind(server), "server");
    assert_eq!(server.parent.as_ref(), Some(&client.span_id));
    assert_eq!(
        server.tag("streamgate.caller").and_then(Value::as_str),
        Some(names.caller.as_str())
    );
    // The app's own work would be the server span's child.
    assert_eq!(
        metadata.get("traceparent"),
        Some(&format!("00-{trace_id}-{}-01", server.span_id))
    );

    let subject = format!("streamgate.{}", names.event_type);
    let publish = the(&spans, "the publish span", |s| {
        s.name == format!("publish {subject}")
    })?;
    assert_eq!(
        (publish.service.as_str(), kind(publish)),
        (names.publisher.as_str(), "producer")
    );
    assert_eq!(publish.parent.as_deref(), Some(publish_parent.as_str()));
    assert_eq!(
        publish.tag("messaging.message.id").and_then(Value::as_str),
        Some("traced-event")
    );
    let send = the(&spans, "the send span", |s| {
        s.name == format!("send {subject}")
    })?;
    assert_eq!(send.parent.as_ref(), Some(&publish.span_id));
    let deliver = the(&spans, "the deliver span", |s| {
        s.name == format!("deliver {subject}")
    })?;
    assert_eq!(
        (deliver.service.as_str(), kind(deliver)),
        (names.subscriber.as_str(), "consumer")
    );
    assert_eq!(deliver.parent.as_ref(), Some(&publish.span_id));
    assert_eq!(
        delivery["traceparent"],
        format!("00-{trace_id}-{}-01", deliver.span_id),
        "the subscriber app's parent is the delivery: {delivery}"
    );
    let exported = mesh
        .caller
        .metric("streamgate_sidecar_trace_spans_exported_total")
        .await?;
    ensure!(exported >= 1.0, "the caller counts its exported spans");
    Ok(())
}

/// A collector that is down the worst way: it takes connections and never answers, so
/// every export waits for its timeout.
async fn hung_collector() -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok((endpoint, task))
}

/// The collector is down: every call and every event still goes through, and the spans
/// that could not be exported are counted as dropped (the queue was full, or their
/// export failed), never waited for.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_collector_down_calls_and_events_flow_and_drops_are_counted() -> Result<()> {
    let env = TestEnv::new("traces-collector-down").await?;
    let dir = log_dir("traces-collector-down");
    let (endpoint, collector) = hung_collector().await?;
    let mesh = Mesh::start(&env, &dir, &otel_env(&endpoint, 16)).await?;
    eventually("a call through the sidecars succeeds", STARTUP, || async {
        Ok(mesh.call(None).await.ok())
    })
    .await?;

    const CALLS: usize = 400;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let echo = mesh.echo()?;
        workers.push(tokio::spawn(async move {
            let mut echo = echo;
            for _ in 0..CALLS / 4 {
                let request = EchoRequest {
                    payload: b"x".to_vec(),
                    count: 0,
                    delay_ms: 0,
                };
                echo.unary(request).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    const EVENTS: usize = 40;
    for i in 0..EVENTS {
        mesh.publish(&format!("down-{i}"), None).await?;
    }
    for i in 0..EVENTS {
        mesh.delivered(&format!("down-{i}")).await?;
    }

    for (name, sidecar) in [("caller", &mesh.caller), ("server", &mesh.server)] {
        let sample = |reason: &str| {
            format!("streamgate_sidecar_trace_spans_dropped_total{{reason=\"{reason}\"}}")
        };
        let dropped = eventually(
            &format!("the {name} counts dropped spans"),
            STARTUP,
            || async {
                let full = sidecar.metric(&sample("queue_full")).await?;
                let failed = sidecar.metric(&sample("export_failed")).await?;
                Ok((full > 0.0 && full + failed >= (CALLS - 16) as f64).then_some(full + failed))
            },
        )
        .await?;
        let exported = sidecar
            .metric("streamgate_sidecar_trace_spans_exported_total")
            .await?;
        assert_eq!(
            exported, 0.0,
            "nothing reached a collector that is not there"
        );
        assert!(
            dropped <= (CALLS + 1) as f64,
            "{name}: {dropped} drops for {CALLS} calls"
        );
    }
    let publisher_drops = mesh
        .publisher
        .metric("streamgate_sidecar_trace_spans_dropped_total{reason=\"queue_full\"}")
        .await?;
    ensure!(
        publisher_drops > 0.0,
        "the publisher's spans are dropped too"
    );
    let subscriber = mesh
        .subscriber
        .metric("streamgate_sidecar_events_delivered_total")
        .await?;
    assert_eq!(subscriber, EVENTS as f64);
    collector.abort();
    Ok(())
}

/// The operator exports a span per reconcile (its `OTEL_*` variables), and renders the
/// sidecars' own `OTEL_*` settings from `--sidecar-otlp-endpoint` and the sampling
/// ratio, with a service's `spec.sidecar.traceSamplingRatio` winning over the default.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_traces_its_reconciles_and_renders_the_sidecars_trace_settings() -> Result<()>
{
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Api;
    use streamgate_tests::operator::{Operator, TEST_TIMINGS, operator_kubeconfig};
    let env = TestEnv::new("traces-operator").await?;
    let (jaeger, endpoint) = platform_jaeger(&env);
    let kubeconfig = operator_kubeconfig(&env).await?;
    let mut flags: Vec<String> = TEST_TIMINGS.iter().map(|s| s.to_string()).collect();
    flags.push("--sidecar-otlp-endpoint=http://otel-collector.observability:4317".into());
    flags.push("--sidecar-trace-sampling-ratio=0.05".into());
    let vars = otel_env(&endpoint, 2048);
    let operator = Operator::start_with_env(&env, &kubeconfig, "op-traced", &flags, &vars).await?;
    let manifest = |name: &str, sidecar: &str| {
        format!(
            "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: {name}}}\nspec:\n  image: registry.example.com/streamgate/{name}:1.0.0\n  port: 9091\n  serviceName: {consul}\n{sidecar}",
            consul = env.unique(name)
        )
    };
    env.kubectl(&["apply", "-f", "-"], Some(&manifest("traced", "")))?;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&manifest(
            "sampled",
            "  sidecar: {traceSamplingRatio: 0.5}\n",
        )),
    )?;

    let deployments: Api<Deployment> = Api::namespaced(env.client(), &env.namespace);
    let sidecar_env = |name: &'static str| {
        let deployments = deployments.clone();
        async move {
            let deployment = eventually(&format!("Deployment {name}"), STARTUP, || async {
                Ok(deployments.get_opt(name).await?)
            })
            .await?;
            let spec = deployment
                .spec
                .and_then(|s| s.template.spec)
                .context("a pod spec")?;
            let sidecar = spec
                .init_containers
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.name == "streamgate-sidecar")
                .context("the sidecar")?;
            Ok::<_, anyhow::Error>(
                sidecar
                    .env
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|v| Some((v.name, v.value?)))
                    .collect::<std::collections::HashMap<_, _>>(),
            )
        }
    };
    let traced = sidecar_env("traced").await?;
    assert_eq!(
        traced
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(String::as_str),
        Some("http://otel-collector.observability:4317")
    );
    assert_eq!(
        traced.get("OTEL_TRACES_SAMPLER").map(String::as_str),
        Some("parentbased_traceidratio")
    );
    assert_eq!(
        traced.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str),
        Some("0.05")
    );
    assert_eq!(traced.get("OTEL_SERVICE_NAME"), Some(&env.unique("traced")));
    let sampled = sidecar_env("sampled").await?;
    assert_eq!(
        sampled.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str),
        Some("0.5")
    );

    let operation = format!("reconcile {}/traced", env.namespace);
    eventually(
        "the operator's reconcile span in Jaeger",
        STARTUP,
        || async {
            let operations = jaeger.operations("streamgate-operator").await?;
            Ok(operations.contains(&operation).then_some(()))
        },
    )
    .await?;
    let exported = eventually(
        "the operator counts its exported spans",
        STARTUP,
        || async {
            let text = reqwest::get(&operator.metrics_url).await?.text().await?;
            Ok(text
                .lines()
                .find(|l| l.starts_with("streamgate_operator_trace_spans_exported_total "))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .filter(|n| *n >= 1.0))
        },
    )
    .await?;
    ensure!(exported >= 1.0);
    Ok(())
}
