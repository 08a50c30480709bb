//! The sidecar as a process, without the platform: configuration refusals, `/config`,
//! and the shutdown deadlines. Consul is pointed at a port where nothing listens, which
//! is also how "Consul unreachable" looks to the sidecar.

use anyhow::Result;
use nix::sys::signal::Signal;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use streamgate_tests::ports::free_port;
use streamgate_tests::sidecar::{DemoApp, Sidecar, SidecarOptions, binaries, log_dir, pod_ip};

/// Runs the sidecar to its exit (killed after 10 s: a refusal must be immediate);
/// returns the exit code and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(&binaries().sidecar);
    command
        .env_clear()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("starting the sidecar");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("collecting output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const VALID: &str = "service: {serviceName: upload, port: 9091}\n";

#[test]
fn bad_configurations_are_refused_with_one_line_naming_the_field() {
    let dir = log_dir("bad-configurations");
    let config_file = dir.join("bad.yaml");
    // (what is wrong, document, extra args, extra env, the field the message must name)
    type Case<'a> = (
        &'a str,
        String,
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        ("service name not a DNS label", "service: {serviceName: Upload_Svc, port: 9091}".into(), vec![], vec![], "service.serviceName"),
        ("app port is a sidecar port", "service: {serviceName: upload, port: 15006}".into(), vec![], vec![], "service.port"),
        ("timeout not below period", "service: {serviceName: upload, port: 9091, health: {periodSeconds: 5, timeoutSeconds: 5}}".into(), vec![], vec![], "service.health.timeoutSeconds"),
        ("path on a tcp check", "service: {serviceName: upload, port: 9091, health: {type: tcp, path: /health}}".into(), vec![], vec![], "service.health.path"),
        ("zero failure threshold", "service: {serviceName: upload, port: 9091, health: {failureThreshold: 0}}".into(), vec![], vec![], "service.health.failureThreshold"),
        ("misspelt field", "service: {serviceName: upload, port: 9091, helth: {}}".into(), vec![], vec![], "service.helth"),
        ("bad event type", "service: {serviceName: upload, port: 9091, events: {publish: [File.Uploaded]}}".into(), vec![], vec![], "service.events.publish[0]"),
        ("pod IP from the downward API", VALID.into(), vec![], vec![("POD_IP", "not-an-ip")], "pod.ip"),
        ("admin listen address", format!("{VALID}listen: {{admin: nohost}}"), vec![], vec![], "listen.admin"),
        ("Consul address scheme", VALID.into(), vec![], vec![("CONSUL_HTTP_ADDR", "ftp://consul:8500")], "consul.address"),
        ("missing token file", format!("{VALID}consul: {{tokenFile: /nonexistent/token}}"), vec![], vec![], "consul.tokenFile"),
        ("drain timeout units", format!("{VALID}drainTimeout: 10 seconds"), vec![], vec![], "drainTimeout"),
        ("NATS URL scheme", format!("{VALID}nats: {{url: 'http://nats:4222'}}"), vec![], vec![], "nats.url"),
        ("app port flag", VALID.into(), vec!["--app-port", "abc"], vec![], "service.port"),
    ];
    assert!(cases.len() >= 8);
    for (what, document, extra_args, env, field) in cases {
        std::fs::write(&config_file, document).unwrap();
        let mut args = vec!["--config", config_file.to_str().unwrap()];
        args.extend(extra_args);
        let (code, stderr) = run_to_exit(&args, &env);
        assert_eq!(code, Some(2), "{what}: exit code; stderr:\n{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: one line expected:\n{stderr}");
        assert!(
            lines[0].contains(&format!("invalid configuration: {field}")),
            "{what}: the line must name {field}: {}",
            lines[0]
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}

#[test]
fn no_configuration_at_all_is_refused_naming_config() {
    let (code, stderr) = run_to_exit(&[], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--config") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn help_documents_the_configuration() {
    let output = Command::new(&binaries().sidecar)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for needle in [
        "--config",
        "STREAMGATE_CONFIG",
        "CONSUL_HTTP_ADDR",
        "POD_IP",
        "--admin-listen",
        "--drain-timeout",
        "CONSUL_HTTP_TOKEN",
    ] {
        assert!(
            help.contains(needle),
            "--help does not mention {needle}:\n{help}"
        );
    }
}

/// A sidecar beside a healthy demo app, with Consul unreachable.
async fn sidecar_without_consul(test: &str, drain_timeout: &str) -> Result<(DemoApp, Sidecar)> {
    let dir = log_dir(test);
    let ip = pod_ip();
    let app = DemoApp::start(&dir, &ip, true).await?;
    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let mut options = SidecarOptions::new(test, &ip, app.addr, &nowhere);
    options.drain_timeout = drain_timeout.into();
    options
        .env
        .push(("CONSUL_HTTP_TOKEN".into(), "very-secret-token".into()));
    let sidecar = Sidecar::start(&dir, &options)?;
    // Up and probing, but never registered: not ready.
    streamgate_tests::wait::eventually(
        "the admin server answers",
        Duration::from_secs(10),
        || async { Ok(sidecar.admin_get("/livez").await.ok()) },
    )
    .await?;
    Ok((app, sidecar))
}

#[tokio::test]
async fn not_ready_while_unregistered_and_config_redacts_the_token() -> Result<()> {
    let (_app, sidecar) = sidecar_without_consul("redacts-token", "5s").await?;
    streamgate_tests::wait::eventually(
        "the app is seen healthy",
        Duration::from_secs(10),
        || async {
            Ok((sidecar.metric("streamgate_sidecar_app_healthy").await? == 1.0).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        sidecar.readyz().await?,
        503,
        "healthy but unregistered is not ready"
    );
    let config = sidecar.admin_get("/config").await?;
    assert!(config.contains("<redacted>"), "{config}");
    assert!(
        !config.contains("very-secret-token"),
        "/config leaks the token:\n{config}"
    );
    assert!(config.contains(&sidecar.instance_id), "{config}");
    let metrics = sidecar.admin_get("/metrics").await?;
    for name in [
        "streamgate_sidecar_health_check_duration_seconds",
        "streamgate_sidecar_consul_operations_total{operation=\"register\",outcome=\"error\"}",
        "streamgate_sidecar_ready 0",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn second_sigterm_exits_at_once() -> Result<()> {
    let (_app, sidecar) = sidecar_without_consul("second-sigterm", "60s").await?;
    sidecar.signal(Signal::SIGTERM);
    // Deregistration cannot get through, so the drain would last 60 s...
    streamgate_tests::wait::eventually("the sidecar drains", Duration::from_secs(5), || async {
        Ok(sidecar.log_tail(50).contains("shutting down").then_some(()))
    })
    .await?;
    assert_eq!(
        sidecar.readyz().await?,
        503,
        "/readyz is false while draining"
    );
    let second = Instant::now();
    sidecar.signal(Signal::SIGTERM);
    let status = sidecar.wait_exit(Duration::from_secs(5)).await?;
    assert!(
        second.elapsed() < Duration::from_secs(1),
        "took {:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{}", sidecar.log_tail(20));
    Ok(())
}

#[tokio::test]
async fn drain_deadline_exits_at_once() -> Result<()> {
    let (_app, sidecar) = sidecar_without_consul("drain-deadline", "1s").await?;
    let start = Instant::now();
    sidecar.signal(Signal::SIGTERM);
    let status = sidecar.wait_exit(Duration::from_secs(10)).await?;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "left before the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "overran the 1s deadline: {took:?}"
    );
    assert_eq!(status.code(), Some(1), "{}", sidecar.log_tail(20));
    assert!(sidecar.log_tail(20).contains("drainTimeout reached"));
    Ok(())
}
