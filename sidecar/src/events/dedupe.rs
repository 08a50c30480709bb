//! Ids delivered within the duplicate window, so a redelivery of an event the app
//! already accepted (its ack was lost, or it was published twice outside JetStream's
//! own window) is acked without reaching the app again.
//!
//! Per sidecar and subscription; bounded in entries as well as in time.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

pub struct Dedupe {
    window: Duration,
    max_entries: usize,
    seen: HashSet<String>,
    order: VecDeque<(Instant, String)>,
}

impl Dedupe {
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Dedupe {
            window,
            max_entries,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn contains(&mut self, id: &str, now: Instant) -> bool {
        self.expire(now);
        self.seen.contains(id)
    }

    pub fn insert(&mut self, id: String, now: Instant) {
        self.expire(now);
        if self.seen.insert(id.clone()) {
            self.order.push_back((now, id));
        }
        while self.order.len() > self.max_entries {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_after_the_window_and_beyond_the_bound() {
        let mut d = Dedupe::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        d.insert("a".into(), t0);
        assert!(d.contains("a", t0 + Duration::from_secs(9)));
        assert!(!d.contains("a", t0 + Duration::from_secs(10)));
        d.insert("b".into(), t0);
        d.insert("c".into(), t0);
        d.insert("d".into(), t0);
        assert!(!d.contains("b", t0));
        assert!(d.contains("c", t0) && d.contains("d", t0));
    }
}
