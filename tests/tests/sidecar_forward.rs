//! gRPC forwarding through real sidecar processes, against real Consul and real tonic
//! servers (the Echo test service) registered as instances on 127.0.0.x addresses.
//!
//! Two shapes: client sidecar → instances registered directly in Consul (the
//! balancing, retry, timeout and breaker tests), and client sidecar → server sidecar →
//! app (the round trips, identity, allowedCallers and mTLS tests).

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use streamgate_proto::testing::v1::echo_client::EchoClient;
use streamgate_proto::testing::v1::{EchoReply, EchoRequest};
use streamgate_tests::TestEnv;
use streamgate_tests::bins::binary;
use streamgate_tests::consul_agent::ConsulAgent;
use streamgate_tests::echo::EchoServer;
use streamgate_tests::ports::free_port;
use streamgate_tests::process::Proc;
use streamgate_tests::sidecar::{NAMESPACE, Sidecar, SidecarOptions, http, log_dir, pod_ip};
use streamgate_tests::wait::eventually;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const STARTUP: Duration = Duration::from_secs(20);

/// Registers an instance in Consul directly, passing, as a service's own agent would.
async fn register(consul: &str, service: &str, id: &str, addr: SocketAddr) -> Result<()> {
    register_in(consul, service, id, addr, NAMESPACE).await
}

/// As [`register`], for a pod of `namespace`.
async fn register_in(
    consul: &str,
    service: &str,
    id: &str,
    addr: SocketAddr,
    namespace: &str,
) -> Result<()> {
    let meta = json!({"k8s-namespace": namespace});
    register_at(
        consul,
        service,
        id,
        &addr.ip().to_string(),
        addr.port(),
        meta,
    )
    .await
}

/// Registers a passing instance at `address` (an IP or a host name) and `port`.
async fn register_at(
    consul: &str,
    service: &str,
    id: &str,
    address: &str,
    port: u16,
    meta: Value,
) -> Result<()> {
    let body = json!({
        "ID": id, "Name": service, "Address": address, "Port": port, "Meta": meta,
        "Check": {"CheckID": format!("{id}-ttl"), "TTL": "10m", "Status": "passing"},
    });
    http()
        .put(format!("{consul}/v1/agent/service/register"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// An Echo server on an address of its own, registered in Consul as `service`.
async fn echo_instance(consul: &str, service: &str, name: &str) -> Result<EchoServer> {
    let addr: SocketAddr = format!("{}:0", pod_ip()).parse()?;
    let server = EchoServer::start(name, addr).await?;
    register(consul, service, name, server.addr).await?;
    Ok(server)
}

/// An HTTP/2 server on an address of its own that refuses every stream with
/// REFUSED_STREAM (as an overloaded or stopping server may), registered in Consul as
/// `service`. Stops when dropped.
struct RefusingInstance {
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RefusingInstance {
    async fn start(consul: &str, service: &str, name: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(format!("{}:0", pod_ip())).await?;
        let addr = listener.local_addr()?;
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    }
                });
            }
        });
        register(consul, service, name, addr).await?;
        Ok(RefusingInstance { refused, task })
    }
}

impl Drop for RefusingInstance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A sidecar for an app that only calls others (no app of its own is listening).
async fn client_sidecar(
    dir: &Path,
    consul: &str,
    service: &str,
    service_extra: &str,
    mtls: Option<&Path>,
) -> Result<Sidecar> {
    let ip = pod_ip();
    let nowhere: SocketAddr = format!("{ip}:{}", free_port()?).parse()?;
    let mut options = SidecarOptions::new(service, &ip, nowhere, consul);
    options.health = "{type: tcp, periodSeconds: 5}".into();
    options.service_extra = service_extra.into();
    if let Some(dir) = mtls {
        options
            .env
            .push(("STREAMGATE_MTLS_DIR".into(), dir.display().to_string()));
    }
    let sidecar = Sidecar::start(dir, &options)?;
    eventually("the client sidecar is up", STARTUP, || async {
        Ok(sidecar.admin_get("/livez").await.ok().map(drop))
    })
    .await
    .with_context(|| sidecar.log_tail(30))?;
    Ok(sidecar)
}

/// A sidecar in front of `app`, registered in Consul as `service`, ready.
async fn server_sidecar(
    dir: &Path,
    consul: &str,
    service: &str,
    app: SocketAddr,
    service_extra: &str,
    mtls: Option<&Path>,
) -> Result<Sidecar> {
    let mut options = SidecarOptions::new(service, &app.ip().to_string(), app, consul);
    options.health = "{type: tcp, periodSeconds: 2, timeoutSeconds: 1}".into();
    options.service_extra = service_extra.into();
    if let Some(dir) = mtls {
        options
            .env
            .push(("STREAMGATE_MTLS_DIR".into(), dir.display().to_string()));
    }
    let sidecar = Sidecar::start(dir, &options)?;
    sidecar.wait_ready(STARTUP).await?;
    Ok(sidecar)
}

/// A client of the app listener that names `service` in `:authority`.
fn client(sidecar: &Sidecar, service: &str) -> Result<EchoClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{}", sidecar.app_listen))?
        .origin(format!("http://{service}").parse()?)
        .connect_lazy();
    Ok(EchoClient::new(channel))
}

fn request(payload: &[u8]) -> EchoRequest {
    EchoRequest {
        payload: payload.to_vec(),
        count: 0,
        delay_ms: 0,
    }
}

async fn unary(client: &mut EchoClient<Channel>) -> Result<EchoReply, tonic::Status> {
    client.unary(request(b"ping")).await.map(|r| r.into_inner())
}

/// Calls until one succeeds (discovery may not have answered at the very first call).
async fn first_success(client: &mut EchoClient<Channel>) -> Result<EchoReply> {
    eventually("a call through the sidecar succeeds", STARTUP, || {
        let mut client = client.clone();
        async move { Ok(unary(&mut client).await.ok()) }
    })
    .await
}

/// Counts replies by server over `calls` calls made by `workers` concurrent callers.
async fn spread(
    client: &EchoClient<Channel>,
    calls: usize,
    workers: usize,
) -> Result<HashMap<String, usize>> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut client = client.clone();
        let share = calls / workers;
        tasks.push(tokio::spawn(async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..share {
                let reply = unary(&mut client).await?;
                *seen.entry(reply.server).or_default() += 1;
            }
            Ok::<_, tonic::Status>(seen)
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for (server, n) in task.await?? {
            *total.entry(server).or_default() += n;
        }
    }
    Ok(total)
}

#[tokio::test]
async fn unary_and_streaming_round_trips_through_two_sidecars() -> Result<()> {
    let env = TestEnv::new("forward-round-trip").await?;
    let consul = env.consul_addr();
    let (server_name, client_name) = (env.unique("echo"), env.unique("caller"));
    let dir = log_dir(&server_name);
    let app = EchoServer::start("app", format!("{}:0", pod_ip()).parse()?).await?;
    let _server = server_sidecar(&dir, consul, &server_name, app.addr, "", None).await?;
    let upstreams = format!("  upstreams: [{{service: {server_name}, timeout: 10s}}]\n");
    let caller = client_sidecar(&dir, consul, &client_name, &upstreams, None).await?;
    let mut echo = client(&caller, &server_name)?;
    first_success(&mut echo).await?;

    // Unary, with metadata, the caller's identity and the deadline carried through.
    let mut call = tonic::Request::new(request(b"hello"));
    call.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?,
    );
    call.metadata_mut().insert("x-request-id", "r-1".parse()?);
    call.set_timeout(Duration::from_secs(3));
    let reply = echo.unary(call).await?.into_inner();
    assert_eq!(reply.payload, b"hello");
    assert_eq!(reply.server, "app");
    assert_eq!(reply.metadata["streamgate-caller"], client_name);
    assert_eq!(
        reply.metadata["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(reply.metadata["x-request-id"], "r-1");
    let timeout = &reply.metadata["grpc-timeout"];
    let forwarded = grpc_timeout(timeout).context("a valid grpc-timeout")?;
    assert!(
        forwarded <= Duration::from_secs(3) && forwarded > Duration::from_secs(2),
        "grpc-timeout {timeout}"
    );

    // Server streaming: every reply arrives, then the OK status.
    let mut stream_request = request(b"s");
    stream_request.count = 25;
    let mut replies = echo.server_stream(stream_request).await?.into_inner();
    let mut n = 0;
    while let Some(reply) = replies.message().await? {
        assert_eq!(reply.payload, b"s");
        n += 1;
    }
    assert_eq!(n, 25);

    // Client streaming: the server sees every message.
    let parts: Vec<EchoRequest> = (0..10)
        .map(|i| request(format!("{i}").as_bytes()))
        .collect();
    let joined = echo
        .client_stream(futures::stream::iter(parts))
        .await?
        .into_inner();
    assert_eq!(joined.payload, b"0123456789");

    // Bidirectional: each reply comes back before the next request is sent, so frames
    // are relayed as they come, not buffered to the end of the stream.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = echo.bidi(outbound).await?.into_inner();
    for i in 0..5 {
        tx.send(request(format!("m{i}").as_bytes())).await?;
        let reply = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .context("a bidi reply relayed while the stream is open")??
            .context("stream ended early")?;
        assert_eq!(reply.payload, format!("m{i}").as_bytes());
    }
    drop(tx);
    assert!(inbound.message().await?.is_none());

    // Status codes from the app come back unchanged.
    app.controls.fail_with(Some(Code::NotFound));
    let status = unary(&mut echo).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("told to fail"), "{status:?}");

    let sample = format!(
        "streamgate_sidecar_forward_requests_total{{upstream=\"{server_name}\",code=\"OK\"}}"
    );
    ensure!(
        caller.metric(&sample).await? >= 4.0,
        "metrics count the calls"
    );
    Ok(())
}

/// One Consul service name in two namespaces: calls stay in the caller's namespace, and
/// an upstream that names another namespace goes there only.
#[tokio::test]
async fn calls_stay_in_the_callers_namespace_unless_the_upstream_names_another() -> Result<()> {
    let env = TestEnv::new("forward-namespaces").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let mut servers = Vec::new();
    for (name, namespace) in [("here", NAMESPACE), ("there", "edge")] {
        let addr: SocketAddr = format!("{}:0", pod_ip()).parse()?;
        let server = EchoServer::start(name, addr).await?;
        register_in(
            consul,
            &service,
            &format!("{service}-{name}"),
            server.addr,
            namespace,
        )
        .await?;
        servers.push(server);
    }

    let local = client_sidecar(&dir, consul, &env.unique("local"), "", None).await?;
    let mut echo = client(&local, &service)?;
    first_success(&mut echo).await?;
    let seen = spread(&echo, 100, 4).await?;
    assert_eq!(seen.get("here"), Some(&100), "{seen:?}");

    let extra = format!("  upstreams: [{{service: {service}, namespace: edge}}]\n");
    let pinned = client_sidecar(&dir, consul, &env.unique("pinned"), &extra, None).await?;
    let mut echo = client(&pinned, &service)?;
    first_success(&mut echo).await?;
    let seen = spread(&echo, 100, 4).await?;
    assert_eq!(seen.get("there"), Some(&100), "{seen:?}");
    Ok(())
}

/// A seed-style instance registered under its host name (the seed's Go services register
/// their hostname unless SERVICE_HOST is set) is reached through the sidecar. Only
/// `localhost` is used: it resolves from /etc/hosts, without DNS traffic.
#[tokio::test]
async fn an_instance_registered_under_a_host_name_is_called() -> Result<()> {
    let env = TestEnv::new("forward-hostname").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let server = EchoServer::start("by-name", "127.0.0.1:0".parse()?).await?;
    let id = format!("{service}-by-name");
    register_at(
        consul,
        &service,
        &id,
        "localhost",
        server.addr.port(),
        json!({}),
    )
    .await?;
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), "", None).await?;
    let mut echo = client(&caller, &service)?;
    let reply = first_success(&mut echo)
        .await
        .with_context(|| caller.log_tail(20))?;
    assert_eq!(reply.server, "by-name");
    Ok(())
}

#[tokio::test]
async fn load_spreads_across_three_instances() -> Result<()> {
    let env = TestEnv::new("forward-spread").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let mut instances = Vec::new();
    for i in 0..3 {
        instances.push(echo_instance(consul, &service, &format!("{service}-{i}")).await?);
    }
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), "", None).await?;
    let mut echo = client(&caller, &service)?;
    first_success(&mut echo).await?;
    let seen = spread(&echo, 600, 6).await?;
    for i in 0..3 {
        let n = seen.get(&format!("{service}-{i}")).copied().unwrap_or(0);
        assert!(n >= 100, "instance {i} got {n} of 600 calls: {seen:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_slow_instance_receives_less_traffic() -> Result<()> {
    let env = TestEnv::new("forward-slow").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let mut instances = Vec::new();
    for i in 0..3 {
        instances.push(echo_instance(consul, &service, &format!("{service}-{i}")).await?);
    }
    instances[0].controls.set_delay(Duration::from_millis(50));
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), "", None).await?;
    let mut echo = client(&caller, &service)?;
    first_success(&mut echo).await?;
    let seen = spread(&echo, 600, 6).await?;
    let slow = seen.get(&format!("{service}-0")).copied().unwrap_or(0);
    assert!(
        slow < 60,
        "the slow instance got {slow} of 600 calls: {seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn timeouts_end_calls_with_deadline_exceeded() -> Result<()> {
    let env = TestEnv::new("forward-timeout").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let instance = echo_instance(consul, &service, &format!("{service}-0")).await?;
    let upstreams = format!("  upstreams: [{{service: {service}, timeout: 300ms}}]\n");
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), &upstreams, None).await?;
    let mut echo = client(&caller, &service)?;
    first_success(&mut echo).await?;

    // The upstream's timeout.
    instance.controls.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let status = unary(&mut echo).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The caller's own, shorter deadline (sent as a bare header: tonic's client would
    // give up at the same moment and hide the sidecar's answer).
    instance.controls.set_delay(Duration::from_millis(1000));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()?;
    let started = Instant::now();
    let response = h2
        .post(format!(
            "http://{}/streamgate.testing.v1.Echo/Unary",
            caller.app_listen
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "100m")
        .header("streamgate-service", &service)
        // One length-prefixed message: EchoRequest { payload: "x" }.
        .body(vec![0u8, 0, 0, 0, 3, 0x0a, 0x01, b'x'])
        .send()
        .await?;
    assert_eq!(response.headers()["grpc-status"], "4", "{response:?}");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_retry_succeeds_on_another_instance() -> Result<()> {
    let env = TestEnv::new("forward-retry").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let failing = echo_instance(consul, &service, &format!("{service}-bad")).await?;
    let _good = echo_instance(consul, &service, &format!("{service}-good")).await?;
    failing.controls.fail_with(Some(Code::Unavailable));
    let upstreams = format!(
        "  upstreams: [{{service: {service}, retries: {{attempts: 3, backoff: {{base: 5ms, max: 20ms}}}}, \
         circuitBreaker: {{consecutiveFailures: 1000}}}}]\n"
    );
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), &upstreams, None).await?;
    let mut echo = client(&caller, &service)?;
    first_success(&mut echo).await?;
    for _ in 0..40 {
        let reply = unary(&mut echo).await?;
        assert_eq!(reply.server, format!("{service}-good"));
    }
    ensure!(
        failing.controls.calls() > 0,
        "the failing instance was tried"
    );
    let retries = caller
        .metric(&format!(
            "streamgate_sidecar_forward_retries_total{{upstream=\"{service}\"}}"
        ))
        .await?;
    ensure!(retries >= 1.0, "retries are counted ({retries})");
    Ok(())
}

#[tokio::test]
async fn a_refused_stream_goes_to_another_instance_without_retries_configured() -> Result<()> {
    let env = TestEnv::new("forward-refused").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let refusing =
        RefusingInstance::start(consul, &service, &format!("{service}-refusing")).await?;
    let good = format!("{service}-good");
    let _good = echo_instance(consul, &service, &good).await?;
    // Both instances are in Consul before the sidecar starts, so its first answer has
    // both. No retries configured and a breaker that does not eject: each call that
    // lands on the refusing instance must be sent to the other one by the sidecar.
    let upstreams = format!(
        "  upstreams: [{{service: {service}, circuitBreaker: {{consecutiveFailures: 1000}}}}]\n"
    );
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), &upstreams, None).await?;
    let mut echo = client(&caller, &service)?;
    first_success(&mut echo).await?;
    let before = refusing.refused.load(Ordering::SeqCst);
    for _ in 0..40 {
        let reply = unary(&mut echo).await?;
        assert_eq!(reply.server, good);
    }
    let refused = refusing.refused.load(Ordering::SeqCst) - before;
    ensure!(
        refused > 0,
        "the refusing instance was tried during the 40 calls"
    );
    Ok(())
}

#[tokio::test]
async fn the_circuit_opens_and_closes_again() -> Result<()> {
    let env = TestEnv::new("forward-breaker").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let instance = echo_instance(consul, &service, &format!("{service}-0")).await?;
    let upstreams = format!(
        "  upstreams: [{{service: {service}, circuitBreaker: \
         {{consecutiveFailures: 3, baseEjection: 1s, maxEjection: 10s}}}}]\n"
    );
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), &upstreams, None).await?;
    let mut echo = client(&caller, &service)?;
    first_success(&mut echo).await?;

    instance.controls.fail_with(Some(Code::Unavailable));
    let before = instance.controls.calls();
    for _ in 0..3 {
        assert_eq!(
            unary(&mut echo).await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    // Open: the call fails fast without reaching the instance.
    let status = unary(&mut echo).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("ejected"), "{status:?}");
    assert_eq!(instance.controls.calls(), before + 3);

    // Healthy again: after the ejection time one probe goes through and closes it.
    instance.controls.fail_with(None);
    let reopened = Instant::now();
    first_success(&mut echo).await?;
    assert!(reopened.elapsed() < Duration::from_secs(3));
    for _ in 0..10 {
        unary(&mut echo).await?;
    }
    let ejections = caller
        .metric(&format!(
            "streamgate_sidecar_forward_ejections_total{{upstream=\"{service}\"}}"
        ))
        .await?;
    ensure!(ejections >= 1.0, "ejections are counted");
    Ok(())
}

#[tokio::test]
async fn calls_continue_on_known_instances_while_consul_is_down() -> Result<()> {
    let env = TestEnv::new("forward-consul-down").await?;
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let agent = ConsulAgent::start_new(&env.platform.info.tools.consul, &dir).await?;
    let consul = agent.addr();
    let _instance = echo_instance(&consul, &service, &format!("{service}-0")).await?;
    let caller = client_sidecar(&dir, &consul, &env.unique("caller"), "", None).await?;
    let mut echo = client(&caller, &service)?;
    first_success(&mut echo).await?;
    agent.kill();
    let until = Instant::now() + Duration::from_secs(3);
    let mut calls = 0;
    while Instant::now() < until {
        unary(&mut echo)
            .await
            .context("a call while Consul is down")?;
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(calls > 10);
    Ok(())
}

#[tokio::test]
async fn a_new_instance_receives_traffic_within_a_second_of_passing() -> Result<()> {
    let env = TestEnv::new("forward-new-instance").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let _first = echo_instance(consul, &service, &format!("{service}-0")).await?;
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), "", None).await?;
    let mut echo = client(&caller, &service)?;
    first_success(&mut echo).await?;

    let second = EchoServer::start("second", format!("{}:0", pod_ip()).parse()?).await?;
    register(consul, &service, &format!("{service}-1"), second.addr).await?;
    let passing = Instant::now();
    loop {
        let reply = unary(&mut echo).await?;
        if reply.server == "second" {
            break;
        }
        ensure!(
            passing.elapsed() < Duration::from_secs(1),
            "the new instance got no call within 1 s"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unknown_service_is_unavailable_naming_it() -> Result<()> {
    let env = TestEnv::new("forward-unknown").await?;
    let dir = log_dir("forward-unknown");
    let caller = client_sidecar(&dir, env.consul_addr(), &env.unique("caller"), "", None).await?;
    let missing = env.unique("nosuch");
    let mut echo = client(&caller, &missing)?;
    let status = unary(&mut echo).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains(&missing), "{status:?}");

    // An address instead of a name is refused, saying how to name the service.
    let mut by_ip = client(&caller, "127.0.0.1:15001")?;
    let status = unary(&mut by_ip).await.unwrap_err();
    assert!(
        status.message().contains("streamgate-service"),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn without_mtls_allowed_callers_admit_nobody_whatever_the_header_says() -> Result<()> {
    let env = TestEnv::new("forward-allowed").await?;
    let consul = env.consul_addr();
    let (server_name, friend, open_name) = (
        env.unique("vault"),
        env.unique("friend"),
        env.unique("open"),
    );
    let dir = log_dir(&server_name);
    let app = EchoServer::start("app", format!("{}:0", pod_ip()).parse()?).await?;
    let extra = format!("  allowedCallers: [{friend}]\n");
    let _server = server_sidecar(&dir, consul, &server_name, app.addr, &extra, None).await?;

    // Over plaintext the caller is a header anyone can write: a sidecar that names
    // itself after the allowed caller is still refused, before the app.
    let spoofing = client_sidecar(&dir, consul, &friend, "", None).await?;
    let mut echo = client(&spoofing, &server_name)?;
    let status = eventually("the call is answered", STARTUP, || {
        let mut echo = echo.clone();
        async move {
            Ok(unary(&mut echo)
                .await
                .err()
                .filter(|s| s.code() != Code::Unavailable))
        }
    })
    .await?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(&friend), "{status:?}");
    let calls = app.controls.calls();
    assert!(unary(&mut echo).await.is_err());
    assert_eq!(
        app.controls.calls(),
        calls,
        "a denied call never reaches the app"
    );

    // A service that names no callers takes plaintext calls, the caller's name passed on.
    let open_app = EchoServer::start("app", format!("{}:0", pod_ip()).parse()?).await?;
    let _open = server_sidecar(&dir, consul, &open_name, open_app.addr, "", None).await?;
    let mut echo = client(&spoofing, &open_name)?;
    let reply = first_success(&mut echo).await?;
    assert_eq!(reply.metadata["streamgate-caller"], friend);
    Ok(())
}

/// Writes a workload identity for `service` as the operator's Secret mounts it.
fn identity(dir: &Path, ca: &(String, String), service: &str) -> Result<PathBuf> {
    identity_in(dir, ca, NAMESPACE, service)
}

/// As [`identity`], for a service of another namespace.
fn identity_in(
    dir: &Path,
    ca: &(String, String),
    namespace: &str,
    service: &str,
) -> Result<PathBuf> {
    use streamgate_operator::identity::sign::{Workload, workload_certificate};
    let path = dir.join(format!("mtls-{namespace}-{service}"));
    std::fs::create_dir_all(&path)?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    // The service's pods run as the ServiceAccount named after it, as the operator
    // renders them.
    let workload = Workload {
        namespace: namespace.into(),
        service_account: service.into(),
        service: service.into(),
    };
    let (cert, _) = workload_certificate(&ca.0, &ca.1, &csr, &workload, Duration::from_secs(3600))?;
    std::fs::write(path.join("ca.crt"), &ca.0)?;
    std::fs::write(path.join("tls.crt"), cert)?;
    std::fs::write(path.join("tls.key"), key.serialize_pem())?;
    Ok(path)
}

#[tokio::test]
async fn mtls_between_sidecars_refuses_plaintext_and_foreign_peers() -> Result<()> {
    use streamgate_operator::webhook::certs::new_ca;
    let env = TestEnv::new("forward-mtls").await?;
    let consul = env.consul_addr();
    let (server_name, friend) = (env.unique("secure"), env.unique("friend"));
    let dir = log_dir(&server_name);
    let ca = new_ca()?;
    let app = EchoServer::start("app", format!("{}:0", pod_ip()).parse()?).await?;
    let server_identity = identity(&dir, &ca, &server_name)?;
    let extra = format!("  allowedCallers: [{friend}]\n");
    let server = server_sidecar(
        &dir,
        consul,
        &server_name,
        app.addr,
        &extra,
        Some(&server_identity),
    )
    .await?;

    // Same CA: the call goes through and the app sees the certificate's identity.
    let friend_identity = identity(&dir, &ca, &friend)?;
    let friendly = client_sidecar(&dir, consul, &friend, "", Some(&friend_identity)).await?;
    let mut echo = client(&friendly, &server_name)?;
    let reply = first_success(&mut echo).await?;
    assert_eq!(reply.metadata["streamgate-caller"], friend);

    // The allowed name in another namespace is another service (anyone who can create
    // pods there could claim the name): denied, before the app.
    let impostor_identity = identity_in(&dir, &ca, "sandbox", &friend)?;
    let impostor = client_sidecar(&dir, consul, &friend, "", Some(&impostor_identity)).await?;
    let impostor_client = client(&impostor, &server_name)?;
    let status = eventually("the impostor's call is answered", STARTUP, || {
        let mut client = impostor_client.clone();
        // UNAVAILABLE while its sidecar has not discovered the server yet.
        async move {
            Ok(unary(&mut client)
                .await
                .err()
                .filter(|s| s.code() != Code::Unavailable))
        }
    })
    .await?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("sandbox/"), "{status:?}");

    // A sidecar without certificates cannot reach an mTLS instance.
    let plain = client_sidecar(&dir, consul, &env.unique("plain"), "", None).await?;
    let status = unary(&mut client(&plain, &server_name)?).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Another CA's certificate, even naming an allowed service, fails the handshake.
    let foreign_ca = new_ca()?;
    let foreign_identity = identity(&dir.join("foreign"), &foreign_ca, &friend)?;
    let foreign = client_sidecar(&dir, consul, &friend, "", Some(&foreign_identity)).await?;
    let status = unary(&mut client(&foreign, &server_name)?)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // A plaintext HTTP/2 client straight to the inbound port is refused.
    let direct = Endpoint::from_shared(format!("http://{}", server.inbound))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    let result = EchoClient::new(direct).unary(request(b"x")).await;
    assert!(result.is_err(), "plaintext peer refused");
    Ok(())
}

#[tokio::test]
async fn an_instance_killed_under_load_costs_almost_no_failed_calls() -> Result<()> {
    let env = TestEnv::new("forward-kill").await?;
    let consul = env.consul_addr();
    let service = env.unique("echo");
    let dir = log_dir(&service);
    let echo_bin = binary("streamgate-tests", "streamgate-echo")?;
    let mut processes = Vec::new();
    for i in 0..3 {
        let addr: SocketAddr = format!("{}:{}", pod_ip(), free_port()?).parse()?;
        let name = format!("{service}-{i}");
        let mut command = std::process::Command::new(&echo_bin);
        command.args(["--listen", &addr.to_string(), "--name", &name]);
        processes.push(Proc::spawn(
            &name,
            command,
            &dir.join(format!("{name}.log")),
        )?);
        eventually("the echo process listens", STARTUP, || async {
            Ok(tokio::net::TcpStream::connect(addr).await.ok().map(drop))
        })
        .await?;
        register(consul, &service, &name, addr).await?;
    }
    let upstreams = format!(
        "  upstreams: [{{service: {service}, retries: {{attempts: 3, backoff: {{base: 5ms, max: 50ms}}}}}}]\n"
    );
    let caller = client_sidecar(&dir, consul, &env.unique("caller"), &upstreams, None).await?;
    let echo = client(&caller, &service)?;
    first_success(&mut echo.clone()).await?;

    let total = 4000;
    let workers = 8;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut echo = echo.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0usize;
            let mut by_server: HashMap<String, usize> = HashMap::new();
            for _ in 0..total / workers {
                match unary(&mut echo).await {
                    Ok(reply) => *by_server.entry(reply.server).or_default() += 1,
                    Err(_) => failed += 1,
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (failed, by_server)
        }));
    }
    eventually(
        "a third of the calls are done",
        Duration::from_secs(60),
        || async {
            Ok((done.load(std::sync::atomic::Ordering::Relaxed) >= total / 3).then_some(()))
        },
    )
    .await?;
    processes[0].kill();
    let killed_at = done.load(std::sync::atomic::Ordering::Relaxed);
    let mut failed = 0;
    let mut after_kill: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (f, by_server) = task.await?;
        failed += f;
        for (server, n) in by_server {
            *after_kill.entry(server).or_default() += n;
        }
    }
    assert!(
        failed * 1000 < total,
        "{failed} of {total} calls failed (killed after {killed_at})"
    );
    // The killed instance got at most its share of the calls before the kill.
    let dead = after_kill
        .get(&format!("{service}-0"))
        .copied()
        .unwrap_or(0);
    assert!(
        dead <= killed_at / 2,
        "the dead instance answered {dead}: {after_kill:?}"
    );
    Ok(())
}

/// A `grpc-timeout` value as a duration.
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/<pid>/status")
}

#[tokio::test]
async fn a_thousand_concurrent_streams_leak_neither_connections_nor_memory() -> Result<()> {
    let env = TestEnv::new("forward-streams").await?;
    let consul = env.consul_addr();
    let (server_name, client_name) = (env.unique("echo"), env.unique("caller"));
    let dir = log_dir(&server_name);
    let app = EchoServer::start("app", format!("{}:0", pod_ip()).parse()?).await?;
    let server = server_sidecar(&dir, consul, &server_name, app.addr, "", None).await?;
    let caller = client_sidecar(&dir, consul, &client_name, "", None).await?;
    first_success(&mut client(&caller, &server_name)?).await?;

    async fn round(caller: &Sidecar, service: &str) -> Result<()> {
        // Ten client connections with 100 streams each, all open at once.
        let clients: Vec<_> = (0..10)
            .map(|_| client(caller, service))
            .collect::<Result<_>>()?;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let mut echo = clients[i % 10].clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let outbound = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|m| (m, rx))
                });
                let mut inbound = echo.bidi(outbound).await?.into_inner();
                tx.send(request(b"open")).await?;
                inbound.message().await?.context("first reply")?;
                // Every stream is open at this point.
                barrier.wait().await;
                tx.send(request(b"close")).await?;
                inbound.message().await?.context("second reply")?;
                drop(tx);
                ensure!(inbound.message().await?.is_none());
                Ok::<_, anyhow::Error>(())
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .context("a stream finished in time")???;
        }
        Ok(())
    }

    // The first rounds grow the allocator's pools to their working size; a leak keeps
    // growing after that, by the memory of the streams it failed to free.
    round(&caller, &server_name).await?;
    round(&caller, &server_name).await?;
    let (caller_rss, server_rss) = (rss_kib(caller.pid())?, rss_kib(server.pid())?);
    for _ in 0..3 {
        round(&caller, &server_name).await?;
        eprintln!(
            "RSS caller {} KiB, server {} KiB",
            rss_kib(caller.pid())?,
            rss_kib(server.pid())?
        );
    }
    let (caller_after, server_after) = (rss_kib(caller.pid())?, rss_kib(server.pid())?);
    assert!(
        caller_after < caller_rss + 1024 && server_after < server_rss + 1024,
        "RSS grew: caller {caller_rss} → {caller_after} KiB, server {server_rss} → {server_after} KiB"
    );
    let open = caller
        .metric(&format!(
            "streamgate_sidecar_forward_open_connections{{upstream=\"{server_name}\"}}"
        ))
        .await?;
    assert!(open <= 8.0, "{open} connections open to one instance");
    Ok(())
}
