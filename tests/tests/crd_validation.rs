//! The API server itself rejects invalid StreamGateService specs, naming the field.

use anyhow::Result;
use streamgate_tests::TestEnv;
use streamgate_tests::operator::install_crd_and_rbac;

/// (what is wrong, spec fields, text the API server's message must contain)
const INVALID: &[(&str, &str, &str)] = &[
    ("missing image", "port: 9091", "spec.image: Required value"),
    ("port 0", "image: i, port: 0", "spec.port"),
    ("port 70000", "image: i, port: 70000", "spec.port"),
    ("port of the sidecar", "image: i, port: 15020", "spec.port"),
    ("missing port", "image: i", "spec.port: Required value"),
    (
        "bad serviceName",
        "image: i, port: 1, serviceName: Upload_Svc",
        "spec.serviceName",
    ),
    (
        "unknown health type",
        "image: i, port: 1, health: {type: exec}",
        "spec.health.type",
    ),
    (
        "timeout >= period",
        "image: i, port: 1, health: {periodSeconds: 2, timeoutSeconds: 2}",
        "spec.health.timeoutSeconds",
    ),
    (
        "path on a tcp check",
        "image: i, port: 1, health: {type: tcp, path: /health}",
        "spec.health.path",
    ),
    (
        "relative health path",
        "image: i, port: 1, health: {path: health}",
        "spec.health.path",
    ),
    (
        "negative failureThreshold",
        "image: i, port: 1, health: {failureThreshold: -1}",
        "spec.health.failureThreshold",
    ),
    (
        "negative successThreshold",
        "image: i, port: 1, health: {successThreshold: -3}",
        "spec.health.successThreshold",
    ),
    (
        "negative replicas",
        "image: i, port: 1, replicas: -1",
        "spec.replicas",
    ),
    (
        "unknown protocol",
        "image: i, port: 1, protocol: tcp",
        "spec.protocol",
    ),
    (
        "duplicate upstreams",
        "image: i, port: 1, upstreams: [{service: a}, {service: a}]",
        "spec.upstreams",
    ),
    (
        "bad upstream name",
        "image: i, port: 1, upstreams: [{service: A_b}]",
        "spec.upstreams[0].service",
    ),
    (
        "bad upstream timeout",
        "image: i, port: 1, upstreams: [{service: a, timeout: 2 seconds}]",
        "spec.upstreams[0].timeout",
    ),
    (
        "zero retry attempts",
        "image: i, port: 1, upstreams: [{service: a, retries: {attempts: 0}}]",
        "spec.upstreams[0].retries.attempts",
    ),
    (
        "unknown retry code",
        "image: i, port: 1, upstreams: [{service: a, retries: {retryOn: [teapot]}}]",
        "spec.upstreams[0].retries.retryOn[0]",
    ),
    (
        "backoff base above max",
        "image: i, port: 1, upstreams: [{service: a, retries: {backoff: {base: 2s, max: 1s}}}]",
        "spec.upstreams[0].retries.backoff.base",
    ),
    (
        "ejection base above max",
        "image: i, port: 1, upstreams: [{service: a, circuitBreaker: {baseEjection: 2m, maxEjection: 1m}}]",
        "spec.upstreams[0].circuitBreaker.baseEjection",
    ),
    (
        "bad published event type",
        "image: i, port: 1, events: {publish: [File.Uploaded]}",
        "spec.events.publish[0]",
    ),
    (
        "bad subscribed event type",
        "image: i, port: 1, events: {subscribe: [{type: 'file..uploaded'}]}",
        "spec.events.subscribe[0].type",
    ),
    (
        "duplicate subscription",
        "image: i, port: 1, events: {subscribe: [{type: a.b}, {type: a.b}]}",
        "spec.events.subscribe",
    ),
    (
        "zero maxDeliver",
        "image: i, port: 1, events: {subscribe: [{type: a.b, maxDeliver: 0}]}",
        "spec.events.subscribe[0].maxDeliver",
    ),
    (
        "bad allowed caller",
        "image: i, port: 1, allowedCallers: ['API Gateway']",
        "spec.allowedCallers[0]",
    ),
    (
        "unknown log level",
        "image: i, port: 1, sidecar: {logLevel: loud}",
        "spec.sidecar.logLevel",
    ),
];

#[tokio::test]
async fn api_server_rejects_invalid_specs_naming_the_field() -> Result<()> {
    let env = TestEnv::new("crd-invalid").await?;
    install_crd_and_rbac(&env)?;
    let mut failures = Vec::new();
    for (i, (what, spec, expected)) in INVALID.iter().enumerate() {
        let manifest = format!(
            "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {{name: bad-{i}}}\nspec: {{{spec}}}\n"
        );
        match env.kubectl(&["create", "-f", "-"], Some(&manifest)) {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(e) => {
                let message = e.to_string();
                if !message.contains(expected) {
                    failures.push(format!("{what}: message lacks {expected:?}: {message}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid specs not rejected as expected:\n{}",
        failures.len(),
        INVALID.len(),
        failures.join("\n")
    );

    // The valid design example is accepted, so the rejections above are about the fields.
    let valid = "apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {name: upload}\nspec:\n  image: registry.example.com/streamgate/upload:1.4.2\n  replicas: 2\n  port: 9091\n  protocol: grpc\n  serviceName: upload\n  tags: [v1]\n  meta: {team: media}\n  health: {type: http, path: /health, port: 9091, periodSeconds: 5, timeoutSeconds: 1, failureThreshold: 3, successThreshold: 1}\n  events:\n    publish: [file.uploaded]\n    subscribe: [{type: transcoding.completed, path: /events, maxDeliver: 5}]\n  upstreams:\n  - service: metadata\n    timeout: 2s\n    retries: {attempts: 3, backoff: {base: 25ms, max: 1s}, retryOn: [unavailable]}\n    circuitBreaker: {consecutiveFailures: 5, baseEjection: 1s, maxEjection: 60s}\n  allowedCallers: [api-gateway]\n  sidecar: {logLevel: info}\n";
    env.kubectl(&["create", "-f", "-"], Some(valid))?;
    // kubectl explain documents every field from the schema.
    let explain = env
        .platform
        .info
        .kubectl(&["explain", "sgs.spec.health"], None)?;
    assert!(
        explain.contains("timeoutSeconds") && explain.contains("Seconds a probe may take"),
        "{explain}"
    );
    Ok(())
}

#[tokio::test]
async fn the_nine_platform_samples_apply_cleanly() -> Result<()> {
    let env = TestEnv::new("samples").await?;
    install_crd_and_rbac(&env)?;
    let dir = streamgate_tests::tools::repo_root().join("examples/platform");
    let dir = dir.to_string_lossy();
    env.kubectl(
        &["apply", "--server-side", "--dry-run=server", "-f", &dir],
        None,
    )?;
    env.kubectl(&["apply", "--server-side", "-f", &dir], None)?;
    let names = env.kubectl(
        &["get", "sgs", "-o", "jsonpath={.items[*].spec.port}"],
        None,
    )?;
    let mut ports: Vec<u16> = names
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    ports.sort_unstable();
    assert_eq!(
        ports,
        vec![9005, 9006, 9007, 9008, 9009, 9090, 9091, 9092, 9093]
    );
    Ok(())
}
