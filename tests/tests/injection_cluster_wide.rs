//! An operator whose webhook covers the whole cluster (no --namespace), as the chart
//! installs it: kube-system and the operator's own namespace are never injected. Its
//! own test binary, so no other test's pods go through this webhook.

use anyhow::Result;
use streamgate_tests::TestEnv;
use streamgate_tests::operator::{
    Operator, operator_kubeconfig_in, registration_name, webhook_flags,
};

fn annotated_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\n  annotations: {{streamgate.io/inject: \"true\"}}\nspec:\n  containers: [{{name: app, image: registry.example.com/app:1, ports: [{{containerPort: 8080}}]}}]\n"
    )
}

fn plain_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers: [{{name: app, image: registry.example.com/app:1}}]\n"
    )
}

fn has_sidecar(env: &TestEnv, namespace: &str, pod: &str) -> Result<bool> {
    let names = env.platform.info.kubectl(
        &[
            "get",
            "pod",
            pod,
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.initContainers[*].name}",
        ],
        None,
    )?;
    Ok(names.split_whitespace().any(|n| n == "streamgate-sidecar"))
}

#[tokio::test]
async fn cluster_wide_webhook_never_injects_kube_system_or_its_own_namespace() -> Result<()> {
    let env = TestEnv::new("inject-cluster").await?;
    let home = format!("{}-sys", env.namespace);
    let kubeconfig = operator_kubeconfig_in(&env, &home).await?;
    let (args, _) = webhook_flags(&env, "127.0.0.1")?;
    let registration = registration_name(&env);
    // Cluster-wide: the test namespace scope is lifted by watching all namespaces.
    let operator = Operator::start_cluster_wide(&env, &kubeconfig, "cluster", &home, &args).await?;
    let info = &env.platform.info;
    streamgate_tests::wait::eventually(
        "webhook registered",
        std::time::Duration::from_secs(60),
        || async {
            Ok(info
                .kubectl(
                    &[
                        "get",
                        "mutatingwebhookconfiguration",
                        &registration,
                        "-o",
                        "name",
                    ],
                    None,
                )
                .is_ok()
                .then_some(()))
        },
    )
    .await?;

    info.kubectl(
        &["create", "-n", &env.namespace, "-f", "-"],
        Some(&annotated_pod("app")),
    )?;
    assert!(
        has_sidecar(&env, &env.namespace, "app")?,
        "an annotated pod was not injected"
    );
    info.kubectl(
        &["create", "-n", "kube-system", "-f", "-"],
        Some(&annotated_pod(&env.unique("sys"))),
    )?;
    assert!(
        !has_sidecar(&env, "kube-system", &env.unique("sys"))?,
        "kube-system was injected"
    );
    info.kubectl(
        &["create", "-n", &home, "-f", "-"],
        Some(&annotated_pod("own")),
    )?;
    assert!(
        !has_sidecar(&env, &home, "own")?,
        "the operator's namespace was injected"
    );

    // Every operator replica down (killed: nothing is cleaned up): a pod that does not ask
    // for a sidecar is admitted in any namespace, since only pods that ask reach the
    // webhook; one that asks is refused (fail closed) with the webhook named.
    operator.kill();
    info.kubectl(
        &["create", "-n", &env.namespace, "-f", "-"],
        Some(&plain_pod("plain")),
    )?;
    info.kubectl(
        &["create", "-n", &home, "-f", "-"],
        Some(&plain_pod("plain")),
    )?;
    let refused = info
        .kubectl(
            &["create", "-n", &env.namespace, "-f", "-"],
            Some(&annotated_pod("asks")),
        )
        .expect_err("a pod asking for the sidecar must not start without it");
    assert!(
        refused.to_string().contains("inject.streamgate.io"),
        "refusal does not name the webhook: {refused}"
    );

    // Leave the cluster as found: no cluster-wide webhook without its server.
    info.kubectl(
        &["delete", "mutatingwebhookconfiguration", &registration],
        None,
    )?;
    Ok(())
}
