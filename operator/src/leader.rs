//! Lease-based leader election (coordination.k8s.io/v1 Lease): one replica reconciles,
//! the others wait and take over once the holder stops renewing.
//!
//! The holder renews every `renew_every`; a candidate takes the lease when its
//! `renewTime + leaseDurationSeconds` has passed. Writes use the lease's
//! resourceVersion, so two candidates cannot both win. A holder that cannot renew within
//! the lease duration steps down (the caller exits), and one shutting down releases the
//! lease so a standby takes over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// Whether `lease` may be taken by `identity` at `now`.
pub fn may_acquire(lease: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let holder = lease.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = SignedDuration::from_secs(i64::from(lease.lease_duration_seconds.unwrap_or(15)));
    match &lease.renew_time {
        Some(renewed) => renewed.0 + duration < now,
        None => true,
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// One attempt to take or renew the lease; `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let duration_secs = self.config.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if !may_acquire(&spec, &self.config.identity, now) {
            return Ok(false);
        }
        let taking_over = spec.holder_identity.as_deref() != Some(&self.config.identity);
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(self.config.identity.clone());
        new_spec.lease_duration_seconds = Some(duration_secs);
        new_spec.renew_time = Some(MicroTime(now));
        if taking_over {
            new_spec.acquire_time = Some(MicroTime(now));
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(new_spec);
        // replace() carries the resourceVersion we read: a concurrent writer makes it 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs until leadership is lost after having been held (then returns), publishing
    /// the current state on `state`. Never returns while merely waiting as a standby.
    pub async fn run(&self, state: watch::Sender<bool>) {
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    if last_renewed.is_none() {
                        info!(identity = %self.config.identity, "became the leader");
                    }
                    last_renewed = Some(tokio::time::Instant::now());
                    let _ = state.send(true);
                }
                Ok(false) if last_renewed.is_some() => {
                    warn!(identity = %self.config.identity, "another replica took the leader lease");
                    let _ = state.send(false);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "leader election: lease request failed");
                    // Keep leading only while the lease we last renewed is still valid.
                    if last_renewed.is_some_and(|t| t.elapsed() >= self.config.lease_duration) {
                        warn!("could not renew the leader lease before it expired");
                        let _ = state.send(false);
                        return;
                    }
                }
            }
            tokio::time::sleep(self.config.renew_every).await;
        }
    }

    /// Gives the lease up so a standby takes over without waiting for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            warn!(error = %e, "could not release the leader lease");
        } else {
            info!("released the leader lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_holder_is_not_taken() {
        assert!(!may_acquire(&spec("other", 2), "me", Timestamp::now()));
    }

    #[test]
    fn an_expired_lease_or_our_own_or_a_released_one_is_taken() {
        assert!(may_acquire(&spec("other", 30), "me", Timestamp::now()));
        assert!(may_acquire(&spec("me", 2), "me", Timestamp::now()));
        let released = LeaseSpec::default();
        assert!(may_acquire(&released, "me", Timestamp::now()));
    }
}
