//! The whole chain on one machine, on the real node: `kubectl apply` → operator and
//! webhook → Deployments → Pods of the project's images (demo-app and the rendered or
//! injected sidecar) run by the kubelet → instances registered in Consul from inside
//! their pods → a gRPC call from one service to another through both sidecars → an event
//! from one to the other through NATS JetStream → `kubectl scale` adds an instance that
//! receives traffic, over mTLS with the identity each sidecar got from the operator → `kubectl rollout
//! restart` replaces the pods → `kubectl delete` leaves no process, no Consul instance and
//! no StreamGate object behind.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use streamgate_tests::TestEnv;
use streamgate_tests::operator::{Operator, operator_kubeconfig_in, webhook_flags};
use streamgate_tests::wait::eventually;

const TIMEOUT: Duration = Duration::from_secs(120);
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn services(namespace: &str) -> String {
    format!(
        "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: upload, namespace: {namespace}}}\n\
         spec:\n  image: streamgate/demo-app:{VERSION}\n  port: 9091\n  replicas: 1\n  protocol: grpc\n\
         \x20 env: [{{name: DEMO_LISTEN, value: '0.0.0.0:9091'}}, {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n\
         \x20 health: {{type: http, path: /health, periodSeconds: 2, timeoutSeconds: 1}}\n\
         \x20 events: {{publish: [file.uploaded]}}\n\
         \x20 upstreams: [{{service: transcoder, timeout: 5s, retries: {{attempts: 3}}}}]\n\
         ---\n\
         apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: transcoder, namespace: {namespace}}}\n\
         spec:\n  image: streamgate/demo-app:{VERSION}\n  port: 9093\n  replicas: 1\n  protocol: grpc\n\
         \x20 env: [{{name: DEMO_LISTEN, value: '0.0.0.0:9093'}}, {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n\
         \x20 health: {{type: http, path: /health, periodSeconds: 2, timeoutSeconds: 1}}\n\
         \x20 events: {{subscribe: [{{type: file.uploaded, path: /events}}]}}\n\
         \x20 allowedCallers: [upload]\n"
    )
}

/// A plain Deployment that asks for the sidecar by annotation.
fn annotated_deployment(namespace: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: worker, namespace: {namespace}}}\n\
         spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: worker}}}}\n  template:\n    metadata:\n\
         \x20     labels: {{app: worker}}\n\
         \x20     annotations: {{streamgate.io/inject: \"true\", streamgate.io/service-name: worker, streamgate.io/app-port: \"9094\"}}\n\
         \x20   spec:\n      containers: [{{name: app, image: 'streamgate/demo-app:{VERSION}', env: [{{name: DEMO_LISTEN, value: '127.0.0.1:9094'}}, {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}], ports: [{{containerPort: 9094}}]}}]\n"
    )
}

async fn passing(consul: &str, service: &str) -> Result<Vec<Value>> {
    let url = format!("{consul}/v1/health/service/{service}?passing=true");
    Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
}

async fn registered(consul: &str, service: &str) -> Result<usize> {
    let url = format!("{consul}/v1/health/service/{service}");
    let all: Vec<Value> = reqwest::get(url).await?.error_for_status()?.json().await?;
    Ok(all.len())
}

async fn wait_passing(consul: &str, service: &str, count: usize) -> Result<Vec<Value>> {
    eventually(
        &format!("{count} passing instance(s) of {service} in Consul"),
        TIMEOUT,
        || async {
            let instances = passing(consul, service).await?;
            Ok((instances.len() == count).then_some(instances))
        },
    )
    .await
}

/// The pod IP of a passing instance.
fn address(instance: &Value) -> String {
    instance["Service"]["Address"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Host processes of the containers (their entrypoints live in /usr/local/bin).
fn container_processes() -> Vec<u32> {
    streamgate_tests::node::processes_running(&[
        "/usr/local/bin/streamgate-sidecar",
        "/usr/local/bin/streamgate-demo-app",
    ])
}

#[tokio::test]
async fn the_whole_chain_runs_on_the_real_node() -> Result<()> {
    let env = TestEnv::on_real_node("e2e", Default::default()).await?;
    let ns = env.namespace.clone();
    let consul = env.consul_addr().to_string();

    // The operator with its webhook, its own namespace beside the test's.
    let home = format!("{ns}-sys");
    let kubeconfig = operator_kubeconfig_in(&env, &home).await?;
    // On the node's bridge address: the API server calls the webhook there, and the
    // pods' sidecars get their certificates there.
    let node_ip = env
        .platform
        .info
        .node
        .as_ref()
        .context("a real node")?
        .ip
        .clone();
    let (args, _) = webhook_flags(&env, &node_ip)?;
    let operator = Operator::start_in(&env, &kubeconfig, "e2e", &home, &args).await?;
    eventually("webhook registered", TIMEOUT, || async {
        let name = format!("mutatingwebhookconfiguration/streamgate-injector-{ns}");
        Ok(env
            .kubectl(&["get", &name, "-o", "name"], None)
            .is_ok()
            .then_some(()))
    })
    .await?;

    let result = chain(&env, &consul).await;
    if result.is_err() {
        eprintln!("operator log:\n{}", operator.log_tail(40));
        eprintln!(
            "pods:\n{}",
            env.kubectl(&["describe", "pods"], None).unwrap_or_default()
        );
        let pods = env
            .kubectl(
                &["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"],
                None,
            )
            .unwrap_or_default();
        for pod in pods.split_whitespace() {
            eprintln!(
                "----- {pod} sidecar log -----\n{}",
                env.kubectl(
                    &["logs", pod, "-c", "streamgate-sidecar", "--tail=40"],
                    None
                )
                .unwrap_or_else(|e| e.to_string())
            );
        }
    }
    result
}

async fn chain(env: &TestEnv, consul: &str) -> Result<()> {
    let ns = &env.namespace;
    env.kubectl(&["apply", "-f", "-"], Some(&services(ns)))?;
    env.kubectl(&["apply", "-f", "-"], Some(&annotated_deployment(ns)))?;
    for name in ["upload", "transcoder"] {
        env.kubectl(
            &[
                "wait",
                "--for=condition=Ready",
                &format!("sgs/{name}"),
                "--timeout=120s",
            ],
            None,
        )?;
    }
    let upload = wait_passing(consul, "upload", 1).await?;
    let transcoder = wait_passing(consul, "transcoder", 1).await?;
    wait_passing(consul, "worker", 1).await?;
    let upload_app = format!("http://{}:9091", address(&upload[0]));
    let http = reqwest::Client::builder().no_proxy().build()?;

    // upload's app → upload's sidecar → transcoder's sidecar → transcoder's app.
    let call = || async {
        let reply: Value = http
            .post(format!("{upload_app}/admin/call"))
            .json(&json!({"service": "transcoder"}))
            .send()
            .await?
            .json()
            .await?;
        ensure!(reply["ok"] == true, "call through the sidecars: {reply}");
        Ok(reply["servedBy"].as_str().unwrap_or_default().to_string())
    };
    let first = eventually("a call from upload to transcoder", TIMEOUT, || async {
        Ok(call().await.ok())
    })
    .await?;
    ensure!(first.starts_with("transcoder-"), "served by {first}");

    // upload publishes file.uploaded; transcoder's app receives it through JetStream.
    let published: Value = http
        .post(format!("{upload_app}/admin/publish"))
        .json(&json!({"type": "file.uploaded", "id": "e2e-1", "data": {"fileId": "f-1"}}))
        .send()
        .await?
        .json()
        .await?;
    ensure!(published["ok"] == true, "publish: {published}");
    let transcoder_app = format!("http://{}:9093", address(&transcoder[0]));
    eventually("transcoder received the event", TIMEOUT, || async {
        let events: Value = http
            .get(format!("{transcoder_app}/admin/events"))
            .send()
            .await?
            .json()
            .await?;
        Ok(events.to_string().contains("e2e-1").then_some(()))
    })
    .await?;

    // Strict mTLS from each pod's start: every instance advertises it, and a plaintext
    // HTTP/2 client straight to transcoder's inbound port is refused (the call above
    // went through because upload's certificate names its ServiceAccount, which
    // transcoder's allowedCallers admits).
    for service in ["upload", "transcoder", "worker"] {
        let instances = passing(consul, service).await?;
        ensure!(
            instances
                .iter()
                .all(|i| i["Service"]["Meta"]["streamgate-inbound"] == "mtls"),
            "{service} serves mTLS: {instances:?}"
        );
    }
    let plaintext = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()?
        .post(format!(
            "http://{}:15006/demo.Echo/Unary",
            address(&transcoder[0])
        ))
        .header("content-type", "application/grpc")
        .header("streamgate-caller", "upload")
        .send()
        .await;
    ensure!(
        plaintext.is_err(),
        "a plaintext caller was answered: {plaintext:?}"
    );

    // kubectl scale: the new instance passes in Consul and receives calls.
    env.kubectl(&["scale", "sgs/transcoder", "--replicas=2"], None)?;
    let transcoders = wait_passing(consul, "transcoder", 2).await?;
    ensure!(
        transcoders
            .iter()
            .any(|i| i["Service"]["Meta"]["streamgate-inbound"] == "mtls"),
        "the new transcoder serves mTLS: {transcoders:?}"
    );
    // The new pod registered once it held its certificate: it serves at once.
    let served = eventually("both transcoders serve calls", TIMEOUT, || async {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            seen.insert(call().await?);
        }
        Ok((seen.len() == 2).then_some(seen))
    })
    .await?;
    ensure!(served.iter().all(|s| s.starts_with("transcoder-")));

    // kubectl rollout restart: new pods replace the old ones and serve again.
    let before = wait_passing(consul, "transcoder", 2).await?;
    let old: BTreeSet<String> = before.iter().map(address).collect();
    env.kubectl(&["rollout", "restart", "deployment/transcoder"], None)?;
    env.kubectl(
        &[
            "rollout",
            "status",
            "deployment/transcoder",
            "--timeout=120s",
        ],
        None,
    )?;
    eventually("transcoder's new pods pass in Consul", TIMEOUT, || async {
        let now = passing(consul, "transcoder").await?;
        let fresh = now.len() == 2 && now.iter().all(|i| !old.contains(&address(i)));
        Ok(fresh.then_some(()))
    })
    .await?;
    eventually("calls reach the restarted transcoders", TIMEOUT, || async {
        Ok(call().await.ok())
    })
    .await?;

    // The containers' processes (sidecar and app of 4 pods), to see them gone after the
    // delete.
    let pids = container_processes();
    ensure!(
        pids.len() >= 8,
        "sidecar and app processes of 4 pods: {pids:?}"
    );
    let pods: Api<Pod> = Api::namespaced(env.client(), ns);

    // kubectl delete: no process, no Consul instance, no StreamGate object left.
    env.kubectl(&["delete", "sgs", "--all", "--wait=true"], None)?;
    env.kubectl(&["delete", "deployment", "worker", "--wait=true"], None)?;
    eventually("every pod is gone", TIMEOUT, || async {
        Ok(pods
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    eventually("every container process is gone", TIMEOUT, || async {
        Ok(container_processes().is_empty().then_some(()))
    })
    .await?;
    for service in ["upload", "transcoder", "worker"] {
        eventually(&format!("{service} gone from Consul"), TIMEOUT, || async {
            Ok((registered(consul, service).await? == 0).then_some(()))
        })
        .await?;
    }
    let left = eventually("no StreamGate object left", TIMEOUT, || async {
        let left = env.kubectl(
            &[
                "get",
                "sgs,deployments,services,replicasets,secrets,serviceaccounts",
                "-l",
                "app.kubernetes.io/managed-by=streamgate",
                "-o",
                "name",
            ],
            None,
        )?;
        Ok(left.trim().is_empty().then_some(()))
    })
    .await;
    let everything = env.kubectl(&["get", "sgs,deployments,services", "-o", "name"], None)?;
    ensure!(
        everything.trim().is_empty(),
        "objects left behind:\n{everything}"
    );
    left?;
    Ok(())
}
