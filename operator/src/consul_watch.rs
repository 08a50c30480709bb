//! Each service's Consul instances as the status step reads them: followed with one
//! blocking query per service instead of a request per status computation, so a
//! thousand services resynced every few seconds cost Consul a thousand held-open
//! queries, not thousands of reads a second.
//!
//! A service is followed from its first read until nobody has read it for
//! [`FORGET_AFTER`] (its resource deleted, or the operator no longer leading). While
//! Consul cannot be reached, readers get the error (the status says Consul is
//! unreachable) and the follower retries with backoff.

use crate::consul::{Consul, RegisteredInstance};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use streamgate_consul::contract::next_blocking_index as next_index;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a read waits for a newly followed service's first answer.
const FIRST_ANSWER: Duration = Duration::from_secs(5);
/// A service nobody read for this long stops being followed.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Retries while Consul fails: `RETRY_BASE × 2^(failures−1)`, jittered, at most 5 s.
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Consul's advice: never loop on blocking queries faster than this.
const MIN_QUERY_SPACING: Duration = Duration::from_millis(50);

/// The latest answer for one service: `None` until the first one.
type Latest = Option<Result<Arc<[RegisteredInstance]>, String>>;

#[derive(Clone)]
pub struct InstanceWatch {
    consul: Consul,
    followed: Arc<Mutex<HashMap<String, Followed>>>,
}

struct Followed {
    latest: watch::Receiver<Latest>,
    last_read: Instant,
}

impl InstanceWatch {
    pub fn new(consul: Consul) -> Self {
        InstanceWatch {
            consul,
            followed: Arc::default(),
        }
    }

    /// This cluster's StreamGate instances of `service` for pods of `namespace`.
    pub async fn managed_instances(
        &self,
        service: &str,
        namespace: &str,
    ) -> Result<Vec<RegisteredInstance>, String> {
        let mut latest = self.follow(service);
        let answer = tokio::time::timeout(FIRST_ANSWER, latest.wait_for(Option::is_some))
            .await
            .map_err(|_| format!("Consul did not answer for {service} within {FIRST_ANSWER:?}"))?
            .map_err(|_| "the Consul watch stopped".to_string())?
            .clone();
        let instances = answer.unwrap_or_else(|| Err("no answer".into()))?;
        Ok(instances
            .iter()
            .filter(|i| self.consul.is_ours(i) && i.namespace() == Some(namespace))
            .cloned()
            .collect())
    }

    /// The receiver of `service`'s answers, starting to follow it if nobody does.
    fn follow(&self, service: &str) -> watch::Receiver<Latest> {
        let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(entry) = followed.get_mut(service) {
            entry.last_read = now;
            return entry.latest.clone();
        }
        let (sender, latest) = watch::channel(None);
        followed.insert(
            service.to_string(),
            Followed {
                latest: latest.clone(),
                last_read: now,
            },
        );
        tokio::spawn(self.clone().run(service.to_string(), sender));
        latest
    }

    /// True (and the service forgotten) when nobody read it for [`FORGET_AFTER`].
    fn forget_if_unread(&self, service: &str) -> bool {
        let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        let unread = followed
            .get(service)
            .is_none_or(|entry| entry.last_read.elapsed() > FORGET_AFTER);
        if unread {
            followed.remove(service);
        }
        unread
    }

    async fn run(self, service: String, sender: watch::Sender<Latest>) {
        let mut failures = 0u32;
        let retry = |failures: u32| {
            crate::backoff::with_jitter(crate::backoff::delay(RETRY_BASE, failures).min(RETRY_MAX))
        };
        let mut index: Option<u64> = None;
        loop {
            if self.forget_if_unread(&service) {
                tracing::debug!(%service, "no longer following the service's Consul instances");
                return;
            }
            let started = Instant::now();
            let pause = match self.consul.instances_after(&service, index).await {
                Ok((instances, next)) => {
                    failures = 0;
                    sender.send_replace(Some(Ok(Arc::from(instances))));
                    index = next_index(index, next);
                    match index {
                        Some(_) => MIN_QUERY_SPACING.saturating_sub(started.elapsed()),
                        // No index to block on: poll, not in a tight loop.
                        None => retry(1),
                    }
                }
                Err(e) => {
                    failures += 1;
                    sender.send_replace(Some(Err(e.to_string())));
                    index = None;
                    retry(failures)
                }
            };
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_consul_is_an_error_for_the_reader_not_a_hang() {
        // Nothing listens on port 9 (discard) on loopback: refused at once.
        let consul = Consul::new("127.0.0.1:9", None, "c1").unwrap();
        let watch = InstanceWatch::new(consul);
        let error = watch
            .managed_instances("upload", "media")
            .await
            .unwrap_err();
        assert!(error.contains("Consul"), "{error}");
    }
}
