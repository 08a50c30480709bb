//! A short memory of values written moments ago, for as long as a watch cache may lag
//! behind them: the children's creation answers in `known` and the statuses in
//! `written` both read through it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a written value stands in for a cache that has not shown it yet. Past it the
/// cache is trusted again, whatever it holds (a watch is normally milliseconds behind).
pub const CATCH_UP: Duration = Duration::from_secs(5);

/// Values the operator wrote or was answered moments ago, each kept until the cache shows
/// it (the caller tells) or for at most [`CATCH_UP`]. Shared by the children's creation
/// answers in `known` and the statuses in `written`.
pub struct Recent<Key, V> {
    entries: Mutex<HashMap<Key, (V, Instant)>>,
}

impl<Key: Eq + Hash, V: Clone> Default for Recent<Key, V> {
    fn default() -> Self {
        Recent {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<Key: Eq + Hash, V: Clone> Recent<Key, V> {
    /// The value remembered for `key`, unless it is older than [`CATCH_UP`] or
    /// `caught_up` says the cache now shows it (or supersedes it): then it is forgotten.
    pub fn get(&self, key: &Key, now: Instant, caught_up: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (value, at) = entries.get(key)?;
        if caught_up(value) || now.duration_since(*at) > CATCH_UP {
            entries.remove(key);
            return None;
        }
        Some(value.clone())
    }

    pub fn insert(&self, key: Key, value: V, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Entries nobody asked for again (their resource was deleted) go once stale.
        entries.retain(|_, (_, at)| now.duration_since(*at) <= CATCH_UP);
        entries.insert(key, (value, now));
    }
}
