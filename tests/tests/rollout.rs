//! Zero failed calls through a rolling update, on the real node: a terminating pod
//! leaves Consul and stops taking calls before the kubelet stops its app (the app
//! container's `preStop` hook, see the sidecar's `departure`).
//!
//! Two services run the demo app with a slow graceful shutdown (5 s answering every
//! call UNAVAILABLE after SIGTERM, as many real apps do): `abrupt` opted out of the hook
//! (`leaveFirst: false`, the behaviour before it existed), `steady` has the default.
//! Each is restarted with `kubectl rollout restart` under a steady, bounded load from
//! two clients at once: an app calling through its own sidecar (two sidecar hops), and
//! a client that resolves the service from Consul for every call and dials the instance
//! itself, as the seed's Go services do. `abrupt` must fail calls (so the test can
//! fail); `steady` must fail none, and none again when it is scaled from three pods to
//! one under the same load.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamgate_proto::demo::v1::UploadRequest;
use streamgate_proto::demo::v1::upload_service_client::UploadServiceClient;
use streamgate_tests::TestEnv;
use streamgate_tests::operator::{Operator, operator_kubeconfig};
use streamgate_tests::sidecar::{DemoApp, Sidecar, SidecarOptions, log_dir, pod_ip};
use streamgate_tests::wait::eventually;
use tonic::transport::{Channel, Endpoint};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const TIMEOUT: Duration = Duration::from_secs(180);
/// Calls per second to each service through the sidecars, and from the client that
/// resolves Consul per call (both services are restarted at once: twice this in all).
const MESH_RATE: u64 = 150;
const DIRECT_RATE: u64 = 20;
/// Consul queries the Consul-resolving client has in flight at most: Consul limits the
/// connections of one client address (200 by default), and the host's client shares its
/// address with the host's sidecar and operator. A call skipped at the limit is the
/// test's own limit, reported, not a failed call.
const DIRECT_IN_FLIGHT: usize = 32;
/// No load runs longer than this, whatever happens to the rollout.
const LOAD_LIMIT: Duration = Duration::from_secs(240);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn service(name: &str, namespace: &str, sidecar: &str) -> String {
    format!(
        "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  image: streamgate/demo-app:{VERSION}\n  port: 9091\n  replicas: 3\n  protocol: grpc\n\
         \x20 env: [{{name: DEMO_LISTEN, value: '0.0.0.0:9091'}}, {{name: DEMO_SHUTDOWN_SECONDS, value: '5'}}, {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n\
         \x20 health: {{type: http, path: /health, periodSeconds: 2, timeoutSeconds: 1}}\n\
         \x20 sidecar: {sidecar}\n"
    )
}

/// What one client saw: calls answered, calls failed (by gRPC code and a sample).
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn record(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                *failures.entry(reason).or_default() += 1;
            }
        }
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn summary(&self) -> String {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "{} ok, {} failed {:?}, {} skipped at the client's own limit",
            self.ok.load(Ordering::Relaxed),
            self.failed(),
            failures,
            self.skipped.load(Ordering::Relaxed)
        )
    }
}

async fn upload(channel: Channel) -> Result<(), String> {
    let request = UploadRequest {
        filename: "rollout.mp4".into(),
        content: b"x".to_vec(),
        ..Default::default()
    };
    match tokio::time::timeout(
        CALL_TIMEOUT,
        UploadServiceClient::new(channel).upload(request),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err("timed out".into()),
    }
}

/// Starts `rate` calls per second (each on its own task) until `stop`, or LOAD_LIMIT.
fn run_load<F, Fut>(
    rate: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    call: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    // None: the call was not made (the client's own in-flight limit).
    Fut: std::future::Future<Output = Option<Result<(), String>>> + Send + 'static,
{
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        let mut calls = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Acquire) && started.elapsed() < LOAD_LIMIT {
            ticker.tick().await;
            let (call, tally) = (call(), tally.clone());
            calls.spawn(async move {
                if let Some(result) = call.await {
                    tally.record(result);
                }
            });
        }
        while calls.join_next().await.is_some() {}
    })
}

/// The seed's way: ask Consul for the passing instances at every call, take the next
/// one, and call it on a cached connection.
#[derive(Clone)]
struct ConsulResolvingClient {
    consul: String,
    service: String,
    http: reqwest::Client,
    in_flight: Arc<tokio::sync::Semaphore>,
    tally: Arc<Tally>,
    next: Arc<AtomicU64>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ConsulResolvingClient {
    async fn call(self) -> Option<Result<(), String>> {
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            self.tally.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        Some(self.resolve_and_call().await)
    }

    async fn resolve_and_call(&self) -> Result<(), String> {
        let url = format!(
            "{}/v1/health/service/{}?passing=true",
            self.consul, self.service
        );
        let instances: Vec<Value> = match self.http.get(&url).send().await {
            Ok(response) => response.json().await.map_err(|e| chain("consul", &e))?,
            Err(e) => return Err(chain("consul", &e)),
        };
        if instances.is_empty() {
            return Err("no passing instance".into());
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let instance = &instances[n % instances.len()]["Service"];
        let address = format!(
            "{}:{}",
            instance["Address"].as_str().unwrap_or_default(),
            instance["Port"]
        );
        let channel = {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            match channels.get(&address) {
                Some(channel) => channel.clone(),
                None => {
                    let channel = Endpoint::from_shared(format!("http://{address}"))
                        .map_err(|e| e.to_string())?
                        .origin(
                            format!("http://{}", self.service)
                                .parse()
                                .map_err(|e| format!("{e}"))?,
                        )
                        .connect_lazy();
                    channels.insert(address.clone(), channel.clone());
                    channel
                }
            }
        };
        upload(channel).await
    }
}

async fn rollout_restart(
    env: &TestEnv,
    pods: &Api<Pod>,
    selector: &ListParams,
    consul: &str,
    service: &str,
    old: &BTreeSet<String>,
    old_addresses: &BTreeSet<String>,
) -> Result<()> {
    let deployment = format!("deployment/{service}");
    let restarted_at = std::time::Instant::now();
    env.kubectl(&["rollout", "restart", &deployment], None)?;
    env.kubectl(&["rollout", "status", &deployment, "--timeout=180s"], None)?;
    eprintln!(
        "{service}: rollout complete after {:?}",
        restarted_at.elapsed()
    );
    eventually(
        &format!("{service}'s old pods are gone"),
        TIMEOUT,
        || async {
            let now = pods.list(selector).await?.items;
            let gone = now.len() == 3
                && now.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && !old.contains(p.metadata.name.as_deref().unwrap_or_default())
                });
            Ok(gone.then_some(()))
        },
    )
    .await?;
    eprintln!(
        "{service}: old pods gone after {:?}",
        restarted_at.elapsed()
    );
    eventually(
        &format!("{service}'s new pods pass in Consul"),
        TIMEOUT,
        || async {
            let now = passing_addresses(consul, service).await?;
            Ok((now.len() == 3 && now.is_disjoint(old_addresses)).then_some(()))
        },
    )
    .await
}

async fn scale_down_to_one(
    env: &TestEnv,
    pods: &Api<Pod>,
    selector: &ListParams,
    consul: &str,
    service: &str,
) -> Result<()> {
    let scaled_at = std::time::Instant::now();
    env.kubectl(&["scale", &format!("sgs/{service}"), "--replicas=1"], None)?;
    eventually(&format!("{service} down to one pod"), TIMEOUT, || async {
        let now = pods.list(selector).await?.items;
        Ok((now.len() == 1).then_some(()))
    })
    .await?;
    eprintln!("{service}: down to one pod after {:?}", scaled_at.elapsed());
    eventually(
        &format!("one instance of {service} in Consul"),
        TIMEOUT,
        || async { Ok((passing_addresses(consul, service).await?.len() == 1).then_some(())) },
    )
    .await
}

/// An error with its causes, which reqwest's own message leaves out.
fn chain(what: &str, error: &dyn std::error::Error) -> String {
    let mut text = format!("{what}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

async fn passing_addresses(consul: &str, service: &str) -> Result<BTreeSet<String>> {
    let url = format!("{consul}/v1/health/service/{service}?passing=true");
    let instances: Vec<Value> = reqwest::get(url).await?.error_for_status()?.json().await?;
    Ok(instances
        .iter()
        .map(|i| {
            i["Service"]["Address"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect())
}

/// Restarts `service`'s Deployment under load and returns what each client saw once
/// every old pod is gone and the new ones pass in Consul.
/// What is done to a service while the load runs.
#[derive(Clone, Copy)]
enum Change {
    /// `kubectl rollout restart`: every pod replaced, three at all times.
    RolloutRestart,
    /// `kubectl scale` from three replicas down to one.
    ScaleDownToOne,
}

async fn under_load(
    env: &TestEnv,
    mesh: &Sidecar,
    consul: &str,
    service: &str,
    change: Change,
) -> Result<(Arc<Tally>, Arc<Tally>)> {
    let pods: Api<Pod> = Api::namespaced(env.client(), &env.namespace);
    let selector = ListParams::default().labels(&format!("streamgate.io/service={service}"));
    let old: BTreeSet<String> = pods
        .list(&selector)
        .await?
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let old_addresses = passing_addresses(consul, service).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (through_sidecars, direct) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let channel = Endpoint::from_shared(format!("http://{}", mesh.app_listen))?
        .origin(format!("http://{service}").parse()?)
        .connect_lazy();
    let mesh_load = run_load(
        MESH_RATE,
        stop.clone(),
        through_sidecars.clone(),
        move || {
            let channel = channel.clone();
            async move { Some(upload(channel).await) }
        },
    );
    let resolver = ConsulResolvingClient {
        consul: consul.to_string(),
        service: service.to_string(),
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(CALL_TIMEOUT)
            .build()?,
        in_flight: Arc::new(tokio::sync::Semaphore::new(DIRECT_IN_FLIGHT)),
        tally: direct.clone(),
        next: Arc::default(),
        channels: Arc::default(),
    };
    let direct_load = run_load(DIRECT_RATE, stop.clone(), direct.clone(), move || {
        resolver.clone().call()
    });

    let restarted = async {
        // A second of steady state first: failures before the change would be another bug.
        tokio::time::sleep(Duration::from_secs(1)).await;
        match change {
            Change::RolloutRestart => {
                rollout_restart(env, &pods, &selector, consul, service, &old, &old_addresses).await
            }
            Change::ScaleDownToOne => {
                scale_down_to_one(env, &pods, &selector, consul, service).await
            }
        }
    }
    .await;
    stop.store(true, Ordering::Release);
    let _ = mesh_load.await;
    let _ = direct_load.await;
    restarted?;
    eprintln!(
        "{service}: through two sidecars {}; resolving Consul per call {}",
        through_sidecars.summary(),
        direct.summary()
    );
    ensure!(
        through_sidecars.ok.load(Ordering::Relaxed) > MESH_RATE * 5,
        "the load ran too briefly to mean anything: {}",
        through_sidecars.summary()
    );
    Ok((through_sidecars, direct))
}

// Two threads: the load's own scheduling must not be what delays a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_fails_no_call_because_pods_leave_consul_before_their_app_stops()
-> Result<()> {
    let env = TestEnv::on_real_node("rollout", Default::default()).await?;
    let consul = env.consul_addr().to_string();
    let kubeconfig = operator_kubeconfig(&env).await?;
    let operator = Operator::start(&env, &kubeconfig, "rollout").await?;
    let ns = env.namespace.clone();
    let manifest = format!(
        "{}---\n{}",
        service("abrupt", &ns, "{leaveFirst: false}"),
        service("steady", &ns, "{leaveDelay: 3s}")
    );
    env.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    for name in ["abrupt", "steady"] {
        eventually(
            &format!("3 passing instances of {name}"),
            TIMEOUT,
            || async { Ok((passing_addresses(&consul, name).await?.len() == 3).then_some(())) },
        )
        .await
        .with_context(|| operator.log_tail(30))?;
    }

    // The calling app's sidecar, on the host: it finds both services in Consul and
    // dials their pods on the pod network, as a sidecar in another pod would.
    let dir = log_dir("rollout");
    let ip = pod_ip();
    let app = DemoApp::start(&dir, &ip, true).await?;
    let mut options = SidecarOptions::new("loadgen", &ip, app.addr, &consul);
    options.service_extra =
        "  upstreams: [{service: abrupt, timeout: 5s}, {service: steady, timeout: 5s}]\n".into();
    let mesh = Sidecar::start(&dir, &options)?;
    mesh.wait_ready(Duration::from_secs(30)).await?;

    // Both at once: the same load, the same machine, the same minute.
    let (abrupt, steady) = tokio::join!(
        under_load(&env, &mesh, &consul, "abrupt", Change::RolloutRestart),
        under_load(&env, &mesh, &consul, "steady", Change::RolloutRestart),
    );
    let ((abrupt_mesh, abrupt_direct), (steady_mesh, steady_direct)) = (abrupt?, steady?);
    ensure!(
        abrupt_mesh.failed() > 0 && abrupt_direct.failed() > 0,
        "without leaving first, calls reach apps that are shutting down; none failed, so this test \
         could not tell the mechanism works: through sidecars {}; direct {}",
        abrupt_mesh.summary(),
        abrupt_direct.summary()
    );
    ensure!(
        steady_mesh.failed() == 0 && steady_direct.failed() == 0,
        "calls failed through a rolling update: through sidecars {}; resolving Consul per call {}\n{}",
        steady_mesh.summary(),
        steady_direct.summary(),
        mesh.log_tail(200)
            .lines()
            .filter(|line| !line.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Scale-down: two of three pods leave at once, under the same load.
    let (scaled_mesh, scaled_direct) =
        under_load(&env, &mesh, &consul, "steady", Change::ScaleDownToOne).await?;
    ensure!(
        scaled_mesh.failed() == 0 && scaled_direct.failed() == 0,
        "calls failed through a scale-down: through sidecars {}; resolving Consul per call {}",
        scaled_mesh.summary(),
        scaled_direct.summary()
    );
    Ok(())
}
