//! One path measured with ghz: latency at a fixed rate, maximum throughput, and what the
//! watched processes (the proxies) spent doing it.

use crate::Tools;
use crate::ghz::{self, ok_calls, watchers};
use anyhow::{Context, Result};
use std::time::Duration;
use streamgate_benches::work_dir::WorkDir;

pub const RATE: u32 = 2_000;
pub const CONNECTIONS: u32 = 16;
pub const RATE_WORKERS: u32 = 32;
pub const MAX_WORKERS: u32 = 64;

/// Where one run of ghz sends its calls.
pub struct Target {
    pub label: String,
    pub addr: String,
    /// The `:authority` ghz sends (the service a client sidecar routes to).
    pub authority: Option<String>,
}

/// The figures of one path.
pub struct Measured {
    pub p50: Duration,
    pub p99: Duration,
    pub max_rps: f64,
    pub max_requests: u64,
    /// Per watched process: (highest RSS KiB, CPU at the fixed rate, CPU at max).
    pub usage: Vec<(u64, Duration, Duration)>,
}

/// One path: a one-call check (a clear error instead of a run of failures), a short
/// warm-up, the fixed-rate run, the max-throughput run.
pub async fn measure(
    tools: &Tools,
    work: &WorkDir,
    target: &Target,
    watch: &[u32],
    seconds: u64,
) -> Result<Measured> {
    let label = target.label.as_str();
    let check = ghz::run(
        tools,
        work,
        target,
        &["-n", "1", "-c", "1", "--connections", "1"],
        &mut [],
    )
    .await
    .context(label.to_string())?;
    ok_calls(&check, 0).with_context(|| format!("{label}: first call"))?;
    let rate = RATE.to_string();
    let connections = CONNECTIONS.to_string();
    let rate_workers = RATE_WORKERS.to_string();
    let max_workers = MAX_WORKERS.to_string();
    let duration = format!("{seconds}s");
    let fixed = [
        "--connections",
        connections.as_str(),
        "-c",
        rate_workers.as_str(),
        "--rps",
        rate.as_str(),
    ];
    let warm = [&fixed[..], &["-z", "1s"][..]].concat();
    ok_calls(
        &ghz::run(tools, work, target, &warm, &mut []).await?,
        RATE_WORKERS,
    )
    .with_context(|| format!("{label}: warm-up"))?;

    let mut watched = watchers(watch)?;
    let at_rate = ghz::run(
        tools,
        work,
        target,
        &[&fixed[..], &["-z", duration.as_str()][..]].concat(),
        &mut watched,
    )
    .await?;
    ok_calls(&at_rate, RATE_WORKERS).with_context(|| format!("{label}: at {RATE} RPS"))?;
    let rate_usage: Vec<(u64, Duration)> = watched.iter().map(|w| (w.max_rss_kib, w.cpu)).collect();

    let mut watched = watchers(watch)?;
    let at_max = ghz::run(
        tools,
        work,
        target,
        &[
            "--connections",
            connections.as_str(),
            "-c",
            max_workers.as_str(),
            "-z",
            duration.as_str(),
        ],
        &mut watched,
    )
    .await?;
    ok_calls(&at_max, MAX_WORKERS).with_context(|| format!("{label}: max throughput"))?;

    let percentile = |p: u32| {
        at_rate
            .percentile(p)
            .with_context(|| format!("{label}: ghz reported no p{p}"))
    };
    Ok(Measured {
        p50: percentile(50)?,
        p99: percentile(99)?,
        max_rps: at_max.rps,
        max_requests: at_max.count,
        usage: rate_usage
            .iter()
            .zip(&watched)
            .map(|((rss, cpu), w)| ((*rss).max(w.max_rss_kib), *cpu, w.cpu))
            .collect(),
    })
}
