//! Retries of failed calls: which status codes, how long to wait, and a budget that
//! keeps retries from multiplying the load on a service that is already failing.
//!
//! Only requests whose body is at most [`MAX_RETRY_BODY`] are retried: a retry must
//! resend the body, so the sidecar keeps a copy of it, and a bounded copy keeps the
//! sidecar's memory bounded. Larger (or streaming) requests are forwarded once.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use streamgate_crds::{RetryOn, RetryPolicy as RetrySpec};
use tonic::Code;

/// Requests with a larger body are not retried (see the module documentation).
pub const MAX_RETRY_BODY: usize = 64 * 1024;

/// How failed calls to one upstream are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first included: 1 means no retry.
    pub attempts: u32,
    /// The first backoff.
    pub base: Duration,
    /// The largest backoff.
    pub max: Duration,
    /// Status codes that are retried.
    pub retry_on: Vec<Code>,
}

impl RetryPolicy {
    /// From the spec's `retries`; None means no status is retried (attempts 1).
    /// Connection failures are retried regardless: see
    /// [`RetryPolicy::default_for_connect_failures`].
    pub fn from_spec(spec: Option<&RetrySpec>) -> Self {
        let Some(spec) = spec else {
            let backoff = streamgate_crds::Backoff::default();
            return RetryPolicy {
                attempts: 1,
                base: backoff.base.as_duration(),
                max: backoff.max.as_duration(),
                retry_on: Vec::new(),
            };
        };
        let base = spec.backoff.base.as_duration();
        RetryPolicy {
            // The API server enforces 1..=10; a hand-written config might not.
            attempts: u32::try_from(spec.attempts).unwrap_or(1).clamp(1, 10),
            base,
            max: spec.backoff.max.as_duration().max(base),
            retry_on: spec.retry_on.iter().map(|&on| code_of(on)).collect(),
        }
    }

    /// Total tries for a call whose connection could not be opened: nothing reached a
    /// server, so one more try on another instance is always safe, whatever the spec.
    pub fn default_for_connect_failures() -> u32 {
        2
    }

    /// Total tries allowed when every failure so far was a connection failure.
    pub fn connect_failure_attempts(&self) -> u32 {
        self.attempts.max(Self::default_for_connect_failures())
    }

    /// Whether a call that ended with `code` may be retried.
    pub fn retries(&self, code: Code) -> bool {
        self.retry_on.contains(&code)
    }

    /// The wait before retry number `retry` (1 for the first retry): exponential from
    /// `base`, capped at `max`, with equal jitter from `unit` in `[0, 1)`: between half
    /// and all of the step, so retries of many callers spread out yet none is immediate.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let step = self.base.saturating_mul(1u32 << doublings).min(self.max);
        // NaN clamps to NaN: treat it as the full step rather than panic in mul_f64.
        let unit = if unit.is_nan() {
            1.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        step.mul_f64(0.5 + 0.5 * unit)
    }
}

/// The status code each `retryOn` value names.
pub fn code_of(on: RetryOn) -> Code {
    match on {
        RetryOn::Unavailable => Code::Unavailable,
        RetryOn::ResourceExhausted => Code::ResourceExhausted,
        RetryOn::Aborted => Code::Aborted,
        RetryOn::DeadlineExceeded => Code::DeadlineExceeded,
        RetryOn::Internal => Code::Internal,
        RetryOn::Unknown => Code::Unknown,
    }
}

/// Buckets the window is divided into: what the memory of the budget costs.
const BUCKETS: usize = 10;

/// A retry budget as in Finagle and linkerd: over the last `window`, retries may
/// number `min_per_second` × window (so a quiet service can still retry) plus `ratio`
/// of the original requests. When a service fails, its callers add at most that much
/// load instead of multiplying it by the attempts.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries the window allows with no request at all.
    reserve: f64,
    bucket_length: Duration,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    /// The first time seen: bucket numbers count from it.
    origin: Option<Instant>,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket since `origin` these counts belong to.
    number: u64,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let window = window.max(Duration::from_millis(BUCKETS as u64));
        RetryBudget {
            ratio: if ratio.is_finite() {
                ratio.max(0.0)
            } else {
                0.0
            },
            reserve: f64::from(min_per_second) * window.as_secs_f64(),
            bucket_length: window / BUCKETS as u32,
            ring: Mutex::new(Ring {
                origin: None,
                buckets: [Bucket::default(); BUCKETS],
            }),
        }
    }

    /// Counts an original request (not a retry).
    pub fn deposit(&self, now: Instant) {
        let mut ring = self.lock();
        self.bucket(&mut ring, now).requests += 1;
    }

    /// Takes one retry from the budget; false when the budget is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut ring = self.lock();
        let current = self.bucket(&mut ring, now).number;
        let (requests, retries) = ring
            .buckets
            .iter()
            .filter(|b| b.number + BUCKETS as u64 > current)
            .fold((0, 0), |(req, ret), b| (req + b.requests, ret + b.retries));
        let allowed = self.reserve + self.ratio * requests as f64;
        if (retries as f64) < allowed.floor() {
            self.bucket(&mut ring, now).retries += 1;
            true
        } else {
            false
        }
    }

    /// The bucket for `now`, emptied first if it last held counts of an older round.
    fn bucket<'a>(&self, ring: &'a mut Ring, now: Instant) -> &'a mut Bucket {
        let origin = *ring.origin.get_or_insert(now);
        let elapsed = now.saturating_duration_since(origin);
        let number = (elapsed.as_nanos() / self.bucket_length.as_nanos().max(1)) as u64;
        let bucket = &mut ring.buckets[(number % BUCKETS as u64) as usize];
        if bucket.number != number {
            *bucket = Bucket {
                number,
                ..Bucket::default()
            };
        }
        bucket
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Counters are never left half-updated, so a poisoned lock is still sound.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamgate_crds::{Backoff, GoDuration};

    fn policy(base_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
            retry_on: vec![Code::Unavailable],
        }
    }

    #[test]
    fn no_spec_retries_no_status_but_connection_failures_once() {
        let none = RetryPolicy::from_spec(None);
        assert_eq!(none.attempts, 1);
        assert!(!none.retries(Code::Unavailable));
        assert_eq!(none.connect_failure_attempts(), 2);
        assert_eq!(policy(1, 1).connect_failure_attempts(), 3);
    }

    #[test]
    fn from_spec_maps_every_retry_on_value_to_its_code() {
        let spec = RetrySpec {
            attempts: 4,
            backoff: Backoff {
                base: GoDuration::from_millis(25),
                max: GoDuration::from_millis(1_000),
            },
            retry_on: vec![
                RetryOn::Unavailable,
                RetryOn::ResourceExhausted,
                RetryOn::Aborted,
                RetryOn::DeadlineExceeded,
                RetryOn::Internal,
                RetryOn::Unknown,
            ],
        };
        let policy = RetryPolicy::from_spec(Some(&spec));
        assert_eq!(policy.attempts, 4);
        assert_eq!(policy.base, Duration::from_millis(25));
        assert_eq!(
            policy.retry_on,
            [
                Code::Unavailable,
                Code::ResourceExhausted,
                Code::Aborted,
                Code::DeadlineExceeded,
                Code::Internal,
                Code::Unknown
            ]
        );
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
        ] {
            assert!(!policy.retries(code), "{code:?}");
        }
        let wild = RetrySpec {
            attempts: -3,
            ..spec.clone()
        };
        assert_eq!(RetryPolicy::from_spec(Some(&wild)).attempts, 1);
        let many = RetrySpec {
            attempts: 99,
            ..spec
        };
        assert_eq!(RetryPolicy::from_spec(Some(&many)).attempts, 10);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_equal_jitter() {
        let p = policy(25, 1_000);
        let full: Vec<u128> = (1..=8).map(|r| p.backoff(r, 1.0).as_millis()).collect();
        assert_eq!(full, [25, 50, 100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(p.backoff(1, 0.0), Duration::from_micros(12_500));
        assert_eq!(p.backoff(0, 1.0), Duration::from_millis(25));
        assert_eq!(p.backoff(u32::MAX, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(3, f64::NAN), Duration::from_millis(100));
        assert_eq!(p.backoff(3, -4.0), Duration::from_millis(50));
    }

    #[test]
    fn sustained_failure_retries_about_a_fifth_of_the_requests() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        let start = Instant::now();
        let (mut requests, mut retries) = (0u32, 0u32);
        // 1,000 requests per second for 60 s, each failing and asking for a retry.
        for ms in 0..60_000u64 {
            let now = start + Duration::from_millis(ms);
            budget.deposit(now);
            requests += 1;
            if budget.try_withdraw(now) {
                retries += 1;
            }
        }
        // 20% plus the floor of 10/s (1% at this rate) — and certainly not every one.
        let share = f64::from(retries) / f64::from(requests);
        assert!((0.19..0.23).contains(&share), "retried {share:.3}");
    }

    #[test]
    fn the_floor_lets_a_quiet_service_retry_every_failure() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        let start = Instant::now();
        for s in 0..30u64 {
            let now = start + Duration::from_secs(s);
            budget.deposit(now);
            assert!(budget.try_withdraw(now), "second {s}");
            assert!(budget.try_withdraw(now), "second {s}, second retry");
        }
    }

    #[test]
    fn a_spent_budget_recovers_when_the_window_moves_on() {
        let budget = RetryBudget::new(0.0, 1, Duration::from_secs(10));
        let start = Instant::now();
        let granted = (0..20).filter(|_| budget.try_withdraw(start)).count();
        assert_eq!(granted, 10, "the floor: 1 per second over 10 s");
        assert!(!budget.try_withdraw(start + Duration::from_secs(9)));
        assert!(budget.try_withdraw(start + Duration::from_secs(10)));
    }

    #[test]
    fn the_ratio_alone_allows_a_share_of_the_requests() {
        let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        let now = Instant::now();
        assert!(!budget.try_withdraw(now));
        for _ in 0..10 {
            budget.deposit(now);
        }
        let granted = (0..10).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 2);
    }
}
