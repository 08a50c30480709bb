//! The runner's own Node: created (or taken over) by server-side apply, kept Ready by a
//! heartbeat (its Lease in `kube-node-lease` and the Ready condition, every
//! [`HEARTBEAT`]), deleted when the runner stops. It carries no kwok annotation, so kwok
//! (`--manage-nodes-with-annotation-selector`) leaves it alone.

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

pub const FIELD_MANAGER: &str = "streamgate-pod-runner";
/// Label every runner node carries (value: the node's name); `type` is
/// `streamgate-pod-runner` too, beside kwok's `type=kwok`.
pub const RUNNER_LABEL: &str = "streamgate.io/pod-runner";
/// How often the node's Lease and Ready condition are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Creates or takes over the Node `name` and reports it Ready.
/// Returns the time it became Ready, for later heartbeats.
pub async fn register(client: &kube::Client, name: &str) -> Result<Time> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "streamgate-pod-runner",
                RUNNER_LABEL: name,
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"unschedulable": false},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes
        .patch(name, &params, &Patch::Apply(&node))
        .await
        .with_context(|| format!("creating node {name}"))?;
    let since = Time(Timestamp::now());
    heartbeat(client, name, &since).await?;
    Ok(since)
}

/// Renews the Lease and the Ready condition.
pub async fn heartbeat(client: &kube::Client, name: &str, since: &Time) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    let status = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
            "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                condition("Ready", "True", "KubeletReady", "streamgate-pod-runner is running pods as local processes"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no pressure"),
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "streamgate-pod-runner",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "local-process://",
                "osImage": "", "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    });
    nodes
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .with_context(|| format!("reporting node {name} Ready"))?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(LEASE_NAMESPACE.to_string()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    leases
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .with_context(|| format!("renewing the Lease of node {name}"))?;
    Ok(())
}

/// True once the node is Ready and carries none of the node controller's
/// not-ready/unreachable taints (so the scheduler places pods on it).
pub async fn schedulable(client: &kube::Client, name: &str) -> Result<bool> {
    let node = Api::<Node>::all(client.clone()).get(name).await?;
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
    Ok(ready && !tainted)
}

/// Deletes the Node and its Lease (the pod garbage collector then removes pods still
/// bound to it).
pub async fn unregister(client: &kube::Client, name: &str) {
    let _ = Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
    let _ = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE)
        .delete(name, &DeleteParams::default())
        .await;
}
