//! `streamgate status [SERVICE]`: per StreamGateService its replicas and Ready condition
//! (API server), its Consul instances with their check output (Consul), its
//! subscriptions' consumer lag (NATS), and, from its sidecars' metrics read through the
//! API server's pod proxy, its upstreams' calls, errors, latency and breaker ejections
//! and its spool depth. A source that cannot be reached is said so, not fatal.
//! Exit 0: shown; 1: a named service does not exist; 3: no cluster.

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;
use streamgate_consul::health::{HealthEntry, service_path};
use streamgate_consul::http::{ConsulHttp, Timeouts};
use streamgate_crds::StreamGateService;
use streamgate_crds::contract::events::{consumer_name, subject};

use crate::output::{Format, print};
use crate::prometheus::Samples;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this StreamGateService (its resource name).
    pub service: Option<String>,
    /// The services' namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Services of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Consul to ask (default: CONSUL_HTTP_ADDR).
    #[arg(
        long,
        env = "CONSUL_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    pub consul_address: String,
    /// NATS to ask for consumer lag (default: NATS_URL).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// A NATS credentials directory (`creds`, `nkey`, `token`, or `username` and
    /// `password` files, and `ca.crt`), as the sidecars and the operator read one.
    #[arg(long, env = "STREAMGATE_NATS_CREDENTIALS_DIR")]
    pub nats_credentials_dir: Option<std::path::PathBuf>,
    /// Read each sidecar's metrics through the API server's pod proxy (upstreams, spool).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub sidecars: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub consul_name: String,
    pub replicas: i32,
    pub ready_replicas: i32,
    /// The Ready condition's message.
    pub ready: String,
    /// Consul's instances.
    pub instances: Vec<InstanceStatus>,
    /// Why Consul's instances could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances_error: Option<String>,
    pub upstreams: Vec<UpstreamStatus>,
    pub subscriptions: Vec<SubscriptionStatus>,
    /// Events waiting in the sidecars' spools (when read).
    pub spooled_events: Option<f64>,
    /// How many sidecars' metrics were read, of how many pods.
    pub sidecars: String,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub address: String,
    pub status: String,
    /// The output of its checks that are not passing.
    pub output: String,
}

#[derive(Debug, Serialize, Default)]
pub struct UpstreamStatus {
    pub service: String,
    pub calls: f64,
    /// Calls that ended with another code than OK.
    pub errors: f64,
    pub mean_latency_ms: Option<f64>,
    /// Instances the circuit breaker ejected so far.
    pub ejections: f64,
}

#[derive(Debug, Serialize)]
pub struct SubscriptionStatus {
    #[serde(rename = "type")]
    pub event_type: String,
    pub consumer: String,
    /// Events not yet delivered.
    pub pending: Option<u64>,
    /// Events delivered but not yet acknowledged.
    pub unacknowledged: Option<u64>,
    /// Why the lag is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn main(args: StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("streamgate status: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(services) if services.is_empty() && args.service.is_some() => {
            eprintln!(
                "streamgate status: no StreamGateService {} in {}",
                args.service.as_deref().unwrap_or_default(),
                args.namespace
            );
            ExitCode::FAILURE
        }
        Ok(services) => match print(&services, args.output, |s: &Vec<ServiceStatus>| table(s)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("streamgate status: {e:#}");
                ExitCode::from(3)
            }
        },
        Err(e) => {
            eprintln!("streamgate status: {e:#}");
            ExitCode::from(3)
        }
    }
}

async fn run(args: &StatusArgs) -> Result<Vec<ServiceStatus>> {
    let client = kube::Client::try_default()
        .await
        .context("no cluster (KUBECONFIG or in-cluster)")?;
    let api: Api<StreamGateService> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &args.namespace)
    };
    let mut services = api.list(&ListParams::default()).await?.items;
    if let Some(wanted) = &args.service {
        services.retain(|s| s.metadata.name.as_deref() == Some(wanted.as_str()));
    }
    let consul = ConsulHttp::new(
        &args.consul_address,
        std::env::var("CONSUL_HTTP_TOKEN").ok(),
        Timeouts {
            connect: Duration::from_secs(3),
            call: Duration::from_secs(5),
        },
    )?;
    let nats = crate::nats::connect(&args.nats_url, args.nats_credentials_dir.as_deref()).await;
    let mut out = Vec::new();
    for sgs in &services {
        out.push(service_status(&client, &consul, &nats, sgs, args.sidecars).await);
    }
    Ok(out)
}

async fn service_status(
    client: &kube::Client,
    consul: &ConsulHttp,
    nats: &Result<async_nats::jetstream::Context, String>,
    sgs: &StreamGateService,
    read_sidecars: bool,
) -> ServiceStatus {
    let namespace = sgs.metadata.namespace.clone().unwrap_or_default();
    let consul_name = sgs.consul_name();
    let status = sgs.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!("{}: {}", c.status, c.message))
        .unwrap_or_else(|| "not reported yet".into());
    let instances = instances(consul, &consul_name, &namespace).await;
    let mut subscriptions = Vec::new();
    for s in &sgs.spec.events.subscribe {
        let consumer = consumer_name(&consul_name, &s.event_type);
        let lag = match nats {
            Ok(js) => lag(js, &subject(&s.event_type), &consumer).await,
            Err(e) => Err(e.clone()),
        };
        subscriptions.push(SubscriptionStatus {
            event_type: s.event_type.clone(),
            consumer,
            pending: lag.as_ref().ok().map(|l| l.0),
            unacknowledged: lag.as_ref().ok().map(|l| l.1),
            error: lag.err(),
        });
    }
    let (samples, sidecars) = if read_sidecars {
        sidecar_samples(client, &namespace, &consul_name).await
    } else {
        (Samples::default(), "not read (--sidecars=false)".into())
    };
    let upstreams = sgs
        .spec
        .upstreams
        .iter()
        .map(|u| upstream_status(&samples, &u.service))
        .collect();
    ServiceStatus {
        name: sgs.metadata.name.clone().unwrap_or_default(),
        namespace,
        consul_name,
        replicas: status.replicas,
        ready_replicas: status.ready_replicas,
        ready,
        instances_error: instances.as_ref().err().cloned(),
        instances: instances.unwrap_or_default(),
        upstreams,
        subscriptions,
        spooled_events: (!samples.is_empty())
            .then(|| samples.sum("streamgate_sidecar_event_spool_events", &[])),
        sidecars,
    }
}

async fn instances(
    consul: &ConsulHttp,
    service: &str,
    namespace: &str,
) -> Result<Vec<InstanceStatus>, String> {
    let answer = consul
        .get(&service_path(service, false))
        .await
        .map_err(|e| format!("{}: {e}", consul.base()))?;
    let entries: Vec<HealthEntry> = answer.json("health").map_err(|e| e.to_string())?;
    Ok(entries
        .iter()
        .filter(|e| e.meta("k8s-namespace").is_none_or(|ns| ns == namespace))
        .map(|e| InstanceStatus {
            id: e.service.id.clone(),
            address: format!("{}:{}", e.address(), e.service.port),
            status: e.status().to_string(),
            output: e
                .checks
                .iter()
                .filter(|c| c.status != "passing")
                .map(|c| c.output.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        })
        .collect())
}

async fn lag(
    js: &async_nats::jetstream::Context,
    subject: &str,
    consumer: &str,
) -> Result<(u64, u64), String> {
    let stream = streamgate_nats::streams::stream_of(js, subject)
        .await?
        .ok_or_else(|| format!("no stream captures {subject}"))?;
    let stream = js
        .get_stream(&stream)
        .await
        .map_err(|e| format!("stream {stream}: {e}"))?;
    let info = stream
        .consumer_info(consumer)
        .await
        .map_err(|e| format!("consumer {consumer}: {e}"))?;
    Ok((info.num_pending, info.num_ack_pending as u64))
}

/// Every sidecar's metrics of the service's pods, through the API server's pod proxy
/// (works from outside the cluster, with the caller's RBAC: `pods/proxy` get).
async fn sidecar_samples(
    client: &kube::Client,
    namespace: &str,
    service: &str,
) -> (Samples, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{}={service}", streamgate_operator::labels::SERVICE_LABEL);
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(e) => return (Samples::default(), format!("listing pods: {e}")),
    };
    let running: Vec<&Pod> = list
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    let mut samples = Samples::default();
    let mut read = 0;
    for pod in &running {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let path = format!(
            "/api/v1/namespaces/{namespace}/pods/{name}:{}/proxy/metrics",
            streamgate_crds::sidecar_config::ADMIN_PORT
        );
        let Ok(request) = http::Request::get(path).body(Vec::new()) else {
            continue;
        };
        let answer =
            tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await;
        if let Ok(Ok(text)) = answer {
            samples.add(&text);
            read += 1;
        }
    }
    (
        samples,
        format!("metrics of {read} of {} running pod(s)", running.len()),
    )
}

fn upstream_status(samples: &Samples, service: &str) -> UpstreamStatus {
    let by = [("upstream", service)];
    let calls = samples.sum("streamgate_sidecar_forward_requests_total", &by);
    let ok = samples.sum(
        "streamgate_sidecar_forward_requests_total",
        &[("upstream", service), ("code", "OK")],
    );
    let count = samples.sum(
        "streamgate_sidecar_forward_request_duration_seconds_count",
        &by,
    );
    let seconds = samples.sum(
        "streamgate_sidecar_forward_request_duration_seconds_sum",
        &by,
    );
    UpstreamStatus {
        service: service.to_string(),
        calls,
        errors: calls - ok,
        mean_latency_ms: (count > 0.0).then(|| seconds / count * 1_000.0),
        ejections: samples.sum("streamgate_sidecar_forward_ejections_total", &by),
    }
}

fn table(services: &[ServiceStatus]) -> String {
    let mut out = String::new();
    for s in services {
        out.push_str(&format!(
            "{}/{}  (Consul {})  replicas {}/{} ready  Ready={}\n",
            s.namespace, s.name, s.consul_name, s.ready_replicas, s.replicas, s.ready
        ));
        match (&s.instances_error, &s.instances) {
            (Some(e), _) => out.push_str(&format!("  instances: unknown ({e})\n")),
            (None, list) if list.is_empty() => out.push_str("  instances: none in Consul\n"),
            (None, list) => {
                out.push_str("  instances:\n");
                for i in list {
                    let output = if i.output.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", i.output)
                    };
                    out.push_str(&format!(
                        "    {:<9} {}  {}{output}\n",
                        i.status, i.id, i.address
                    ));
                }
            }
        }
        for u in &s.upstreams {
            let latency = u
                .mean_latency_ms
                .map(|ms| format!("{ms:.1} ms mean"))
                .unwrap_or_else(|| "no calls".into());
            out.push_str(&format!(
                "  upstream {}: {} calls, {} errors, {latency}, {} ejections\n",
                u.service, u.calls, u.errors, u.ejections
            ));
        }
        for sub in &s.subscriptions {
            let lag = match (sub.pending, sub.unacknowledged, &sub.error) {
                (Some(pending), Some(unacked), _) => {
                    format!("{pending} pending, {unacked} unacknowledged")
                }
                (_, _, error) => format!("lag unknown ({})", error.as_deref().unwrap_or("?")),
            };
            out.push_str(&format!(
                "  subscription {} ({}): {lag}\n",
                sub.event_type, sub.consumer
            ));
        }
        if let Some(spooled) = s.spooled_events {
            out.push_str(&format!("  spooled events: {spooled}\n"));
        }
        out.push_str(&format!("  sidecars: {}\n", s.sidecars));
    }
    out
}
