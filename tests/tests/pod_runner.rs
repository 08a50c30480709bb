//! The pod runner against the real platform: pods bound to its node run as local
//! processes on their own 127.0.0.N, report readiness and exit codes in their status,
//! and stop when deleted.

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use streamgate_tests::TestEnv;
use streamgate_tests::bins::binary;
use streamgate_tests::pod_runner::{Options, PodRunner};
use streamgate_tests::shared::kube_config;
use streamgate_tests::wait::eventually;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn runner(env: &TestEnv, bins: &[(&str, &str)]) -> Result<PodRunner> {
    let mut bin_dir = None;
    for (package, bin) in bins {
        let path = binary(package, bin)?;
        bin_dir = path.parent().map(Path::to_path_buf);
    }
    let bin_dir =
        bin_dir.unwrap_or_else(|| streamgate_tests::tools::repo_root().join("target/debug"));
    let node = env.unique("runner");
    let log_dir = env.platform.info.logs.join("pods").join(&env.namespace);
    let mut options = Options::new(&node, &bin_dir, &log_dir);
    options.backoff_max = Duration::from_secs(2);
    PodRunner::start(kube_config(env.platform).await?, options).await
}

/// Creates `pod` (JSON) bound to the runner's node by its hostname label; retried while
/// the namespace's default ServiceAccount does not exist yet.
async fn create(env: &TestEnv, runner: &PodRunner, mut pod: serde_json::Value) -> Result<Pod> {
    pod["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": runner.node()});
    pod["spec"]["terminationGracePeriodSeconds"] = json!(5);
    let pod: Pod = serde_json::from_value(pod)?;
    let api: Api<Pod> = Api::namespaced(env.client(), &env.namespace);
    eventually("pod created", Duration::from_secs(20), || async {
        Ok(Some(api.create(&PostParams::default(), &pod).await?))
    })
    .await
}

async fn pod_where(
    env: &TestEnv,
    name: &str,
    what: &str,
    check: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(env.client(), &env.namespace);
    eventually(what, TIMEOUT, || async {
        let pod = api.get(name).await?;
        Ok(check(&pod).then_some(pod))
    })
    .await
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still show as "Z".
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"))
}

async fn delete_and_wait_gone(env: &TestEnv, name: &str) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(env.client(), &env.namespace);
    api.delete(name, &DeleteParams::default()).await?;
    eventually("the pod object is gone", TIMEOUT, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

/// `result`, with the runner's and the containers' logs when it is an error.
fn with_logs(runner: &PodRunner, result: Result<()>) -> Result<()> {
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", runner.log_tails(30)))
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client")
}

#[tokio::test]
async fn a_demo_app_pod_runs_on_its_own_address_and_stops_when_deleted() -> Result<()> {
    let env = TestEnv::new("runner-demo").await?;
    let runner = runner(&env, &[("streamgate-demo-app", "streamgate-demo-app")]).await?;
    let result = async {
    create(
        &env,
        &runner,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "demo"},
            "spec": {"containers": [{
                "name": "app",
                "image": "streamgate/demo-app:latest",
                "ports": [{"containerPort": 9091, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
            }]},
        }),
    )
    .await?;
    let pod = pod_where(&env, "demo", "the pod is Running and Ready", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && ready(p)
    })
    .await?;
    let ip = pod_ip(&pod);
    let last: u8 = ip
        .strip_prefix("127.0.0.")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pod IP {ip} is not 127.0.0.N"));
    assert!(last >= 10, "{ip}");
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, ip);
    let app = &status.container_statuses.as_ref().unwrap()[0];
    assert!(app.ready && app.started == Some(true), "{app:?}");
    assert!(app.state.as_ref().unwrap().running.is_some(), "{app:?}");

    let health = http().get(format!("http://{ip}:9091/health")).send().await?;
    assert_eq!(health.status(), 200);

    let pid = runner.pid(&env.namespace, "demo", "app").expect("the app's PID");
    assert!(alive(pid));
    delete_and_wait_gone(&env, "demo").await?;
    assert!(!alive(pid), "process {pid} outlived its pod");
        Ok(())
    }
    .await;
    with_logs(&runner, result)
}
#[tokio::test]
async fn exit_codes_and_unknown_images_show_in_the_status() -> Result<()> {
    let env = TestEnv::new("runner-exit").await?;
    let runner = runner(&env, &[]).await?;
    let result = async {
        create(
            &env,
            &runner,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "exits"},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "job", "image": "busybox:1.36", "command": ["sh", "-c", "exit 3"],
                }]},
            }),
        )
        .await?;
        create(
            &env,
            &runner,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "crashes"},
                "spec": {"containers": [{
                    "name": "app", "image": "busybox:1.36", "command": ["sh", "-c", "exit 7"],
                }]},
            }),
        )
        .await?;
        create(
            &env,
            &runner,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "unknown"},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            }),
        )
        .await?;

        let pod = pod_where(&env, "exits", "the pod failed", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        })
        .await?;
        let job = &pod
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        let terminated = job.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(terminated.exit_code, 3);
        assert_eq!(terminated.reason.as_deref(), Some("Error"));
        assert!(!job.ready);

        // restartPolicy Always: restarted with backoff, the last exit code kept.
        let pod = pod_where(&env, "crashes", "the container restarted twice", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| c[0].restart_count >= 2)
        })
        .await?;
        let app = &pod
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        let last = app
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(last.exit_code, 7);

        let pod = pod_where(&env, "unknown", "the container is waiting", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| c[0].state.as_ref().is_some_and(|s| s.waiting.is_some()))
        })
        .await?;
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let waiting = status.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .waiting
            .clone()
            .unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ErrImageNeverPull"));
        assert!(waiting.message.unwrap_or_default().contains("nginx:1.27"));

        for name in ["exits", "crashes", "unknown"] {
            delete_and_wait_gone(&env, name).await?;
        }
        Ok(())
    }
    .await;
    with_logs(&runner, result)
}
#[tokio::test]
async fn a_native_sidecar_starts_first_registers_the_pod_ip_and_stops_last() -> Result<()> {
    let env = TestEnv::new("runner-sidecar").await?;
    let runner = runner(
        &env,
        &[
            ("streamgate-demo-app", "streamgate-demo-app"),
            ("streamgate-sidecar", "streamgate-sidecar"),
        ],
    )
    .await?;
    let result = async {
    let service = env.unique("upload");
    let config = format!(
        "service: {{serviceName: {service}, port: 9091, health: {{type: http, path: /health, periodSeconds: 2}}}}\n\
         consul: {{address: '{}', deregisterCriticalAfter: 1m}}\n\
         spoolDir: /var/lib/streamgate/spool\n\
         drainTimeout: 2s\n",
        env.consul_addr()
    );
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": 15020}, "periodSeconds": 1, "failureThreshold": 30});
    create(
        &env,
        &runner,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "meshed"},
            "spec": {
                "volumes": [{"name": "spool", "emptyDir": {}}],
                "initContainers": [{
                    "name": "streamgate-sidecar",
                    "image": "streamgate/sidecar:0.1.0",
                    "restartPolicy": "Always",
                    "env": [
                        {"name": "STREAMGATE_CONFIG", "value": config},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    ],
                    "volumeMounts": [{"name": "spool", "mountPath": "/var/lib/streamgate/spool"}],
                    "startupProbe": probe("/livez"),
                    "readinessProbe": probe("/readyz"),
                }],
                "containers": [{
                    "name": "app",
                    "image": "streamgate/demo-app:latest",
                    "ports": [{"containerPort": 9091}],
                    "env": [{"name": "STREAMGATE_SIDECAR_ADDR", "value": "127.0.0.1:15001"}],
                }],
            },
        }),
    )
    .await?;
    let pod = pod_where(&env, "meshed", "the pod is Ready", ready).await?;
    let ip = pod_ip(&pod);
    let status = pod.status.as_ref().unwrap();
    let sidecar = &status.init_container_statuses.as_ref().unwrap()[0];
    assert!(sidecar.ready && sidecar.started == Some(true), "{sidecar:?}");
    // Started first: the app's process came after the sidecar's.
    let sidecar_pid = runner
        .pid(&env.namespace, "meshed", "streamgate-sidecar")
        .expect("sidecar PID");
    let app_pid = runner.pid(&env.namespace, "meshed", "app").expect("app PID");
    let started = |p: &k8s_openapi::api::core::v1::ContainerStatus| {
        p.state.as_ref().unwrap().running.as_ref().unwrap().started_at.clone()
    };
    assert!(started(sidecar) <= started(&status.container_statuses.as_ref().unwrap()[0]));

    // The sidecar's listeners are on the pod IP, and it registered that IP in Consul.
    let readyz = http().get(format!("http://{ip}:15020/readyz")).send().await?;
    assert_eq!(readyz.status(), 200);
    let consul = format!("{}/v1/health/service/{service}?passing=true", env.consul_addr());
    eventually("the pod passes in Consul", TIMEOUT, || async {
        let entries: Vec<serde_json::Value> = http().get(&consul).send().await?.json().await?;
        Ok(entries
            .iter()
            .any(|e| e["Service"]["Address"] == ip.as_str())
            .then_some(()))
    })
    .await?;

    delete_and_wait_gone(&env, "meshed").await?;
    assert!(!alive(app_pid), "the app outlived its pod");
    assert!(!alive(sidecar_pid), "the sidecar outlived its pod");
        Ok(())
    }
    .await;
    with_logs(&runner, result)
}
