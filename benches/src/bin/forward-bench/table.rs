//! The printed table: each path's figures beside the direct and nginx baselines.

use crate::measure::{CONNECTIONS, MAX_WORKERS, Measured, RATE, RATE_WORKERS};
use anyhow::Result;
use std::time::Duration;
use streamgate_benches::figures::{mib, micros, verdict};

const ADDED_P50_TARGET: Duration = Duration::from_micros(150);
const ADDED_P99_TARGET: Duration = Duration::from_micros(600);
const THROUGHPUT_TARGET: f64 = 1.2;
const RSS_TARGET_KIB: u64 = 15 * 1024;

/// Prints the table; true when every target of (b) is met.
pub fn print(direct: &Measured, nginx: &Result<Measured>, sidecars: &Result<Measured>) -> bool {
    println!(
        "1 KiB unary Upload, {CONNECTIONS} connections; latency at {RATE} RPS with {RATE_WORKERS} workers, max throughput with {MAX_WORKERS}"
    );
    row("forward", "value", "baseline (same run)", "target");
    row(
        "(a) direct p50 / p99",
        &format!("{} / {}", micros(direct.p50), micros(direct.p99)),
        &format!("max throughput {:.0}/s", direct.max_rps),
        "",
    );
    // Signed: under noise a proxied percentile can come out below the direct one.
    let added = |m: &Measured| {
        (
            signed_micros(m.p50) - signed_micros(direct.p50),
            signed_micros(m.p99) - signed_micros(direct.p99),
        )
    };
    match nginx {
        Ok(n) => {
            let (a50, a99) = added(n);
            row(
                "(c) nginx added p50 / p99",
                &format!("{a50} µs / {a99} µs"),
                &format!("p50 {} p99 {}", micros(n.p50), micros(n.p99)),
                "",
            );
            row(
                "(c) nginx max throughput",
                &format!("{:.0}/s", n.max_rps),
                &format!("direct {:.0}/s", direct.max_rps),
                "",
            );
            if let Some((rss, cpu_rate, cpu_max)) = n.usage.first() {
                row(
                    "(c) nginx worker RSS / CPU per 1k",
                    &format!("{} / {}", mib(*rss), per_k(*cpu_rate, n.rate_requests)),
                    &format!(
                        "CPU per 1k at max throughput {}",
                        per_k(*cpu_max, n.max_requests)
                    ),
                    "",
                );
            }
        }
        Err(e) => {
            row("(c) nginx", "FAILED", "", "");
            println!("    {e:#}");
        }
    }
    let s = match sidecars {
        Ok(s) => s,
        Err(e) => {
            row("(b) sidecars", "FAILED", "", "all targets MISSED");
            println!("    {e:#}");
            return false;
        }
    };
    let (a50, a99) = added(s);
    let nginx_added = nginx.as_ref().ok().map(added);
    let nginx_note = |i: usize| {
        nginx_added
            .map(|n| format!("nginx added {} µs", if i == 0 { n.0 } else { n.1 }))
            .unwrap_or_else(|| "nginx: not measured".into())
    };
    let p50_ok = a50 <= signed_micros(ADDED_P50_TARGET);
    let p99_ok = a99 <= signed_micros(ADDED_P99_TARGET);
    row(
        &format!("(b) sidecars added p50 at {RATE} RPS"),
        &format!("{a50} µs"),
        &format!("{}; p50 {}", nginx_note(0), micros(s.p50)),
        &verdict(p50_ok, "<= 150 µs"),
    );
    row(
        &format!("(b) sidecars added p99 at {RATE} RPS"),
        &format!("{a99} µs"),
        &format!("{}; p99 {}", nginx_note(1), micros(s.p99)),
        &verdict(p99_ok, "<= 600 µs"),
    );
    let throughput_ok = match nginx {
        Ok(n) => {
            let ratio = s.max_rps / n.max_rps;
            let ok = ratio >= THROUGHPUT_TARGET;
            row(
                "(b) sidecars max throughput",
                &format!("{:.0}/s", s.max_rps),
                &format!(
                    "nginx {:.0}/s ({ratio:.2}x), direct {:.0}/s",
                    n.max_rps, direct.max_rps
                ),
                &verdict(ok, ">= 1.2x nginx"),
            );
            ok
        }
        Err(_) => {
            row(
                "(b) sidecars max throughput",
                &format!("{:.0}/s", s.max_rps),
                "nginx not measured: no ratio",
                "MISSED",
            );
            false
        }
    };
    let nginx_usage = nginx.as_ref().ok().and_then(|n| {
        n.usage
            .first()
            .map(|u| (u.0, per_k(u.1, n.rate_requests), per_k(u.2, n.max_requests)))
    });
    let max_rss = s.usage.iter().map(|u| u.0).max().unwrap_or(0);
    let rss_ok = max_rss <= RSS_TARGET_KIB;
    for (name, (rss, _, _)) in ["client", "server"].iter().zip(&s.usage) {
        row(
            &format!("(b) {name} sidecar RSS under load"),
            &mib(*rss),
            &nginx_usage
                .as_ref()
                .map(|n| format!("nginx worker {}", mib(n.0)))
                .unwrap_or_default(),
            &verdict(*rss <= RSS_TARGET_KIB, "<= 15 MiB"),
        );
    }
    // CPU per 1,000 calls at the fixed rate (usage.1) and at the maximum (usage.2).
    let at_rate: fn(&(u64, Duration, Duration)) -> Duration = |u| u.1;
    let at_max: fn(&(u64, Duration, Duration)) -> Duration = |u| u.2;
    let cpu_rows = [
        (
            format!("(b) sidecars CPU per 1k at {RATE} RPS"),
            at_rate,
            s.rate_requests,
            nginx_usage.as_ref().map(|n| n.1.clone()),
        ),
        (
            "(b) sidecars CPU per 1k at max".to_string(),
            at_max,
            s.max_requests,
            nginx_usage.as_ref().map(|n| n.2.clone()),
        ),
    ];
    for (label, pick, requests, nginx) in cpu_rows {
        let total: Duration = s.usage.iter().map(pick).sum();
        let each: Vec<String> = s.usage.iter().map(|u| per_k(pick(u), requests)).collect();
        let baseline = format!(
            "client + server {}; nginx {}",
            each.join(" + "),
            nginx.as_deref().unwrap_or("-")
        );
        row(&label, &per_k(total, requests), &baseline, "");
    }
    p50_ok && p99_ok && throughput_ok && rss_ok
}

fn row(name: &str, value: &str, baseline: &str, target: &str) {
    println!("{name:<38} {value:>18}   {baseline:<52} {target}");
}

fn signed_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// CPU seconds per 1,000 requests.
fn per_k(cpu: Duration, requests: u64) -> String {
    if requests == 0 {
        return "-".into();
    }
    format!("{:.4} s", cpu.as_secs_f64() * 1000.0 / requests as f64)
}
