//! Every path measured in alternated rounds (each round visits every path once, every
//! other round in reverse order, so slow phases of the shared machine fall on all of them
//! alike); each figure is the median of its path's rounds, taken on its own.

use crate::Tools;
use crate::measure::{Measured, Target, measure};
use std::time::Duration;
use streamgate_benches::procfs;
use streamgate_benches::work_dir::WorkDir;

/// What a path is, for the targets: the sidecar's, a peer's, or the direct baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Sidecar,
    /// The sidecars with traces exported at 1% (compared with `Sidecar` at two hops).
    SidecarTraced,
    /// The sidecars of another build (`FB_SIDECAR_BASELINE`), to weigh a lever in the
    /// same run; not a peer, judged by no target.
    SidecarBaseline,
    Peer(&'static str),
}

/// One way from ghz to the server.
pub struct BenchPath {
    pub kind: Kind,
    /// Proxies between ghz and the server: 0, 1 or 2.
    pub hops: u8,
    pub target: Target,
    /// The proxies' processes, whose CPU and RSS are the path's.
    pub pids: Vec<u32>,
}

/// A path's figures (medians over the rounds).
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub p50: Duration,
    pub p99: Duration,
    pub max_rps: f64,
    /// The path's processes' CPU seconds per 1,000 calls at the maximum.
    pub cpu_per_k_at_max: f64,
    /// The largest RSS of the path's processes before any load (KiB).
    pub rss_idle_kib: u64,
    /// The largest RSS of the path's processes during the runs (KiB).
    pub rss_load_kib: u64,
}

/// Each path's medians, or why it could not be measured.
pub async fn run(
    tools: &Tools,
    work: &WorkDir,
    paths: &[BenchPath],
    rounds: usize,
    seconds: u64,
) -> Vec<Result<Figures, String>> {
    let idle: Vec<u64> = paths
        .iter()
        .map(|p| {
            p.pids
                .iter()
                .filter_map(|pid| procfs::rss_kib(*pid).ok())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut measured: Vec<Result<Vec<Figures>, String>> =
        paths.iter().map(|_| Ok(Vec::new())).collect();
    for round in 1..=rounds {
        eprintln!("forward-bench: round {round} of {rounds}");
        // Every other round runs the paths in reverse, so no path always comes first
        // (after ghz's idle gap) or last.
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let path = &paths[i];
            let Ok(rounds_so_far) = &mut measured[i] else {
                continue;
            };
            match measure(tools, work, &path.target, &path.pids, seconds).await {
                Ok(m) => rounds_so_far.push(figures(&m, idle[i])),
                Err(e) => measured[i] = Err(format!("{e:#}")),
            }
        }
    }
    measured
        .into_iter()
        .map(|m| m.map(|rounds| median(&rounds)))
        .collect()
}

fn figures(m: &Measured, rss_idle_kib: u64) -> Figures {
    let cpu: Duration = m.usage.iter().map(|u| u.2).sum();
    Figures {
        p50: m.p50,
        p99: m.p99,
        max_rps: m.max_rps,
        cpu_per_k_at_max: if m.max_requests == 0 {
            f64::INFINITY
        } else {
            cpu.as_secs_f64() * 1000.0 / m.max_requests as f64
        },
        rss_idle_kib,
        rss_load_kib: m.usage.iter().map(|u| u.0).max().unwrap_or(0),
    }
}

fn median(rounds: &[Figures]) -> Figures {
    fn mid<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    let pick = |f: fn(&Figures) -> f64| mid(rounds.iter().map(f).collect::<Vec<f64>>());
    Figures {
        p50: mid(rounds.iter().map(|r| r.p50).collect()),
        p99: mid(rounds.iter().map(|r| r.p99).collect()),
        max_rps: pick(|r| r.max_rps),
        cpu_per_k_at_max: pick(|r| r.cpu_per_k_at_max),
        rss_idle_kib: rounds.first().map_or(0, |r| r.rss_idle_kib),
        rss_load_kib: rounds.iter().map(|r| r.rss_load_kib).max().unwrap_or(0),
    }
}
