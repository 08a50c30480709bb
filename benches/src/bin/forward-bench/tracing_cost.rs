//! What traces cost the data path: the sidecar pair with traces off (b) and an identical
//! pair exporting to a real collector (Jaeger, on loopback) at 1% parent-based sampling
//! (d), measured in alternated rounds against the same server with the same ghz
//! settings, medians compared. Target: within 5% of traces off, in max throughput and in
//! CPU per 1,000 calls at max.

use crate::Tools;
use crate::measure::{Measured, Target, measure};
use anyhow::Result;
use std::time::Duration;
use streamgate_benches::figures::{micros, verdict};
use streamgate_benches::work_dir::WorkDir;

/// Alternated rounds per path.
pub const ROUNDS: usize = 3;
const WITHIN: f64 = 0.05;

/// The `OTEL_*` variables of the traced pair.
pub fn otel_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One path of the comparison: where ghz calls and the sidecars to watch.
pub struct Path<'a> {
    pub target: Target,
    pub pids: &'a [u32],
}

/// The rounds, alternated (off, on, off, on, ...); prints the medians and the verdict.
pub async fn compare(
    tools: &Tools,
    work: &WorkDir,
    off: &Path<'_>,
    on: &Path<'_>,
    seconds: u64,
) -> Result<bool> {
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        offs.push(figures(
            &measure(tools, work, &off.target, off.pids, seconds).await?,
        ));
        ons.push(figures(
            &measure(tools, work, &on.target, on.pids, seconds).await?,
        ));
    }
    let (off, on) = (Figures::median(&offs), Figures::median(&ons));
    println!();
    println!(
        "traces at 1% sampling, exported to Jaeger (d), beside traces off (b): medians of {ROUNDS} alternated rounds"
    );
    let throughput_ok = on.max_rps >= off.max_rps * (1.0 - WITHIN);
    let cpu_ok = on.cpu_per_k_at_max <= off.cpu_per_k_at_max * (1.0 + WITHIN);
    let rows = [
        (
            "max throughput",
            format!("{:.0}/s", on.max_rps),
            format!(
                "{:.0}/s ({:+.1}%)",
                off.max_rps,
                change(on.max_rps, off.max_rps)
            ),
            verdict(throughput_ok, ">= 95% of traces off"),
        ),
        (
            "CPU per 1k at max (client + server)",
            format!("{:.4} s", on.cpu_per_k_at_max),
            format!(
                "{:.4} s ({:+.1}%)",
                off.cpu_per_k_at_max,
                change(on.cpu_per_k_at_max, off.cpu_per_k_at_max)
            ),
            verdict(cpu_ok, "<= 105% of traces off"),
        ),
        (
            "p50 / p99 at the fixed rate",
            format!("{} / {}", micros(on.p50), micros(on.p99)),
            format!("{} / {}", micros(off.p50), micros(off.p99)),
            String::new(),
        ),
    ];
    println!(
        "{:<38} {:>18}   {:<52} target",
        "traces on (d)", "value", "baseline"
    );
    for (name, value, baseline, target) in rows {
        println!(
            "{name:<38} {value:>18}   {:<52} {target}",
            format!("traces off {baseline}")
        );
    }
    Ok(throughput_ok && cpu_ok)
}

fn change(value: f64, baseline: f64) -> f64 {
    if baseline == 0.0 {
        return 0.0;
    }
    (value / baseline - 1.0) * 100.0
}

/// The figures compared, of one round.
#[derive(Clone, Copy)]
struct Figures {
    max_rps: f64,
    cpu_per_k_at_max: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(m: &Measured) -> Figures {
    let cpu: Duration = m.usage.iter().map(|u| u.2).sum();
    Figures {
        max_rps: m.max_rps,
        cpu_per_k_at_max: if m.max_requests == 0 {
            f64::INFINITY
        } else {
            cpu.as_secs_f64() * 1000.0 / m.max_requests as f64
        },
        p50: m.p50,
        p99: m.p99,
    }
}

impl Figures {
    /// Each figure's median over the rounds, taken on its own.
    fn median(rounds: &[Figures]) -> Figures {
        fn mid<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
            values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            values[values.len() / 2]
        }
        Figures {
            max_rps: mid(rounds.iter().map(|r| r.max_rps).collect()),
            cpu_per_k_at_max: mid(rounds.iter().map(|r| r.cpu_per_k_at_max).collect()),
            p50: mid(rounds.iter().map(|r| r.p50).collect()),
            p99: mid(rounds.iter().map(|r| r.p99).collect()),
        }
    }
}
