//! `streamgate check` on a platform of this binary's own, so the CRD can be taken away:
//! a missing CRD and one that differs from this version's are each named with the fix.
//! (The check on a whole install, passing and naming a stopped NATS and an operator
//! scaled to 0, runs on the real node: `real_node.rs`.)

use anyhow::{Context, Result};
use serde_json::Value;
use std::time::Duration;
use streamgate_tests::TestEnv;
use streamgate_tests::operator::install_crd_and_rbac;
use streamgate_tests::tools::repo_root;
use streamgate_tests::wait::eventually;

const CRD: &str = "crd/streamgateservices.streamgate.io";

fn crd_check(env: &TestEnv) -> Result<Value> {
    let cli = streamgate_tests::bins::binary("streamgate-cli", "streamgate")?;
    let output = std::process::Command::new(cli)
        .env("KUBECONFIG", &env.platform.info.kubeconfig)
        .args([
            "check",
            "-o",
            "json",
            "--operator-namespace",
            &env.namespace,
        ])
        .args(["--consul-address", env.consul_addr()])
        .args(["--nats-url", env.nats_url()])
        .output()?;
    // No operator runs here: the install is not healthy, whatever the CRD.
    assert_eq!(output.status.code(), Some(1));
    let checks: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    checks
        .into_iter()
        .find(|c| c["name"] == "crd")
        .context("the crd check")
}

#[tokio::test]
async fn check_names_a_missing_or_stale_crd_with_its_fix() -> Result<()> {
    let env = TestEnv::new("check-crd").await?;
    install_crd_and_rbac(&env)?;
    let current = crd_check(&env)?;
    assert_eq!(current["ok"], true, "{current}");

    env.platform
        .info
        .kubectl(&["delete", CRD, "--wait=true"], None)?;
    let missing = eventually(
        "the missing CRD is named",
        Duration::from_secs(60),
        || async {
            let check = crd_check(&env)?;
            Ok((check["ok"] == false).then_some(check))
        },
    )
    .await?;
    assert!(
        missing["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("is not installed"),
        "{missing}"
    );
    let fix = missing["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("streamgate-operator crd | kubectl apply"),
        "{fix}"
    );

    // An older schema (another description here) is "installed but differs".
    let yaml = std::fs::read_to_string(repo_root().join("crds/streamgateservice.yaml"))?;
    let older = yaml.replacen("Event types the app may publish", "(older) Event types", 1);
    assert_ne!(older, yaml);
    env.platform
        .info
        .kubectl(&["apply", "--server-side", "-f", "-"], Some(&older))?;
    let stale = eventually(
        "the stale CRD is named",
        Duration::from_secs(60),
        || async {
            let check = crd_check(&env)?;
            let detail = check["detail"].as_str().unwrap_or_default().to_string();
            Ok(detail.contains("differs").then_some(check))
        },
    )
    .await?;
    assert_eq!(stale["ok"], false);
    Ok(())
}
