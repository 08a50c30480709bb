//! Turns probe results into a health state with failure and success thresholds.
//!
//! Pure, so every rule is unit-tested: an app that has not been seen healthy yet counts
//! as unhealthy (its Consul check starts critical), needs `successThreshold` successes
//! in a row to become healthy, and a healthy app needs `failureThreshold` failures in a
//! row to become unhealthy. Only changes are reported, so they are logged once.

/// The app's health as the thresholds judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No probe has finished yet.
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn is_healthy(self) -> bool {
        self == Health::Healthy
    }
}

#[derive(Debug, Clone)]
pub struct Thresholds {
    failure: u32,
    success: u32,
    state: Health,
    successes: u32,
    failures: u32,
}

impl Thresholds {
    /// Thresholds below 1 behave as 1.
    pub fn new(failure_threshold: u32, success_threshold: u32) -> Self {
        Thresholds {
            failure: failure_threshold.max(1),
            success: success_threshold.max(1),
            state: Health::Unknown,
            successes: 0,
            failures: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = match (self.state, ok) {
            (Health::Healthy, false) if self.failures >= self.failure => Health::Unhealthy,
            (Health::Unknown | Health::Unhealthy, true) if self.successes >= self.success => {
                Health::Healthy
            }
            // Never seen healthy: a failure says so at once; Consul's check is critical
            // already, there is nothing for failureThreshold to protect.
            (Health::Unknown, false) => Health::Unhealthy,
            _ => return None,
        };
        self.state = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &mut Thresholds, results: &[bool]) -> Vec<Option<Health>> {
        results.iter().map(|&ok| t.observe(ok)).collect()
    }

    #[test]
    fn first_success_makes_a_starting_app_healthy() {
        let mut t = Thresholds::new(3, 1);
        assert_eq!(t.state(), Health::Unknown);
        assert_eq!(t.observe(true), Some(Health::Healthy));
        assert_eq!(t.observe(true), None, "no change, nothing to report");
    }

    #[test]
    fn a_starting_app_needs_success_threshold_successes() {
        let mut t = Thresholds::new(3, 2);
        assert_eq!(run(&mut t, &[true, true]), [None, Some(Health::Healthy)]);
    }

    #[test]
    fn a_starting_app_that_fails_is_unhealthy_at_once() {
        let mut t = Thresholds::new(3, 1);
        assert_eq!(
            run(&mut t, &[false, false]),
            [Some(Health::Unhealthy), None]
        );
    }

    #[test]
    fn healthy_app_turns_unhealthy_only_after_failure_threshold_in_a_row() {
        let mut t = Thresholds::new(3, 1);
        t.observe(true);
        assert_eq!(
            run(&mut t, &[false, false, true]),
            [None, None, None],
            "a success resets the count"
        );
        assert_eq!(
            run(&mut t, &[false, false, false]),
            [None, None, Some(Health::Unhealthy)]
        );
    }

    #[test]
    fn unhealthy_app_recovers_after_success_threshold_in_a_row() {
        let mut t = Thresholds::new(1, 3);
        t.observe(true);
        t.observe(true);
        t.observe(true);
        assert_eq!(t.observe(false), Some(Health::Unhealthy));
        assert_eq!(
            run(&mut t, &[true, true, false]),
            [None, None, None],
            "a failure resets the count"
        );
        assert_eq!(
            run(&mut t, &[true, true, true]),
            [None, None, Some(Health::Healthy)]
        );
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        let mut t = Thresholds::new(0, 0);
        assert_eq!(
            run(&mut t, &[true, false, true]),
            [
                Some(Health::Healthy),
                Some(Health::Unhealthy),
                Some(Health::Healthy)
            ]
        );
    }
}
