//! `make env-up` with the real node and `make env-down` (the `streamgate-env` binary
//! behind them): a pod runs, the guard rules are in place while it does, and after `down`
//! nothing of the node is left on the machine: no process, mount, network namespace, pod
//! cgroup, bridge or iptables rule.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use streamgate_tests::node::{self, NODE_IP, OwnerRecord, RUN_DIR, teardown};
use streamgate_tests::platform::run_kubectl;
use streamgate_tests::tools::Tools;
use streamgate_tests::wait::wait_until;

fn env_cmd(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate-env"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "streamgate-env {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn env_down_leaves_nothing_of_the_real_node_behind() -> Result<()> {
    let dir = streamgate_tests::tools::repo_root()
        .join(format!(".streamgate/test/lifecycle.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tools = Tools::locate()?;
    let node_tools = node::NodeTools::locate(&tools.root, &tools.versions)?;

    let up = env_cmd(&dir, &["--real-node", "up"]);
    let result = (|| -> Result<OwnerRecord> {
        up?;
        let owner: OwnerRecord = serde_json::from_str(
            &std::fs::read_to_string(Path::new(RUN_DIR).join("owner"))
                .context("no owner record while the node runs")?,
        )?;
        let values = std::fs::read_to_string(dir.join("helm-values.yaml"))?;
        assert!(values.contains(NODE_IP), "helm values: {values}");
        assert!(node::network::guard_in_place(&node_tools.iptables)?);

        // A running pod gives the teardown something to remove: its network namespace,
        // mounts, cgroups and processes.
        let kubeconfig = dir.join("kubeconfig");
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: sleeper, namespace: default}}\nspec:\n  containers:\n  - {{name: app, image: 'streamgate/demo-app:{}', imagePullPolicy: Never, env: [{{name: DEMO_LISTEN, value: '0.0.0.0:9091'}}]}}\n",
            env!("CARGO_PKG_VERSION")
        );
        run_kubectl(
            &tools.kubectl,
            &kubeconfig,
            &["apply", "-f", "-"],
            Some(&pod),
        )?;
        wait_until("pod sleeper Running", Duration::from_secs(90), || {
            let phase = run_kubectl(
                &tools.kubectl,
                &kubeconfig,
                &[
                    "get",
                    "pod",
                    "sleeper",
                    "-n",
                    "default",
                    "-o",
                    "jsonpath={.status.phase}",
                ],
                None,
            )?;
            Ok(phase == "Running")
        })?;
        assert!(
            !teardown::leftovers(&owner, &node_tools.iptables).is_empty(),
            "a running node shows nothing to remove: the leftover check cannot fail"
        );
        Ok(owner)
    })();
    let down = env_cmd(&dir, &["down"]);
    let owner = result?;
    down?;

    let left = teardown::leftovers(&owner, &node_tools.iptables);
    assert!(left.is_empty(), "env-down left: {left:#?}");
    assert!(
        !Path::new(RUN_DIR).join("owner").exists(),
        "the owner record is still there"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
