//! `streamgate check`: is the install healthy? Each check is one line, with the fix when
//! it fails. Every check runs even when another fails (a missing CRD does not hide a
//! NATS outage). Exit 0: all passed; 1: some failed; 3: no cluster to check.

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::{CustomResourceExt, Resource};
use serde::Serialize;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use streamgate_crds::StreamGateService;

use crate::output::{Format, print};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The operator's namespace (the chart's release namespace).
    #[arg(long, default_value = "streamgate-system")]
    pub operator_namespace: String,
    /// The operator's Deployment and leader Lease.
    #[arg(long, default_value = "streamgate-operator")]
    pub operator_name: String,
    /// The MutatingWebhookConfiguration the operator maintains.
    #[arg(long, default_value = "streamgate-sidecar-injector")]
    pub webhook_config_name: String,
    /// Consul to check (default: the operator's CONSUL_HTTP_ADDR).
    #[arg(long)]
    pub consul_address: Option<String>,
    /// NATS to check (default: the operator's NATS_URL).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// A NATS credentials directory (`creds`, `nkey`, `token`, or `username` and
    /// `password` files, and `ca.crt`), as the sidecars and the operator read one.
    #[arg(long, env = "STREAMGATE_NATS_CREDENTIALS_DIR")]
    pub nats_credentials_dir: Option<std::path::PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// One check's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

pub fn main(args: CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("streamgate check: {e}");
            return ExitCode::from(3);
        }
    };
    let checks = match runtime.block_on(run(&args)) {
        Ok(checks) => checks,
        Err(e) => {
            eprintln!("streamgate check: {e:#}");
            return ExitCode::from(3);
        }
    };
    let healthy = checks.iter().all(|c| c.ok);
    if let Err(e) = print(&checks, args.output, |c: &Vec<Check>| table(c)) {
        eprintln!("streamgate check: {e:#}");
        return ExitCode::from(3);
    }
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn table(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        out.push_str(&format!("{mark}  {:width$}  {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      {:width$}  fix: {fix}\n", ""));
        }
    }
    out
}

async fn run(args: &CheckArgs) -> Result<Vec<Check>> {
    let client = kube::Client::try_default()
        .await
        .context("no cluster to check (KUBECONFIG or in-cluster)")?;
    let operator: Api<Deployment> = Api::namespaced(client.clone(), &args.operator_namespace);
    let deployment = operator.get_opt(&args.operator_name).await?;
    let env = |name: &str| operator_env(deployment.as_ref(), name);
    let consul = args
        .consul_address
        .clone()
        .or_else(|| env("CONSUL_HTTP_ADDR"));
    let nats = args.nats_url.clone().or_else(|| env("NATS_URL"));
    Ok(vec![
        crd(&client).await,
        operator_ready(args, deployment.as_ref()),
        leader(&client, args).await,
        webhook(&client, args).await,
        consul_check(consul.as_deref()).await,
        nats_check(
            &client,
            nats.as_deref(),
            args.nats_credentials_dir.as_deref(),
        )
        .await,
        sidecar_versions(&client, args, deployment.as_ref()).await,
    ])
}

/// The operator's container in its Deployment.
fn operator_container(deployment: Option<&Deployment>) -> Option<&Container> {
    deployment?
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()
}

/// A variable of the operator's container.
fn operator_env(deployment: Option<&Deployment>, name: &str) -> Option<String> {
    operator_container(deployment)?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// A `--flag=value` argument of the operator's container.
fn operator_flag(deployment: Option<&Deployment>, flag: &str) -> Option<String> {
    let prefix = format!("--{flag}=");
    operator_container(deployment)?
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

async fn crd(client: &kube::Client) -> Check {
    const NAME: &str = "crd";
    let expected = StreamGateService::crd();
    let crd_name = expected.meta().name.clone().unwrap_or_default();
    let fix = "streamgate-operator crd | kubectl apply --server-side -f -  (or helm upgrade)";
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(&crd_name).await {
        Ok(Some(installed)) => {
            let schema = |crd: &CustomResourceDefinition| {
                crd.spec
                    .versions
                    .iter()
                    .map(|v| (v.name.clone(), serde_json::to_value(&v.schema).ok()))
                    .collect::<Vec<_>>()
            };
            if schema(&installed) == schema(&expected) {
                Check::pass(NAME, format!("{crd_name} installed and current"))
            } else {
                Check::fail(
                    NAME,
                    format!("{crd_name} is installed but differs from this version's"),
                    fix,
                )
            }
        }
        Ok(None) => Check::fail(NAME, format!("{crd_name} is not installed"), fix),
        Err(e) => Check::fail(
            NAME,
            format!("reading {crd_name}: {e}"),
            "check KUBECONFIG and your RBAC",
        ),
    }
}

fn operator_ready(args: &CheckArgs, deployment: Option<&Deployment>) -> Check {
    const NAME: &str = "operator";
    let at = format!(
        "deployment/{} in {}",
        args.operator_name, args.operator_namespace
    );
    let Some(deployment) = deployment else {
        return Check::fail(
            NAME,
            format!("{at} not found"),
            "helm install streamgate charts/streamgate -n <namespace> (or pass --operator-namespace)",
        );
    };
    let want = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if ready >= 1 {
        Check::pass(NAME, format!("{at}: {ready}/{want} ready"))
    } else {
        Check::fail(
            NAME,
            format!("{at}: 0/{want} ready: no pod can be created where injection is requested"),
            format!(
                "kubectl -n {ns} scale deployment/{name} --replicas=2; if it does not become ready: kubectl -n {ns} describe pods -l app.kubernetes.io/name={name}",
                ns = args.operator_namespace,
                name = args.operator_name
            ),
        )
    }
}

async fn leader(client: &kube::Client, args: &CheckArgs) -> Check {
    const NAME: &str = "leader";
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.operator_namespace);
    let fix = format!(
        "the operator's pods hold no fresh lease: kubectl -n {} logs deployment/{}",
        args.operator_namespace, args.operator_name
    );
    let lease = match leases.get_opt(&args.operator_name).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return Check::fail(NAME, "no leader lease yet", fix),
        Err(e) => return Check::fail(NAME, format!("reading the lease: {e}"), fix),
    };
    let spec = lease.spec.unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.map(|t| t.0.as_second());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    match (holder, renewed) {
        (Some(holder), Some(renewed)) if renewed + duration >= now => Check::pass(
            NAME,
            format!("{holder} leads (renewed {}s ago)", now - renewed),
        ),
        (Some(holder), _) => Check::fail(
            NAME,
            format!("{holder} held the lease but stopped renewing it"),
            fix,
        ),
        (None, _) => Check::fail(NAME, "nobody holds the leader lease", fix),
    }
}

async fn webhook(client: &kube::Client, args: &CheckArgs) -> Check {
    const NAME: &str = "webhook";
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let fix = format!(
        "the operator registers it when it starts: kubectl -n {} logs deployment/{}",
        args.operator_namespace, args.operator_name
    );
    let config = match configs.get_opt(&args.webhook_config_name).await {
        Ok(Some(config)) => config,
        Ok(None) => {
            return Check::fail(
                NAME,
                format!(
                    "mutatingwebhookconfiguration/{} not found",
                    args.webhook_config_name
                ),
                fix,
            );
        }
        Err(e) => return Check::fail(NAME, format!("reading it: {e}"), fix),
    };
    let Some(hook) = config.webhooks.as_ref().and_then(|w| w.first()) else {
        return Check::fail(NAME, "the configuration has no webhook", fix);
    };
    let bundle = hook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let expiry = match crate::pem::not_after(&bundle) {
        Ok(expiry) => expiry,
        Err(reason) => return Check::fail(NAME, format!("caBundle: {reason}"), fix),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    if expiry <= now {
        return Check::fail(NAME, "its CA certificate has expired", fix);
    }
    let Some(service) = &hook.client_config.service else {
        return Check::pass(NAME, "registered (URL endpoint), CA valid");
    };
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &service.namespace);
    let listed = slices
        .list(
            &ListParams::default().labels(&format!("kubernetes.io/service-name={}", service.name)),
        )
        .await;
    let ready = match listed {
        Ok(list) => list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .count(),
        Err(e) => return Check::fail(NAME, format!("reading the endpoints: {e}"), fix),
    };
    if ready == 0 {
        return Check::fail(
            NAME,
            format!(
                "service/{} has no ready endpoint: pods asking for injection are refused",
                service.name
            ),
            format!(
                "start the operator: kubectl -n {} scale deployment/{} --replicas=2",
                args.operator_namespace, args.operator_name
            ),
        );
    }
    Check::pass(
        NAME,
        format!(
            "service/{} has {ready} ready endpoint(s), CA valid for {} more days",
            service.name,
            (expiry - now) / 86_400
        ),
    )
}

async fn consul_check(address: Option<&str>) -> Check {
    use streamgate_consul::http::{ConsulHttp, Timeouts};
    use streamgate_consul::registry::{AgentKind, detect_agent};
    const NAME: &str = "consul";
    let Some(address) = address else {
        return Check::fail(NAME, "no Consul address", "pass --consul-address");
    };
    let fix = format!("start Consul or check the address {address} (--consul-address)");
    let timeouts = Timeouts {
        connect: Duration::from_secs(3),
        call: Duration::from_secs(5),
    };
    let token = std::env::var("CONSUL_HTTP_TOKEN").ok();
    let http = match ConsulHttp::new(address, token, timeouts) {
        Ok(http) => http,
        Err(e) => return Check::fail(NAME, e.to_string(), fix),
    };
    let leader = match http.get("/v1/status/leader").await {
        Ok(answer) => String::from_utf8_lossy(&answer.body)
            .trim()
            .trim_matches('"')
            .to_string(),
        Err(e) => return Check::fail(NAME, format!("{address}: {e}"), fix),
    };
    if leader.is_empty() {
        return Check::fail(
            NAME,
            format!("{address} answers but has no leader"),
            "check the Consul servers' quorum",
        );
    }
    let mode = match detect_agent(&http).await {
        Ok(AgentKind::Local) => "a local agent answers: sidecars in auto mode register through it",
        Ok(AgentKind::NoLocalAgent) => {
            "no local agent: sidecars in auto mode register in the catalog"
        }
        Err(_) => "agent API unreadable: sidecars in auto mode register in the catalog",
    };
    Check::pass(NAME, format!("{address}: leader {leader}; {mode}"))
}

async fn nats_check(
    client: &kube::Client,
    url: Option<&str>,
    credentials: Option<&std::path::Path>,
) -> Check {
    use streamgate_nats::streams::captures;
    const NAME: &str = "nats";
    let Some(url) = url else {
        return Check::fail(NAME, "no NATS URL", "pass --nats-url");
    };
    let fix = format!("start NATS with JetStream, or check the URL {url} (--nats-url)");
    let js = match crate::nats::connect(url, credentials).await {
        Ok(js) => js,
        Err(e) => return Check::fail(NAME, e, fix),
    };
    if let Err(e) = js.query_account().await {
        return Check::fail(
            NAME,
            format!("{url}: JetStream: {e}"),
            "enable JetStream on the server (-js)",
        );
    }
    let existing: Result<Vec<_>, _> = {
        use futures::TryStreamExt;
        js.streams().map_ok(|i| i.config).try_collect().await
    };
    let existing = match existing {
        Ok(existing) => existing,
        Err(e) => return Check::fail(NAME, format!("listing streams: {e}"), fix),
    };
    let services: Api<StreamGateService> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let declared = async {
        let services = services.list(&ListParams::default()).await?;
        let pods = pods
            .list_metadata(
                &ListParams::default().labels(streamgate_operator::labels::SERVICE_LABEL),
            )
            .await?;
        anyhow::Ok(streamgate_operator::streams::declared(
            &services.items.into_iter().map(Arc::new).collect::<Vec<_>>(),
            &pods.items.into_iter().map(Arc::new).collect::<Vec<_>>(),
        ))
    };
    let subjects = match declared.await {
        Ok(subjects) => subjects,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("reading what services declare: {e:#}"),
                "check your RBAC",
            );
        }
    };
    let count = subjects.events.len() + subjects.dead_letters.len();
    let missing: Vec<String> = subjects
        .all()
        .into_iter()
        .filter(|s| {
            !existing
                .iter()
                .any(|c| c.subjects.iter().any(|f| captures(f, s)))
        })
        .collect();
    match missing.first() {
        None => Check::pass(
            NAME,
            format!("{url}: JetStream on; streams capture all {count} declared subject(s)"),
        ),
        Some(first) => Check::fail(
            NAME,
            format!(
                "{url}: {} of {count} declared subject(s) captured by no stream, e.g. {first}",
                missing.len()
            ),
            "the operator creates the streams: see its log and streamgate_operator_streams_in_sync",
        ),
    }
}

async fn sidecar_versions(
    client: &kube::Client,
    args: &CheckArgs,
    deployment: Option<&Deployment>,
) -> Check {
    const NAME: &str = "sidecars";
    let expected = operator_flag(deployment, "sidecar-image")
        .or_else(|| operator_env(deployment, "STREAMGATE_SIDECAR_IMAGE"));
    let Some(expected) = expected else {
        return Check::fail(
            NAME,
            "the operator's sidecar image is unknown",
            format!("is deployment/{} installed?", args.operator_name),
        );
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let list = match pods
        .list(&ListParams::default().labels(streamgate_operator::labels::SERVICE_LABEL))
        .await
    {
        Ok(list) => list,
        Err(e) => return Check::fail(NAME, format!("listing pods: {e}"), "check your RBAC"),
    };
    let mut stale = Vec::new();
    let mut total = 0;
    for pod in &list.items {
        let image = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .find(|c| c.name == streamgate_operator::render::SIDECAR_NAME)
            .and_then(|c| c.image.clone());
        let Some(image) = image else { continue };
        total += 1;
        if image != expected {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            stale.push(format!("{ns}/{name} ({image})"));
        }
    }
    if stale.is_empty() {
        return Check::pass(NAME, format!("{total} sidecar(s), all {expected}"));
    }
    let shown: Vec<_> = stale.iter().take(5).cloned().collect();
    Check::fail(
        NAME,
        format!(
            "{} of {total} sidecar(s) are not {expected}: {}",
            stale.len(),
            shown.join(", ")
        ),
        "roll them: kubectl rollout restart deployment/<name> -n <namespace> (StreamGateServices roll by themselves after an operator upgrade)",
    )
}
