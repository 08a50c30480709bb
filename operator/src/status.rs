//! The "status" step's logic: from the Deployment's state and Consul's, the status a
//! person can act on. Pure, so every case is unit-tested.

use crate::consul::Instance;
use crate::labels::selector_string;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use streamgate_crds::{ConsulStatus, StreamGateService, StreamGateServiceStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What Consul said about the service, or why it could not be asked.
pub type ConsulView = Result<Vec<Instance>, String>;

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
    let dep_status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let replicas = dep_status.replicas.unwrap_or(0);
    let ready = dep_status.ready_replicas.unwrap_or(0);
    let updated = dep_status.updated_replicas.unwrap_or(0);
    let dep_observed = dep_status.observed_generation.unwrap_or(0);
    let dep_generation = deployment.and_then(|d| d.metadata.generation).unwrap_or(0);
    let rollout_done = deployment.is_some()
        && dep_observed >= dep_generation
        && updated >= desired
        && replicas == desired;
    let replica_failure = dep_status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| c.message.clone().unwrap_or_default());

    let (consul_status, critical) = match consul {
        Ok(instances) => {
            let passing = instances.iter().filter(|i| i.is_passing()).count();
            let critical: Vec<String> = instances
                .iter()
                .filter(|i| !i.is_passing())
                .map(|i| i.id.clone())
                .collect();
            (
                ConsulStatus {
                    passing: passing as i32,
                    total: instances.len() as i32,
                },
                critical,
            )
        }
        Err(_) => (
            sgs.status
                .as_ref()
                .map(|s| s.consul.clone())
                .unwrap_or_default(),
            Vec::new(),
        ),
    };

    let mut summary = format!("{ready}/{desired} replicas ready");
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

    let consul_ok = consul.is_ok() && consul_status.passing >= desired;
    let all_ready = deployment.is_some() && ready >= desired && rollout_done;
    let (ready_status, ready_reason) = if deployment.is_none() {
        ("False", "DeploymentMissing")
    } else if !all_ready {
        ("False", "ReplicasNotReady")
    } else if consul.is_err() {
        ("False", "ConsulUnreachable")
    } else if !consul_ok {
        ("False", "ConsulInstancesNotPassing")
    } else {
        ("True", "AllReplicasReady")
    };
    let (progressing_status, progressing_reason, progressing_message) = if rollout_done {
        (
            "False",
            "RolloutComplete",
            format!("{replicas} replicas up to date"),
        )
    } else {
        (
            "True",
            "RollingOut",
            format!("{updated}/{desired} replicas updated, {ready} ready"),
        )
    };
    let (degraded_status, degraded_reason, degraded_message) = if let Some(msg) = replica_failure {
        ("True", "ReplicaFailure", msg)
    } else if !critical.is_empty() {
        ("True", "ConsulInstancesCritical", summary.clone())
    } else if let Err(e) = consul {
        ("True", "ConsulUnreachable", e.clone())
    } else {
        ("False", "Healthy", "no failures".to_string())
    };

    let previous = sgs
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let conditions = vec![
        condition(
            &previous,
            READY,
            ready_status,
            ready_reason,
            &summary,
            generation,
            &now,
        ),
        condition(
            &previous,
            PROGRESSING,
            progressing_status,
            progressing_reason,
            &progressing_message,
            generation,
            &now,
        ),
        condition(
            &previous,
            DEGRADED,
            degraded_status,
            degraded_reason,
            &degraded_message,
            generation,
            &now,
        ),
    ];

    StreamGateServiceStatus {
        observed_generation: generation,
        replicas,
        ready_replicas: ready,
        consul: consul_status,
        selector: selector_string(&name),
        conditions,
    }
}

fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
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

    fn instance(id: &str, status: &str) -> Instance {
        Instance {
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
