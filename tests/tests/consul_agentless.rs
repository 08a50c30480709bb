//! Catalog (agentless) registration against the newer Consul with no client agent: two
//! servers, a sidecar talking to one and then the other, as consul-k8s installs Consul
//! 1.14+. Real servers, real demo app, real sidecar processes.

use anyhow::{Result, ensure};
use nix::sys::signal::Signal;
use std::time::Duration;
use streamgate_tests::consul_agent::ConsulServers;
use streamgate_tests::shared::{dns_label, random_suffix};
use streamgate_tests::sidecar::{ConsulView, DemoApp, Sidecar, SidecarOptions, log_dir, pod_ip};
use streamgate_tests::tools::Tools;

const NODE: &str = "k8s-node-a";
/// Health probes every 2 s, one failure turns the app unhealthy; polling adds the rest.
const HEALTH_CHANGE: Duration = Duration::from_secs(4);

fn options(service: &str, ip: &str, app: &DemoApp, consul: &str, mode: &str) -> SidecarOptions {
    let mut options = SidecarOptions::new(service, ip, app.addr, consul);
    options.env.extend([
        ("NODE_NAME".to_string(), NODE.to_string()),
        ("HOST_IP".to_string(), "127.0.0.1".to_string()),
        ("STREAMGATE_CONSUL_MODE".to_string(), mode.to_string()),
    ]);
    options
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_mode_registers_on_the_kubernetes_node_follows_health_and_leaves() -> Result<()> {
    let tools = Tools::locate()?;
    let service = dns_label("agentless", &random_suffix());
    let dir = log_dir(&service);
    let servers = ConsulServers::start(&tools.consul_newer, &dir).await?;
    let ip = pod_ip();
    let app = DemoApp::start(&dir, &ip, false).await?;
    // `auto`: what answers is a server, not a local agent, so the sidecar writes to the
    // catalog. Read back through the other server: one catalog.
    let sidecar = Sidecar::start(
        &dir,
        &options(&service, &ip, &app, &servers.addr(0), "auto"),
    )?;
    let consul = ConsulView::new(&servers.addr(1));
    let id = &sidecar.instance_id;

    let instance = consul
        .wait_status(&service, id, "critical", Duration::from_secs(15))
        .await?;
    assert_eq!(
        instance.node, NODE,
        "the instance hangs off the Kubernetes node"
    );
    assert_eq!(instance.meta["streamgate-registration"], "catalog");
    assert_eq!(instance.address, ip);

    // Health follows the app both ways, written by the sidecar (the catalog runs no check).
    app.set_healthy(true).await?;
    consul
        .wait_status(&service, id, "passing", HEALTH_CHANGE)
        .await?;
    app.set_healthy(false).await?;
    consul
        .wait_status(&service, id, "critical", HEALTH_CHANGE)
        .await?;
    app.set_healthy(true).await?;
    consul
        .wait_status(&service, id, "passing", HEALTH_CHANGE)
        .await?;

    // The sidecar dies without leaving and comes back talking to the other server: the
    // same instance on the same node, not a second one.
    sidecar.signal(Signal::SIGKILL);
    sidecar.wait_exit(Duration::from_secs(5)).await?;
    let again = Sidecar::start(
        &dir,
        &options(&service, &ip, &app, &servers.addr(1), "auto"),
    )?;
    again.wait_ready(Duration::from_secs(15)).await?;
    let instances = consul.all_instances(&service).await?;
    ensure!(
        instances == vec![(NODE.to_string(), id.clone())],
        "one instance after switching servers, got {instances:?}"
    );

    // Pod deletion: SIGTERM removes it from the catalog.
    again.signal(Signal::SIGTERM);
    consul
        .wait_gone(&service, id, Duration::from_secs(2))
        .await?;
    let status = again.wait_exit(Duration::from_secs(10)).await?;
    assert!(status.success(), "exit {status}: {}", again.log_tail(20));
    Ok(())
}

/// The same switch of servers in agent mode: each server is an agent of its own node,
/// so the instance is registered twice. What catalog mode exists to avoid, and proof
/// that the check above can fail.
#[tokio::test(flavor = "multi_thread")]
async fn agent_mode_through_two_servers_leaves_a_duplicate_behind() -> Result<()> {
    let tools = Tools::locate()?;
    let service = dns_label("agent-dup", &random_suffix());
    let dir = log_dir(&service);
    let servers = ConsulServers::start(&tools.consul_newer, &dir).await?;
    let ip = pod_ip();
    let app = DemoApp::start(&dir, &ip, true).await?;
    let consul = ConsulView::new(&servers.addr(0));
    let first = Sidecar::start(
        &dir,
        &options(&service, &ip, &app, &servers.addr(0), "agent"),
    )?;
    first.wait_ready(Duration::from_secs(15)).await?;
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).await?;
    let second = Sidecar::start(
        &dir,
        &options(&service, &ip, &app, &servers.addr(1), "agent"),
    )?;
    second.wait_ready(Duration::from_secs(15)).await?;
    let instances = consul.all_instances(&service).await?;
    ensure!(
        instances.len() == 2 && instances[0].0 != instances[1].0,
        "agent mode registers on each server's own node: {instances:?}"
    );
    Ok(())
}
