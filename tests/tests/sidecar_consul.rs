//! The sidecar against real Consul: the shared platform's agent, or an agent of the
//! test's own where Consul must die or start late. Real demo app, real sidecar process.

use anyhow::{Result, ensure};
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};
use streamgate_tests::TestEnv;
use streamgate_tests::consul_agent::ConsulAgent;
use streamgate_tests::sidecar::{
    ConsulView, DemoApp, NAMESPACE, Sidecar, SidecarOptions, SidecarPod, log_dir, pod_ip,
    started_sidecar,
};
use streamgate_tests::wait::eventually;

const PERIOD: Duration = Duration::from_secs(2);
/// Polling of Consul and of the sidecar adds up to this on top of what is measured.
const SLACK: Duration = Duration::from_millis(700);

#[tokio::test]
async fn registers_the_pod_and_passes_within_one_period_after_the_app_turns_healthy() -> Result<()>
{
    let env = TestEnv::new("sidecar-passes").await?;
    let SidecarPod {
        service,
        ip,
        app,
        sidecar,
        ..
    } = started_sidecar(&env, "upload", false, |_| {}).await?;
    let consul = ConsulView::new(env.consul_addr());

    // Registered at once, critical while the app is not healthy, and not ready.
    let instance = consul
        .wait_status(
            &service,
            &sidecar.instance_id,
            "critical",
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(instance.address, ip);
    assert_eq!(
        instance.port,
        sidecar.inbound.port(),
        "port = the inbound listener"
    );
    assert_eq!(instance.tags, ["v1"]);
    assert_eq!(
        instance.meta,
        json!({"team": "media", "managed-by": "streamgate", "k8s-namespace": NAMESPACE,
               "k8s-pod": sidecar.pod_name, "k8s-pod-uid": format!("uid-{service}"),
               "streamgate-registration": "agent"})
    );
    assert_eq!(sidecar.readyz().await?, 503);
    let output = consul.check_output(&sidecar.instance_id).await?;
    assert!(
        output.contains("503"),
        "the check's note says why: {output}"
    );

    let healthy_at = Instant::now();
    app.set_healthy(true).await?;
    consul
        .wait_status(&service, &sidecar.instance_id, "passing", PERIOD + SLACK)
        .await?;
    let took = healthy_at.elapsed();
    ensure!(took <= PERIOD + SLACK, "passing after {took:?}");
    sidecar.wait_ready(Duration::from_secs(2)).await?;
    Ok(())
}

#[tokio::test]
async fn critical_after_failure_threshold_and_passing_after_success_threshold() -> Result<()> {
    let env = TestEnv::new("sidecar-thresholds").await?;
    const HEALTH: &str =
        "{type: http, path: /health, periodSeconds: 2, failureThreshold: 3, successThreshold: 2}";
    let SidecarPod {
        service,
        app,
        sidecar,
        ..
    } = started_sidecar(&env, "thresholds", true, |options| {
        options.health = HEALTH.into();
    })
    .await?;
    let consul = ConsulView::new(env.consul_addr());
    let id = sidecar.instance_id.clone();
    consul
        .wait_status(&service, &id, "passing", Duration::from_secs(10))
        .await?;
    sidecar.wait_ready(Duration::from_secs(5)).await?;

    const FAILURES: &str = "streamgate_sidecar_health_checks_total{result=\"failure\"}";
    const SUCCESSES: &str = "streamgate_sidecar_health_checks_total{result=\"success\"}";
    let failures_before = sidecar.metric(FAILURES).await?;
    app.set_healthy(false).await?;
    consul
        .wait_status(&service, &id, "critical", 3 * PERIOD + SLACK + PERIOD)
        .await?;
    let failures = sidecar.metric(FAILURES).await? - failures_before;
    assert_eq!(
        failures, 3.0,
        "critical after exactly failureThreshold failed probes"
    );
    assert_eq!(sidecar.readyz().await?, 503);

    let successes_before = sidecar.metric(SUCCESSES).await?;
    app.set_healthy(true).await?;
    consul
        .wait_status(&service, &id, "passing", 2 * PERIOD + SLACK + PERIOD)
        .await?;
    let successes = sidecar.metric(SUCCESSES).await? - successes_before;
    assert_eq!(
        successes, 2.0,
        "passing after exactly successThreshold good probes"
    );
    sidecar.wait_ready(Duration::from_secs(2)).await?;

    // Each change was logged once, not every period.
    let log = sidecar.log_tail(400);
    assert_eq!(log.matches("app is not healthy").count(), 1, "{log}");
    assert_eq!(log.matches("app is healthy").count(), 2, "{log}");
    Ok(())
}

#[tokio::test]
async fn grpc_health_check_drives_the_instance() -> Result<()> {
    let env = TestEnv::new("sidecar-grpc").await?;
    let SidecarPod {
        service,
        app,
        sidecar,
        ..
    } = started_sidecar(&env, "grpc", true, |options| {
        options.health = "{type: grpc, periodSeconds: 2, failureThreshold: 1}".into();
    })
    .await?;
    let consul = ConsulView::new(env.consul_addr());
    let id = sidecar.instance_id.clone();
    consul
        .wait_status(&service, &id, "passing", Duration::from_secs(10))
        .await?;
    assert!(consul.check_output(&id).await?.contains("SERVING"));

    app.set_healthy(false).await?;
    consul
        .wait_status(&service, &id, "critical", PERIOD + SLACK)
        .await?;
    let output = consul.check_output(&id).await?;
    assert!(output.contains("NOT_SERVING"), "{output}");
    Ok(())
}

#[tokio::test]
async fn tcp_health_check_drives_the_instance() -> Result<()> {
    let env = TestEnv::new("sidecar-tcp").await?;
    let SidecarPod {
        service,
        dir,
        app,
        sidecar,
        ..
    } = started_sidecar(&env, "tcp", true, |options| {
        options.health = "{type: tcp, periodSeconds: 2, failureThreshold: 1}".into();
    })
    .await?;
    let consul = ConsulView::new(env.consul_addr());
    let id = sidecar.instance_id.clone();
    consul
        .wait_status(&service, &id, "passing", Duration::from_secs(10))
        .await?;

    app.stop();
    consul
        .wait_status(&service, &id, "critical", PERIOD + SLACK)
        .await?;
    let output = consul.check_output(&id).await?;
    assert!(
        output.contains("TCP connect") && output.contains("refused"),
        "{output}"
    );

    let _back = DemoApp::start_at(&dir, app.addr, true).await?;
    consul
        .wait_status(&service, &id, "passing", PERIOD + SLACK)
        .await?;
    Ok(())
}

/// A pod of a healthy app whose instance passes in Consul and whose sidecar is ready.
async fn serving_sidecar(
    env: &TestEnv,
    name: &str,
    tweak: impl FnOnce(&mut SidecarOptions),
) -> Result<(SidecarPod, ConsulView)> {
    let pod = started_sidecar(env, name, true, tweak).await?;
    let consul = ConsulView::new(env.consul_addr());
    consul
        .wait_status(
            &pod.service,
            &pod.sidecar.instance_id,
            "passing",
            Duration::from_secs(10),
        )
        .await?;
    pod.sidecar.wait_ready(Duration::from_secs(5)).await?;
    Ok((pod, consul))
}

#[tokio::test]
async fn deregisters_within_one_second_of_sigterm_and_exits_zero() -> Result<()> {
    let env = TestEnv::new("sidecar-sigterm").await?;
    let (pod, consul) = serving_sidecar(&env, "sigterm", |_| {}).await?;
    let (service, sidecar) = (&pod.service, &pod.sidecar);

    let sigterm = Instant::now();
    sidecar.signal(Signal::SIGTERM);
    consul
        .wait_gone(service, &sidecar.instance_id, Duration::from_secs(1))
        .await?;
    let status = sidecar.wait_exit(Duration::from_secs(5)).await?;
    assert!(status.success(), "exit {status}: {}", sidecar.log_tail(20));
    assert!(
        sigterm.elapsed() < Duration::from_secs(2),
        "{:?}",
        sigterm.elapsed()
    );
    Ok(())
}

/// The app container's `preStop` hook (`GET /leave` on the admin port): the instance
/// leaves Consul at once, inbound keeps serving for `leaveDelay` (callers with an older
/// view of Consul), then refuses new connections; only then does the hook answer, so
/// the kubelet stops the app after all that.
#[tokio::test]
async fn the_prestop_hook_leaves_consul_serves_for_the_delay_then_closes_inbound() -> Result<()> {
    let env = TestEnv::new("sidecar-leave").await?;
    let (pod, consul) =
        serving_sidecar(&env, "leave", |o| o.extra = "leaveDelay: 2s\n".into()).await?;
    let (service, sidecar) = (&pod.service, &pod.sidecar);

    let asked = Instant::now();
    let hook = tokio::spawn({
        let url = format!("http://{}/leave", sidecar.admin);
        async move {
            let response = reqwest::Client::builder()
                .no_proxy()
                .build()?
                .get(url)
                .send()
                .await?;
            anyhow::Ok((response.status().as_u16(), Instant::now()))
        }
    });
    consul
        .wait_gone(service, &sidecar.instance_id, Duration::from_secs(1))
        .await?;
    ensure!(!hook.is_finished(), "the hook answered before the delay");
    tokio::net::TcpStream::connect(sidecar.inbound)
        .await
        .map_err(|e| anyhow::anyhow!("inbound must serve during leaveDelay: {e}"))?;
    let (status, answered) = hook.await??;
    ensure!(
        status == 200,
        "the hook answered {status}: {}",
        sidecar.log_tail(20)
    );
    ensure!(
        answered.duration_since(asked) >= Duration::from_secs(2),
        "answered after {:?}, before leaveDelay ran out",
        answered.duration_since(asked)
    );
    ensure!(
        tokio::net::TcpStream::connect(sidecar.inbound)
            .await
            .is_err(),
        "inbound still accepts connections after the hook answered"
    );
    ensure!(sidecar.readyz().await? == 503, "a leaving pod is not ready");

    // The app has stopped; the sidecar's own SIGTERM finds the departure done.
    sidecar.signal(Signal::SIGTERM);
    let status = sidecar.wait_exit(Duration::from_secs(5)).await?;
    ensure!(status.success(), "exit {status}: {}", sidecar.log_tail(20));
    Ok(())
}

#[tokio::test]
async fn reregisters_within_two_seconds_when_consul_returns_without_state() -> Result<()> {
    let env = TestEnv::new("sidecar-consul-restart").await?;
    let service = env.unique("restart");
    let dir = log_dir(&service);
    let agent = ConsulAgent::start_new(&env.platform.info.tools.consul, &dir).await?;
    let ip = pod_ip();
    let app = DemoApp::start(&dir, &ip, true).await?;
    let options = SidecarOptions::new(&service, &ip, app.addr, &agent.addr());
    let sidecar = Sidecar::start(&dir, &options)?;
    let consul = ConsulView::new(&agent.addr());
    consul
        .wait_status(
            &service,
            &sidecar.instance_id,
            "passing",
            Duration::from_secs(10),
        )
        .await?;

    agent.kill();
    eventually(
        "the sidecar notices Consul is gone",
        Duration::from_secs(5),
        || async { Ok((sidecar.readyz().await? == 503).then_some(())) },
    )
    .await?;
    agent.start().await?; // returns once the new agent has a leader: Consul is back
    let back = Instant::now();
    consul
        .wait_status(
            &service,
            &sidecar.instance_id,
            "passing",
            Duration::from_secs(2),
        )
        .await?;
    let took = back.elapsed();
    ensure!(
        took <= Duration::from_secs(2),
        "re-registered {took:?} after Consul returned"
    );
    sidecar.wait_ready(Duration::from_secs(2)).await?;
    assert!(
        sidecar
            .metric("streamgate_sidecar_consul_registrations_total")
            .await?
            >= 2.0
    );
    Ok(())
}

#[tokio::test]
async fn keeps_retrying_without_a_tight_loop_and_registers_once_consul_is_up() -> Result<()> {
    let env = TestEnv::new("sidecar-consul-late").await?;
    let service = env.unique("late");
    let dir = log_dir(&service);
    let agent = ConsulAgent::reserve(&env.platform.info.tools.consul, &dir)?;
    let ip = pod_ip();
    let app = DemoApp::start(&dir, &ip, true).await?;
    let options = SidecarOptions::new(&service, &ip, app.addr, &agent.addr());
    let started = Instant::now();
    let sidecar = Sidecar::start(&dir, &options)?;

    const ERRORS: &str =
        "streamgate_sidecar_consul_operations_total{operation=\"register\",outcome=\"error\"}";
    let errors = eventually(
        "the sidecar retries registering",
        Duration::from_secs(10),
        || async {
            let errors = sidecar.metric(ERRORS).await.unwrap_or(0.0);
            Ok((errors >= 4.0).then_some(errors))
        },
    )
    .await?;
    // Backoff from 100 ms, capped at 1 s, jittered: a handful of tries, not thousands.
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(
        errors <= 4.0 + 20.0 * elapsed,
        "{errors} attempts in {elapsed:.1}s: a tight loop"
    );
    assert_eq!(sidecar.readyz().await?, 503, "not ready while unregistered");

    agent.start().await?;
    let up = Instant::now();
    let consul = ConsulView::new(&agent.addr());
    consul
        .wait_status(
            &service,
            &sidecar.instance_id,
            "passing",
            Duration::from_secs(2),
        )
        .await?;
    ensure!(
        up.elapsed() <= Duration::from_secs(2),
        "registered {:?} after Consul came up",
        up.elapsed()
    );
    sidecar.wait_ready(Duration::from_secs(2)).await?;
    Ok(())
}

/// Consul 1.8 enforces at least 1 minute for DeregisterCriticalServiceAfter and reaps
/// every 30 s, so this test takes up to about 100 s whatever the sidecar asks.
#[tokio::test]
async fn consul_removes_the_instance_of_a_killed_sidecar_after_the_critical_window() -> Result<()> {
    let env = TestEnv::new("sidecar-sigkill").await?;
    let SidecarPod {
        service,
        app: _app,
        sidecar,
        ..
    } = started_sidecar(&env, "ghost", true, |options| {
        options.deregister_critical_after = "5s".into();
    })
    .await?;
    let consul = ConsulView::new(env.consul_addr());
    let id = sidecar.instance_id.clone();
    consul
        .wait_status(&service, &id, "passing", Duration::from_secs(10))
        .await?;

    sidecar.signal(Signal::SIGKILL);
    let killed = Instant::now();
    // Nobody refreshes the TTL (3 periods, at least 3 s) any more: critical...
    consul
        .wait_status(
            &service,
            &id,
            "critical",
            Duration::from_secs(6) + SLACK + PERIOD,
        )
        .await?;
    ensure!(
        killed.elapsed() >= Duration::from_secs(5),
        "critical before the TTL ran out"
    );
    // ...and Consul drops the instance after the deregister-critical window.
    consul
        .wait_gone(&service, &id, Duration::from_secs(110))
        .await?;
    Ok(())
}
