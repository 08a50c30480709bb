//! The pod's status as the kubelet reports it, computed from the containers' states and
//! written with a JSON merge patch of the `pods/status` subresource: the lists
//! (conditions, container statuses) are replaced whole, so a container's old `waiting`
//! never lingers beside its new `running`; PodScheduled is reported again with them.

use super::pod::{ContainerRun, Role, State, Terminated};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The pod phase and conditions, remembered so that transition times only move when a
/// condition changes.
#[derive(Debug, Default)]
pub struct Conditions {
    since: BTreeMap<&'static str, (bool, Time)>,
}

impl Conditions {
    fn condition(
        &mut self,
        type_: &'static str,
        status: bool,
        reason: Option<&str>,
    ) -> PodCondition {
        let entry = self
            .since
            .entry(type_)
            .or_insert_with(|| (status, Time(Timestamp::now())));
        if entry.0 != status {
            *entry = (status, Time(Timestamp::now()));
        }
        PodCondition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            last_transition_time: Some(entry.1.clone()),
            reason: if status {
                None
            } else {
                reason.map(str::to_string)
            },
            ..Default::default()
        }
    }
}

pub struct StatusInput<'a> {
    pub runs: &'a [ContainerRun],
    pub ip: Ipv4Addr,
    pub start_time: &'a Time,
    pub phase: &'a str,
    pub initialized: bool,
    pub message: Option<String>,
}

pub fn pod_status(input: &StatusInput<'_>, conditions: &mut Conditions) -> PodStatus {
    let mut init_statuses = Vec::new();
    let mut statuses = Vec::new();
    for run in input.runs {
        let status = container_status(run);
        match run.role {
            Role::App => statuses.push(status),
            Role::Sidecar | Role::Init => init_statuses.push(status),
        }
    }
    let containers_ready = input
        .runs
        .iter()
        .filter(|r| r.role != Role::Init)
        .all(|r| r.ready);
    let terminal = input.phase == "Succeeded" || input.phase == "Failed";
    let ready = containers_ready && !terminal;
    let reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let ip = input.ip.to_string();
    PodStatus {
        phase: Some(input.phase.to_string()),
        message: input.message.clone(),
        host_ip: Some("127.0.0.1".into()),
        host_ips: Some(vec![HostIP {
            ip: "127.0.0.1".into(),
        }]),
        pod_ip: Some(ip.clone()),
        pod_ips: Some(vec![PodIP { ip }]),
        start_time: Some(input.start_time.clone()),
        conditions: Some(vec![
            conditions.condition("PodReadyToStartContainers", true, None),
            conditions.condition(
                "Initialized",
                input.initialized,
                Some("ContainersNotInitialized"),
            ),
            conditions.condition("ContainersReady", ready, Some(reason)),
            conditions.condition("Ready", ready, Some(reason)),
            conditions.condition("PodScheduled", true, None),
        ]),
        init_container_statuses: Some(init_statuses),
        container_statuses: Some(statuses),
        ..Default::default()
    }
}

fn container_status(run: &ContainerRun) -> ContainerStatus {
    ContainerStatus {
        name: run.spec.name.clone(),
        image: run.spec.image.clone().unwrap_or_default(),
        image_id: String::new(),
        container_id: run.pid.map(|pid| format!("local-process://{pid}")),
        ready: run.ready,
        started: Some(run.started),
        restart_count: run.restarts,
        state: Some(state(&run.state)),
        last_state: Some(run.last.as_ref().map(terminated).unwrap_or_default()),
        ..Default::default()
    }
}

fn state(s: &State) -> ContainerState {
    match s {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { since } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(since.clone()),
            }),
            ..Default::default()
        },
        State::Terminated(t) => terminated(t),
    }
}

fn terminated(t: &Terminated) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            message: t.message.clone(),
            started_at: t.started.clone(),
            finished_at: Some(t.finished.clone()),
            container_id: t.pid.map(|pid| format!("local-process://{pid}")),
        }),
        ..Default::default()
    }
}
