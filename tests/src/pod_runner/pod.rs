//! One pod's lifecycle, as a task of its own: native sidecars first (each gating the next
//! container on its startup probe), then the regular init containers one by one, then
//! the app containers; restarts with backoff as `restartPolicy` says; probes; status;
//! and the stop in reverse order when the pod is deleted.

use super::container::{PodContext, log_path};
use super::images::Program;
use super::probe::ProbeState;
use super::status::{Conditions, StatusInput, pod_status};
use super::{Options, Pids, log};
use crate::process::Proc;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a pod's processes are checked and its probes considered.
/// How often Secret and ConfigMap volumes are written again.
const VOLUME_REFRESH: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(200);
/// A container that ran this long starts its backoff over.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Why a pod's processes stop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// deletionTimestamp set: stop within the grace period, then delete the pod object.
    Delete { grace: Duration },
    /// The pod object is gone already: stop quickly.
    Gone,
    /// The runner stops: stop the processes, leave the pod object alone.
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An init container with `restartPolicy: Always`.
    Sidecar,
    /// A regular init container: runs to completion before the next.
    Init,
    App,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started: Option<Time>,
    pub finished: Time,
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        since: Time,
    },
    Terminated(Terminated),
}

/// One container: its spec, its process when running, and what the status reports.
pub struct ContainerRun {
    pub spec: Container,
    pub role: Role,
    pub program: Result<Program, String>,
    proc: Option<Arc<Proc>>,
    pub pid: Option<u32>,
    pub state: State,
    pub last: Option<Terminated>,
    pub restarts: i32,
    pub started: bool,
    pub ready: bool,
    startup: Option<ProbeState>,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    running_since: Option<Instant>,
    restart_at: Option<Instant>,
    backoff: Duration,
    /// Not to be started again (terminated for good).
    done: bool,
}

impl ContainerRun {
    fn new(spec: Container, role: Role, program: Result<Program, String>) -> ContainerRun {
        let state = match &program {
            Ok(_) => State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            Err(message) => State::Waiting {
                reason: "ErrImageNeverPull".into(),
                message: Some(message.clone()),
            },
        };
        ContainerRun {
            spec,
            role,
            program,
            proc: None,
            pid: None,
            state,
            last: None,
            restarts: 0,
            started: false,
            ready: false,
            startup: None,
            readiness: None,
            liveness: None,
            running_since: None,
            restart_at: None,
            backoff: Duration::ZERO,
            done: false,
        }
    }

    fn running(&self) -> bool {
        self.proc.is_some()
    }

    fn terminated_with(&self) -> Option<i32> {
        match &self.state {
            State::Terminated(t) => Some(t.exit_code),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    /// Starting init container `i` (sidecars and regular ones, in order).
    Init(usize),
    Main,
    /// Every app container is done for good.
    Done,
}

pub struct PodWorker {
    ctx: PodContext,
    opts: Arc<Options>,
    pids: Pids,
    runs: Vec<ContainerRun>,
    stage: Stage,
    restart_policy: String,
    start_time: Time,
    conditions: Conditions,
    last_written: Option<serde_json::Value>,
    last_error: Option<String>,
    message: Option<String>,
    http: reqwest::Client,
}

impl PodWorker {
    pub fn new(ctx: PodContext, opts: Arc<Options>, pids: Pids) -> PodWorker {
        let spec = ctx.pod.spec.clone().unwrap_or_default();
        let mut runs = Vec::new();
        for c in spec.init_containers.unwrap_or_default() {
            let role = if c.restart_policy.as_deref() == Some("Always") {
                Role::Sidecar
            } else {
                Role::Init
            };
            let program = opts.images.resolve(c.image.as_deref().unwrap_or_default());
            runs.push(ContainerRun::new(c, role, program));
        }
        for c in spec.containers {
            let program = opts.images.resolve(c.image.as_deref().unwrap_or_default());
            runs.push(ContainerRun::new(c, Role::App, program));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_default();
        PodWorker {
            ctx,
            opts,
            pids,
            runs,
            stage: Stage::Init(0),
            restart_policy: spec.restart_policy.unwrap_or_else(|| "Always".into()),
            start_time: Time(Timestamp::now()),
            conditions: Conditions::default(),
            last_written: None,
            last_error: None,
            message: None,
            http,
        }
    }

    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.ctx
                .pod
                .metadata
                .namespace
                .as_deref()
                .unwrap_or_default(),
            self.ctx.pod.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Runs the pod until told to stop, then stops it.
    pub async fn run(mut self, mut stop: watch::Receiver<Option<Stop>>) {
        let _ = std::fs::create_dir_all(&self.ctx.dir);
        for note in self.ctx.prepare_volumes().await {
            log(&self.opts, &format!("{}: {note}", self.key()));
        }
        log(
            &self.opts,
            &format!("{}: running on {}", self.key(), self.ctx.ip),
        );
        let mut volumes_written = tokio::time::Instant::now();
        let reason = loop {
            if let Some(reason) = *stop.borrow() {
                break reason;
            }
            // As the kubelet does: Secrets and ConfigMaps that appear or change after
            // the pod started reach its volumes (the mTLS identity, renewed in place).
            if volumes_written.elapsed() >= VOLUME_REFRESH {
                self.ctx.prepare_volumes().await;
                volumes_written = tokio::time::Instant::now();
            }
            self.tick().await;
            self.write_status().await;
            tokio::select! {
                changed = stop.changed() => if changed.is_err() { break Stop::Shutdown },
                _ = tokio::time::sleep(TICK) => {}
            }
        };
        let grace = match reason {
            Stop::Delete { grace } => grace,
            Stop::Gone => Duration::from_secs(2),
            Stop::Shutdown => Duration::from_secs(
                self.ctx
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30)
                    .clamp(1, 30) as u64,
            ),
        };
        self.stop_all(grace).await;
        log(&self.opts, &format!("{}: stopped ({reason:?})", self.key()));
        if let Stop::Delete { .. } = reason {
            // The kubelet's last word: the containers are gone, the object may go.
            let api: Api<Pod> = Api::namespaced(
                self.ctx.client.clone(),
                self.ctx
                    .pod
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or_default(),
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: self.ctx.pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let name = self.ctx.pod.metadata.name.clone().unwrap_or_default();
            if let Err(e) = api.delete(&name, &params).await {
                log(&self.opts, &format!("{}: deleting: {e}", self.key()));
            }
        }
        super::ips::release(self.ctx.ip);
        let _ = std::fs::remove_dir_all(&self.ctx.dir);
    }

    async fn tick(&mut self) {
        self.reap();
        loop {
            match self.stage {
                Stage::Init(i) if i >= self.init_count() => {
                    for idx in self.init_count()..self.runs.len() {
                        self.start(idx).await;
                    }
                    self.stage = Stage::Main;
                }
                Stage::Init(i) => {
                    if !self.runs[i].running() && !self.runs[i].done {
                        self.maybe_start(i).await;
                    }
                    let run = &self.runs[i];
                    let next = match run.role {
                        Role::Sidecar => run.started,
                        _ => run.terminated_with() == Some(0),
                    };
                    if next {
                        self.stage = Stage::Init(i + 1);
                        continue;
                    }
                    if run.role == Role::Init && run.done && run.terminated_with() != Some(0) {
                        self.message = Some(format!("init container {} failed", run.spec.name));
                        self.finish().await;
                    }
                }
                Stage::Main => {
                    for idx in 0..self.runs.len() {
                        if self.runs[idx].role != Role::Init
                            && !self.runs[idx].running()
                            && !self.runs[idx].done
                        {
                            self.maybe_start(idx).await;
                        }
                    }
                    let apps_done = self
                        .runs
                        .iter()
                        .filter(|r| r.role == Role::App)
                        .all(|r| r.done);
                    if apps_done {
                        self.finish().await;
                    }
                }
                Stage::Done => {}
            }
            break;
        }
        self.probe().await;
    }

    fn init_count(&self) -> usize {
        self.runs.iter().filter(|r| r.role != Role::App).count()
    }

    /// Every app container is done: stop the sidecars and report the pod terminal.
    async fn finish(&mut self) {
        self.stage = Stage::Done;
        let sidecars: Vec<usize> = (0..self.runs.len())
            .rev()
            .filter(|&i| self.runs[i].role == Role::Sidecar)
            .collect();
        for i in sidecars {
            self.runs[i].done = true;
            self.stop_one(i, Duration::from_secs(10)).await;
        }
        self.reap();
    }

    /// Records containers whose process exited, and decides whether they restart.
    fn reap(&mut self) {
        let policy = self.restart_policy.clone();
        let stage = self.stage;
        for run in &mut self.runs {
            let Some(proc) = &run.proc else { continue };
            let Some(status) = proc.exit_status() else {
                continue;
            };
            let exit_code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            let started = match &run.state {
                State::Running { since } => Some(since.clone()),
                _ => None,
            };
            let term = Terminated {
                exit_code,
                signal: status.signal(),
                reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started,
                finished: Time(Timestamp::now()),
                pid: run.pid,
            };
            run.proc = None;
            run.started = false;
            run.ready = false;
            let ran = run.running_since.take().map(|t| t.elapsed());
            let restart = !run.done
                && stage != Stage::Done
                && match run.role {
                    Role::Sidecar => true,
                    Role::Init => policy != "Never" && exit_code != 0,
                    Role::App => match policy.as_str() {
                        "Always" => true,
                        "OnFailure" => exit_code != 0,
                        _ => false,
                    },
                };
            if restart {
                run.backoff = if ran.is_some_and(|d| d >= BACKOFF_RESET) || run.backoff.is_zero() {
                    self.opts.backoff_base
                } else {
                    (run.backoff * 2).min(self.opts.backoff_max)
                };
                run.restart_at = Some(Instant::now() + run.backoff);
                run.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {:?} restarting failed container {}",
                        run.backoff, run.spec.name
                    )),
                };
                run.last = Some(term);
            } else {
                run.done = true;
                run.state = State::Terminated(term);
            }
        }
    }

    async fn maybe_start(&mut self, idx: usize) {
        if self.runs[idx]
            .restart_at
            .is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        self.start(idx).await;
    }

    async fn start(&mut self, idx: usize) {
        let program = match &self.runs[idx].program {
            Ok(p) => p.clone(),
            Err(_) => return, // stays Waiting: ErrImageNeverPull
        };
        let spec = self.runs[idx].spec.clone();
        let env = match self.ctx.environment(&spec, &program).await {
            Ok(env) => env,
            Err(message) => {
                let run = &mut self.runs[idx];
                run.state = State::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: Some(message),
                };
                run.restart_at = Some(Instant::now() + self.opts.backoff_base);
                return;
            }
        };
        let Some(command) = self.ctx.command(&spec, &program, &env) else {
            let run = &mut self.runs[idx];
            run.state = State::Waiting {
                reason: "CreateContainerError".into(),
                message: Some("an image run from the host's PATH needs a command".into()),
            };
            run.done = true;
            return;
        };
        let log_file = log_path(&self.opts.log_dir, &self.ctx.pod, &spec.name);
        let name = format!("{} {}", self.key(), spec.name);
        let pid_key = format!("{}/{}", self.key(), spec.name);
        let run = &mut self.runs[idx];
        if run.last.is_some() || matches!(run.state, State::Terminated(_)) {
            run.restarts += 1;
        }
        match Proc::spawn(&name, command, &log_file) {
            Ok(proc) => {
                let pid = proc.pid();
                self.pids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(pid_key, pid);
                let now = Instant::now();
                run.proc = Some(Arc::new(proc));
                run.pid = Some(pid);
                run.running_since = Some(now);
                run.restart_at = None;
                run.state = State::Running {
                    since: Time(Timestamp::now()),
                };
                run.startup = spec
                    .startup_probe
                    .as_ref()
                    .map(|p| ProbeState::new(p, &spec, now));
                run.readiness = spec
                    .readiness_probe
                    .as_ref()
                    .map(|p| ProbeState::new(p, &spec, now));
                run.liveness = spec
                    .liveness_probe
                    .as_ref()
                    .map(|p| ProbeState::new(p, &spec, now));
                run.started = run.startup.is_none();
                run.ready = run.started && run.readiness.is_none() && run.role != Role::Init;
            }
            Err(e) => {
                let term = Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(format!("{e:#}")),
                    started: None,
                    finished: Time(Timestamp::now()),
                    pid: None,
                };
                run.last = Some(term);
                run.backoff = (run.backoff * 2)
                    .max(self.opts.backoff_base)
                    .min(self.opts.backoff_max);
                run.restart_at = Some(Instant::now() + run.backoff);
                run.state = State::Waiting {
                    reason: "RunContainerError".into(),
                    message: Some(format!("{e:#}")),
                };
            }
        }
    }

    async fn probe(&mut self) {
        let ip = self.ctx.ip;
        let mut restart = Vec::new();
        for (idx, run) in self.runs.iter_mut().enumerate() {
            if !run.running() {
                continue;
            }
            if !run.started {
                if let Some(p) = &mut run.startup {
                    p.tick(ip, &self.http).await;
                    match p.verdict {
                        Some(true) => {
                            run.started = true;
                            run.ready = run.readiness.is_none() && run.role != Role::Init;
                        }
                        Some(false) => restart.push(idx),
                        None => {}
                    }
                }
                continue;
            }
            if let Some(p) = &mut run.readiness {
                p.tick(ip, &self.http).await;
                run.ready = p.verdict == Some(true);
            }
            if let Some(p) = &mut run.liveness {
                p.tick(ip, &self.http).await;
                if p.verdict == Some(false) {
                    restart.push(idx);
                }
            }
        }
        // A failed startup or liveness probe: the kubelet kills the container, and the
        // restart policy decides the rest.
        for idx in restart {
            self.stop_one(idx, Duration::from_secs(5)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; blocks on a thread of its own.
    async fn stop_one(&mut self, idx: usize, grace: Duration) {
        if let Some(proc) = self.runs[idx].proc.clone() {
            let _ = tokio::task::spawn_blocking(move || proc.stop(grace)).await;
        }
    }

    /// App containers together, then regular init containers, then the sidecars in
    /// reverse order, all within `grace` (each sidecar gets at least 2 s).
    async fn stop_all(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for run in &mut self.runs {
            run.done = true;
        }
        let mut stops = Vec::new();
        for run in self.runs.iter().filter(|r| r.role != Role::Sidecar) {
            if let Some(proc) = run.proc.clone() {
                stops.push(tokio::task::spawn_blocking(move || proc.stop(grace)));
            }
        }
        for s in stops {
            let _ = s.await;
        }
        let sidecars: Vec<usize> = (0..self.runs.len())
            .rev()
            .filter(|&i| self.runs[i].role == Role::Sidecar)
            .collect();
        for i in sidecars {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(2));
            self.stop_one(i, left).await;
        }
        self.reap();
    }

    fn phase(&self) -> &'static str {
        let apps = || self.runs.iter().filter(|r| r.role == Role::App);
        match self.stage {
            Stage::Init(_) => "Pending",
            Stage::Main => {
                if apps().any(|r| r.running() || r.last.is_some()) {
                    "Running"
                } else {
                    "Pending"
                }
            }
            Stage::Done => {
                let init_failed = self
                    .runs
                    .iter()
                    .any(|r| r.role == Role::Init && r.terminated_with().is_some_and(|c| c != 0));
                if init_failed || apps().any(|r| r.terminated_with() != Some(0)) {
                    "Failed"
                } else {
                    "Succeeded"
                }
            }
        }
    }

    async fn write_status(&mut self) {
        let input = StatusInput {
            runs: &self.runs,
            ip: self.ctx.ip,
            start_time: &self.start_time,
            phase: self.phase(),
            initialized: !matches!(self.stage, Stage::Init(_)),
            message: self.message.clone(),
        };
        let status = pod_status(&input, &mut self.conditions);
        let Ok(value) = serde_json::to_value(&status) else {
            return;
        };
        if self.last_written.as_ref() == Some(&value) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            self.ctx
                .pod
                .metadata
                .namespace
                .as_deref()
                .unwrap_or_default(),
        );
        let name = self.ctx.pod.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({ "status": value });
        match api
            .patch_status(
                &name,
                &PatchParams {
                    field_manager: Some(super::node::FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                self.last_written = Some(value);
                self.last_error = None;
            }
            Err(e) => {
                // Retried every tick; logged once per distinct error.
                let text = e.to_string();
                if self.last_error.as_ref() != Some(&text) {
                    log(
                        &self.opts,
                        &format!("{}: writing status: {text}", self.key()),
                    );
                    self.last_error = Some(text);
                }
            }
        }
    }
}
