//! The injection webhook, called over TLS by the real API server: existing workloads get
//! the same sidecar a StreamGateService gets.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::time::Duration;
use streamgate_tests::TestEnv;
use streamgate_tests::operator::{
    Operator, operator_kubeconfig_in, registration_name, webhook_flags,
};
use streamgate_tests::wait::eventually;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Fixture {
    env: TestEnv,
    operator: Operator,
}

/// An operator whose webhook covers only this test's namespace.
async fn fixture(name: &str, labels: &[(&str, &str)], extra: &[&str]) -> Result<Fixture> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = TestEnv::with_namespace_labels(name, labels).await?;
    // The operator's own namespace is never injected: give it one beside the test's.
    let home = format!("{}-sys", env.namespace);
    let kubeconfig = operator_kubeconfig_in(&env, &home).await?;
    let (mut args, _) = webhook_flags(&env, "127.0.0.1")?;
    args.extend(extra.iter().map(|s| s.to_string()));
    let operator = Operator::start_in(&env, &kubeconfig, "webhook", &home, &args).await?;
    let f = Fixture { env, operator };
    // The configuration is registered once the webhook serves.
    let name = registration_name(&f.env);
    eventually("webhook registered", TIMEOUT, || async {
        Ok(f.env
            .platform
            .info
            .kubectl(
                &["get", "mutatingwebhookconfiguration", &name, "-o", "name"],
                None,
            )
            .is_ok()
            .then_some(()))
    })
    .await?;
    Ok(f)
}

fn pod_manifest(name: &str, annotations: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\n  annotations: {{{annotations}}}\nspec:\n  containers:\n  - name: app\n    image: registry.example.com/app:1\n    ports: [{{containerPort: 8080}}]\n{extra_spec}"
    )
}

fn sidecars(pod: &Pod) -> usize {
    let spec = pod.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .filter(|c| c.name == "streamgate-sidecar")
        .count()
}

fn config_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "streamgate-sidecar"))
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == "STREAMGATE_CONFIG"))
        .and_then(|e| e.value.clone())
        .unwrap_or_default()
}

impl Fixture {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.env.client(), &self.env.namespace)
    }

    async fn create_pod(&self, manifest: &str, name: &str) -> Result<Pod> {
        self.env.kubectl(&["create", "-f", "-"], Some(manifest))?;
        Ok(self.pods().get(name).await?)
    }
}

#[tokio::test]
async fn annotated_workloads_get_exactly_one_native_sidecar() -> Result<()> {
    let f = fixture("inject-workloads", &[], &[]).await?;

    // A Deployment's pods.
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata:\n      labels: {app: web}\n      annotations: {streamgate.io/inject: \"true\", streamgate.io/app-port: \"8080\", streamgate.io/upstreams: \"metadata\"}\n    spec:\n      containers: [{name: app, image: registry.example.com/web:1}]\n";
    f.env.kubectl(&["apply", "-f", "-"], Some(deployment))?;
    let pods = eventually("2 web pods", TIMEOUT, || async {
        let list = f
            .pods()
            .list(&ListParams::default().labels("app=web"))
            .await?;
        Ok((list.items.len() == 2).then_some(list.items))
    })
    .await?;
    for pod in &pods {
        assert_eq!(sidecars(pod), 1);
        let init = &pod
            .spec
            .as_ref()
            .context("spec")?
            .init_containers
            .as_ref()
            .context("init")?[0];
        assert_eq!(init.restart_policy.as_deref(), Some("Always"));
        assert!(init.startup_probe.is_some());
        let config = config_of(pod);
        assert!(
            config.contains("serviceName: web") && config.contains("port: 8080"),
            "{config}"
        );
        assert!(config.contains("service: metadata"), "{config}");
        let app_env = pod.spec.as_ref().context("spec")?.containers[0]
            .env
            .clone()
            .unwrap_or_default();
        assert!(app_env.iter().any(|e| e.name == "STREAMGATE_SIDECAR_ADDR"));
    }

    // The sidecar gets its identity from the operator: the webhook's CA as its trust
    // bundle, a projected ServiceAccount token for the identity endpoint, no key in any
    // Secret.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(f.env.client(), &format!("{}-sys", f.env.namespace));
    let pki = secrets.get("streamgate-webhook-certs").await?;
    let webhook_ca = pki
        .data
        .unwrap_or_default()
        .remove("ca.crt")
        .context("ca.crt")?;
    let config: serde_json::Value = serde_yaml::from_str(&config_of(&pods[0]))?;
    let bundle = config["identity"]["endpointCa"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        bundle.as_bytes(),
        webhook_ca.0.as_slice(),
        "the endpoint CA is the webhook's"
    );
    assert_eq!(config["identity"]["mode"], "strict");
    let endpoint = config["identity"]["endpoint"].as_str().unwrap_or_default();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let volumes = pods[0]
        .spec
        .as_ref()
        .context("spec")?
        .volumes
        .clone()
        .unwrap_or_default();
    let token = volumes
        .iter()
        .filter(|v| v.name == "streamgate-identity-token")
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .find_map(|s| s.service_account_token.as_ref())
        .context("a projected ServiceAccount token")?;
    assert_eq!(token.audience.as_deref(), Some("streamgate"));
    assert!(
        volumes.iter().all(|v| v.secret.is_none()),
        "no Secret volume: {volumes:?}"
    );

    // A bare Pod.
    let bare = f
        .create_pod(
            &pod_manifest("bare", "streamgate.io/inject: \"true\"", ""),
            "bare",
        )
        .await?;
    assert_eq!(sidecars(&bare), 1);

    // A Job's pod gets a native sidecar, so the Job can complete.
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate}\nspec:\n  template:\n    metadata:\n      annotations: {streamgate.io/inject: \"true\", streamgate.io/service-name: migrate, streamgate.io/app-port: \"8080\"}\n    spec:\n      restartPolicy: Never\n      containers: [{name: app, image: registry.example.com/migrate:1}]\n";
    f.env.kubectl(&["apply", "-f", "-"], Some(job))?;
    let job_pod = eventually("job pod", TIMEOUT, || async {
        let list = f
            .pods()
            .list(&ListParams::default().labels("job-name=migrate"))
            .await?;
        Ok(list.items.into_iter().next())
    })
    .await?;
    assert_eq!(sidecars(&job_pod), 1);
    let init = &job_pod
        .spec
        .as_ref()
        .context("spec")?
        .init_containers
        .as_ref()
        .context("init")?[0];
    assert_eq!(init.restart_policy.as_deref(), Some("Always"));

    // A pod that already carries the sidecar (a reinvocation) is left as it is.
    let mut again = bare.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("again".into()),
        annotations: bare.metadata.annotations.clone(),
        labels: bare.metadata.labels.clone(),
        ..Default::default()
    };
    if let Some(spec) = again.spec.as_mut() {
        spec.node_name = None;
    }
    let created = f.pods().create(&Default::default(), &again).await?;
    assert_eq!(sidecars(&created), 1);

    // Not annotated: untouched.
    let plain = f
        .create_pod(&pod_manifest("plain", "", ""), "plain")
        .await?;
    assert_eq!(sidecars(&plain), 0);
    Ok(())
}

#[tokio::test]
async fn labelled_namespace_injects_every_pod_and_opt_out_is_honoured() -> Result<()> {
    let f = fixture(
        "inject-namespace",
        &[("streamgate.io/inject", "enabled")],
        &[],
    )
    .await?;
    let pod = f.create_pod(&pod_manifest("auto", "", ""), "auto").await?;
    assert_eq!(sidecars(&pod), 1);
    let out = f
        .create_pod(
            &pod_manifest("out", "streamgate.io/inject: \"false\"", ""),
            "out",
        )
        .await?;
    assert_eq!(sidecars(&out), 0);
    Ok(())
}

#[tokio::test]
async fn bad_annotations_reject_the_pod_naming_the_annotation() -> Result<()> {
    let f = fixture("inject-bad", &[], &[]).await?;
    let cases = [
        ("streamgate.io/inject: \"yes\"", "streamgate.io/inject"),
        (
            "streamgate.io/inject: \"true\", streamgate.io/app-port: http",
            "streamgate.io/app-port",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/app-port: \"70000\"",
            "streamgate.io/app-port",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/service-name: Bad_Name",
            "streamgate.io/service-name",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/protocol: udp",
            "streamgate.io/protocol",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/health-type: exec",
            "streamgate.io/health-type",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/health-timeout-seconds: \"9\"",
            "streamgate.io/health-timeout-seconds",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/publish: File.Uploaded",
            "streamgate.io/publish",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/subscribe: a.b",
            "streamgate.io/subscribe",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/upstreams: \"[{\\\"service\\\": 1}]\"",
            "streamgate.io/upstreams",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/sidecar-log-level: loud",
            "streamgate.io/sidecar-log-level",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/sidecar-memory-limit: lots",
            "streamgate.io/sidecar-memory-limit",
        ),
        (
            "streamgate.io/inject: \"true\", streamgate.io/app-prot: \"8080\"",
            "streamgate.io/app-prot",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (annotations, expected)) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        match f.env.kubectl(
            &["create", "-f", "-"],
            Some(&pod_manifest(&name, annotations, "")),
        ) {
            Ok(_) => failures.push(format!("{annotations}: admitted")),
            Err(e) if e.to_string().contains(&format!("annotation {expected}:")) => {}
            Err(e) => failures.push(format!(
                "{annotations}: message does not name {expected}: {e}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn injected_pods_pass_podsecurity_restricted() -> Result<()> {
    let f = fixture(
        "inject-restricted",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
        &[],
    )
    .await?;
    let restricted_app =
        "  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n";
    let manifest = pod_manifest("secure", "streamgate.io/inject: \"true\"", restricted_app).replace(
        "    ports: [{containerPort: 8080}]\n",
        "    ports: [{containerPort: 8080}]\n    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n",
    );
    let pod = f.create_pod(&manifest, "secure").await?;
    assert_eq!(sidecars(&pod), 1);
    Ok(())
}

#[tokio::test]
async fn certificate_rotation_keeps_admission_working_without_a_restart() -> Result<()> {
    let f = fixture("inject-rotation", &[], &["--webhook-cert-validity", "1m"]).await?;
    let secret = || {
        f.env.platform.info.kubectl(
            &[
                "get",
                "secret",
                "-n",
                &format!("{}-sys", f.env.namespace),
                "streamgate-webhook-certs",
                "-o",
                "jsonpath={.data.tls\\.crt}",
            ],
            None,
        )
    };
    let first = secret()?;
    let started = std::time::Instant::now();
    let f = &f;
    let inject = |name: String| async move {
        let pod = f
            .create_pod(
                &pod_manifest(&name, "streamgate.io/inject: \"true\"", ""),
                &name,
            )
            .await?;
        anyhow::ensure!(sidecars(&pod) == 1, "pod {name} not injected");
        Ok::<(), anyhow::Error>(())
    };
    inject("rot-before".into()).await?;
    // Reissued with a third of its minute left, served without a restart.
    eventually(
        "serving certificate reissued",
        Duration::from_secs(70),
        || async { Ok((secret()? != first).then_some(())) },
    )
    .await?;
    inject("rot-renewed".into()).await?;
    // Past the first certificate's expiry, admission still works.
    eventually(
        "first certificate expired",
        Duration::from_secs(90),
        || async { Ok((started.elapsed() > Duration::from_secs(65)).then_some(())) },
    )
    .await?;
    inject("rot-after-expiry".into()).await?;
    assert_ne!(secret()?, first, "the serving certificate was not reissued");
    assert!(!f.operator.exited(), "the operator restarted");
    Ok(())
}

#[tokio::test]
async fn webhook_down_with_fail_policy_refuses_pods_with_a_clear_error() -> Result<()> {
    let f = fixture("inject-down", &[], &[]).await?;
    f.operator.kill();
    let err = f
        .env
        .kubectl(
            &["create", "-f", "-"],
            Some(&pod_manifest(
                "orphan",
                "streamgate.io/inject: \"true\"",
                "",
            )),
        )
        .expect_err("a pod must not be admitted without its webhook");
    let message = err.to_string();
    assert!(
        message.contains("failed calling webhook") && message.contains("inject.streamgate.io"),
        "{message}"
    );
    assert!(f.pods().get_opt("orphan").await?.is_none());
    Ok(())
}

/// `streamgate inject` renders what the webhook renders: a pod created from its output
/// (which the webhook leaves alone, marked injected) equals, in everything StreamGate
/// adds, a pod the webhook injected from the same manifest.
#[tokio::test]
async fn inject_output_applied_gives_the_pod_the_webhook_makes() -> Result<()> {
    let f = fixture("inject-cli", &[], &[]).await?;
    let annotations = "streamgate.io/inject: \"true\", streamgate.io/upstreams: \"metadata\", streamgate.io/publish: \"file.uploaded\"";
    let by_webhook = f
        .create_pod(&pod_manifest("web", annotations, ""), "web")
        .await?;
    let manifest = pod_manifest("web", annotations, "").replace("name: web\n", "name: web-cli\n");
    let input = std::env::temp_dir().join(format!("{}-inject.yaml", f.env.namespace));
    std::fs::write(&input, manifest)?;
    let cli = streamgate_tests::bins::binary("streamgate-cli", "streamgate")?;
    let output = std::process::Command::new(cli)
        .env("KUBECONFIG", &f.env.platform.info.kubeconfig)
        .args(["inject", "-f"])
        .arg(&input)
        .args(["-n", &f.env.namespace])
        .args(["--consul-address", f.env.consul_addr()])
        .args(["--nats-url", f.env.nats_url()])
        .args(["--webhook-config-name", &registration_name(&f.env)])
        .output()?;
    let printed = String::from_utf8(output.stdout)?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    f.env.kubectl(&["create", "-f", "-"], Some(&printed))?;
    let by_cli = f.pods().get("web-cli").await?;
    assert_eq!(sidecars(&by_cli), 1, "the webhook did not inject it again");

    // The ServiceAccount token volume is the API server's (its name is random, and it
    // is added before the webhook runs but after `streamgate inject`): not compared.
    let added = |pod: &Pod| {
        let mut spec = pod.spec.clone().unwrap_or_default();
        let ours = |name: &str| !name.starts_with("kube-api-access-");
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| ours(&v.name));
        }
        for c in spec.init_containers.iter_mut().flatten() {
            if let Some(mounts) = c.volume_mounts.as_mut() {
                mounts.retain(|m| ours(&m.name));
            }
        }
        let meta = &pod.metadata;
        serde_json::json!({
            "initContainers": spec.init_containers,
            "volumes": spec.volumes,
            "app": spec.containers.first().map(|c| (c.env.clone(), c.lifecycle.clone())),
            "service": meta.labels.as_ref().and_then(|l| l.get("streamgate.io/service").cloned()),
            "hash": meta.annotations.as_ref().and_then(|a| a.get("streamgate.io/config-hash").cloned()),
        })
    };
    assert_eq!(added(&by_cli), added(&by_webhook));

    // A wrong annotation: exit 2 naming it, nothing printed.
    std::fs::write(
        &input,
        pod_manifest("bad", "streamgate.io/inject: \"yes\"", ""),
    )?;
    let cli = streamgate_tests::bins::binary("streamgate-cli", "streamgate")?;
    let refused = std::process::Command::new(cli)
        .args(["inject", "-f"])
        .arg(&input)
        .args(["--cluster-id", "c1"])
        .output()?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(refused.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("pod/bad: streamgate.io/inject"), "{stderr}");
    Ok(())
}

/// A webhook Secret someone broke (every key there, none usable) does not crash-loop the
/// replica: it stays up and not ready, counts its attempts, puts a Warning Event on the
/// Secret, and serves once the Secret is deleted (a new CA is made).
#[tokio::test]
async fn a_broken_webhook_secret_keeps_the_replica_up_not_ready_and_saying_why() -> Result<()> {
    let env = TestEnv::new("inject-badca").await?;
    let home = format!("{}-sys", env.namespace);
    let kubeconfig = operator_kubeconfig_in(&env, &home).await?;
    env.platform.info.kubectl(
        &[
            "-n",
            &home,
            "create",
            "secret",
            "generic",
            "streamgate-webhook-certs",
            "--from-literal=ca.crt=broken",
            "--from-literal=ca.key=broken",
            "--from-literal=tls.crt=broken",
            "--from-literal=tls.key=broken",
        ],
        None,
    )?;
    let (args, _) = webhook_flags(&env, "127.0.0.1")?;
    let operator = Operator::start_unready_in(&env, &kubeconfig, "badca", &home, &args).await?;
    let http = reqwest::Client::new();
    let metric = "streamgate_operator_webhook_certificate_errors_total";
    eventually("the replica keeps trying, alive", TIMEOUT, || async {
        anyhow::ensure!(!operator.exited(), "the operator exited");
        let text = http.get(&operator.metrics_url).send().await?.text().await?;
        let attempts = text
            .lines()
            .find_map(|l| l.strip_prefix(metric))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Ok((attempts >= 2.0).then_some(()))
    })
    .await?;
    let readyz = operator.metrics_url.replace("/metrics", "/readyz");
    assert_eq!(http.get(&readyz).send().await?.status().as_u16(), 503);
    let events = eventually("a Warning Event on the Secret", TIMEOUT, || async {
        let out = env.platform.info.kubectl(
            &[
                "-n",
                &home,
                "get",
                "events",
                "--field-selector",
                "reason=WebhookCertificatesUnusable",
                "-o",
                "jsonpath={.items[*].message}",
            ],
            None,
        )?;
        Ok((!out.trim().is_empty()).then_some(out))
    })
    .await?;
    assert!(events.contains("webhook"), "{events}");

    env.platform.info.kubectl(
        &["-n", &home, "delete", "secret", "streamgate-webhook-certs"],
        None,
    )?;
    eventually("ready once the Secret is gone", TIMEOUT, || async {
        Ok(http
            .get(&readyz)
            .send()
            .await?
            .status()
            .is_success()
            .then_some(()))
    })
    .await?;
    assert!(!operator.exited());
    Ok(())
}
