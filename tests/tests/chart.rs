//! The Helm chart against the real API server: its output is accepted, it installs
//! (the operator's pods run by kwok, in a namespace enforcing PodSecurity `restricted`),
//! upgrades, and uninstalls leaving nothing but the CRDs.

use anyhow::Result;
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
