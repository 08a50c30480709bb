//! Load balancing: power of two choices over peak-EWMA cost, as in linkerd2-proxy and
//! Finagle. Each pick compares two random instances and takes the cheaper, where cost
//! is latency estimate × (requests in flight + 1): slow or busy instances get less
//! traffic without any instance ever being starved of the samples that would show it
//! recovered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Latency estimate and load of one instance. Cheap to clone: clones share state.
#[derive(Clone, Debug)]
pub struct PeakEwma {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Time constant of the decay, in nanoseconds.
    decay_nanos: f64,
    estimate: Mutex<Estimate>,
    outstanding: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    rtt_nanos: f64,
    updated: Instant,
}

impl Estimate {
    /// The estimate decayed from its last update to `now`: it falls toward zero while
    /// no sample arrives, so an instance penalised for a past peak is tried again.
    fn decayed(&self, now: Instant, decay_nanos: f64) -> (f64, f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        let weight = (-elapsed / decay_nanos).exp();
        (self.rtt_nanos * weight, weight)
    }
}

/// Keeps the cost of an instance whose estimate decayed to (almost) nothing
/// proportional to its load, so in-flight requests still spread.
const MIN_RTT_NANOS: f64 = 1.0;

impl PeakEwma {
    /// `default_rtt` is the estimate before the first sample; `decay` is the time
    /// constant over which older samples lose weight.
    pub fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        PeakEwma {
            shared: Arc::new(Shared {
                // A zero decay would divide by zero; a nanosecond forgets at once.
                decay_nanos: decay.as_nanos().max(1) as f64,
                estimate: Mutex::new(Estimate {
                    rtt_nanos: default_rtt.as_nanos() as f64,
                    updated: now,
                }),
                outstanding: AtomicUsize::new(0),
            }),
        }
    }

    /// Counts a request in flight until the returned guard completes or drops.
    pub fn start(&self) -> Pending {
        self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
        Pending {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Requests in flight.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Relaxed)
    }

    /// Latency estimate at `now` × (requests in flight + 1), in nanoseconds.
    pub fn cost(&self, now: Instant) -> f64 {
        let (rtt, _) = self.shared.estimate().decayed(now, self.shared.decay_nanos);
        rtt.max(MIN_RTT_NANOS) * (self.outstanding() as f64 + 1.0)
    }

    /// The latency estimate at `now`.
    pub fn estimate(&self, now: Instant) -> Duration {
        let (rtt, _) = self.shared.estimate().decayed(now, self.shared.decay_nanos);
        Duration::from_nanos(rtt as u64)
    }
}

impl Shared {
    fn estimate(&self) -> Estimate {
        // A panic elsewhere cannot leave an Estimate half-written: keep using it.
        *self.estimate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let mut estimate = self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        let (current, weight) = estimate.decayed(now, self.decay_nanos);
        // Peak-sensitive: a slower sample is believed at once, a faster one only
        // gradually, so an instance that turns slow loses traffic immediately.
        estimate.rtt_nanos = if sample > current {
            sample
        } else {
            current + sample * (1.0 - weight)
        };
        estimate.updated = now;
    }
}

/// One request in flight on an instance. [`Pending::complete`] records its latency;
/// dropping it without completing (a cancelled or failed-to-start request) only ends
/// the count, because its latency says nothing about the instance.
#[derive(Debug)]
#[must_use = "dropping the guard ends the request's count at once"]
pub struct Pending {
    shared: Arc<Shared>,
}

impl Pending {
    /// Records the request's latency and ends its count.
    pub fn complete(self, rtt: Duration, now: Instant) {
        self.shared.record(rtt, now);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.shared.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: two distinct random eligible indices below `len`, the one
/// with the lower `cost`. With one eligible index, that one; with none, None.
///
/// Draws two random indices first, which is all it takes while every instance is
/// eligible; otherwise it counts the eligible ones and draws among them. Never
/// allocates.
pub fn p2c(
    len: usize,
    eligible: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let cheaper = |a: usize, b: usize| if cost(b) < cost(a) { b } else { a };
    match len {
        0 => return None,
        1 => return eligible(0).then_some(0),
        _ => {}
    }
    let (a, b) = distinct_pair(len, rng);
    if eligible(a) && eligible(b) {
        return Some(cheaper(a, b));
    }
    // Some instances are ejected: a uniform pair among the eligible ones, found by rank.
    let count = (0..len).filter(|&i| eligible(i)).count();
    let nth_eligible = |rank: usize| (0..len).filter(|&i| eligible(i)).nth(rank);
    match count {
        0 => None,
        1 => nth_eligible(0),
        _ => {
            let (first, second) = distinct_pair(count, rng);
            match (nth_eligible(first), nth_eligible(second)) {
                (Some(a), Some(b)) => Some(cheaper(a, b)),
                // Eligibility changed under us (a breaker opened): settle for one.
                (Some(only), None) | (None, Some(only)) => Some(only),
                (None, None) => None,
            }
        }
    }
}

/// Two distinct uniform indices below `len` (which must be at least 2).
fn distinct_pair(len: usize, rng: &mut fastrand::Rng) -> (usize, usize) {
    let a = rng.usize(..len);
    let mut b = rng.usize(..len - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_RTT: Duration = Duration::from_millis(30);
    const DECAY: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_slow_instance_gets_far_less_traffic_than_fast_ones() {
        let mut now = Instant::now();
        let rtts = [ms(100), ms(5), ms(5), ms(5), ms(5)];
        let instances: Vec<PeakEwma> = rtts
            .iter()
            .map(|_| PeakEwma::new(DEFAULT_RTT, DECAY, now))
            .collect();
        let mut picks = [0usize; 5];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5_000 {
            let i = p2c(
                instances.len(),
                |_| true,
                |i| instances[i].cost(now),
                &mut rng,
            )
            .expect("all eligible");
            picks[i] += 1;
            now += ms(1);
            instances[i].start().complete(rtts[i], now);
        }
        // A fair share would be 1,000.
        assert!(picks[0] < 100, "slow instance picked {picks:?}");
        assert!(picks[1..].iter().all(|&n| n > 900), "{picks:?}");
    }

    #[test]
    fn requests_in_flight_spread_over_equal_instances() {
        let now = Instant::now();
        let instances: Vec<PeakEwma> = (0..4)
            .map(|_| PeakEwma::new(DEFAULT_RTT, DECAY, now))
            .collect();
        let mut rng = fastrand::Rng::with_seed(11);
        let mut in_flight = Vec::new();
        for _ in 0..400 {
            let i = p2c(4, |_| true, |i| instances[i].cost(now), &mut rng).expect("eligible");
            in_flight.push(instances[i].start());
        }
        let loads: Vec<usize> = instances.iter().map(PeakEwma::outstanding).collect();
        assert_eq!(loads.iter().sum::<usize>(), 400);
        let (min, max) = (loads.iter().min(), loads.iter().max());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 10),
            "{loads:?}"
        );
        drop(in_flight);
        assert!(instances.iter().all(|e| e.outstanding() == 0));
    }

    #[test]
    fn a_peak_is_believed_at_once_and_decays_away() {
        let mut now = Instant::now();
        let decay = ms(100);
        let instance = PeakEwma::new(ms(10), decay, now);
        now += ms(1);
        instance.start().complete(Duration::from_secs(1), now);
        assert_eq!(instance.estimate(now), Duration::from_secs(1));
        // Fast samples bring it down over a few time constants.
        for _ in 0..100 {
            now += ms(10);
            instance.start().complete(ms(10), now);
        }
        let after = instance.estimate(now);
        assert!(after < ms(11), "{after:?}");
        // And with no samples at all, the estimate alone decays.
        instance.start().complete(Duration::from_secs(1), now);
        assert!(instance.estimate(now + decay * 5) < ms(10));
    }

    #[test]
    fn a_faster_sample_moves_the_estimate_only_partly() {
        let start = Instant::now();
        let instance = PeakEwma::new(ms(100), Duration::from_secs(1), start);
        instance.start().complete(ms(10), start + ms(100));
        let estimate = instance.estimate(start + ms(100));
        assert!(estimate > ms(80) && estimate < ms(100), "{estimate:?}");
    }

    #[test]
    fn cost_grows_with_requests_in_flight_and_a_dropped_guard_records_nothing() {
        let now = Instant::now();
        let instance = PeakEwma::new(ms(10), DECAY, now);
        let idle = instance.cost(now);
        let first = instance.start();
        let second = instance.start();
        assert_eq!(instance.outstanding(), 2);
        assert!((instance.cost(now) - 3.0 * idle).abs() < 1.0);
        drop(first);
        second.complete(ms(10), now);
        assert_eq!(instance.outstanding(), 0);
        assert_eq!(instance.estimate(now), ms(10));
    }

    #[test]
    fn picks_only_eligible_instances() {
        let mut rng = fastrand::Rng::with_seed(3);
        assert_eq!(p2c(0, |_| true, |_| 1.0, &mut rng), None);
        assert_eq!(p2c(1, |_| true, |_| 1.0, &mut rng), Some(0));
        assert_eq!(p2c(1, |_| false, |_| 1.0, &mut rng), None);
        assert_eq!(p2c(8, |_| false, |_| 1.0, &mut rng), None);
        for _ in 0..100 {
            assert_eq!(p2c(8, |i| i == 5, |_| 1.0, &mut rng), Some(5));
            let pick = p2c(8, |i| i % 2 == 1, |i| i as f64, &mut rng);
            assert!(pick.is_some_and(|i| i % 2 == 1 && i != 7), "{pick:?}");
        }
    }

    #[test]
    fn the_cheaper_of_two_wins_and_every_instance_is_reachable() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut seen = [0usize; 3];
        for _ in 0..3_000 {
            let pick = p2c(3, |_| true, |i| i as f64, &mut rng).expect("eligible");
            seen[pick] += 1;
        }
        // Index 2 is the dearest, so it never wins a comparison; 0 wins two pairs of three.
        assert_eq!(seen[2], 0, "{seen:?}");
        assert!(seen[0] > 1_800 && seen[1] > 800, "{seen:?}");
    }
}
