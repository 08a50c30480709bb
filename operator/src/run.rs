//! `streamgate-operator run`: wires the client, metrics server, leader election, the
//! controller and the ghost sweep, and shuts them down gracefully on SIGTERM.

use crate::cli::{LogFormat, RunArgs};
use crate::consul::Consul;
use crate::known::Known;
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};
use crate::sidecar_defaults::{SidecarDefaults, SidecarIdentity};
use crate::webhook::Webhook;
use crate::written::WrittenStatuses;
use anyhow::{Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::{Controller, WatchStreamExt, controller, watcher};
use prometheus_client::registry::Registry;
use std::process::ExitCode;
use std::sync::Arc;
use streamgate_crds::StreamGateService;
use tokio::sync::watch;
use tracing::{error, info};

pub fn main(args: RunArgs) -> ExitCode {
    init_tracing(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamgate-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            error!(error = format!("{e:#}"), "operator failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().with_current_span(true).init();
    } else {
        use std::io::IsTerminal;
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    args.streams.check().map_err(anyhow::Error::msg)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let identity = replica_identity(&args);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let traces =
        streamgate_telemetry::Traces::from_env("streamgate-operator", metrics.traces.clone())?;
    let ready = serve_metrics(&args, registry).await?;
    let cluster = cluster_id(&args, &client).await?;
    let consul = consul_client(&args, &cluster)?;
    let (deployment_cache, deployment_writer) = reflector::store::<Deployment>();
    let (service_cache, service_writer) = reflector::store::<Service>();
    let (policy_cache, policy_writer) = reflector::store::<NetworkPolicy>();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "streamgate-operator".into(),
                instance: Some(identity.clone()),
            },
        ),
        consul: consul.clone(),
        instances: crate::consul_watch::InstanceWatch::new(consul.clone()),
        metrics: metrics.clone(),
        sidecar_defaults: sidecar_defaults(&args, &cluster, &client).await,
        deployments: Known::new(deployment_cache),
        services: Known::new(service_cache),
        network_policies: Known::new(policy_cache),
        statuses: WrittenStatuses::default(),
        failures: Default::default(),
        resync_ready: args.timing.resync_ready,
        resync_not_ready: args.timing.resync_not_ready,
        traces,
    });
    start_webhook(
        &args,
        &client,
        &ctx.sidecar_defaults,
        ready,
        &ctx.recorder,
        &metrics,
    );
    let caches = Caches {
        deployments: deployment_writer,
        services: service_writer,
        network_policies: policy_writer,
    };
    Ok(elect_and_lead(&args, &identity, ctx, caches).await)
}

/// Stands by until this replica holds the Lease, then runs the leader's tasks until
/// SIGTERM (exit 0, the Lease released) or the Lease is lost (exit 1, so a fresh
/// process stands by).
async fn elect_and_lead(
    args: &RunArgs,
    identity: &str,
    ctx: Arc<Context>,
    caches: Caches,
) -> ExitCode {
    let (client, consul, metrics) = (ctx.client.clone(), ctx.consul.clone(), ctx.metrics.clone());
    let mut shutdown = Box::pin(shutdown_signal());
    let elector = args.leader.leader_election.then(|| {
        LeaderElector::new(
            client.clone(),
            LeaseConfig {
                namespace: args.leader.lease_namespace.clone(),
                name: args.leader.lease_name.clone(),
                identity: identity.to_string(),
                lease_duration: args.leader.lease_duration,
                renew_every: args.leader.lease_renew,
            },
        )
    });
    let (leader_tx, mut leader_rx) = watch::channel(elector.is_none());
    let mut election = Box::pin(async {
        match &elector {
            Some(elector) => elector.run(leader_tx).await,
            None => std::future::pending().await,
        }
    });

    info!(%identity, "waiting to become the leader");
    tokio::select! {
        _ = &mut shutdown => {
            info!("stopping before becoming the leader");
            return ExitCode::SUCCESS;
        }
        _ = leader_rx.wait_for(|leading| *leading) => {}
        // The election future only returns after leadership was held and lost.
        _ = &mut election => return ExitCode::FAILURE,
    }
    metrics.leader.set(1);
    info!(%identity, "leading: starting the controller and the ghost sweep");

    // Dropped (and so stopped) with this function when leadership ends.
    let _streams = args.streams.manage_streams.then(|| {
        AbortOnDrop(tokio::spawn(crate::streams::run(
            client.clone(),
            args.namespace.clone(),
            streams_config(args),
            metrics.clone(),
            args.timing.resync_ready,
        )))
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let controller = run_controller(args, client.clone(), ctx.clone(), caches, stop_rx);
    let sweep = crate::sweep::run(
        client.clone(),
        consul,
        metrics.clone(),
        args.timing.sweep_interval,
        args.namespace.clone(),
    );
    let code = tokio::select! {
        _ = &mut shutdown => {
            info!("SIGTERM: draining the controller");
            let _ = stop_tx.send(true);
            ExitCode::SUCCESS
        }
        _ = &mut election => {
            error!("lost the leader lease; exiting so a fresh process can stand by");
            let _ = stop_tx.send(true);
            return ExitCode::FAILURE;
        }
        _ = sweep => ExitCode::FAILURE,
        _ = controller => ExitCode::SUCCESS,
    };
    if let Some(elector) = &elector {
        elector.release().await;
    }
    metrics.leader.set(0);
    if let Some(traces) = ctx.traces.clone() {
        // The last reconciles' spans; blocking (the exporter's thread), so off the workers.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    code
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The name this replica holds the lease under: `--identity`, else host and PID.
fn replica_identity(args: &RunArgs) -> String {
    args.leader.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz`; readiness follows the returned sender.
async fn serve_metrics(args: &RunArgs, registry: Registry) -> Result<watch::Sender<bool>> {
    let (ready_tx, ready_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", args.metrics_listen))?;
    let router = crate::server::router(Arc::new(registry), ready_rx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            error!(error = %e, "metrics server stopped");
        }
    });
    Ok(ready_tx)
}

/// `--cluster-id`, else the kube-system namespace's UID: stable for the cluster's life
/// and different in every cluster, so clusters sharing one Consul tell their instances
/// apart without anyone choosing names.
async fn cluster_id(args: &RunArgs, client: &kube::Client) -> Result<String> {
    match &args.consul.cluster_id {
        Some(id) => checked_cluster_id(id),
        None => kube_system_uid(client).await,
    }
}

/// A `--cluster-id` given by hand, checked.
pub fn checked_cluster_id(id: &str) -> Result<String> {
    anyhow::ensure!(
        streamgate_consul::contract::is_valid_cluster_id(id),
        "--cluster-id {id:?} is not 1-63 letters, digits, '.', '_' or '-'"
    );
    Ok(id.to_string())
}

/// The default cluster id: the kube-system namespace's UID (also `streamgate inject`'s).
pub async fn kube_system_uid(client: &kube::Client) -> Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let kube_system = namespaces.get("kube-system").await.context(
        "reading the kube-system namespace's UID for the cluster id (or set --cluster-id)",
    )?;
    kube_system
        .metadata
        .uid
        .filter(|uid| streamgate_consul::contract::is_valid_cluster_id(uid))
        .context("the kube-system namespace has no UID to use as the cluster id; set --cluster-id")
}

fn consul_client(args: &RunArgs, cluster: &str) -> Result<Consul> {
    let token = match &args.consul.consul_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --consul-token-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => args.consul.consul_token.clone(),
    };
    Ok(Consul::new(&args.consul.consul_address, token, cluster)?)
}

/// What every rendered sidecar gets from the operator's flags, and the identity
/// endpoint when this operator serves one (beside its webhook).
async fn sidecar_defaults(args: &RunArgs, cluster: &str, client: &kube::Client) -> SidecarDefaults {
    let mut defaults = SidecarDefaults::from_flags(
        &args.sidecar,
        &args.streams,
        &args.consul.consul_address,
        cluster,
    );
    if args.webhook.webhook_listen.is_some() {
        defaults.identity = Some(SidecarIdentity {
            endpoint: identity_url(args, client).await,
            mode: crate::sidecar_defaults::mtls_mode(&args.sidecar.mtls_mode),
            ca: crate::identity::Authorities::default(),
        });
    }
    defaults
}

/// Where sidecars reach the identity endpoint: `--identity-url`, else `--webhook-url`,
/// else the webhook Service's cluster IP (stable for the Service's life, and reachable
/// without cluster DNS), else its DNS name.
async fn identity_url(args: &RunArgs, client: &kube::Client) -> String {
    let w = &args.webhook;
    if let Some(url) = w.identity_url.as_ref().or(w.webhook_url.as_ref()) {
        return url.trim_end_matches('/').to_string();
    }
    crate::identity::service_url(
        client,
        &args.leader.lease_namespace,
        &w.webhook_service,
        443,
    )
    .await
}

/// The operator's streams, from `--nats-url` and the `--stream-*` flags.
fn streams_config(args: &RunArgs) -> crate::streams::StreamsConfig {
    use streamgate_nats::streams::StreamSettings;
    let streams = &args.streams;
    crate::streams::StreamsConfig {
        nats_url: args.sidecar.nats_url.clone(),
        credentials_dir: streams.nats_credentials_dir.clone(),
        events: StreamSettings {
            max_age: streams.stream_max_age,
            max_bytes: streams.stream_max_bytes,
            duplicate_window: streams.stream_duplicate_window,
            replicas: streams.stream_replicas.into(),
        },
        dead_letters: StreamSettings {
            max_age: streams.dead_letter_max_age,
            max_bytes: streams.dead_letter_max_bytes,
            duplicate_window: streams.stream_duplicate_window,
            replicas: streams.stream_replicas.into(),
        },
    }
}

/// Every replica, leader or standby, serves the webhook (and the identity endpoint
/// beside it) and renews its certificate; the replica is ready once the webhook listens
/// (or at once when it serves none).
fn start_webhook(
    args: &RunArgs,
    client: &kube::Client,
    sidecar_defaults: &SidecarDefaults,
    ready: watch::Sender<bool>,
    recorder: &Recorder,
    metrics: &Metrics,
) {
    let (Some(listen), Some(identity)) = (args.webhook.webhook_listen, &sidecar_defaults.identity)
    else {
        let _ = ready.send(true);
        return;
    };
    let config = webhook_config(args, listen, identity.endpoint.clone());
    tokio::spawn(serve_webhook(
        client.clone(),
        config,
        sidecar_defaults.clone(),
        ready,
        recorder.clone(),
        metrics.clone(),
    ));
}

/// Prepares the webhook's certificates and registration, then serves. A Secret that
/// cannot be used (a broken CA someone wrote, an unreadable key) does not crash-loop the
/// replica: it stays not ready, says why (error log, a Warning Event on the Secret, the
/// `webhook_certificate_errors` counter) and tries again, 1 s doubling to 30 s, until the
/// Secret is fixed or deleted (a new CA is then made).
async fn serve_webhook(
    client: kube::Client,
    config: crate::webhook::WebhookConfig,
    sidecar_defaults: SidecarDefaults,
    ready: watch::Sender<bool>,
    recorder: Recorder,
    metrics: Metrics,
) {
    let period = crate::webhook::check_period(&config);
    let mut delay = std::time::Duration::from_secs(1);
    let mut last_error: Option<String> = None;
    let webhook = loop {
        let ca = sidecar_defaults
            .identity
            .as_ref()
            .map(|identity| identity.ca.clone())
            .unwrap_or_default();
        let prepared =
            Webhook::prepare(client.clone(), config.clone(), sidecar_defaults.clone(), ca);
        match prepared.await {
            Ok(webhook) => break webhook,
            Err(e) => {
                let message = format!("{e:#}");
                metrics.webhook_errors.inc();
                if last_error.as_ref() != Some(&message) {
                    error!(
                        secret = %config.secret_name,
                        error = %message,
                        "the injection webhook cannot start: this replica stays not ready and tries again; fix the Secret or delete it to have a new CA made"
                    );
                    report_on_secret(&recorder, &config, &message).await;
                    last_error = Some(message);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
        }
    };
    if last_error.is_some() {
        info!(secret = %config.secret_name, "the injection webhook's certificates are usable again");
    }
    tokio::spawn(webhook.renewal().run(period));
    let (listening_tx, listening_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if listening_rx.await.is_ok() {
            let _ = ready.send(true);
        }
    });
    if let Err(e) = webhook.serve(listening_tx).await {
        error!(error = format!("{e:#}"), "the injection webhook stopped");
        std::process::exit(1);
    }
}

/// A Warning Event on the webhook's Secret (`kubectl describe secret` shows it).
async fn report_on_secret(
    recorder: &Recorder,
    config: &crate::webhook::WebhookConfig,
    message: &str,
) {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::{Event, EventType};
    let reference = ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("Secret".to_string()),
        name: Some(config.secret_name.clone()),
        namespace: Some(config.operator_namespace.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "WebhookCertificatesUnusable".to_string(),
        note: Some(message.chars().take(1000).collect()),
        action: "PrepareWebhook".to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::debug!(error = %e, "could not record the Event");
    }
}

fn webhook_config(
    args: &RunArgs,
    listen: std::net::SocketAddr,
    identity_url: String,
) -> crate::webhook::WebhookConfig {
    use crate::webhook::registration::Endpoint;
    let w = &args.webhook;
    let operator_namespace = args.leader.lease_namespace.clone();
    crate::webhook::WebhookConfig {
        listen,
        endpoint: match &w.webhook_url {
            Some(url) => Endpoint::Url(url.clone()),
            None => Endpoint::Service {
                namespace: operator_namespace.clone(),
                name: w.webhook_service.clone(),
            },
        },
        registration_name: w.webhook_config_name.clone(),
        secret_name: w.webhook_secret.clone(),
        operator_namespace,
        failure_policy: w.webhook_failure_policy,
        timeout_seconds: w.webhook_timeout_seconds,
        cert_validity: w.webhook_cert_validity,
        only_namespace: args.namespace.clone(),
        identity_url,
        workload_cert_validity: w.workload_cert_validity,
        identity_ca_secret: w.identity_ca_secret.clone(),
    }
}

/// Writers of the owned-object caches the reconciler reads.
struct Caches {
    deployments: reflector::store::Writer<Deployment>,
    services: reflector::store::Writer<Service>,
    network_policies: reflector::store::Writer<NetworkPolicy>,
}

async fn run_controller(
    args: &RunArgs,
    client: kube::Client,
    ctx: Arc<Context>,
    caches: Caches,
    mut stop: watch::Receiver<bool>,
) {
    let (services, deployments, k8s_services, policies) = match &args.namespace {
        Some(ns) => (
            Api::<StreamGateService>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<NetworkPolicy>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::labels::MANAGED_BY_LABEL,
        crate::labels::MANAGED_BY_VALUE
    ));
    // The owned objects are watched once: the same streams fill the reconciler's caches
    // and trigger reconciles of their owners.
    // managedFields are most of an applied object's size and the reconciler never reads
    // them: dropping them before caching keeps the operator's memory small.
    let deployment_events = watcher(deployments, owned.clone())
        .default_backoff()
        .modify(|d| d.managed_fields_mut().clear())
        .reflect(caches.deployments)
        .touched_objects();
    let service_events = watcher(k8s_services, owned.clone())
        .default_backoff()
        .modify(|s| s.managed_fields_mut().clear())
        .reflect(caches.services)
        .touched_objects();
    let policy_events = watcher(policies, owned)
        .default_backoff()
        .modify(|p| p.managed_fields_mut().clear())
        .reflect(caches.network_policies)
        .touched_objects();
    let (resource_cache, resource_writer) = reflector::store::<StreamGateService>();
    let resource_events = watcher(services, watcher::Config::default())
        .default_backoff()
        .modify(|s| s.managed_fields_mut().clear())
        .reflect(resource_writer)
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default());
    Controller::for_stream(resource_events, resource_cache)
        .with_config(controller::Config::default().concurrency(args.max_concurrent_reconciles))
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(policy_events)
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Reconcile on what the operator acts on (the spec, finalizers, the start of deletion),
/// not on each of its own status writes; periodic requeues refresh the status.
fn spec_or_lifecycle(sgs: &StreamGateService) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    sgs.metadata.generation.hash(&mut hasher);
    sgs.metadata.finalizers.hash(&mut hasher);
    sgs.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
