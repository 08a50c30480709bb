//! `operator-bench`: the operator's figures for `make bench`, beside a baseline measured
//! in the same run on the same local platform (the tests' shared platform, kwok's nodes
//! only), because these machines are shared and noisy.
//!
//! 1,000 StreamGateServices applied and reconciled (Deployment and Service exist,
//! status.observedGeneration current) against one client creating the same 1,000
//! Deployments directly; reconcile latency p50/p99; the operator's peak RSS and CPU; the
//! API server's reads and writes and each platform process's CPU during both runs.
//!
//! Run: `make tools && cargo build --release --workspace --bins &&
//! STREAMGATE_BIN_PROFILE=release target/release/operator-bench` (the harness finds the
//! operator binary of that profile). `--count N` changes the number of resources.

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use streamgate_benches::procfs::{cpu_time, peak_rss_kib};
use streamgate_crds::StreamGateService;
use streamgate_tests::TestEnv;
use streamgate_tests::operator::{Operator, PRODUCTION_TIMINGS, operator_kubeconfig};
use streamgate_tests::wait::eventually;

#[derive(Parser)]
#[command(
    name = "operator-bench",
    about = "Operator throughput against direct API-server writes, each beside its baseline"
)]
struct Cli {
    /// StreamGateServices the operator reconciles (and Deployments the baseline creates).
    #[arg(long, default_value_t = 1000)]
    count: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    operator_bench(Cli::parse().count).await
}

/// The Deployment the operator renders for `sgs` (app and sidecar), without an owner:
/// the baseline writes the same objects the operator writes.
fn deployment(sgs: &StreamGateService) -> Deployment {
    let config = streamgate_operator::desired::sidecar_config(sgs);
    let settings = streamgate_operator::sidecar_defaults::SidecarDefaults::for_tests();
    let mut d = streamgate_operator::desired::desired(sgs, &config, &settings).deployment;
    d.metadata.owner_references = None;
    d.metadata.namespace = None;
    d
}

fn service(env: &TestEnv, name: &str) -> Result<StreamGateService> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "streamgate.io/v1alpha1", "kind": "StreamGateService",
        "metadata": {"name": name},
        // No pods: this measures the control plane's work, not the scheduler's.
        "spec": {"image": "registry.example.com/app:1", "port": 9091, "replicas": 0,
                 "serviceName": env.unique(name)}
    }))?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// User + system CPU seconds the process has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_time(pid).ok().map(|cpu| cpu.as_secs_f64())
}

async fn operator_bench(count: usize) -> Result<()> {
    // Baseline: one client creating the Deployments itself, authenticated as the
    // operator's ServiceAccount so both go through the same API priority and fairness
    // level (an administrator's requests are exempt from it).
    let baseline_env = TestEnv::new("bench-direct").await?;
    let sa_kubeconfig = operator_kubeconfig(&baseline_env).await?;
    let sa_client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&sa_kubeconfig)?,
            &Default::default(),
        )
        .await?,
    )?;
    let deployments: Api<Deployment> = Api::namespaced(sa_client, &baseline_env.namespace);
    let rendered: Vec<Deployment> = (0..count)
        .map(|i| Ok(deployment(&service(&baseline_env, &format!("svc-{i:04}"))?)))
        .collect::<Result<_>>()?;
    let platform_before = platform_cpu();
    let start = Instant::now();
    for d in &rendered {
        deployments.create(&PostParams::default(), d).await?;
    }
    let direct = start.elapsed();
    let platform_direct = cpu_delta(&platform_before, &platform_cpu());

    // StreamGate: the same client creates StreamGateServices; the operator does the rest.
    let env = TestEnv::new("bench-operator").await?;
    let kubeconfig = operator_kubeconfig(&env).await?;
    let operator = Operator::start_with(&env, &kubeconfig, "bench", PRODUCTION_TIMINGS).await?;
    let api: Api<StreamGateService> = Api::namespaced(env.client(), &env.namespace);
    let mut watch = api
        .watch(&WatchParams::default(), "0")
        .await
        .context("watching StreamGateServices")?
        .boxed();
    let requests_before = apiserver_requests(&env.client()).await?;
    let platform_before = platform_cpu();
    let start = Instant::now();
    let mut created_at: HashMap<String, Instant> = HashMap::new();
    let mut reconciled_at: HashMap<String, Instant> = HashMap::new();
    let watcher = async {
        while reconciled_at.len() < count {
            let Some(event) = watch.next().await else {
                break;
            };
            if let Ok(WatchEvent::Modified(s) | WatchEvent::Added(s)) = event {
                let observed = s.status.as_ref().and_then(|st| st.observed_generation);
                if observed.is_some() && observed == s.metadata.generation {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    reconciled_at.entry(name).or_insert_with(Instant::now);
                }
            }
        }
    };
    let creator = async {
        for i in 0..count {
            let name = format!("svc-{i:04}");
            let sgs = service(&env, &name)?;
            api.create(&PostParams::default(), &sgs).await?;
            created_at.insert(name, Instant::now());
        }
        Ok::<(), anyhow::Error>(())
    };
    let (created, ()) = tokio::join!(creator, async {
        tokio::time::timeout(Duration::from_secs(600), watcher)
            .await
            .ok();
    });
    created?;
    // Every child exists too.
    let ns_deployments: Api<Deployment> = Api::namespaced(env.client(), &env.namespace);
    let ns_services: Api<Service> = Api::namespaced(env.client(), &env.namespace);
    eventually("all children exist", Duration::from_secs(120), || async {
        let d = ns_deployments
            .list(&ListParams::default())
            .await?
            .items
            .len();
        let s = ns_services.list(&ListParams::default()).await?.items.len();
        Ok((d >= count && s >= count).then_some(()))
    })
    .await?;
    let with_operator = start.elapsed();
    let requests_after = apiserver_requests(&env.client()).await?;
    let platform_operator = cpu_delta(&platform_before, &platform_cpu());
    anyhow::ensure!(
        reconciled_at.len() == count,
        "only {} of {count} reconciled",
        reconciled_at.len()
    );

    let mut latencies: Vec<Duration> = reconciled_at
        .iter()
        .filter_map(|(name, done)| Some(done.saturating_duration_since(*created_at.get(name)?)))
        .collect();
    latencies.sort_unstable();
    let rss = peak_rss_kib(operator.pid()).ok().map(|k| k as f64 / 1024.0);
    let cpu = cpu_seconds(operator.pid()).unwrap_or(0.0);
    let ratio = with_operator.as_secs_f64() / direct.as_secs_f64();
    println!(
        "operator benchmark ({count} resources, replicas 0, debug={})",
        cfg!(debug_assertions)
    );
    println!(
        "  baseline: the same {count} Deployments created directly by one client: {:.2}s",
        direct.as_secs_f64()
    );
    println!(
        "  streamgate: {count} StreamGateServices applied and reconciled:  {:.2}s",
        with_operator.as_secs_f64()
    );
    println!("  ratio: {ratio:.2} (target <= 1.5)");
    println!(
        "  reconcile latency (create -> status observed): p50 {:.0} ms, p99 {:.0} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    );
    println!("  operator CPU time: {cpu:.1}s");
    match rss {
        Some(mib) => println!("  operator peak RSS: {mib:.1} MiB (target <= 64 MiB)"),
        None => println!("  operator peak RSS: unavailable"),
    }
    println!("  platform CPU seconds (baseline run | streamgate run):");
    for (name, direct_cpu) in &platform_direct {
        let with = platform_operator
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, c)| *c);
        println!("    {name:<24} {direct_cpu:>6.1} | {with:>6.1}");
    }
    let mut writes: Vec<(String, f64)> = requests_after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v - requests_before.get(k).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, d)| *d >= 1.0)
        .collect();
    let reads = |verb: &str| -> f64 {
        let prefix = format!("{verb} ");
        writes
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum()
    };
    println!(
        "  API-server reads during the run (all clients): GET {:.0}, LIST {:.0}",
        reads("GET"),
        reads("LIST")
    );
    writes.retain(|(key, _)| {
        ["POST ", "PUT ", "PATCH ", "DELETE ", "APPLY "]
            .iter()
            .any(|verb| key.starts_with(verb))
    });
    writes.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("  API-server writes during the run (all clients):");
    for (key, n) in writes.iter().take(12) {
        println!("    {n:>7.0}  {key}");
    }
    operator.stop();
    Ok(())
}

/// CPU seconds used so far by each platform process this benchmark started (its children).
fn platform_cpu() -> Vec<(String, f64)> {
    let me = std::process::id().to_string();
    let mut found: Vec<(String, f64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            let parent = rest.split_whitespace().nth(1)?;
            (parent == me).then_some((name, cpu_seconds(pid)?))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn cpu_delta(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(name, cpu)| {
            let earlier = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, c)| *c);
            (name.clone(), cpu - earlier)
        })
        .collect()
}

/// The API server's request counters by verb, resource and subresource, from its /metrics.
async fn apiserver_requests(client: &kube::Client) -> Result<HashMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut counts = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let verb = label("verb");
        let key = format!("{verb} {} {}", label("resource"), label("subresource"));
        *counts.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(counts)
}
