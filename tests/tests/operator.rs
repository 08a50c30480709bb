//! The operator against the real platform: the operator runs as its own ServiceAccount
//! with the chart's least-privilege ClusterRole, watching only the test's namespace.

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::Duration;
use streamgate_crds::StreamGateService;
use streamgate_tests::TestEnv;
use streamgate_tests::operator::{Operator, operator_kubeconfig};
use streamgate_tests::wait::eventually;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Fixture {
    env: TestEnv,
    operator: Operator,
    consul: reqwest::Client,
}

async fn fixture(name: &str) -> Result<Fixture> {
    let env = TestEnv::new(name).await?;
    let kubeconfig = operator_kubeconfig(&env).await?;
    let operator = Operator::start(&env, &kubeconfig, "op-a").await?;
    Ok(Fixture {
        env,
        operator,
        consul: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
    })
}

impl Fixture {
    fn apply(&self, yaml: &str) -> Result<String> {
        self.env.kubectl(&["apply", "-f", "-"], Some(yaml))
    }

    /// A StreamGateService manifest whose Consul name is unique to the test.
    fn service_yaml(&self, name: &str, extra_spec: &str) -> String {
        format!(
            "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: {name}}}\nspec:\n  image: registry.example.com/streamgate/{name}:1.0.0\n  port: 9091\n  serviceName: {consul}\n{extra_spec}",
            consul = self.env.unique(name)
        )
    }

    fn sgs(&self) -> Api<StreamGateService> {
        Api::namespaced(self.env.client(), &self.env.namespace)
    }
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.env.client(), &self.env.namespace)
    }
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.env.client(), &self.env.namespace)
    }
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.env.client(), &self.env.namespace)
    }

    async fn deployment(&self, name: &str) -> Result<Deployment> {
        eventually(&format!("Deployment {name}"), TIMEOUT, || async {
            Ok(self.deployments().get_opt(name).await?)
        })
        .await
    }

    /// Registers a Consul instance exactly as a sidecar does for `pod`, passing or not.
    async fn register_instance(&self, service: &str, pod: &Pod, passing: bool) -> Result<String> {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        self.register_raw(
            service,
            &pod_name,
            pod.metadata.uid.as_deref().unwrap_or(""),
            passing,
            Owner::ThisCluster,
        )
        .await
    }

    async fn register_raw(
        &self,
        service: &str,
        pod_name: &str,
        uid: &str,
        passing: bool,
        owner: Owner,
    ) -> Result<String> {
        let id = format!("{service}-{pod_name}");
        let mut meta = json!({
            "k8s-namespace": self.env.namespace, "k8s-pod": pod_name, "k8s-pod-uid": uid,
        });
        let this_cluster = Api::<Namespace>::all(self.env.client())
            .get("kube-system")
            .await?
            .metadata
            .uid
            .unwrap_or_default();
        match owner {
            Owner::Unmanaged => {}
            Owner::ThisCluster => {
                meta["managed-by"] = json!("streamgate");
                meta["k8s-cluster"] = json!(this_cluster);
            }
            Owner::OtherCluster => {
                meta["managed-by"] = json!("streamgate");
                meta["k8s-cluster"] = json!("another-cluster");
            }
        }
        let consul = self.env.consul_addr();
        self.consul
            .put(format!("{consul}/v1/agent/service/register"))
            .json(&json!({
                "ID": id, "Name": service, "Address": "127.0.0.1", "Port": 15006, "Meta": meta,
                "Check": {"CheckID": format!("{id}-ttl"), "TTL": "10m"}
            }))
            .send()
            .await?
            .error_for_status()?;
        let state = if passing { "pass" } else { "fail" };
        self.consul
            .put(format!("{consul}/v1/agent/check/{state}/{id}-ttl"))
            .send()
            .await?
            .error_for_status()?;
        Ok(id)
    }

    async fn consul_ids(&self, service: &str) -> Result<Vec<String>> {
        let entries: Vec<Value> = self
            .consul
            .get(format!(
                "{}/v1/health/service/{service}",
                self.env.consul_addr()
            ))
            .send()
            .await?
            .json()
            .await?;
        Ok(entries
            .iter()
            .filter_map(|e| e["Service"]["ID"].as_str().map(String::from))
            .collect())
    }

    async fn running_pods(&self, name: &str, count: usize) -> Result<Vec<Pod>> {
        eventually(&format!("{count} pods of {name}"), TIMEOUT, || async {
            let pods = self
                .pods()
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
                .await?;
            let live: Vec<Pod> = pods
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            Ok((live.len() == count).then_some(live))
        })
        .await
    }
}

fn condition(sgs: &StreamGateService, type_: &str) -> Option<(String, String, String)> {
    sgs.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// With allowedCallers the sidecar is the only door: a NetworkPolicy admits other pods to
/// its inbound and admin ports only, owned by the resource; without them it goes again.
#[tokio::test]
async fn allowed_callers_close_the_app_port_with_a_network_policy_and_reopen_it() -> Result<()> {
    let f = fixture("op-netpol").await?;
    f.apply(&f.service_yaml(
        "vault",
        "  allowedCallers: [api-gateway]
",
    ))?;
    let policies: Api<NetworkPolicy> = Api::namespaced(f.env.client(), &f.env.namespace);
    let policy = eventually("the NetworkPolicy", TIMEOUT, || async {
        policies.get_opt("vault").await.map_err(Into::into)
    })
    .await?;
    let spec = policy.spec.context("no spec")?;
    let ports: Vec<String> = spec
        .ingress
        .iter()
        .flatten()
        .flat_map(|rule| rule.ports.iter().flatten())
        .filter_map(|p| p.port.as_ref().map(|p| format!("{p:?}")))
        .collect();
    assert_eq!(ports, ["Int(15006)", "Int(15020)"], "{ports:?}");
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let owner = &policy.metadata.owner_references.context("no owner")?[0];
    assert_eq!(owner.kind, "StreamGateService");

    f.sgs()
        .patch(
            "vault",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"allowedCallers": []}})),
        )
        .await?;
    eventually("the NetworkPolicy deleted", TIMEOUT, || async {
        Ok(policies.get_opt("vault").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn creates_deployment_and_service_owned_by_the_resource() -> Result<()> {
    let f = fixture("op-create").await?;
    f.apply(&f.service_yaml(
        "upload",
        "  replicas: 2\n  upstreams: [{service: metadata, timeout: 2s}]\n",
    ))?;
    let sgs = f.sgs().get("upload").await?;
    let dep = f.deployment("upload").await?;

    let owner = &dep.metadata.owner_references.as_ref().context("no owner")?[0];
    assert_eq!(owner.kind, "StreamGateService");
    assert_eq!(Some(owner.uid.clone()), sgs.metadata.uid);
    assert_eq!(owner.controller, Some(true));
    let spec = dep.spec.context("no spec")?;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.context("no pod spec")?;
    let sidecar = &pod.init_containers.context("no init containers")?[0];
    assert_eq!(sidecar.name, "streamgate-sidecar");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert!(sidecar.startup_probe.is_some() && sidecar.readiness_probe.is_some());
    let config = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "STREAMGATE_CONFIG")
        .and_then(|e| e.value.clone())
        .context("no STREAMGATE_CONFIG")?;
    assert!(config.contains("service: metadata"), "{config}");
    assert!(config.contains(f.env.consul_addr()), "{config}");
    let app = &pod.containers[0];
    assert_eq!(
        app.image.as_deref(),
        Some("registry.example.com/streamgate/upload:1.0.0")
    );
    assert!(
        app.env
            .iter()
            .flatten()
            .any(|e| e.name == "STREAMGATE_SIDECAR_ADDR"
                && e.value.as_deref() == Some("127.0.0.1:15001"))
    );

    let svc = eventually("Service upload", TIMEOUT, || async {
        Ok(f.services().get_opt("upload").await?)
    })
    .await?;
    let svc_owner = &svc.metadata.owner_references.context("no owner")?[0];
    assert_eq!(svc_owner.uid, owner.uid);
    let ports: Vec<i32> = svc
        .spec
        .context("no spec")?
        .ports
        .iter()
        .flatten()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, vec![9091, 15006]);

    // Events on create.
    let events = f.env.kubectl(
        &[
            "get",
            "events.events.k8s.io",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        None,
    )?;
    assert!(events.contains("Created"), "events: {events}");
    Ok(())
}

#[tokio::test]
async fn no_op_reconciles_write_nothing_and_hand_edits_are_reverted() -> Result<()> {
    let f = fixture("op-noop").await?;
    f.apply(&f.service_yaml("web", ""))?;
    f.deployment("web").await?;
    // Let it settle: status written, Deployment observed.
    eventually("status observed", TIMEOUT, || async {
        let s = f.sgs().get("web").await?;
        Ok(s.status
            .and_then(|st| st.observed_generation)
            .is_some()
            .then_some(()))
    })
    .await?;
    // What the operator wrote: the spec's generation and the time on its managedFields
    // entry (the Deployment controller's own status writes change neither).
    let written_by_operator = |d: Deployment| {
        let time = d
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some("streamgate-operator"))
            .map(|m| format!("{:?}", m.time))
            .collect::<Vec<_>>();
        (d.metadata.generation, time)
    };
    let before = written_by_operator(f.deployments().get("web").await?);
    let reconciles = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("streamgate_operator_reconciles_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let start = reconciles(&reqwest::get(&f.operator.metrics_url).await?.text().await?);
    eventually("three more reconciles", TIMEOUT, || async {
        let now = reconciles(&reqwest::get(&f.operator.metrics_url).await?.text().await?);
        Ok((now >= start + 3).then_some(()))
    })
    .await?;
    let after = written_by_operator(f.deployments().get("web").await?);
    assert_eq!(before, after, "a no-op reconcile rewrote the Deployment");

    // A hand edit of a field the operator owns is put back.
    f.deployments()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await?;
    eventually("replicas restored", TIMEOUT, || async {
        let d = f.deployments().get("web").await?;
        Ok((d.spec.and_then(|s| s.replicas) == Some(1)).then_some(()))
    })
    .await?;

    // A deleted Deployment and Service come back.
    f.deployments()
        .delete("web", &DeleteParams::default())
        .await?;
    f.services().delete("web", &DeleteParams::default()).await?;
    eventually("Deployment and Service recreated", TIMEOUT, || async {
        let d = f.deployments().get_opt("web").await?;
        let s = f.services().get_opt("web").await?;
        Ok(
            (d.is_some_and(|d| d.metadata.deletion_timestamp.is_none()) && s.is_some())
                .then_some(()),
        )
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn image_change_rolls_out_and_kubectl_scale_is_followed() -> Result<()> {
    let f = fixture("op-rollout").await?;
    f.apply(&f.service_yaml("api", ""))?;
    f.deployment("api").await?;
    f.running_pods("api", 1).await?;

    f.sgs()
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "registry.example.com/streamgate/api:2.0.0"}})),
        )
        .await?;
    eventually("new ReplicaSet with the new image", TIMEOUT, || async {
        let sets: Api<ReplicaSet> = Api::namespaced(f.env.client(), &f.env.namespace);
        let list = sets
            .list(&ListParams::default().labels("app.kubernetes.io/instance=api"))
            .await?;
        let images: Vec<String> = list
            .items
            .iter()
            .filter_map(|rs| {
                rs.spec
                    .as_ref()?
                    .template
                    .as_ref()?
                    .spec
                    .as_ref()?
                    .containers
                    .first()?
                    .image
                    .clone()
            })
            .collect();
        Ok((list.items.len() == 2 && images.iter().any(|i| i.ends_with(":2.0.0"))).then_some(()))
    })
    .await?;

    f.env.kubectl(&["scale", "sgs/api", "--replicas=3"], None)?;
    eventually("Deployment scaled to 3", TIMEOUT, || async {
        let d = f.deployments().get("api").await?;
        Ok((d.spec.and_then(|s| s.replicas) == Some(3)).then_some(()))
    })
    .await?;
    eventually("status.replicas follows", TIMEOUT, || async {
        let s = f.sgs().get("api").await?;
        Ok(s.status
            .filter(|st| st.replicas == 3 && st.ready_replicas == 3)
            .map(|_| ()))
    })
    .await?;
    // The scale subresource reports what an HPA reads.
    let scale = f.env.kubectl(
        &[
            "get",
            "--raw",
            &format!(
                "/apis/streamgate.io/v1alpha1/namespaces/{}/streamgateservices/api/scale",
                f.env.namespace
            ),
        ],
        None,
    )?;
    let scale: Value = serde_json::from_str(&scale)?;
    assert_eq!(scale["status"]["replicas"], 3);
    assert!(
        scale["status"]["selector"]
            .as_str()
            .unwrap_or("")
            .contains("app.kubernetes.io/instance=api")
    );
    Ok(())
}

#[tokio::test]
async fn ready_condition_counts_consul_instances_and_names_critical_ones() -> Result<()> {
    let f = fixture("op-ready").await?;
    let service = f.env.unique("upload");
    f.apply(&f.service_yaml("upload", "  replicas: 2\n"))?;
    let pods = f.running_pods("upload", 2).await?;
    // Pods are Ready (kwok) but no instance passes in Consul yet: not Ready.
    eventually("Ready=False while Consul has nothing", TIMEOUT, || async {
        let s = f.sgs().get("upload").await?;
        Ok(condition(&s, "Ready")
            .filter(|(st, _, _)| st == "False")
            .map(|_| ()))
    })
    .await?;

    f.register_instance(&service, &pods[0], true).await?;
    let critical = f.register_instance(&service, &pods[1], false).await?;
    let s = eventually("critical instance named", TIMEOUT, || async {
        let s = f.sgs().get("upload").await?;
        let named = condition(&s, "Degraded")
            .is_some_and(|(st, _, msg)| st == "True" && msg.contains(&critical));
        // kwok marks the pods Ready; the Deployment's status follows a moment later.
        let replicas_ready = s.status.as_ref().is_some_and(|st| st.ready_replicas == 2);
        Ok((named && replicas_ready).then_some(s))
    })
    .await?;
    let (_, _, ready_message) = condition(&s, "Ready").context("no Ready")?;
    let status = s.status.context("no status")?;
    assert_eq!((status.consul.passing, status.consul.total), (1, 2));
    assert_eq!(
        ready_message,
        format!("2/2 replicas ready; 1 instance critical in Consul: {critical}")
    );

    f.register_instance(&service, &pods[1], true).await?;
    f.env.kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            "sgs/upload",
            "--timeout=60s",
        ],
        None,
    )?;
    let s = f.sgs().get("upload").await?;
    let status = s.status.context("no status")?;
    assert_eq!((status.consul.passing, status.consul.total), (2, 2));
    assert_eq!(status.observed_generation, s.metadata.generation);
    Ok(())
}

#[tokio::test]
async fn delete_deregisters_consul_instances_and_garbage_collects_children() -> Result<()> {
    let f = fixture("op-delete").await?;
    let service = f.env.unique("transcoder");
    f.apply(&f.service_yaml("transcoder", "  replicas: 2\n"))?;
    let pods = f.running_pods("transcoder", 2).await?;
    for pod in &pods {
        f.register_instance(&service, pod, true).await?;
    }
    assert_eq!(f.consul_ids(&service).await?.len(), 2);

    f.sgs()
        .delete("transcoder", &DeleteParams::default())
        .await?;
    eventually("resource gone", TIMEOUT, || async {
        Ok(f.sgs().get_opt("transcoder").await?.is_none().then_some(()))
    })
    .await?;
    assert!(
        f.consul_ids(&service).await?.is_empty(),
        "Consul instances left behind"
    );
    eventually("children garbage-collected", TIMEOUT, || async {
        let d = f.deployments().get_opt("transcoder").await?;
        let s = f.services().get_opt("transcoder").await?;
        let p = f
            .pods()
            .list(&ListParams::default().labels("app.kubernetes.io/instance=transcoder"))
            .await?;
        Ok((d.is_none() && s.is_none() && p.items.is_empty()).then_some(()))
    })
    .await?;
    Ok(())
}

/// Who registered an instance the tests put into Consul by hand.
#[derive(Clone, Copy)]
enum Owner {
    Unmanaged,
    ThisCluster,
    OtherCluster,
}

#[tokio::test]
async fn ghost_instances_are_swept_within_30s_and_live_ones_stay() -> Result<()> {
    let f = fixture("op-ghost").await?;
    let service = f.env.unique("metadata");
    f.apply(&f.service_yaml("metadata", ""))?;
    let pods = f.running_pods("metadata", 1).await?;
    let live = f.register_instance(&service, &pods[0], true).await?;
    let ghost = f
        .register_raw(
            &service,
            "metadata-5d8c-gone",
            "uid-gone",
            false,
            Owner::ThisCluster,
        )
        .await?;
    // Not StreamGate's: never touched, even though its pod does not exist either.
    let foreign = f
        .register_raw(&service, "someone-elses", "uid-x", false, Owner::Unmanaged)
        .await?;
    // Another cluster's, sharing this Consul: its pod is not in our API, and it is not
    // ours to judge.
    let other_cluster = f
        .register_raw(
            &service,
            "metadata-5d8c-there",
            "uid-t",
            false,
            Owner::OtherCluster,
        )
        .await?;
    // Passing: a live sidecar refreshes it, whatever our API says of its pod.
    let passing_unknown = f
        .register_raw(
            &service,
            "metadata-5d8c-unseen",
            "uid-u",
            true,
            Owner::ThisCluster,
        )
        .await?;

    // The 30 s bound is this wait's own timeout: a slower sweep fails here.
    eventually("ghost swept", Duration::from_secs(30), || async {
        Ok((!f.consul_ids(&service).await?.contains(&ghost)).then_some(()))
    })
    .await?;
    let left = f.consul_ids(&service).await?;
    assert!(left.contains(&live), "live instance removed: {left:?}");
    assert!(
        left.contains(&foreign),
        "unmanaged instance removed: {left:?}"
    );
    assert!(
        left.contains(&other_cluster),
        "another cluster's instance removed: {left:?}"
    );
    assert!(
        left.contains(&passing_unknown),
        "a passing instance removed: {left:?}"
    );
    Ok(())
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_fail_over() -> Result<()> {
    let f = fixture("op-leader").await?;
    let kubeconfig = operator_kubeconfig(&f.env).await?;
    let b = Operator::start(&f.env, &kubeconfig, "op-b").await?;
    let a = &f.operator;
    let (leader, standby) = eventually("one leader", TIMEOUT, || async {
        let (la, lb) = (a.is_leader().await, b.is_leader().await);
        Ok(match (la, lb) {
            (true, false) => Some((a, &b)),
            (false, true) => Some((&b, a)),
            _ => None,
        })
    })
    .await?;
    // Only the leader reconciles: the standby's reconcile counter stays at zero while the
    // leader's grows.
    f.apply(&f.service_yaml("first", ""))?;
    f.deployment("first").await?;
    assert!(!standby.is_leader().await);
    assert!(leader.reconciles().await > 0, "the leader ran no reconcile");
    assert_eq!(
        standby.reconciles().await,
        0,
        "the standby reconciled although it does not lead"
    );

    leader.kill();
    let failover = std::time::Instant::now();
    eventually("standby takes over", Duration::from_secs(20), || async {
        Ok(standby.is_leader().await.then_some(()))
    })
    .await?;
    assert!(
        failover.elapsed() < Duration::from_secs(10),
        "failover took {:?}",
        failover.elapsed()
    );
    f.apply(&f.service_yaml("second", ""))?;
    f.deployment("second").await?;
    Ok(())
}

#[tokio::test]
async fn killed_mid_way_through_50_resources_converges_without_duplicates() -> Result<()> {
    let f = fixture("op-restart").await?;
    let manifest: Vec<String> = (0..50)
        .map(|i| f.service_yaml(&format!("svc-{i:02}"), ""))
        .collect();
    f.apply(&manifest.join("---\n"))?;
    eventually("some Deployments exist", TIMEOUT, || async {
        let n = f
            .deployments()
            .list(&ListParams::default())
            .await?
            .items
            .len();
        Ok((n >= 5).then_some(()))
    })
    .await?;
    f.operator.kill();
    let kubeconfig = operator_kubeconfig(&f.env).await?;
    let _restarted = Operator::start(&f.env, &kubeconfig, "op-a2").await?;
    eventually("all 50 reconciled", Duration::from_secs(120), || async {
        let list = f.sgs().list(&ListParams::default()).await?;
        let done = list.items.iter().filter(|s| {
            s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
        });
        Ok((done.count() == 50).then_some(()))
    })
    .await?;
    let deployments = f.deployments().list(&ListParams::default()).await?.items;
    let services = f.services().list(&ListParams::default()).await?.items;
    assert_eq!(deployments.len(), 50);
    assert_eq!(services.len(), 50);
    for d in &deployments {
        assert_eq!(d.metadata.owner_references.as_ref().map(Vec::len), Some(1));
    }
    Ok(())
}

/// The operator owns the event streams: STREAMGATE captures every declared type (but
/// not the one the seed's queue, made first, captures) and STREAMGATE_DLQ the dead
/// letters, both with the operator's settings; the sidecars it renders only bind; a
/// stream changed or deleted by hand is put back.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_owns_the_streams_and_its_sidecars_only_bind() -> Result<()> {
    use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
    use streamgate_crds::sidecar_config::{CONFIG_ENV, SidecarConfig};
    let env = TestEnv::new("op-streams").await?;
    let dir = streamgate_tests::sidecar::log_dir("op-streams");
    let nats = streamgate_tests::nats_server::NatsServer::start_new(
        &env.platform.info.tools.nats_server,
        &dir.join("nats"),
        None,
    )
    .await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(Config {
        name: "TRANSCODING".into(),
        subjects: vec!["streamgate.transcoding.tasks".into()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        ..Default::default()
    })
    .await?;
    let kubeconfig = operator_kubeconfig(&env).await?;
    let nats_url = nats.url();
    let _operator = Operator::start_with(
        &env,
        &kubeconfig,
        "op-streams",
        &[
            "--nats-url",
            &nats_url,
            "--stream-max-age",
            "48h",
            "--stream-duplicate-window",
            "1m",
            "--dead-letter-max-age",
            "96h",
            "--resync-ready",
            "2s",
        ],
    )
    .await?;
    let consumer = env.unique("consumer");
    for (name, consul, events) in [
        (
            "producer",
            env.unique("producer"),
            "{publish: [file.uploaded, transcoding.tasks]}",
        ),
        (
            "consumer",
            consumer.clone(),
            "{subscribe: [{type: file.uploaded}]}",
        ),
    ] {
        env.kubectl(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: {name}}}\nspec:\n  image: registry.example.com/{name}:1\n  port: 9091\n  serviceName: {consul}\n  events: {events}\n"
            )),
        )?;
    }
    let subjects_of = |name: &'static str| {
        let js = js.clone();
        async move {
            let config = js.get_stream(name).await?.info().await?.config.clone();
            anyhow::Ok(config)
        }
    };
    let events = eventually(
        "STREAMGATE captures the declared types",
        TIMEOUT,
        || async {
            let config = subjects_of("STREAMGATE").await.ok();
            Ok(config.filter(|c| c.subjects == ["streamgate.file.uploaded"]))
        },
    )
    .await?;
    assert_eq!(events.max_age, Duration::from_secs(48 * 3600));
    assert_eq!(events.duplicate_window, Duration::from_secs(60));
    let dead_letters = eventually(
        "STREAMGATE_DLQ captures the dead letters",
        TIMEOUT,
        || async { Ok(subjects_of("STREAMGATE_DLQ").await.ok()) },
    )
    .await?;
    assert_eq!(
        dead_letters.subjects,
        [format!("streamgate.dlq.{consumer}.file.uploaded")]
    );
    assert_eq!(dead_letters.max_age, Duration::from_secs(96 * 3600));

    let deployments: Api<Deployment> = Api::namespaced(env.client(), &env.namespace);
    let deployment = eventually("the consumer's Deployment", TIMEOUT, || async {
        Ok(deployments.get_opt("consumer").await?)
    })
    .await?;
    let sidecar = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.init_containers)
        .and_then(|c| c.into_iter().find(|c| c.name == "streamgate-sidecar"))
        .context("the sidecar")?;
    let document = sidecar
        .env
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == CONFIG_ENV)
        .and_then(|e| e.value)
        .context("the sidecar's document")?;
    let relay = serde_yaml::from_str::<SidecarConfig>(&document)?
        .nats
        .relay
        .context("nats.relay rendered")?;
    assert!(!relay.manage_streams, "{document}");
    assert_eq!(
        relay.duplicate_window.as_duration(),
        Duration::from_secs(60)
    );

    // By hand: a shorter retention is put back, a deleted stream comes back.
    let mut shorter = events.clone();
    shorter.max_age = Duration::from_secs(3600);
    js.update_stream(shorter).await?;
    eventually("the retention is put back", TIMEOUT, || async {
        let config = subjects_of("STREAMGATE").await?;
        Ok((config.max_age == Duration::from_secs(48 * 3600)).then_some(()))
    })
    .await?;
    js.delete_stream("STREAMGATE").await?;
    eventually("the deleted stream comes back", TIMEOUT, || async {
        Ok(subjects_of("STREAMGATE").await.ok().map(drop))
    })
    .await?;
    Ok(())
}

/// `spec.events.spool`: the size becomes the sidecar's spool limit and the storage class
/// a generic ephemeral volume above it, which the API server accepts in the Deployment;
/// a size that is not a byte quantity is refused by the API server, naming the field.
#[tokio::test]
async fn a_spool_storage_class_gives_the_pods_a_generic_ephemeral_volume() -> Result<()> {
    let f = fixture("op-spool").await?;
    f.apply(&f.service_yaml(
        "spooled",
        "  events:\n    publish: [file.uploaded]\n    spool: {size: 1Gi, storageClass: fast-retain}\n",
    ))?;
    let deployment = eventually("the Deployment", TIMEOUT, || async {
        Ok(f.deployments().get_opt("spooled").await?)
    })
    .await?;
    let spec = deployment
        .spec
        .and_then(|s| s.template.spec)
        .context("pod spec")?;
    let spool = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "streamgate-spool")
        .context("the spool volume")?;
    let claim = spool
        .ephemeral
        .and_then(|e| e.volume_claim_template)
        .context("a generic ephemeral volume")?;
    assert_eq!(
        claim.spec.storage_class_name.as_deref(),
        Some("fast-retain")
    );
    let requested = claim
        .spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .context("a storage request")?;
    assert!(requested.0.parse::<u64>()? > 1 << 30, "{requested:?}");
    let fs_group = spec.security_context.and_then(|c| c.fs_group);
    assert_eq!(
        fs_group,
        Some(65532),
        "the non-root sidecar can write the claim"
    );

    let err = f
        .apply(&f.service_yaml(
            "badspool",
            "  events:\n    publish: [file.uploaded]\n    spool: {size: lots}\n",
        ))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("spec.events.spool.size"),
        "{err:#}"
    );
    Ok(())
}

/// `streamgate status` shows each Consul instance of a service, a critical one with its
/// check's output, beside the replicas the API server reports.
#[tokio::test]
async fn streamgate_status_shows_a_critical_instance_with_its_output() -> Result<()> {
    let f = fixture("op-status").await?;
    let service = f.env.unique("upload");
    f.apply(&f.service_yaml(
        "upload",
        "  replicas: 2\n  upstreams: [{service: metadata}]\n",
    ))?;
    let pods = f.running_pods("upload", 2).await?;
    let healthy = f.register_instance(&service, &pods[0], true).await?;
    let critical = f.register_instance(&service, &pods[1], true).await?;
    f.consul
        .put(format!(
            "{}/v1/agent/check/fail/{critical}-ttl?note=app%20answered%20503",
            f.env.consul_addr()
        ))
        .send()
        .await?
        .error_for_status()?;
    let cli = streamgate_tests::bins::binary("streamgate-cli", "streamgate")?;
    let output = std::process::Command::new(cli)
        .env("KUBECONFIG", &f.env.platform.info.kubeconfig)
        .args(["status", "upload", "-n", &f.env.namespace, "-o", "json"])
        .args(["--consul-address", f.env.consul_addr()])
        .args(["--nats-url", f.env.nats_url()])
        // kwok's pods have no process behind their addresses: nothing to scrape.
        .args(["--sidecars=false"])
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let services: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    assert_eq!(services.len(), 1);
    let upload = &services[0];
    assert_eq!(upload["consul_name"], service.as_str());
    assert_eq!(upload["replicas"], 2);
    let instances = upload["instances"].as_array().context("instances read")?;
    let by_id = |id: &str| instances.iter().find(|i| i["id"] == id).cloned();
    let bad = by_id(&critical).context("the critical instance")?;
    assert_eq!(bad["status"], "critical");
    assert_eq!(bad["output"], "app answered 503");
    assert_eq!(
        by_id(&healthy).context("the healthy one")?["status"],
        "passing"
    );
    assert_eq!(upload["upstreams"][0]["service"], "metadata");

    // A service that does not exist: exit 1.
    let cli = streamgate_tests::bins::binary("streamgate-cli", "streamgate")?;
    let missing = std::process::Command::new(cli)
        .env("KUBECONFIG", &f.env.platform.info.kubeconfig)
        .args(["status", "nothing-here", "-n", &f.env.namespace])
        .output()?;
    assert_eq!(missing.status.code(), Some(1));
    Ok(())
}
