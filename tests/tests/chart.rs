//! The Helm chart against the real API server: its output is accepted, it installs
//! (the operator's pods run by kwok, in a namespace enforcing PodSecurity `restricted`),
//! upgrades, and uninstalls leaving nothing but the CRDs.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use streamgate_tests::TestEnv;
use streamgate_tests::tools::repo_root;

fn helm(env: &TestEnv, args: &[&str]) -> Result<String> {
    env.platform.info.helm(args)
}

#[tokio::test]
async fn chart_installs_upgrades_and_uninstalls_cleanly() -> Result<()> {
    let labels = BTreeMap::from([(
        "pod-security.kubernetes.io/enforce".to_string(),
        "restricted".to_string(),
    )]);
    let env = TestEnv::with_namespace_labels("chart", labels).await?;
    let ns = env.namespace.as_str();
    let chart = repo_root().join("charts/streamgate");
    let chart = chart.to_string_lossy();
    let version = env
        .platform
        .info
        .tools
        .k8s_version
        .trim_start_matches('v')
        .to_string();

    // Everything the chart renders is accepted by the API server.
    let rendered = helm(
        &env,
        &[
            "template",
            "sg",
            &chart,
            "-n",
            ns,
            "--kube-version",
            &version,
        ],
    )?;
    env.platform.info.kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-n",
            ns,
            "-f",
            "-",
        ],
        Some(&rendered),
    )?;

    // A wrong value fails the install with the schema's message.
    let err = helm(
        &env,
        &[
            "install",
            "bad",
            &chart,
            "-n",
            ns,
            "--set",
            "injection.failurePolicy=Sometimes",
        ],
    )
    .expect_err("a wrong value must fail");
    assert!(err.to_string().contains("failurePolicy"), "{err}");

    helm(
        &env,
        &[
            "install",
            "sg",
            &chart,
            "-n",
            ns,
            "--wait",
            "--timeout",
            "2m",
        ],
    )?;
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

    // With the CRDs installed, the platform's nine services render and apply too.
    let with_platform = helm(
        &env,
        &[
            "template",
            "sg",
            &chart,
            "-n",
            ns,
            "--kube-version",
            &version,
            "--set",
            "platform.enabled=true",
        ],
    )?;
    env.platform.info.kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-n",
            ns,
            "-f",
            "-",
        ],
        Some(&with_platform),
    )?;
    helm(
        &env,
        &[
            "upgrade",
            "sg",
            &chart,
            "-n",
            ns,
            "--wait",
            "--timeout",
            "2m",
            "--set",
            "platform.enabled=true",
            "--set",
            "replicas=3",
        ],
    )?;
    let services = env.kubectl(&["get", "sgs", "-o", "name"], None)?;
    assert_eq!(services.lines().count(), 9, "{services}");
    let replicas = env.kubectl(
        &[
            "get",
            "deployment",
            "streamgate-operator",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        None,
    )?;
    assert_eq!(replicas, "3");

    helm(
        &env,
        &["uninstall", "sg", "-n", ns, "--wait", "--timeout", "2m"],
    )?;
    let info = &env.platform.info;
    let left_namespaced = env.kubectl(
        &[
            "get",
            "deployment,service,serviceaccount,secret,rolebinding,streamgateservices",
            "-l",
            "app.kubernetes.io/instance=sg",
            "-o",
            "name",
        ],
        None,
    )?;
    assert!(
        left_namespaced.trim().is_empty(),
        "left behind: {left_namespaced}"
    );
    for (kind, name) in [
        (
            "mutatingwebhookconfiguration",
            "streamgate-sidecar-injector",
        ),
        ("clusterrole", "streamgate-operator"),
        ("clusterrolebinding", "streamgate-operator"),
        ("secret", "streamgate-webhook-certs"),
    ] {
        let found = info.kubectl(
            &[
                "get",
                kind,
                name,
                "-n",
                ns,
                "--ignore-not-found",
                "-o",
                "name",
            ],
            None,
        )?;
        assert!(found.trim().is_empty(), "{kind}/{name} left behind");
    }
    // CRDs stay, as Helm documents.
    info.kubectl(
        &[
            "get",
            "crd",
            "streamgateservices.streamgate.io",
            "-o",
            "name",
        ],
        None,
    )?;
    Ok(())
}

/// `nats.permissions` renders each NATS user's least-privilege permissions: exactly what
/// `sidecar_permissions` gives each platform service with events (and
/// `operator_permissions` the operator), accepted by a real nats-server, on which the
/// operator's user can make the streams and a sidecar's user cannot.
#[tokio::test(flavor = "multi_thread")]
async fn nats_permissions_match_the_contract_and_a_nats_server_takes_them() -> Result<()> {
    use streamgate_crds::StreamGateService;
    use streamgate_crds::contract::events::{operator_permissions, sidecar_permissions};
    let env = TestEnv::new("chart-nats").await?;
    let chart = repo_root().join("charts/streamgate");
    let chart = chart.to_string_lossy();
    let version = env.platform.info.tools.k8s_version.trim_start_matches('v');
    let render = |set: &str, template: &str| {
        helm(
            &env,
            &[
                "template",
                "sg",
                &chart,
                "--kube-version",
                version,
                "--set",
                set,
                "--show-only",
                template,
            ],
        )
    };
    let config_map: serde_json::Value = serde_yaml::from_str(&render(
        "nats.permissions=true",
        "templates/nats-permissions.yaml",
    )?)?;
    let files: BTreeMap<String, String> = serde_json::from_value(config_map["data"].clone())?;
    let permissions_in = |file: &str| -> Result<serde_json::Value> {
        let text = files
            .get(file)
            .with_context(|| format!("{file} rendered"))?;
        let (_, json) = text.split_once(" = ").context("VARIABLE = {...}")?;
        Ok(serde_json::from_str(json.trim())?)
    };
    let as_json = |p: streamgate_crds::contract::events::NatsPermissions| serde_json::json!({"publish": {"allow": p.publish}, "subscribe": {"allow": p.subscribe}});
    assert_eq!(
        permissions_in("operator.conf")?,
        as_json(operator_permissions())
    );
    let platform = render("platform.enabled=true", "templates/platform.yaml")?;
    let mut users =
        vec!["{user: operator, password: op-pw, permissions: $STREAMGATE_OPERATOR}".to_string()];
    let mut with_events = 0;
    for document in serde_yaml::Deserializer::from_str(&platform) {
        let sgs = StreamGateService::deserialize(document)?;
        let (name, events) = (
            sgs.metadata.name.clone().unwrap_or_default(),
            &sgs.spec.events,
        );
        let file = format!("{name}.conf");
        if events.publish.is_empty() && events.subscribe.is_empty() {
            assert!(
                !files.contains_key(&file),
                "{name} has no events, so no NATS user"
            );
            continue;
        }
        with_events += 1;
        assert_eq!(
            permissions_in(&file)?,
            as_json(sidecar_permissions(&name, events)),
            "{name}"
        );
        let variable = format!("STREAMGATE_{}", name.to_uppercase().replace('-', "_"));
        users.push(format!(
            "{{user: {name}, password: {name}-pw, permissions: ${variable}}}"
        ));
    }
    assert_eq!(with_events, 7, "the platform's services with events");

    let dir = streamgate_tests::sidecar::log_dir("chart-nats").join("nats");
    std::fs::create_dir_all(&dir)?;
    let mut includes = String::new();
    for (file, text) in &files {
        std::fs::write(dir.join(file), text)?;
        includes.push_str(&format!("include ./{file}\n"));
    }
    let server = streamgate_tests::nats_server::NatsServer::start_with_authorization(
        &env.platform.info.tools.nats_server,
        &dir,
        &format!(
            "{includes}authorization {{\n  users: [\n    {}\n  ]\n}}\n",
            users.join(",\n    ")
        ),
    )
    .await?;
    let connect_as = |user: &str, password: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(server.url())
    };
    let operator = async_nats::jetstream::new(connect_as("operator", "op-pw").await?);
    let want = streamgate_nats::streams::Want {
        stream: "STREAMGATE".into(),
        subjects: vec!["streamgate.file.uploaded".into()],
        settings: streamgate_nats::streams::StreamSettings {
            max_age: std::time::Duration::from_secs(3_600),
            max_bytes: -1,
            duplicate_window: std::time::Duration::from_secs(120),
            replicas: 1,
        },
    };
    let own = streamgate_nats::streams::Authority::Own;
    streamgate_nats::streams::ensure(&operator, std::slice::from_ref(&want), own).await?;
    let upload = async_nats::jetstream::new(connect_as("upload", "upload-pw").await?);
    let mut other = want.clone();
    other.stream = "ROGUE".into();
    other.subjects = vec!["streamgate.rogue.made".into()];
    assert!(
        streamgate_nats::streams::ensure(&upload, &[other], own)
            .await
            .is_err(),
        "a sidecar's user cannot create a stream"
    );
    Ok(())
}

/// Every metric the chart's Grafana dashboard queries is exported (declared with its
/// `# TYPE` line) by a running sidecar, with events and an upstream, or by a running
/// operator: a renamed metric cannot leave a panel empty.
#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_queries_is_exported() -> Result<()> {
    use streamgate_tests::sidecar::{DemoApp, Sidecar, SidecarOptions, log_dir, pod_ip};
    let env = TestEnv::new("chart-dashboard").await?;
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("charts/streamgate/dashboards/streamgate.json"),
    )?)?;
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("streamgate_") {
                    queried.insert(word.to_string());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    // PodMonitors only where the Prometheus operator's CRDs are; the dashboard always.
    let chart = repo_root().join("charts/streamgate");
    let version = env.platform.info.tools.k8s_version.trim_start_matches('v');
    let kinds = |extra: &[&str]| -> Result<usize> {
        let mut args = vec![
            "template",
            "sg",
            chart.to_str().unwrap_or_default(),
            "--kube-version",
            version,
            "--show-only",
            "templates/monitoring.yaml",
        ];
        args.extend(extra);
        Ok(helm(&env, &args)?.matches("kind: PodMonitor").count())
    };
    assert_eq!(kinds(&[])?, 0);
    assert_eq!(
        kinds(&["--api-versions", "monitoring.coreos.com/v1/PodMonitor"])?,
        2
    );

    // With the admin's kubeconfig: the operator's ClusterRole would collide with the
    // chart installed by the other test of this binary.
    let kubeconfig = env.platform.info.kubeconfig.clone();
    let operator =
        streamgate_tests::operator::Operator::start(&env, &kubeconfig, "dashboard").await?;
    let dir = log_dir("chart-dashboard");
    let ip = pod_ip();
    let app = DemoApp::start(&dir, &ip, true).await?;
    let nowhere = format!("http://127.0.0.1:{}", streamgate_tests::ports::free_port()?);
    let mut options = SidecarOptions::new("dashboard", &ip, app.addr, &nowhere);
    options.events = "{publish: [dash.board], subscribe: [{type: dash.board}]}".into();
    options.service_extra = "  upstreams: [{service: elsewhere}]\n".into();
    options.extra = format!(
        "nats: {{url: 'nats://127.0.0.1:{}'}}\nspoolDir: '{}'\n",
        streamgate_tests::ports::free_port()?,
        dir.join("spool").display()
    );
    let sidecar = Sidecar::start(&dir, &options)?;
    let sidecar_metrics = streamgate_tests::wait::eventually(
        "the sidecar's metrics",
        std::time::Duration::from_secs(10),
        || async { Ok(sidecar.admin_get("/metrics").await.ok()) },
    )
    .await?;
    let operator_metrics = reqwest::get(&operator.metrics_url).await?.text().await?;
    let exported = |name: &str| {
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        let declared = format!("# TYPE {base} ");
        sidecar_metrics.contains(&declared) || operator_metrics.contains(&declared)
    };
    let missing: Vec<&String> = queried.iter().filter(|m| !exported(m)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    Ok(())
}

/// The operator's RBAC (the chart's and the tests' one file): no wildcard anywhere, no
/// Secret right outside the operator's own namespace, and its webhook registration and
/// Secrets changed only by name.
#[test]
fn the_operator_role_has_no_wildcard_and_no_cluster_wide_secret_rights() -> Result<()> {
    let path = repo_root().join("charts/streamgate/files/operator-rbac.yaml");
    let text = std::fs::read_to_string(&path)?;
    let mut roles = BTreeMap::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let role = serde_json::Value::deserialize(document)?;
        let name = role["metadata"]["name"]
            .as_str()
            .context("a role name")?
            .to_string();
        roles.insert(name, role["rules"].as_array().cloned().unwrap_or_default());
    }
    let strings = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    for (name, rules) in &roles {
        for rule in rules {
            for key in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[key]).iter().any(|s| s.contains('*')),
                    "{name}: a wildcard in {key}: {rule}"
                );
            }
            let verbs = strings(&rule["verbs"]);
            let named = !strings(&rule["resourceNames"]).is_empty();
            let resources = strings(&rule["resources"]);
            // Reading or changing a Secret or the webhook registration: by name only.
            if resources
                .iter()
                .any(|r| r == "secrets" || r == "mutatingwebhookconfigurations")
            {
                assert!(
                    named || verbs == ["create"],
                    "{name}: {resources:?} {verbs:?} without resourceNames"
                );
            }
        }
    }
    // The role bound cluster-wide has no Secret rule at all (the namespaced one is bound
    // in the operator's namespace only).
    let cluster_wide = &roles["streamgate-operator"];
    assert!(
        !cluster_wide
            .iter()
            .any(|rule| strings(&rule["resources"]).iter().any(|r| r == "secrets")),
        "secrets in the cluster-wide role"
    );
    assert!(
        roles["streamgate-operator-namespaced"]
            .iter()
            .any(|rule| strings(&rule["resources"]).iter().any(|r| r == "secrets"))
    );
    Ok(())
}
