//! How the benches write their figures, and what a bench's exit code says: 0 every
//! target met, 1 a target missed, 2 the bench could not run.

use std::process::ExitCode;
use std::time::Duration;

/// A target followed by `ok` or `MISSED`.
pub fn verdict(ok: bool, target: &str) -> String {
    format!("{target} {}", if ok { "ok" } else { "MISSED" })
}

pub fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The exit code of a bench whose run returned `outcome` (whether every target was met);
/// an error is printed, prefixed with the bench's name.
pub fn exit_code(bench: &str, outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{bench}: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_figures() {
        assert_eq!(verdict(false, "<= 1 ms"), "<= 1 ms MISSED");
        assert_eq!(micros(Duration::from_micros(1500)), "1500 µs");
        assert_eq!(millis(Duration::from_micros(1500)), "1.5 ms");
        assert_eq!(mib(1536), "1.5 MiB");
    }
}
