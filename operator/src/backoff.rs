//! Per-object retry delays for failed reconciles: exponential in the object's consecutive
//! failures, capped, with jitter so many failing objects do not retry in lockstep. A
//! successful reconcile forgets the object's failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The longest a failing object waits before its next attempt.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The delay before the next attempt after `failures` consecutive failures (≥ 1):
/// `base × 2^(failures−1)`, at most [`MAX_DELAY`], before jitter.
pub fn delay(base: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(MAX_DELAY)
}

/// Adds up to half of `delay` at random.
pub fn with_jitter(delay: Duration) -> Duration {
    delay + Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 2))
}

/// Consecutive failures per object (namespace, name).
#[derive(Default)]
pub struct Failures {
    counts: Mutex<HashMap<(String, String), u32>>,
}

impl Failures {
    /// Records one more failure of the object; returns how many in a row it has had.
    pub fn record(&self, namespace: &str, name: &str) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts
            .entry((namespace.to_string(), name.to_string()))
            .or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets the object's failures (it reconciled, or it is gone).
    pub fn reset(&self, namespace: &str, name: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.remove(&(namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_per_failure_up_to_the_cap() {
        let base = Duration::from_secs(5);
        assert_eq!(delay(base, 1), Duration::from_secs(5));
        assert_eq!(delay(base, 2), Duration::from_secs(10));
        assert_eq!(delay(base, 4), Duration::from_secs(40));
        assert_eq!(delay(base, 7), MAX_DELAY);
        assert_eq!(delay(base, u32::MAX), MAX_DELAY);
    }

    #[test]
    fn jitter_adds_at_most_half() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(15));
        }
    }

    #[test]
    fn failures_count_per_object_and_reset() {
        let f = Failures::default();
        assert_eq!(f.record("ns", "a"), 1);
        assert_eq!(f.record("ns", "a"), 2);
        assert_eq!(f.record("ns", "b"), 1);
        assert_eq!(f.record("other", "a"), 1);
        f.reset("ns", "a");
        assert_eq!(f.record("ns", "a"), 1);
    }
}
