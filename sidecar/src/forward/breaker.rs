//! Per-instance circuit breaking (the spec's `circuitBreaker`): after
//! `consecutiveFailures` failures in a row the instance is ejected for `baseEjection`;
//! then exactly one request probes it. A successful probe brings it back; a failed one
//! ejects it again for twice as long, up to `maxEjection`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use streamgate_crds::CircuitBreaker;

/// The spec's `circuitBreaker`, in the units the breaker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl BreakerConfig {
    /// None (no circuit breaking) when the spec has no `circuitBreaker`.
    pub fn from_spec(spec: Option<&CircuitBreaker>) -> Option<Self> {
        let spec = spec?;
        let base_ejection = spec.base_ejection.as_duration();
        Some(BreakerConfig {
            // The API server enforces >= 1; a hand-written config might not.
            consecutive_failures: u32::try_from(spec.consecutive_failures).unwrap_or(1).max(1),
            base_ejection,
            max_ejection: spec.max_ejection.as_duration().max(base_ejection),
        })
    }
}

/// What the breaker lets a request do with its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The instance is healthy: send.
    Closed,
    /// The instance's ejection is over and this request is the one probe: send, and
    /// report the outcome with [`Breaker::record`] (or [`Breaker::release_probe`] when
    /// the request was abandoned and says nothing about the instance).
    Probe,
    /// The instance is ejected: choose another.
    Ejected,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out. If it never reports (its task was dropped without
    /// `release_probe`), the slot frees itself at `expires`, so the instance cannot
    /// stay ejected forever.
    Probing {
        started: Instant,
        expires: Instant,
    },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The length of the current (or last) ejection: doubles on each failed probe.
    ejection: Duration,
}

/// The circuit breaker of one instance. Time is passed in so tests are deterministic.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
    ejections: AtomicU64,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            state: Mutex::new(State {
                phase: Phase::Closed { failures: 0 },
                ejection: config.base_ejection,
            }),
            config,
            ejections: AtomicU64::new(0),
        }
    }

    /// Whether a request may be sent to the instance now; see [`Admission`].
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match state.phase {
            Phase::Closed { .. } => Admission::Closed,
            Phase::Open { until } | Phase::Probing { expires: until, .. } if now < until => {
                Admission::Ejected
            }
            Phase::Open { .. } | Phase::Probing { .. } => {
                state.phase = Phase::Probing {
                    started: now,
                    expires: now + state.ejection,
                };
                Admission::Probe
            }
        }
    }

    /// Whether [`Breaker::admit`] would let a request through now, without taking the
    /// probe: the balancer's eligibility test.
    pub fn is_available(&self, now: Instant) -> bool {
        match self.lock().phase {
            Phase::Closed { .. } => true,
            Phase::Open { until } | Phase::Probing { expires: until, .. } => now >= until,
        }
    }

    /// The outcome of a request sent to the instance.
    pub fn record(&self, success: bool, now: Instant) {
        let mut state = self.lock();
        if success {
            state.phase = Phase::Closed { failures: 0 };
            state.ejection = self.config.base_ejection;
            return;
        }
        match state.phase {
            Phase::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.consecutive_failures {
                    state.ejection = self.config.base_ejection;
                    self.open(&mut state, now);
                } else {
                    state.phase = Phase::Closed { failures };
                }
            }
            Phase::Probing { .. } => {
                state.ejection = state
                    .ejection
                    .saturating_mul(2)
                    .min(self.config.max_ejection);
                self.open(&mut state, now);
            }
            // A request sent before the ejection failing late: already counted.
            Phase::Open { .. } => {}
        }
    }

    /// Gives the probe slot back when the probing request was abandoned (cancelled by
    /// the caller) and so says nothing about the instance: the next request probes.
    pub fn release_probe(&self) {
        let mut state = self.lock();
        if let Phase::Probing { started, .. } = state.phase {
            // Open with the ejection already over: the next admit takes the probe.
            state.phase = Phase::Open { until: started };
        }
    }

    /// How many times the instance was ejected (failed probes included).
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// True while the instance is ejected or being probed.
    pub fn is_open(&self) -> bool {
        !matches!(self.lock().phase, Phase::Closed { .. })
    }

    fn open(&self, state: &mut State, now: Instant) {
        state.phase = Phase::Open {
            until: now + state.ejection,
        };
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state whole, so a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamgate_crds::GoDuration;

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(4);

    fn breaker(consecutive_failures: u32) -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures,
            base_ejection: BASE,
            max_ejection: MAX,
        })
    }

    fn fail(breaker: &Breaker, times: u32, now: Instant) {
        for _ in 0..times {
            breaker.record(false, now);
        }
    }

    #[test]
    fn opens_after_the_consecutive_failures_threshold_only() {
        let now = Instant::now();
        let b = breaker(3);
        fail(&b, 2, now);
        assert_eq!(b.admit(now), Admission::Closed);
        assert!(!b.is_open());
        fail(&b, 1, now);
        assert!(b.is_open());
        assert_eq!(b.ejections(), 1);
        assert_eq!(b.admit(now), Admission::Ejected);
        assert!(!b.is_available(now));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let now = Instant::now();
        let b = breaker(3);
        fail(&b, 2, now);
        b.record(true, now);
        fail(&b, 2, now);
        assert_eq!(b.admit(now), Admission::Closed);
        assert_eq!(b.ejections(), 0);
    }

    #[test]
    fn after_the_ejection_exactly_one_request_probes() {
        let start = Instant::now();
        let b = breaker(1);
        fail(&b, 1, start);
        let later = start + BASE;
        assert!(b.is_available(later));
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(!b.is_available(later));
        assert_eq!(b.admit(later), Admission::Ejected);
        assert_eq!(
            b.admit(later + Duration::from_millis(10)),
            Admission::Ejected
        );
    }

    #[test]
    fn a_successful_probe_closes() {
        let start = Instant::now();
        let b = breaker(1);
        fail(&b, 1, start);
        assert_eq!(b.admit(start + BASE), Admission::Probe);
        b.record(true, start + BASE);
        assert!(!b.is_open());
        assert_eq!(b.admit(start + BASE), Admission::Closed);
    }

    #[test]
    fn failed_probes_double_the_ejection_up_to_the_max_and_success_resets_it() {
        let mut now = Instant::now();
        let b = breaker(1);
        fail(&b, 1, now);
        let mut expected = Vec::new();
        for _ in 0..4 {
            // Find when the probe becomes available again, to the millisecond.
            let mut waited = Duration::ZERO;
            while !b.is_available(now + waited) {
                waited += Duration::from_millis(1);
            }
            expected.push(waited);
            now += waited;
            assert_eq!(b.admit(now), Admission::Probe);
            b.record(false, now);
        }
        assert_eq!(expected, [BASE, BASE * 2, MAX, MAX]);
        assert_eq!(b.ejections(), 5);
        // Each failed probe ejected for 4 s; a success brings back the base ejection.
        now += MAX;
        assert_eq!(b.admit(now), Admission::Probe);
        b.record(true, now);
        fail(&b, 1, now);
        assert!(!b.is_available(now + BASE - Duration::from_millis(1)));
        assert!(b.is_available(now + BASE));
    }

    #[test]
    fn a_released_probe_lets_the_next_request_probe() {
        let start = Instant::now();
        let b = breaker(1);
        fail(&b, 1, start);
        let later = start + BASE;
        assert_eq!(b.admit(later), Admission::Probe);
        b.release_probe();
        assert!(b.is_open());
        assert!(b.is_available(later));
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.ejections(), 1, "releasing is not an ejection");
    }

    #[test]
    fn a_probe_that_never_reports_expires_after_another_ejection_time() {
        let start = Instant::now();
        let b = breaker(1);
        fail(&b, 1, start);
        let probed = start + BASE;
        assert_eq!(b.admit(probed), Admission::Probe);
        assert_eq!(
            b.admit(probed + BASE - Duration::from_millis(1)),
            Admission::Ejected
        );
        assert_eq!(b.admit(probed + BASE), Admission::Probe);
    }

    #[test]
    fn late_failures_while_open_neither_extend_nor_count() {
        let start = Instant::now();
        let b = breaker(1);
        fail(&b, 1, start);
        fail(&b, 5, start + Duration::from_millis(500));
        assert_eq!(b.ejections(), 1);
        assert_eq!(b.admit(start + BASE), Admission::Probe);
    }

    #[test]
    fn from_spec_converts_and_repairs_out_of_range_values() {
        assert_eq!(BreakerConfig::from_spec(None), None);
        let spec = CircuitBreaker {
            consecutive_failures: 0,
            base_ejection: GoDuration::from_millis(2_000),
            max_ejection: GoDuration::from_millis(500),
        };
        assert_eq!(
            BreakerConfig::from_spec(Some(&spec)),
            Some(BreakerConfig {
                consecutive_failures: 1,
                base_ejection: Duration::from_secs(2),
                max_ejection: Duration::from_secs(2),
            })
        );
        let default = BreakerConfig::from_spec(Some(&CircuitBreaker::default()));
        assert_eq!(default.map(|c| c.consecutive_failures), Some(5));
    }
}
