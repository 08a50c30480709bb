//! The printed table: every path's medians in one table, then the sidecar's targets
//! against the best peer at the same number of hops, each met or missed.

use crate::measure::{CONNECTIONS, MAX_WORKERS, RATE, RATE_WORKERS};
use crate::rounds::{BenchPath, Figures, Kind};
use std::time::Duration;
use streamgate_benches::figures::{mib, micros, verdict};

const CPU_TARGET: f64 = 0.8;
const RSS_IDLE_TARGET_KIB: u64 = 12 * 1024;
const RSS_LOAD_TARGET_KIB: u64 = 16 * 1024;
const TRACES_WITHIN: f64 = 0.05;

/// Prints the table and the targets; true when every target is met.
pub fn print(paths: &[BenchPath], figures: &[Result<Figures, String>], rounds: usize) -> bool {
    println!(
        "1 KiB unary Upload, {CONNECTIONS} connections; p50/p99 at {RATE} calls/s with {RATE_WORKERS} workers, max throughput with {MAX_WORKERS}; medians of {rounds} alternated rounds"
    );
    println!(
        "{:<34} {:>12} {:>14} {:>10} {:>16} {:>18}",
        "path", "max calls/s", "added p50", "p99", "CPU s/1k at max", "RSS idle / load"
    );
    let direct = paths
        .iter()
        .zip(figures)
        .find(|(p, _)| p.kind == Kind::Direct)
        .and_then(|(_, f)| f.as_ref().ok().copied());
    for (path, f) in paths.iter().zip(figures) {
        match f {
            Ok(f) => {
                let added = direct.map_or("-".to_string(), |d| format!("{} µs", added_p50(f, &d)));
                let rss = if path.kind == Kind::Direct {
                    "-".to_string()
                } else {
                    format!("{} / {}", mib(f.rss_idle_kib), mib(f.rss_load_kib))
                };
                let cpu = if path.kind == Kind::Direct {
                    "-".to_string()
                } else {
                    format!("{:.4}", f.cpu_per_k_at_max)
                };
                println!(
                    "{:<34} {:>12.0} {:>14} {:>10} {:>16} {:>18}",
                    path.target.label,
                    f.max_rps,
                    added,
                    micros(f.p99),
                    cpu,
                    rss
                );
            }
            Err(e) => println!("{:<34} FAILED: {e}", path.target.label),
        }
    }
    let Some(direct) = direct else {
        println!("the direct path failed: no target can be judged");
        return false;
    };
    println!();
    let mut all = true;
    for hops in [1u8, 2] {
        all &= hop_targets(paths, figures, &direct, hops);
    }
    all &= rss_targets(paths, figures);
    all &= traces_target(paths, figures);
    baseline_comparison(paths, figures);
    all
}

fn added_p50(f: &Figures, direct: &Figures) -> i64 {
    signed_micros(f.p50) - signed_micros(direct.p50)
}

fn signed_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn of(
    paths: &[BenchPath],
    figures: &[Result<Figures, String>],
    hops: u8,
    pick: impl Fn(Kind) -> bool,
) -> Vec<(String, Figures)> {
    paths
        .iter()
        .zip(figures)
        .filter(|(p, _)| p.hops == hops && pick(p.kind))
        .filter_map(|(p, f)| f.as_ref().ok().map(|f| (p.target.label.clone(), *f)))
        .collect()
}

/// The sidecar at `hops` against the best peer at `hops`, figure by figure.
fn hop_targets(
    paths: &[BenchPath],
    figures: &[Result<Figures, String>],
    direct: &Figures,
    hops: u8,
) -> bool {
    let sidecar = of(paths, figures, hops, |k| k == Kind::Sidecar);
    let peers = of(paths, figures, hops, |k| matches!(k, Kind::Peer(_)));
    let Some((_, s)) = sidecar.first() else {
        println!("{hops} hop(s): the sidecar path was not measured: targets MISSED");
        return false;
    };
    if peers.is_empty() {
        println!("{hops} hop(s): no peer was measured: targets MISSED");
        return false;
    }
    let best = |better: fn(f64, f64) -> bool, value: &dyn Fn(&Figures) -> f64| {
        peers
            .iter()
            .map(|(label, f)| (label.as_str(), value(f)))
            .reduce(|a, b| if better(b.1, a.1) { b } else { a })
            .expect("peers is not empty")
    };
    let rps = best(|a, b| a > b, &|f| f.max_rps);
    let p50 = best(|a, b| a < b, &|f| added_p50(f, direct) as f64);
    let p99 = best(|a, b| a < b, &|f| f.p99.as_secs_f64());
    let cpu = best(|a, b| a < b, &|f| f.cpu_per_k_at_max);
    let rows = [
        (
            "max calls/s",
            format!("{:.0}", s.max_rps),
            format!("{} {:.0}", rps.0, rps.1),
            s.max_rps >= rps.1,
            ">= the best peer's",
        ),
        (
            "added p50",
            format!("{} µs", added_p50(s, direct)),
            format!("{} {:.0} µs", p50.0, p50.1),
            added_p50(s, direct) as f64 <= p50.1,
            "<= the best peer's",
        ),
        (
            "p99",
            micros(s.p99),
            format!("{} {}", p99.0, micros(Duration::from_secs_f64(p99.1))),
            s.p99.as_secs_f64() <= p99.1,
            "<= the best peer's",
        ),
        (
            "CPU s per 1k calls at max",
            format!("{:.4}", s.cpu_per_k_at_max),
            format!("{} {:.4}", cpu.0, cpu.1),
            s.cpu_per_k_at_max <= CPU_TARGET * cpu.1,
            "<= 0.8x the best peer's",
        ),
    ];
    let mut all = true;
    for (figure, value, peer, ok, target) in rows {
        all &= ok;
        println!(
            "{:<34} {:>12}   best peer: {:<32} {}",
            format!("{hops} hop(s): {figure}"),
            value,
            peer,
            verdict(ok, target)
        );
    }
    all
}

fn rss_targets(paths: &[BenchPath], figures: &[Result<Figures, String>]) -> bool {
    let sidecars: Vec<(String, Figures)> = [1u8, 2]
        .into_iter()
        .flat_map(|h| of(paths, figures, h, |k| k == Kind::Sidecar))
        .collect();
    let idle = sidecars
        .iter()
        .map(|(_, f)| f.rss_idle_kib)
        .max()
        .unwrap_or(u64::MAX);
    let load = sidecars
        .iter()
        .map(|(_, f)| f.rss_load_kib)
        .max()
        .unwrap_or(u64::MAX);
    let (idle_ok, load_ok) = (idle <= RSS_IDLE_TARGET_KIB, load <= RSS_LOAD_TARGET_KIB);
    println!(
        "{:<34} {:>12}   {:<43} {}",
        "sidecar RSS idle (largest)",
        mib(idle),
        "",
        verdict(idle_ok, "<= 12 MiB")
    );
    println!(
        "{:<34} {:>12}   {:<43} {}",
        "sidecar RSS under load (largest)",
        mib(load),
        "",
        verdict(load_ok, "<= 16 MiB")
    );
    idle_ok && load_ok
}

/// Traces at 1% against traces off, two hops: within 5% in throughput and CPU per call.
fn traces_target(paths: &[BenchPath], figures: &[Result<Figures, String>]) -> bool {
    let off = of(paths, figures, 2, |k| k == Kind::Sidecar);
    let on = of(paths, figures, 2, |k| k == Kind::SidecarTraced);
    let (Some((_, off)), Some((_, on))) = (off.first(), on.first()) else {
        println!("traces at 1%: not measured: MISSED");
        return false;
    };
    let change = |on: f64, off: f64| (on / off - 1.0) * 100.0;
    let rps_ok = on.max_rps >= off.max_rps * (1.0 - TRACES_WITHIN);
    let cpu_ok = on.cpu_per_k_at_max <= off.cpu_per_k_at_max * (1.0 + TRACES_WITHIN);
    println!(
        "{:<34} {:>12.0}   traces off {:<32} {}",
        "traces at 1%: max calls/s",
        on.max_rps,
        format!(
            "{:.0} ({:+.1}%)",
            off.max_rps,
            change(on.max_rps, off.max_rps)
        ),
        verdict(rps_ok, ">= 95% of traces off")
    );
    println!(
        "{:<34} {:>12.4}   traces off {:<32} {}",
        "traces at 1%: CPU s per 1k at max",
        on.cpu_per_k_at_max,
        format!(
            "{:.4} ({:+.1}%)",
            off.cpu_per_k_at_max,
            change(on.cpu_per_k_at_max, off.cpu_per_k_at_max)
        ),
        verdict(cpu_ok, "<= 105% of traces off")
    );
    rps_ok && cpu_ok
}

/// This build against the baseline build (`FB_SIDECAR_BASELINE`), per hop count: what a
/// lever changed, measured in the same rounds. Informational: no target.
fn baseline_comparison(paths: &[BenchPath], figures: &[Result<Figures, String>]) {
    let change = |this: f64, base: f64| (this / base - 1.0) * 100.0;
    for hops in [1u8, 2] {
        let this = of(paths, figures, hops, |k| k == Kind::Sidecar);
        let base = of(paths, figures, hops, |k| k == Kind::SidecarBaseline);
        let (Some((_, this)), Some((_, base))) = (this.first(), base.first()) else {
            continue;
        };
        println!(
            "{:<34} calls/s {:.0} vs {:.0} ({:+.1}%), CPU s/1k {:.4} vs {:.4} ({:+.1}%)",
            format!("{hops} hop(s): this build vs baseline"),
            this.max_rps,
            base.max_rps,
            change(this.max_rps, base.max_rps),
            this.cpu_per_k_at_max,
            base.cpu_per_k_at_max,
            change(this.cpu_per_k_at_max, base.cpu_per_k_at_max)
        );
    }
}
