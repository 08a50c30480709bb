//! The project's own images on the real node (kubelet, containerd, runc, CNI bridge):
//! they load, run as UID 65532 on a read-only root file system under PodSecurity
//! `restricted`, answer on their pod IP; an image pushed with `make push` to a registry on
//! 127.0.0.1 is pulled by the kubelet; the pod network's guard rules are in place.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::time::Duration;
use streamgate_tests::TestEnv;
use streamgate_tests::node::{NODE_IP, POD_SUBNET_BASE};
use streamgate_tests::tools::repo_root;
use streamgate_tests::wait::eventually;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const POD_TIMEOUT: Duration = Duration::from_secs(90);

async fn restricted_env(name: &str) -> Result<TestEnv> {
    let labels = BTreeMap::from([(
        "pod-security.kubernetes.io/enforce".to_string(),
        "restricted".to_string(),
    )]);
    TestEnv::on_real_node(name, labels).await
}

/// A pod of the demo-app image meeting PodSecurity `restricted`, with no user of its own:
/// the image's default user must be non-root for it to start at all.
fn demo_pod(name: &str, image: &str, pull: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: app
    image: {image}
    imagePullPolicy: {pull}
    env: [{{name: DEMO_LISTEN, value: "0.0.0.0:9091"}}]
    ports: [{{containerPort: 9091}}]
    readinessProbe: {{httpGet: {{path: /health, port: 9091}}, periodSeconds: 1}}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
"#
    )
}

async fn wait_ready(env: &TestEnv, pod: &str) -> Result<String> {
    eventually(&format!("pod {pod} Ready"), POD_TIMEOUT, || async {
        let out = env.kubectl(
            &[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.podIP}",
            ],
            None,
        )?;
        let mut parts = out.split_whitespace();
        Ok(match (parts.next(), parts.next()) {
            (Some("True"), Some(ip)) => Some(ip.to_string()),
            _ => None,
        })
    })
    .await
    .with_context(|| {
        format!(
            "pod {pod}: {}",
            env.kubectl(&["describe", "pod", pod], None)
                .unwrap_or_default()
        )
    })
}

fn uid_of(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("no Uid line")?;
    Ok(line
        .split_whitespace()
        .nth(2)
        .context("no effective uid")?
        .parse()?)
}

/// The options of the root mount as the process sees it.
fn root_mount_options(pid: u32) -> Result<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .context("no root mount")?;
    Ok(root.split(' ').nth(5).unwrap_or_default().to_string())
}

#[tokio::test]
async fn images_run_as_nonroot_on_a_read_only_root_and_answer_on_their_pod_ip() -> Result<()> {
    let env = restricted_env("images").await?;
    let image = format!("streamgate/demo-app:{VERSION}");
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&demo_pod("demo", &image, "Never")),
    )?;
    let ip = wait_ready(&env, "demo").await?;
    assert!(
        ip.starts_with(POD_SUBNET_BASE),
        "pod IP {ip} is not on the harness's bridge"
    );
    let body = reqwest::get(format!("http://{ip}:9091/health"))
        .await?
        .text()
        .await?;
    assert!(!body.is_empty(), "empty /health answer from {ip}");

    let pids = streamgate_tests::node::processes_running(&["/usr/local/bin/streamgate-demo-app"]);
    assert!(!pids.is_empty(), "no demo-app process found on the host");
    for pid in pids {
        assert_eq!(uid_of(pid)?, 65532, "process {pid} does not run as 65532");
        let options = root_mount_options(pid)?;
        assert!(
            options.split(',').any(|o| o == "ro"),
            "process {pid}'s root is mounted {options}"
        );
    }

    // The operator's and the sidecar's images start and print their version, as the
    // image's user, under the same restrictions.
    let versions = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: versions}}
spec:
  restartPolicy: Never
  securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - {{name: operator, image: "streamgate/operator:{VERSION}", imagePullPolicy: Never, args: [--version], securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}}}
  - {{name: sidecar, image: "streamgate/sidecar:{VERSION}", imagePullPolicy: Never, args: [--version], securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}}}
"#
    );
    env.kubectl(&["apply", "-f", "-"], Some(&versions))?;
    eventually("pod versions Succeeded", POD_TIMEOUT, || async {
        let phase = env.kubectl(
            &["get", "pod", "versions", "-o", "jsonpath={.status.phase}"],
            None,
        )?;
        if phase == "Failed" {
            bail!(
                "pod versions failed: {}",
                env.kubectl(&["describe", "pod", "versions"], None)?
            );
        }
        Ok((phase == "Succeeded").then_some(()))
    })
    .await?;
    for (container, program) in [
        ("operator", "streamgate-operator"),
        ("sidecar", "streamgate-sidecar"),
    ] {
        let logs = env.kubectl(&["logs", "versions", "-c", container], None)?;
        assert!(
            logs.contains(program) && logs.contains(VERSION),
            "{container} printed {logs:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_image_pushed_to_a_registry_is_pulled_by_the_kubelet() -> Result<()> {
    let env = restricted_env("pull").await?;
    let node = env
        .platform
        .info
        .node
        .clone()
        .context("platform has no real node")?;
    let target = format!("{}/streamgate", node.registry);
    // The real `make push` path (scripts/push.sh, crane), against the harness's registry.
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/push.sh"))
        .arg(&target)
        .output()?;
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = String::from_utf8_lossy(&out.stdout);
    let reference = format!("{target}/demo-app:{VERSION}");
    assert!(pushed.contains(&reference), "push printed {pushed}");

    env.kubectl(
        &["apply", "-f", "-"],
        Some(&demo_pod("pulled", &reference, "Always")),
    )?;
    wait_ready(&env, "pulled").await?;
    let images = env
        .platform
        .node()
        .context("no real node")?
        .ctr(&["images", "ls", "-q"])?;
    assert!(
        images.lines().any(|l| l == reference),
        "containerd has no {reference}: {images}"
    );
    let events = env.kubectl(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=pulled",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        None,
    )?;
    assert!(events.contains("Pulled"), "no Pulled event: {events}");
    Ok(())
}

#[tokio::test]
async fn the_pod_network_cannot_forward_off_the_machine() -> Result<()> {
    let env = restricted_env("network").await?;
    let node = env.platform.node().context("no real node")?;
    assert!(
        node.guard_in_place()?,
        "the forwarding guard rules are missing"
    );
    // No masquerading of the pod subnet anywhere (read from the rule set).
    let nat = streamgate_tests::node::network::run(
        &node.tools.iptables,
        &["-w", "-t", "nat", "-S", "POSTROUTING"],
    )?;
    assert!(
        !nat.lines()
            .any(|l| l.contains("MASQUERADE") && l.contains(POD_SUBNET_BASE)),
        "the pod subnet is masqueraded: {nat}"
    );
    // The platform's servers are where pods reach them: on the node's bridge address.
    assert!(env.platform.info.apiserver_url.contains(NODE_IP));
    assert!(env.platform.info.nats_url.contains(NODE_IP));
    Ok(())
}

fn helm(env: &TestEnv, args: &[&str]) -> Result<String> {
    env.platform.info.helm(args)
}

/// The chart as a user installs it, with the built images and the values `make env-up`
/// writes: the operator runs as two real pods, one leads, the webhook is served in the
/// cluster through its Service (the API server reaches it through kube-proxy's rules),
/// and uninstalling leaves nothing but the CRDs.
#[tokio::test]
async fn the_chart_runs_the_operator_as_real_pods_with_one_leader_and_an_in_cluster_webhook()
-> Result<()> {
    let env = restricted_env("chart-node").await?;
    let ns = env.namespace.as_str();
    let values = env.platform.info.helm_values().context("no helm values")?;
    let values_file = env.platform.info.dir.join(format!("helm-values-{ns}.yaml"));
    std::fs::write(&values_file, values)?;
    let chart = repo_root().join("charts/streamgate");
    helm(
        &env,
        &[
            "install",
            "sg",
            &chart.to_string_lossy(),
            "-n",
            ns,
            "-f",
            &values_file.to_string_lossy(),
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .with_context(|| {
        format!(
            "pods: {}",
            env.kubectl(&["describe", "pods"], None).unwrap_or_default()
        )
    })?;
    let ready = env.kubectl(
        &[
            "get",
            "deployment",
            "streamgate-operator",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        None,
    )?;
    assert_eq!(ready, "2");
    let pods = env.kubectl(
        &[
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=streamgate-operator",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        None,
    )?;
    let pods: Vec<&str> = pods.split_whitespace().collect();
    let leader = eventually("one operator replica leads", POD_TIMEOUT, || async {
        let holder = env.kubectl(
            &[
                "get",
                "lease",
                "streamgate-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        );
        Ok(holder.ok().filter(|h| pods.contains(&h.as_str())))
    })
    .await?;
    assert!(pods.contains(&leader.as_str()));

    // The API server calls the webhook through its Service: a pod asking for injection
    // comes back with the native sidecar (server-side dry run: nothing is created). Not
    // in the operator's own namespace, which the webhook leaves alone.
    let apps = format!("{ns}-apps");
    env.platform
        .info
        .kubectl(&["create", "namespace", &apps], None)?;
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: injected
  annotations: {{streamgate.io/inject: "true", streamgate.io/service-name: injected, streamgate.io/app-port: "9091"}}
spec:
  securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: app
    image: streamgate/demo-app:{VERSION}
    securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
"#
    );
    let mutated = eventually("the in-cluster webhook injects", POD_TIMEOUT, || async {
        let out = env.platform.info.kubectl(
            &[
                "apply",
                "--dry-run=server",
                "-n",
                &apps,
                "-o",
                "jsonpath={.spec.initContainers[*].name}",
                "-f",
                "-",
            ],
            Some(&pod),
        )?;
        if !out.contains("streamgate-sidecar") {
            bail!("admitted without the sidecar; init containers: {out:?}");
        }
        Ok(Some(out))
    })
    .await?;
    assert!(mutated.contains("streamgate-sidecar"));

    // `streamgate check` on this install: every check passes (the streams may take the
    // operator's first pass); a stopped NATS and an operator scaled to 0 are each
    // named, with their fix.
    let passed = eventually("streamgate check passes", POD_TIMEOUT, || async {
        let (code, checks) = streamgate_check(&env, ns, &[])?;
        Ok((code == Some(0)).then_some(checks))
    })
    .await
    .with_context(|| format!("{:?}", streamgate_check(&env, ns, &[])))?;
    let names: Vec<&str> = passed.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "crd", "operator", "leader", "webhook", "consul", "nats", "sidecars"
        ]
    );
    let dir = streamgate_tests::sidecar::log_dir("check-nats");
    let nats = streamgate_tests::nats_server::NatsServer::reserve(
        &env.platform.info.tools.nats_server,
        &dir,
        None,
    )?;
    let (code, checks) = streamgate_check(&env, ns, &["--nats-url", &nats.url()])?;
    assert_eq!(code, Some(1));
    let failed = failed_checks(&checks);
    assert_eq!(failed.len(), 1, "{checks:?}");
    assert_eq!(failed[0]["name"], "nats");
    assert!(
        failed[0]["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("start NATS")
    );
    env.kubectl(
        &["scale", "deployment/streamgate-operator", "--replicas=0"],
        None,
    )?;
    let down = eventually("check names the operator down", POD_TIMEOUT, || async {
        let (code, checks) = streamgate_check(&env, ns, &[])?;
        let failed: Vec<String> = failed_checks(&checks)
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        Ok((code == Some(1)
            && failed.contains(&"operator".to_string())
            && failed.contains(&"webhook".to_string()))
        .then_some(checks))
    })
    .await?;
    let operator = down
        .iter()
        .find(|c| c["name"] == "operator")
        .context("operator check")?;
    assert!(
        operator["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("--replicas=2"),
        "{operator}"
    );

    helm(
        &env,
        &["uninstall", "sg", "-n", ns, "--wait", "--timeout", "2m"],
    )?;
    // The pods go after their ReplicaSet, once they have really stopped.
    eventually("nothing of the release left", POD_TIMEOUT, || async {
        let left = env.kubectl(
            &[
                "get",
                "deployment,replicaset,pods,service,serviceaccount,secret,rolebinding,poddisruptionbudget",
                "-l",
                "app.kubernetes.io/instance=sg",
                "-o",
                "name",
            ],
            None,
        )?;
        if !left.trim().is_empty() {
            bail!("left behind: {left}");
        }
        Ok(Some(()))
    })
    .await?;
    let webhook = env.platform.info.kubectl(
        &[
            "get",
            "mutatingwebhookconfiguration",
            "streamgate-sidecar-injector",
            "--ignore-not-found",
            "-o",
            "name",
        ],
        None,
    )?;
    assert!(
        webhook.trim().is_empty(),
        "the webhook configuration is left behind"
    );
    Ok(())
}

/// `streamgate check -o json` against the install in `ns`: exit code and checks.
fn streamgate_check(
    env: &TestEnv,
    ns: &str,
    extra: &[&str],
) -> Result<(Option<i32>, Vec<serde_json::Value>)> {
    let cli = streamgate_tests::bins::binary("streamgate-cli", "streamgate")?;
    let output = std::process::Command::new(cli)
        .env("KUBECONFIG", &env.platform.info.kubeconfig)
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("NATS_URL")
        .args(["check", "-o", "json", "--operator-namespace", ns])
        .args(extra)
        .output()?;
    let checks = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "streamgate check printed no JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((output.status.code(), checks))
}

fn failed_checks(checks: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    checks.iter().filter(|c| c["ok"] == false).collect()
}
