//! A pod runner for the local platform: a test and dev utility, not a product component.
//!
//! It plays the kubelet of one node of its own (see [`node`]): every pod the scheduler
//! binds to that node runs as local processes, the workspace's binaries standing in for
//! the images ([`images`]).
//!
//! - **Node.** The runner creates (or takes over) the Node `options.node` and keeps it
//!   Ready with a heartbeat (Lease + Ready condition every 10 s). It carries no kwok
//!   annotation, so kwok (which only manages nodes annotated `kwok.x-k8s.io/node=fake`)
//!   leaves it alone. Pods reach it by `nodeSelector: {kubernetes.io/hostname: <node>}`
//!   (tests), or by being the only schedulable node (`make dev` cordons kwok's nodes).
//!   On stop the Node is deleted (unless `keep_node`), so no dead node attracts pods.
//! - **Addresses.** Each pod gets 127.0.0.N (the lowest free N from `first_ip` up,
//!   reused after deletion) as `status.podIP`/`podIPs`; `hostIP` is 127.0.0.1. All pods
//!   share the host's network namespace, so what a container would bind on its own
//!   loopback moves to the pod IP: the sidecar's app, inbound and admin listeners
//!   (`STREAMGATE_*_LISTEN`) and `STREAMGATE_APP_HOST`, the demo app's `DEMO_LISTEN`
//!   (its first container port), and `STREAMGATE_SIDECAR_ADDR` in every container.
//! - **Environment.** Literal values (with `$(VAR)`), `fieldRef` (name, namespace, uid,
//!   nodeName, serviceAccountName, podIP, hostIP, labels, annotations), `secretKeyRef`,
//!   `configMapKeyRef`, `envFrom`, plus `PATH`, `HOME` and `HOSTNAME`; nothing else of
//!   the runner's environment leaks in.
//! - **Volumes.** `emptyDir`, `secret` and `configMap` become directories under the
//!   pod's directory (written at pod start and again every 5 s, as the kubelet
//!   refreshes them), `hostPath` is itself; a mount path that appears in an
//!   environment value (e.g. `spoolDir` in the sidecar's `STREAMGATE_CONFIG`) is
//!   rewritten to that directory, and the sidecar's identity mount
//!   (`/etc/streamgate/mtls`) is named in `STREAMGATE_MTLS_DIR` so it is rewritten too.
//!   Projected volumes (service account tokens) and PVCs are left out.
//! - **Lifecycle.** Init containers in order: native sidecars (`restartPolicy: Always`)
//!   gate the next container on their startup probe; regular ones run to completion.
//!   Then the app containers. Exited containers restart as `restartPolicy` says, with a
//!   doubling backoff (`backoff_base` … `backoff_max`, reset after a minute of running);
//!   failed startup or liveness probes kill the container. When every app container is
//!   done the sidecars stop and the pod is Succeeded or Failed.
//! - **Probes.** httpGet, tcpSocket and grpc (as a TCP connect) on the pod IP; exec
//!   probes count as passing ([`probe`]).
//! - **Status** ([`status`]): phase, podIP(s), hostIP(s), startTime, conditions
//!   (Initialized, ContainersReady, Ready, …) and container statuses (state with exit
//!   codes, lastState, ready, started, restartCount), through `pods/status` with a JSON
//!   merge patch under the field manager `streamgate-pod-runner`, only when changed.
//!   An image with no local program leaves its container Waiting (`ErrImageNeverPull`).
//! - **Deletion.** A pod with a deletionTimestamp: app containers get SIGTERM and up to
//!   the pod's grace period, then the sidecars in reverse order; then the runner deletes
//!   the pod with grace 0 (the kubelet's part) and releases its IP.
//! - **Processes** are started through [`crate::process::Proc`], so they die with the
//!   process that runs the runner (parent-death signal). Logs:
//!   `<log_dir>/<namespace>_<pod>_<container>.log` (restarts append), the runner's own
//!   log `<log_dir>/<node>.log`.
//!
//! The runner runs on a thread with its own Tokio runtime and kube client (from a
//! [`kube::Config`]), so dropping the handle can stop everything synchronously from
//! inside a test's runtime.

pub mod container;
pub mod images;
pub mod ips;
pub mod node;
pub mod pod;
pub mod probe;
pub mod status;

use anyhow::{Context, Result};
use futures::StreamExt;
use images::ImageMap;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use pod::{PodWorker, Stop};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// `namespace/pod/container` → PID of its latest process.
pub type Pids = Arc<Mutex<HashMap<String, u32>>>;

/// How a runner is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// The Node the runner plays.
    pub node: String,
    /// Image → program.
    pub images: ImageMap,
    /// Containers' logs, the runner's log, and the pods' directories (`pods/`).
    pub log_dir: PathBuf,
    /// First N of the 127.0.0.N pod addresses.
    pub first_ip: u8,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Leave the Node behind when stopping (it turns NotReady).
    pub keep_node: bool,
    /// Also print the runner's log lines on stderr.
    pub log_to_stderr: bool,
}

impl Options {
    /// Defaults: workspace binaries from `bin_dir`, logs in `log_dir`, addresses from
    /// 127.0.0.10, backoff 1 s doubling to 30 s.
    pub fn new(node: &str, bin_dir: &std::path::Path, log_dir: &std::path::Path) -> Options {
        Options {
            node: node.to_string(),
            images: ImageMap::new(bin_dir),
            log_dir: log_dir.to_path_buf(),
            first_ip: 10,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            keep_node: false,
            log_to_stderr: false,
        }
    }
}

pub(crate) fn log(opts: &Options, line: &str) {
    let stamp = k8s_openapi::jiff::Timestamp::now();
    let text = format!("{stamp} {line}\n");
    if opts.log_to_stderr {
        eprint!("{text}");
    }
    if let Ok(mut f) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(opts.log_dir.join(format!("{}.log", opts.node)))
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// A running pod runner; dropping it stops every pod's processes and removes the Node.
pub struct PodRunner {
    node: String,
    log_dir: PathBuf,
    pids: Pids,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodRunner {
    /// Registers the node, waits until it is schedulable, and starts running its pods.
    pub async fn start(config: kube::Config, options: Options) -> Result<PodRunner> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(&options.log_dir)
            .with_context(|| format!("creating {}", options.log_dir.display()))?;
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let pids: Pids = Arc::default();
        let node = options.node.clone();
        let log_dir = options.log_dir.clone();
        let thread_pids = pids.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pod-runner-{node}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("pod-runner")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(run(config, options, thread_pids, ready_tx, shutdown_rx));
            })?;
        let mut runner = PodRunner {
            node,
            log_dir,
            pids,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(runner),
            Ok(Err(e)) => {
                runner.stop();
                anyhow::bail!("pod runner: {e}")
            }
            Err(_) => {
                runner.stop();
                anyhow::bail!("pod runner thread ended before it was ready")
            }
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn log_dir(&self) -> &std::path::Path {
        &self.log_dir
    }

    /// PID of the latest process of `container` of pod `namespace/pod`.
    pub fn pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{namespace}/{pod}/{container}"))
            .copied()
    }

    /// The last `lines` lines of the runner's log and of every container log, for a
    /// failing test.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                format!(
                    "----- {} -----\n{}",
                    f.display(),
                    crate::process::tail(f, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every pod's processes (gracefully) and removes the Node; blocks until done.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    stop: watch::Sender<Option<Stop>>,
    task: tokio::task::JoinHandle<()>,
}

async fn run(
    config: kube::Config,
    options: Options,
    pids: Pids,
    ready: oneshot::Sender<Result<(), String>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let opts = Arc::new(options);
    let started = async {
        let client = kube::Client::try_from(config).context("kube client")?;
        let since = node::register(&client, &opts.node).await?;
        crate::wait::eventually(
            "the runner's node is schedulable",
            Duration::from_secs(60),
            || async { Ok(node::schedulable(&client, &opts.node).await?.then_some(())) },
        )
        .await?;
        anyhow::Ok((client, since))
    }
    .await;
    let (client, since) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    log(&opts, &format!("node {} registered and Ready", opts.node));
    let _ = ready.send(Ok(()));

    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node));
    let mut events = watcher(pods, config).default_backoff().boxed();
    let mut heartbeat = tokio::time::interval(node::HEARTBEAT);
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = heartbeat.tick() => {
                if let Err(e) = node::heartbeat(&client, &opts.node, &since).await {
                    log(&opts, &format!("heartbeat: {e:#}"));
                }
            }
            event = events.next() => {
                let Some(event) = event else { break };
                match event {
                    Ok(watcher::Event::Init) => listed.clear(),
                    Ok(watcher::Event::InitApply(pod)) => {
                        if let Some(uid) = pod.metadata.uid.clone() {
                            listed.insert(uid);
                        }
                        on_pod(&client, &opts, &pids, &mut workers, pod);
                    }
                    Ok(watcher::Event::InitDone) => {
                        // Pods deleted while the watch was down.
                        for (uid, w) in &workers {
                            if !listed.contains(uid) {
                                let _ = w.stop.send(Some(Stop::Gone));
                            }
                        }
                    }
                    Ok(watcher::Event::Apply(pod)) => on_pod(&client, &opts, &pids, &mut workers, pod),
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Some(w) = pod.metadata.uid.as_ref().and_then(|u| workers.remove(u)) {
                            let _ = w.stop.send(Some(Stop::Gone));
                        }
                    }
                    Err(e) => log(&opts, &format!("watching pods: {e}")),
                }
            }
        }
    }
    log(&opts, "stopping");
    for w in workers.values() {
        let _ = w.stop.send_replace(Some(Stop::Shutdown));
    }
    for (_, w) in workers {
        let _ = w.task.await;
    }
    if !opts.keep_node {
        node::unregister(&client, &opts.node).await;
    }
    log(&opts, "stopped");
}

fn on_pod(
    client: &kube::Client,
    opts: &Arc<Options>,
    pids: &Pids,
    workers: &mut BTreeMap<String, Worker>,
    pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if pod.metadata.deletion_timestamp.is_some() {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64;
        let stop = Stop::Delete {
            grace: Duration::from_secs(grace),
        };
        match workers.get(&uid) {
            Some(w) => {
                if w.stop.borrow().is_none() {
                    let _ = w.stop.send(Some(stop));
                }
            }
            None => {
                // Nothing runs for it (terminal, or not started): let it go at once.
                let api: Api<Pod> = Api::namespaced(
                    client.clone(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                );
                let name = pod.metadata.name.clone().unwrap_or_default();
                tokio::spawn(async move {
                    let _ = api
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                });
            }
        }
        return;
    }
    if workers.contains_key(&uid) {
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return;
    }
    let Some(ip) = ips::allocate(opts.first_ip) else {
        log(opts, "no free 127.0.0.N address left for a pod");
        return;
    };
    let dir = opts.log_dir.join("pods").join(&uid);
    let ctx = container::PodContext {
        client: client.clone(),
        pod,
        ip,
        node: opts.node.clone(),
        dir,
        volumes: BTreeMap::new(),
    };
    let (stop_tx, stop_rx) = watch::channel(None);
    let worker = PodWorker::new(ctx, opts.clone(), pids.clone());
    let task = tokio::spawn(worker.run(stop_rx));
    workers.insert(
        uid,
        Worker {
            stop: stop_tx,
            task,
        },
    );
}
