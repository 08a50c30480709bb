//! The "status" step's logic: from the Deployment's state and Consul's, the status a
//! person can act on. Pure, so every case is unit-tested.

use crate::consul::RegisteredInstance;
use crate::labels::selector_string;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use streamgate_crds::{ConsulStatus, StreamGateService, StreamGateServiceStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What Consul said about the service, or why it could not be asked.
pub type ConsulView = Result<Vec<RegisteredInstance>, String>;

/// Computes the status. `now` stamps conditions whose status changed; unchanged ones
/// keep their `lastTransitionTime`.
pub fn compute_status(
    sgs: &StreamGateService,
    deployment: Option<&Deployment>,
    consul: &ConsulView,
    now: Time,
) -> StreamGateServiceStatus {
    let name = sgs.metadata.name.clone().unwrap_or_default();
    let generation = sgs.metadata.generation;
    let desired = sgs.spec.replicas;
    let rollout = Rollout::of(deployment, desired);
    let previous = sgs.status.as_ref();
    let health = ConsulHealth::of(consul, previous.map(|s| &s.consul));
    let summary = summary(&rollout, desired, &health, consul);
    let verdicts = [
        (READY, ready(&rollout, desired, &health, consul, &summary)),
        (PROGRESSING, progressing(&rollout, desired)),
        (DEGRADED, degraded(&rollout, &health, consul, &summary)),
    ];
    let previous_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let conditions = verdicts
        .into_iter()
        .map(|(type_, verdict)| condition(previous_conditions, type_, verdict, generation, &now))
        .collect();
    StreamGateServiceStatus {
        observed_generation: generation,
        replicas: rollout.replicas,
        ready_replicas: rollout.ready,
        consul: health.counts,
        selector: selector_string(&name),
        conditions,
    }
}

/// The Deployment's side of the picture.
struct Rollout {
    exists: bool,
    replicas: i32,
    ready: i32,
    updated: i32,
    /// The Deployment controller has seen the latest template and every replica runs it.
    done: bool,
    /// The message of a `ReplicaFailure` condition (quota, admission refusal).
    failure: Option<String>,
}

impl Rollout {
    fn of(deployment: Option<&Deployment>, desired: i32) -> Rollout {
        let status = deployment
            .and_then(|d| d.status.clone())
            .unwrap_or_default();
        let replicas = status.replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let observed = status.observed_generation.unwrap_or(0);
        let generation = deployment.and_then(|d| d.metadata.generation).unwrap_or(0);
        let failure = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .map(|c| c.message.clone().unwrap_or_default());
        Rollout {
            exists: deployment.is_some(),
            replicas,
            ready: status.ready_replicas.unwrap_or(0),
            updated,
            done: deployment.is_some()
                && observed >= generation
                && updated >= desired
                && replicas == desired,
            failure,
        }
    }
}

/// Consul's side: the counts, and the instances that are not passing.
struct ConsulHealth {
    counts: ConsulStatus,
    critical: Vec<String>,
}

impl ConsulHealth {
    /// When Consul cannot be asked, the counts last shown stay (and nothing is called
    /// critical on no evidence).
    fn of(consul: &ConsulView, shown: Option<&ConsulStatus>) -> ConsulHealth {
        match consul {
            Ok(instances) => ConsulHealth {
                counts: ConsulStatus {
                    passing: instances.iter().filter(|i| i.is_passing()).count() as i32,
                    total: instances.len() as i32,
                },
                critical: instances
                    .iter()
                    .filter(|i| !i.is_passing())
                    .map(|i| i.id.clone())
                    .collect(),
            },
            Err(_) => ConsulHealth {
                counts: shown.cloned().unwrap_or_default(),
                critical: Vec::new(),
            },
        }
    }
}

/// A condition's status, reason and message.
struct Verdict {
    status: &'static str,
    reason: &'static str,
    message: String,
}

fn verdict(status: &'static str, reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict {
        status,
        reason,
        message: message.into(),
    }
}

/// One line a person reads first, e.g. "2/3 replicas ready; 1 instance critical in
/// Consul: upload-media-upload-x".
fn summary(rollout: &Rollout, desired: i32, health: &ConsulHealth, consul: &ConsulView) -> String {
    let mut summary = format!("{}/{desired} replicas ready", rollout.ready);
    let critical = &health.critical;
    if !critical.is_empty() {
        summary.push_str(&format!(
            "; {} instance{} critical in Consul: {}",
            critical.len(),
            if critical.len() == 1 { "" } else { "s" },
            critical.join(", ")
        ));
    }
    if let Err(e) = consul {
        summary.push_str(&format!("; Consul unreachable: {e}"));
    }
    summary
}

fn ready(
    rollout: &Rollout,
    desired: i32,
    health: &ConsulHealth,
    consul: &ConsulView,
    summary: &str,
) -> Verdict {
    let all_ready = rollout.exists && rollout.ready >= desired && rollout.done;
    let (status, reason) = if !rollout.exists {
        ("False", "DeploymentMissing")
    } else if !all_ready {
        ("False", "ReplicasNotReady")
    } else if consul.is_err() {
        ("False", "ConsulUnreachable")
    } else if health.counts.passing < desired {
        ("False", "ConsulInstancesNotPassing")
    } else {
        ("True", "AllReplicasReady")
    };
    verdict(status, reason, summary)
}

fn progressing(rollout: &Rollout, desired: i32) -> Verdict {
    if rollout.done {
        let message = format!("{} replicas up to date", rollout.replicas);
        verdict("False", "RolloutComplete", message)
    } else {
        let (updated, ready) = (rollout.updated, rollout.ready);
        let message = format!("{updated}/{desired} replicas updated, {ready} ready");
        verdict("True", "RollingOut", message)
    }
}

fn degraded(
    rollout: &Rollout,
    health: &ConsulHealth,
    consul: &ConsulView,
    summary: &str,
) -> Verdict {
    if let Some(message) = &rollout.failure {
        verdict("True", "ReplicaFailure", message.as_str())
    } else if !health.critical.is_empty() {
        verdict("True", "ConsulInstancesCritical", summary)
    } else if let Err(e) = consul {
        verdict("True", "ConsulUnreachable", e.as_str())
    } else {
        verdict("False", "Healthy", "no failures")
    }
}

fn condition(
    previous: &[Condition],
    type_: &str,
    verdict: Verdict,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == verdict.status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: verdict.status.to_string(),
        reason: verdict.reason.to_string(),
        message: verdict.message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// True when the Ready condition is True.
pub fn is_ready(status: &StreamGateServiceStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use std::collections::BTreeMap;

    fn sgs(replicas: i32) -> StreamGateService {
        let mut s: StreamGateService = serde_yaml::from_str(&format!(
            "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: upload, namespace: media}}\nspec: {{image: i, port: 9091, replicas: {replicas}}}"
        ))
        .unwrap();
        s.metadata.generation = Some(3);
        s
    }

    fn deployment(replicas: i32, ready: i32, updated: i32) -> Deployment {
        Deployment {
            metadata: kube::api::ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                observed_generation: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn instance(id: &str, status: &str) -> RegisteredInstance {
        RegisteredInstance {
            id: id.into(),
            service: "upload".into(),
            node: "n".into(),
            meta: BTreeMap::new(),
            status: status.into(),
        }
    }

    fn now() -> Time {
        Time("2026-11-29T00:00:00Z".parse().unwrap())
    }

    fn cond<'a>(s: &'a StreamGateServiceStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_when_replicas_ready_and_consul_passing() {
        let consul = Ok(vec![instance("a", "passing"), instance("b", "passing")]);
        let s = compute_status(&sgs(2), Some(&deployment(2, 2, 2)), &consul, now());
        assert!(is_ready(&s));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!((s.consul.passing, s.consul.total), (2, 2));
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(
            s.selector,
            "app.kubernetes.io/instance=upload,app.kubernetes.io/managed-by=streamgate"
        );
    }

    #[test]
    fn critical_instance_is_named_in_ready_and_degraded_messages() {
        let consul = Ok(vec![
            instance("a", "passing"),
            instance("b", "passing"),
            instance("upload-7d9f", "critical"),
        ]);
        let s = compute_status(&sgs(3), Some(&deployment(3, 2, 3)), &consul, now());
        assert!(!is_ready(&s));
        let ready = cond(&s, READY);
        assert_eq!(
            ready.message,
            "2/3 replicas ready; 1 instance critical in Consul: upload-7d9f"
        );
        assert_eq!(cond(&s, DEGRADED).reason, "ConsulInstancesCritical");
    }

    #[test]
    fn rollout_in_progress_is_progressing() {
        let s = compute_status(&sgs(3), Some(&deployment(3, 3, 1)), &Ok(vec![]), now());
        let p = cond(&s, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "RollingOut")
        );
        assert!(!is_ready(&s));
    }

    #[test]
    fn consul_unreachable_keeps_last_counts_and_says_so() {
        let mut resource = sgs(1);
        resource.status = Some(StreamGateServiceStatus {
            consul: ConsulStatus {
                passing: 1,
                total: 1,
            },
            ..Default::default()
        });
        let s = compute_status(
            &resource,
            Some(&deployment(1, 1, 1)),
            &Err("connection refused".into()),
            now(),
        );
        assert_eq!(s.consul.passing, 1);
        assert_eq!(cond(&s, READY).reason, "ConsulUnreachable");
        assert_eq!(cond(&s, DEGRADED).reason, "ConsulUnreachable");
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let consul = Ok(vec![instance("a", "passing")]);
        let first = compute_status(&sgs(1), Some(&deployment(1, 1, 1)), &consul, now());
        let mut resource = sgs(1);
        resource.status = Some(first.clone());
        let later = Time("2026-11-29T01:00:00Z".parse().unwrap());
        let second = compute_status(&resource, Some(&deployment(1, 1, 1)), &consul, later);
        assert_eq!(first, second);
    }

    #[test]
    fn missing_deployment_is_not_ready() {
        let s = compute_status(&sgs(1), None, &Ok(vec![]), now());
        assert_eq!(cond(&s, READY).reason, "DeploymentMissing");
    }
}
