//! ghz, the gRPC load generator: one run against a target, its JSON report, and the
//! processes watched (RSS and CPU) while it runs.

use crate::Tools;
use crate::measure::Target;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use streamgate_benches::procfs::{cpu_time, rss_kib};
use streamgate_benches::running::Running;
use streamgate_benches::work_dir::WorkDir;
use streamgate_proto::demo::v1::{UPLOAD_PROTO, UPLOAD_PROTO_PATH};

const CALL: &str = "streamgate.demo.v1.UploadService/Upload";
const PAYLOAD_BYTES: usize = 1024;
/// Where ghz reads the .proto files from (its `--import-paths`), inside the work dir.
const PROTO_ROOT: &str = "proto";

/// ghz's JSON report, the parts read (latencies are nanoseconds).
#[derive(serde::Deserialize)]
pub struct Report {
    pub count: u64,
    pub rps: f64,
    #[serde(rename = "errorDistribution", default)]
    errors: Option<BTreeMap<String, u64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    statuses: Option<BTreeMap<String, u64>>,
    #[serde(rename = "latencyDistribution", default)]
    latencies: Option<Vec<Percentile>>,
}

#[derive(serde::Deserialize)]
struct Percentile {
    percentage: u32,
    latency: u64,
}

impl Report {
    /// The latency at percentile `p`, when ghz reported it.
    pub fn percentile(&self, p: u32) -> Option<Duration> {
        self.latencies
            .iter()
            .flatten()
            .find(|l| l.percentage == p)
            .map(|l| Duration::from_nanos(l.latency))
    }
}

/// One process watched during a run: its highest RSS and the CPU it spent.
pub struct Watched {
    pid: u32,
    pub max_rss_kib: u64,
    cpu_start: Duration,
    pub cpu: Duration,
}

/// Starts watching `pids`: their RSS and CPU time now.
pub fn watchers(pids: &[u32]) -> Result<Vec<Watched>> {
    pids.iter()
        .map(|&pid| {
            Ok(Watched {
                pid,
                max_rss_kib: rss_kib(pid)?,
                cpu_start: cpu_time(pid)?,
                cpu: Duration::ZERO,
            })
        })
        .collect()
}

/// Writes the Upload service's .proto where ghz reads it (ghz compiles .proto files, not
/// the generated Rust; the proto crate hands over the file it compiles).
pub fn write_proto(work: &WorkDir) -> Result<()> {
    let path = work.join(PROTO_ROOT).join(UPLOAD_PROTO_PATH);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, UPLOAD_PROTO).with_context(|| format!("writing {}", path.display()))
}

/// Every call OK, or the statuses and errors ghz saw. A run ended by its duration cancels
/// the calls in flight at that moment (one per worker at most: "use of closed network
/// connection"), so up to `in_flight` failures are tolerated; real failures are many more.
pub fn ok_calls(report: &Report, in_flight: u32) -> Result<()> {
    let statuses = report.statuses.clone().unwrap_or_default();
    let ok = statuses.get("OK").copied().unwrap_or(0);
    if report.count > 0 && ok > 0 && report.count - ok <= u64::from(in_flight) {
        return Ok(());
    }
    let mut errors: Vec<(u64, String)> = report
        .errors
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(message, n)| (n, message))
        .collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.0));
    let top = errors
        .first()
        .map(|(n, message)| format!("; most common error ({n}x): {message}"))
        .unwrap_or_default();
    bail!(
        "{ok} of {} calls OK (statuses {statuses:?}){top}",
        report.count
    )
}

/// Runs ghz against `target` with `extra` flags, sampling the watched processes every
/// 50 ms; killed if it outlives its own duration by 30 s.
pub async fn run(
    tools: &Tools,
    work: &WorkDir,
    target: &Target,
    extra: &[&str],
    watched: &mut [Watched],
) -> Result<Report> {
    let data = serde_json::json!({
        "filename": "bench.bin",
        "content": base64(&payload()),
        "content_type": "application/octet-stream",
    })
    .to_string();
    // This run's own report and log: nothing of the previous run is read as this one's.
    let out = work.join("ghz.json");
    let log = work.join("ghz.log");
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&log);
    let mut command = Command::new(&tools.ghz);
    command
        .args(["--insecure", "--format", "json", "--output"])
        .arg(&out)
        .arg("--import-paths")
        .arg(work.join(PROTO_ROOT))
        .args([
            "--proto",
            UPLOAD_PROTO_PATH,
            "--call",
            CALL,
            "--timeout",
            "5s",
        ])
        .args(["--data", &data])
        .args(extra);
    if let Some(authority) = &target.authority {
        command.args(["--authority", authority]);
    }
    command.arg(&target.addr);
    let child = Running::spawn("ghz", command, &log, Duration::ZERO)?;
    let started = Instant::now();
    let limit = Duration::from_secs(
        extra
            .windows(2)
            .find(|w| w[0] == "-z")
            .and_then(|w| w[1].trim_end_matches('s').parse::<u64>().ok())
            .unwrap_or(0)
            + 30,
    );
    let status = loop {
        for w in watched.iter_mut() {
            if let Ok(rss) = rss_kib(w.pid) {
                w.max_rss_kib = w.max_rss_kib.max(rss);
            }
        }
        if let Some(status) = child.exit_status() {
            break status;
        }
        if started.elapsed() > limit {
            bail!(
                "{}: ghz still running after {limit:?}; killed",
                target.label
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for w in watched.iter_mut() {
        w.cpu = cpu_time(w.pid)?.saturating_sub(w.cpu_start);
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    if text.trim().is_empty() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("ghz exited with {status} and no report: {}", log.trim());
    }
    serde_json::from_str(&text).context("ghz's JSON report")
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD_BYTES).map(|i| (i * 31 % 251) as u8).collect()
}

/// Standard base64 with padding: how ghz's `--data` JSON carries `bytes` fields.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
