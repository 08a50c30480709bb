//! The identity endpoint, against the real API server's TokenReview: a sidecar's
//! certificate names what its projected ServiceAccount token proves (namespace, account,
//! the pod it is bound to), never what the request asks for; anything less than a
//! pod-bound token for audience `streamgate` gets no certificate.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use streamgate_operator::identity::ca as ca_ca;
use streamgate_proto::testing::v1::EchoRequest;
use streamgate_proto::testing::v1::echo_client::EchoClient;
use streamgate_tests::TestEnv;
use streamgate_tests::echo::EchoServer;
use streamgate_tests::operator::{Operator, operator_kubeconfig_in, webhook_flags};
use streamgate_tests::ports::free_port;
use streamgate_tests::sidecar::{Sidecar, SidecarOptions, http, log_dir, pod_ip};
use streamgate_tests::wait::eventually;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Endpoint {
    url: String,
    /// The CA that verifies it (the webhook's).
    ca: String,
    http: reqwest::Client,
}

impl Endpoint {
    /// A client that trusts only the operator's CA (as a sidecar's trust bundle does).
    async fn new(env: &TestEnv, home: &str, url: String) -> Result<Endpoint> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let secrets: Api<Secret> = Api::namespaced(env.client(), home);
        let ca = eventually("the operator's CA", TIMEOUT, || async {
            let secret = secrets.get_opt("streamgate-webhook-certs").await?;
            Ok(secret
                .and_then(|s| s.data)
                .and_then(|mut data| data.remove("ca.crt")))
        })
        .await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca.0)?])
            .timeout(Duration::from_secs(10))
            .build()?;
        let ca = String::from_utf8(ca.0)?;
        Ok(Endpoint { url, ca, http })
    }

    /// Asks for a certificate with `token`; the status and the body.
    async fn issue(&self, token: Option<&str>, csr: &str) -> Result<(u16, serde_json::Value)> {
        let mut request = self
            .http
            .post(format!("{}/v1/identity/certificate", self.url))
            .json(&json!({ "csr": csr }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(json!(text));
        Ok((status, body))
    }
}

/// A CSR that asks for another service's names (they must not be used).
fn greedy_csr(namespace: &str) -> Result<(String, rcgen::KeyPair)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(vec![format!("api-gateway.{namespace}.streamgate")])?;
    params.subject_alt_names.push(rcgen::SanType::URI(
        format!("spiffe://streamgate/ns/{namespace}/sa/api-gateway")
            .as_str()
            .try_into()?,
    ));
    Ok((params.serialize_request(&key)?.pem()?, key))
}

/// The SANs of a PEM certificate, as x509-parser prints them.
fn names(pem: &str) -> Result<Vec<String>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let sans = cert.subject_alternative_name()?.context("no SANs")?;
    Ok(sans
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect())
}

fn pod(name: &str, account: &str, service: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{streamgate.io/service: {service}}}}}\n\
         spec:\n  serviceAccountName: {account}\n  containers: [{{name: app, image: registry.example.com/app:1}}]\n"
    )
}

fn token(env: &TestEnv, namespace: &str, account: &str, extra: &[&str]) -> Result<String> {
    let mut args = vec![
        "create",
        "token",
        account,
        "-n",
        namespace,
        "--duration",
        "10m",
    ];
    args.extend_from_slice(extra);
    Ok(env.platform.info.kubectl(&args, None)?.trim().to_string())
}

/// A token of `account` for audience `streamgate`, bound to `pod`: what the kubelet
/// projects into a pod for its sidecar.
fn bound_token(env: &TestEnv, namespace: &str, account: &str, pod: &str) -> Result<String> {
    let bound = [
        "--audience",
        "streamgate",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod,
    ];
    token(env, namespace, account, &bound)
}

/// The test's platform, an operator serving its identity endpoint on loopback (with
/// `extra` flags), and a client of that endpoint.
async fn operator_and_endpoint(
    name: &str,
    extra: &[&str],
) -> Result<(TestEnv, Operator, Endpoint)> {
    let env = TestEnv::new(name).await?;
    let home = format!("{}-sys", env.namespace);
    let kubeconfig = operator_kubeconfig_in(&env, &home).await?;
    let (mut args, url) = webhook_flags(&env, "127.0.0.1")?;
    args.extend(extra.iter().map(|s| s.to_string()));
    let operator = Operator::start_in(&env, &kubeconfig, name, &home, &args).await?;
    let endpoint = Endpoint::new(&env, &home, url).await?;
    Ok((env, operator, endpoint))
}

#[tokio::test]
async fn a_certificate_names_only_what_a_pod_bound_token_proves() -> Result<()> {
    let (env, _operator, endpoint) = operator_and_endpoint("identity", &[]).await?;
    let ns = env.namespace.clone();

    env.kubectl(&["create", "serviceaccount", "worker"], None)?;
    env.kubectl(&["create", "-f", "-"], Some(&pod("w1", "worker", "worker")))?;
    let (csr, _key) = greedy_csr(&ns)?;

    // A pod-bound token for our audience: the certificate names the token's namespace,
    // account and the pod's service, whatever the request asked for.
    let good = bound_token(&env, &ns, "worker", "w1")?;
    let (status, body) = endpoint.issue(Some(&good), &csr).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        names(body["certificate"].as_str().unwrap_or_default())?,
        [
            format!("DNSName(worker.{ns}.streamgate)"),
            format!("URI(spiffe://streamgate/ns/{ns}/sa/worker)"),
        ]
    );
    assert!(
        body["trustBundle"]
            .as_str()
            .is_some_and(|b| b.contains("BEGIN CERTIFICATE"))
    );

    // No token, a token for the API server's audience, a token bound to no pod: refused.
    let (status, body) = endpoint.issue(None, &csr).await?;
    assert_eq!(status, 401, "{body}");
    let api_audience = token(
        &env,
        &ns,
        "worker",
        &["--bound-object-kind", "Pod", "--bound-object-name", "w1"],
    )?;
    let (status, body) = endpoint.issue(Some(&api_audience), &csr).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("audience streamgate"), "{body}");
    let unbound = token(&env, &ns, "worker", &["--audience", "streamgate"])?;
    let (status, body) = endpoint.issue(Some(&unbound), &csr).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("not bound to a pod"), "{body}");

    // A forged label: a pod that claims a StreamGateService's name but does not run as
    // its account gets nothing.
    env.kubectl(
        &["apply", "-f", "-"],
        Some("apiVersion: streamgate.io/v1alpha1\nkind: StreamGateService\nmetadata: {name: vault}\nspec: {image: registry.example.com/vault:1, port: 8080}\n"),
    )?;
    env.kubectl(
        &["create", "-f", "-"],
        Some(&pod("forger", "worker", "vault")),
    )?;
    let forged = bound_token(&env, &ns, "worker", "forger")?;
    let (status, body) = endpoint.issue(Some(&forged), &csr).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("vault"), "{body}");

    // Another namespace's pod, outside the operator's scope: refused, naming it.
    let other = format!("{ns}-other");
    env.platform
        .info
        .kubectl(&["create", "namespace", &other], None)?;
    env.platform.info.kubectl(
        &["create", "-n", &other, "-f", "-"],
        Some(&pod("o1", "default", "worker")),
    )?;
    let foreign = bound_token(&env, &other, "default", "o1")?;
    let (status, body) = endpoint.issue(Some(&foreign), &csr).await?;
    let _ = env
        .platform
        .info
        .kubectl(&["delete", "namespace", &other, "--wait=false"], None);
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains(&other), "{body}");

    // A request that is not a CSR: a clear 400.
    let (status, body) = endpoint.issue(Some(&good), "not a csr").await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("CSR"), "{body}");

    // The pod gone, its token is worth nothing.
    env.kubectl(
        &[
            "delete",
            "pod",
            "w1",
            "--wait=true",
            "--grace-period=0",
            "--force",
        ],
        None,
    )?;
    let (status, body) = eventually("the deleted pod's token refused", TIMEOUT, || async {
        let (status, body) = endpoint.issue(Some(&good), &csr).await?;
        Ok((status != 200).then_some((status, body)))
    })
    .await?;
    assert_eq!(status, 403, "{body}");
    Ok(())
}

/// A pod (on a kwok node) for a sidecar run here as a process, and its bound token in a
/// file: what the kubelet would project into the pod.
async fn sidecar_pod(env: &TestEnv, dir: &Path, account: &str, service: &str) -> Result<PathBuf> {
    env.kubectl(&["create", "serviceaccount", account], None)?;
    env.kubectl(
        &["create", "-f", "-"],
        Some(&pod(service, account, service)),
    )?;
    let file = dir.join(format!("{service}.token"));
    std::fs::write(&file, bound_token(env, &env.namespace, account, service)?)?;
    Ok(file)
}

/// A sidecar that gets its identity from the operator at `endpoint` (strict mode).
fn issued_options(
    env: &TestEnv,
    service: &str,
    app: std::net::SocketAddr,
    endpoint: &Endpoint,
    token: &Path,
) -> Result<SidecarOptions> {
    issued_options_in_mode(env, service, app, endpoint, token, "strict")
}

fn issued_options_in_mode(
    env: &TestEnv,
    service: &str,
    app: std::net::SocketAddr,
    endpoint: &Endpoint,
    token: &Path,
    mode: &str,
) -> Result<SidecarOptions> {
    let mut options = SidecarOptions::new(service, &pod_ip(), app, env.consul_addr());
    options.health = "{type: tcp, periodSeconds: 2, timeoutSeconds: 1}".into();
    options.pod_name = Some(service.to_string());
    options.extra = format!(
        "identity: {{endpoint: '{}', endpointCa: {}, mode: {mode}}}\n",
        endpoint.url,
        serde_json::to_string(&endpoint.ca)?
    );
    options.env.extend([
        ("POD_NAMESPACE".to_string(), env.namespace.clone()),
        (
            "STREAMGATE_IDENTITY_TOKEN_FILE".to_string(),
            token.display().to_string(),
        ),
    ]);
    Ok(options)
}

/// A sidecar's gauge, or 0 while it is not exported yet.
async fn gauge(sidecar: &Sidecar, name: &str) -> f64 {
    sidecar
        .metric(&format!("streamgate_sidecar_{name}"))
        .await
        .unwrap_or(0.0)
}

async fn wait_all(
    sidecars: &[&Sidecar],
    what: &str,
    test: impl Fn(f64) -> bool,
    name: &str,
) -> Result<()> {
    eventually(what, TIMEOUT, || async {
        for sidecar in sidecars {
            if !test(gauge(sidecar, name).await) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_strict_sidecar_serves_once_certified_and_a_ca_rotation_fails_no_call() -> Result<()> {
    const VALIDITY_S: f64 = 20.0;
    /// The operator's reload period with a 30 s webhook certificate (validity / 6).
    const RELOAD_S: f64 = 5.0;
    let extra = [
        "--workload-cert-validity",
        "20s",
        "--webhook-cert-validity",
        "30s",
    ];
    let (env, _operator, endpoint) = operator_and_endpoint("identity-rotation", &extra).await?;
    let ns = env.namespace.clone();
    let home = format!("{ns}-sys");
    let (server_name, client_name) = (env.unique("vault"), env.unique("teller"));
    let dir = log_dir(&server_name);

    // The server's sidecar starts before its token exists: not ready, saying why.
    let app = EchoServer::start("app", format!("{}:0", pod_ip()).parse()?).await?;
    let server_token = dir.join(format!("{server_name}.token"));
    let server = Sidecar::start(
        &dir,
        &issued_options(&env, &server_name, app.addr, &endpoint, &server_token)?,
    )?;
    let readyz = format!("http://{}/readyz", server.admin);
    let why = eventually("the server sidecar answers /readyz", TIMEOUT, || async {
        Ok(match http().get(&readyz).send().await {
            Ok(response) => Some((response.status().as_u16(), response.text().await?)),
            Err(_) => None,
        })
    })
    .await?;
    assert_eq!(why.0, 503, "{why:?}");
    let why = why.1;
    assert!(why.contains("no mTLS certificate"), "{why}");
    let issued = sidecar_pod(&env, &dir, "vault", &server_name).await?;
    assert_eq!(issued, server_token);
    server.wait_ready(TIMEOUT).await?;

    let client_token = sidecar_pod(&env, &dir, "teller", &client_name).await?;
    let nowhere: std::net::SocketAddr = format!("{}:{}", pod_ip(), free_port()?).parse()?;
    let mut client_options = issued_options(&env, &client_name, nowhere, &endpoint, &client_token)?;
    client_options.health = "{type: tcp, periodSeconds: 5}".into();
    let client = Sidecar::start(&dir, &client_options)?;
    wait_all(
        &[&server, &client],
        "both sidecars hold a certificate",
        |roots| roots == 1.0,
        "mtls_trust_roots",
    )
    .await?;

    // Steady, bounded load through both sidecars while the CA rotates.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", client.app_listen))?
        .origin(format!("http://{server_name}").parse()?)
        .connect_lazy();
    let echo = EchoClient::new(channel);
    let first = eventually("the first call over mTLS", TIMEOUT, || {
        let mut echo = echo.clone();
        async move {
            Ok(echo
                .unary(EchoRequest {
                    payload: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .ok())
        }
    })
    .await?;
    assert_eq!(first.into_inner().metadata["streamgate-caller"], "teller");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn({
        let echo = echo.clone();
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // At most 50 calls a second for at most 3 minutes.
            for _ in 0..9_000 {
                if *stopped.borrow() {
                    break;
                }
                let mut echo = echo.clone();
                match echo
                    .unary(EchoRequest {
                        payload: b"x".to_vec(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(status) => failed.push(status.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });

    // 1. The new CA joins the trust bundle; every sidecar learns it at its next renewal.
    let secrets: Api<Secret> = Api::namespaced(env.client(), &home);
    let old = ca_ca::issuer_from(&secrets.get("streamgate-identity-ca").await?)
        .map_err(anyhow::Error::msg)?;
    let (new_cert, new_key) = streamgate_operator::webhook::certs::new_ca()?;
    let patch = |data: serde_json::Value| {
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    "streamgate-identity-ca",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({ "stringData": data })),
                )
                .await
        }
    };
    patch(json!({ "bundle.pem": new_cert })).await?;
    wait_all(
        &[&server, &client],
        "both sidecars trust both roots",
        |roots| roots == 2.0,
        "mtls_trust_roots",
    )
    .await?;

    // 2. The new CA issues, the old one stays trusted.
    patch(json!({ "tls.crt": new_cert, "tls.key": new_key, "bundle.pem": old.cert })).await?;
    let swapped = unix_now();
    wait_all(
        &[&server, &client],
        "both sidecars hold a certificate of the new CA",
        |expiry| expiry >= swapped + RELOAD_S + VALIDITY_S,
        "mtls_certificate_expiry_timestamp_seconds",
    )
    .await?;

    // 3. The old CA leaves the bundle.
    patch(json!({ "bundle.pem": "" })).await?;
    wait_all(
        &[&server, &client],
        "both sidecars trust the new root only",
        |roots| roots == 1.0,
        "mtls_trust_roots",
    )
    .await?;
    // One more renewal each under the new bundle alone.
    let dropped = unix_now();
    wait_all(
        &[&server, &client],
        "a renewal under the new root alone",
        |expiry| expiry >= dropped + VALIDITY_S,
        "mtls_certificate_expiry_timestamp_seconds",
    )
    .await?;

    // Anyone who can write to Consul can claim an instance speaks plaintext; a strict
    // caller dials it with mTLS all the same (over plaintext the mTLS-only server would
    // refuse it, and calls would fail).
    let inbound = server.inbound;
    let spoof = json!({
        "ID": format!("{server_name}-spoofed"),
        "Name": server_name,
        "Address": inbound.ip().to_string(),
        "Port": inbound.port(),
        "Meta": {"k8s-namespace": ns, "streamgate-inbound": "plain"},
    });
    http()
        .put(format!("{}/v1/agent/service/register", env.consul_addr()))
        .json(&spoof)
        .send()
        .await?
        .error_for_status()?;
    eventually("the spoofed instance is passing", TIMEOUT, || async {
        let url = format!(
            "{}/v1/health/service/{server_name}?passing=true",
            env.consul_addr()
        );
        let instances: Vec<serde_json::Value> = http().get(&url).send().await?.json().await?;
        Ok((instances.len() == 2).then_some(()))
    })
    .await?;
    // A plaintext dial would fail and be retried on the other instance: no retry at all
    // shows every call went where it was sent, over mTLS.
    let retries = format!("streamgate_sidecar_forward_retries_total{{upstream=\"{server_name}\"}}");
    let retried_before = client.metric(&retries).await?;
    for _ in 0..40 {
        let mut echo = echo.clone();
        let reply = echo
            .unary(EchoRequest {
                payload: b"x".to_vec(),
                ..Default::default()
            })
            .await?;
        assert_eq!(reply.into_inner().metadata["streamgate-caller"], "teller");
    }
    assert_eq!(
        client.metric(&retries).await?,
        retried_before,
        "calls were retried"
    );

    let _ = stop.send(true);
    let (ok, failed) = load.await?;
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} calls");
    Ok(())
}

#[tokio::test]
async fn permissive_mode_also_takes_plaintext_but_never_for_allowed_callers() -> Result<()> {
    let (env, _operator, endpoint) = operator_and_endpoint("identity-permissive", &[]).await?;
    let (open_name, guarded_name) = (env.unique("open"), env.unique("guarded"));
    let dir = log_dir(&open_name);
    let mut servers = Vec::new();
    for (name, extra) in [
        (&open_name, ""),
        (&guarded_name, "  allowedCallers: [nobody]\n"),
    ] {
        let app = EchoServer::start("app", format!("{}:0", pod_ip()).parse()?).await?;
        let token = sidecar_pod(&env, &dir, name, name).await?;
        let mut options =
            issued_options_in_mode(&env, name, app.addr, &endpoint, &token, "permissive")?;
        options.service_extra = extra.into();
        let sidecar = Sidecar::start(&dir, &options)?;
        sidecar.wait_ready(TIMEOUT).await?;
        servers.push((sidecar, app));
    }
    // A plaintext HTTP/2 caller (a seed-style service) straight to the inbound port.
    let plaintext = |sidecar: &Sidecar| {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", sidecar.inbound)).map(
                |e| {
                    e.connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(5))
                },
            );
        async move {
            let mut echo = EchoClient::new(endpoint?.connect_lazy());
            let request = EchoRequest {
                payload: b"x".to_vec(),
                ..Default::default()
            };
            anyhow::Ok(echo.unary(request).await)
        }
    };
    let open = plaintext(&servers[0].0).await?;
    assert!(
        open.is_ok(),
        "the permissive service takes plaintext: {open:?}"
    );
    // With allowedCallers the plaintext caller is only a header: refused.
    let guarded = plaintext(&servers[1].0).await?;
    assert!(
        guarded.is_err(),
        "a plaintext caller reached a service with allowedCallers"
    );
    // mTLS still works on the same port: a strict client calls the open service.
    let client_name = env.unique("client");
    let token = sidecar_pod(&env, &dir, &client_name, &client_name).await?;
    let nowhere: std::net::SocketAddr = format!("{}:{}", pod_ip(), free_port()?).parse()?;
    let mut options = issued_options(&env, &client_name, nowhere, &endpoint, &token)?;
    options.health = "{type: tcp, periodSeconds: 5}".into();
    let client = Sidecar::start(&dir, &options)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", client.app_listen))?
        .origin(format!("http://{open_name}").parse()?)
        .connect_lazy();
    let echo = EchoClient::new(channel);
    let reply = eventually(
        "a call over mTLS to the permissive service",
        TIMEOUT,
        || {
            let mut echo = echo.clone();
            async move {
                let request = EchoRequest {
                    payload: b"x".to_vec(),
                    ..Default::default()
                };
                Ok(echo.unary(request).await.ok())
            }
        },
    )
    .await?;
    assert_eq!(
        reply.into_inner().metadata["streamgate-caller"],
        client_name
    );
    Ok(())
}
