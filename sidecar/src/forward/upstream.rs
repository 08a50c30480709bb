//! One upstream service as the forwarder sees it: its settings from the spec's
//! `upstreams` entry, its instances (from discovery, each with its load estimate,
//! circuit breaker and connection pool) and the choice of an instance for a call.
//!
//! The instance list follows discovery: an instance that stays keeps its state (load,
//! breaker, connections), a new one starts fresh, a gone one is dropped with its pool.

use super::balance::{self, PeakEwma};
use super::breaker::{Admission, Breaker, BreakerConfig};
use super::discovery::{Endpoint, Resolution};
use super::metrics::UpstreamMetrics;
use super::pool::{Pool, PoolLimits};
use super::retry::{RetryBudget, RetryPolicy};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use streamgate_crds::Upstream as UpstreamSpec;
use tokio::sync::watch;

/// The load estimate of an instance nobody has measured yet.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How fast a latency peak is forgotten.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// The retry budget: retries may add 20% to the calls, plus 10 per second.
const BUDGET_RATIO: f64 = 0.2;
const BUDGET_MIN_PER_SECOND: u32 = 10;
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// How the sidecar calls one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: Option<BreakerConfig>,
    pub scope: NamespaceScope,
}

/// Which namespaces' instances of a service a call may go to. Consul service names are
/// one namespace for the whole cluster (and beyond), so `upload` in `media` and `upload`
/// in `sandbox` are instances of one service unless the caller says which it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// The caller's own namespace when it has any instance there, else every instance
    /// (another namespace's, or seed services registered without one).
    Prefer(String),
    /// Only this namespace's instances (`upstreams[].namespace`).
    Only(String),
}

impl NamespaceScope {
    pub fn select(&self, endpoints: &[Endpoint]) -> Vec<Endpoint> {
        let in_namespace = |ns: &str| -> Vec<Endpoint> {
            endpoints
                .iter()
                .filter(|e| e.namespace.as_deref() == Some(ns))
                .cloned()
                .collect()
        };
        match self {
            NamespaceScope::Only(ns) => in_namespace(ns),
            NamespaceScope::Prefer(ns) => {
                let local = in_namespace(ns);
                if local.is_empty() {
                    endpoints.to_vec()
                } else {
                    local
                }
            }
        }
    }
}

impl UpstreamSettings {
    /// From the spec's entry; a service the spec does not list gets the CRD's defaults
    /// (5 s timeout, no status retries, a breaker after 5 failures in a row, the
    /// caller's namespace preferred). `own_namespace` is the caller's.
    pub fn from_spec(spec: Option<&UpstreamSpec>, own_namespace: &str) -> Self {
        UpstreamSettings {
            scope: match spec.and_then(|s| s.namespace.clone()) {
                Some(namespace) => NamespaceScope::Only(namespace),
                None => NamespaceScope::Prefer(own_namespace.to_string()),
            },
            timeout: spec.map_or(Duration::from_secs(5), |s| s.timeout.as_duration()),
            retry: RetryPolicy::from_spec(spec.and_then(|s| s.retries.as_ref())),
            // Without a `circuitBreaker`, the CRD's defaults still apply: an instance
            // that fails five calls in a row should not keep receiving traffic.
            breaker: BreakerConfig::from_spec(Some(
                &spec
                    .and_then(|s| s.circuit_breaker.clone())
                    .unwrap_or_default(),
            )),
        }
    }
}

/// One instance with everything the forwarder keeps about it.
pub struct Backend {
    pub endpoint: Endpoint,
    pub load: PeakEwma,
    pub breaker: Option<Breaker>,
    pub pool: Pool,
}

/// Why no instance could take a call.
#[derive(Debug, PartialEq, Eq)]
pub enum NoInstance {
    /// Consul has no passing instance of the service.
    NonePassing,
    /// Every instance is ejected by the circuit breaker.
    AllEjected(usize),
    /// Discovery has not answered before the call's deadline.
    NotResolved,
}

pub struct Upstream {
    pub name: String,
    pub settings: UpstreamSettings,
    pub budget: RetryBudget,
    pub metrics: UpstreamMetrics,
    resolution: Mutex<watch::Receiver<Resolution>>,
    instances: Mutex<Arc<[Arc<Backend>]>>,
    limits: PoolLimits,
    rng: Mutex<fastrand::Rng>,
}

impl Upstream {
    pub fn new(
        name: String,
        settings: UpstreamSettings,
        resolution: watch::Receiver<Resolution>,
        metrics: UpstreamMetrics,
        limits: PoolLimits,
    ) -> Self {
        Upstream {
            name,
            settings,
            budget: RetryBudget::new(BUDGET_RATIO, BUDGET_MIN_PER_SECOND, BUDGET_WINDOW),
            metrics,
            resolution: Mutex::new(resolution),
            instances: Mutex::new(Arc::from(Vec::new())),
            limits,
            rng: Mutex::new(fastrand::Rng::new()),
        }
    }

    /// The current instances; waits (until `deadline`) for discovery's first answer.
    pub async fn instances(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<[Arc<Backend>]>, NoInstance> {
        loop {
            let mut waiter = {
                let mut resolution = lock(&self.resolution);
                if resolution.has_changed().unwrap_or(false) {
                    let latest = resolution.borrow_and_update().clone();
                    if let Resolution::Known(endpoints) = latest {
                        self.refresh(&endpoints);
                    }
                }
                match &*resolution.borrow() {
                    Resolution::Known(_) => return Ok(lock(&self.instances).clone()),
                    Resolution::Pending => resolution.clone(),
                }
            };
            match tokio::time::timeout_at(deadline, waiter.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(NoInstance::NotResolved),
            }
        }
    }

    /// Rebuilds the instance list for `endpoints` (those in the upstream's namespace
    /// scope), keeping the state of those that stay.
    fn refresh(&self, endpoints: &[Endpoint]) {
        let endpoints = self.settings.scope.select(endpoints);
        let mut instances = lock(&self.instances);
        let now = Instant::now();
        let next: Vec<Arc<Backend>> = endpoints
            .iter()
            .map(|endpoint| {
                instances
                    .iter()
                    .find(|i| i.endpoint == *endpoint)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Backend {
                            endpoint: endpoint.clone(),
                            load: PeakEwma::new(DEFAULT_RTT, EWMA_DECAY, now),
                            breaker: self.settings.breaker.clone().map(Breaker::new),
                            pool: Pool::new(self.limits, self.metrics.connections.clone()),
                        })
                    })
            })
            .collect();
        tracing::info!(upstream = %self.name, instances = next.len(), "instances changed");
        *instances = Arc::from(next);
    }

    /// Chooses an instance for an attempt: power of two choices over the load among
    /// instances the breaker admits, avoiding `tried` ones while others are left.
    pub fn pick(
        &self,
        instances: &[Arc<Backend>],
        tried: &[usize],
        now: Instant,
    ) -> Result<(usize, Admission), NoInstance> {
        if instances.is_empty() {
            return Err(NoInstance::NonePassing);
        }
        let available = |i: usize| {
            instances[i]
                .breaker
                .as_ref()
                .is_none_or(|b| b.is_available(now))
        };
        let mut rng = lock(&self.rng);
        let cost = |i: usize| instances[i].load.cost(now);
        let chosen = balance::p2c(
            instances.len(),
            |i| available(i) && !tried.contains(&i),
            cost,
            &mut rng,
        )
        .or_else(|| balance::p2c(instances.len(), available, cost, &mut rng))
        .ok_or(NoInstance::AllEjected(instances.len()))?;
        let admission = match &instances[chosen].breaker {
            Some(breaker) => breaker.admit(now),
            None => Admission::Closed,
        };
        match admission {
            Admission::Ejected => Err(NoInstance::AllEjected(instances.len())),
            admitted => Ok((chosen, admitted)),
        }
    }

    /// Closes connections idle for `idle` on every instance.
    pub fn close_idle(&self, idle: Duration) {
        let now = Instant::now();
        for instance in lock(&self.instances).iter() {
            instance.pool.close_idle(idle, now);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::metrics::ForwardMetrics;

    fn endpoint(id: &str, port: u16) -> Endpoint {
        Endpoint {
            id: id.to_string(),
            addr: ([127, 0, 0, 1], port).into(),
            namespace: None,
            mtls: false,
        }
    }

    fn upstream(breaker: Option<BreakerConfig>) -> (Upstream, watch::Sender<Resolution>) {
        let (tx, rx) = watch::channel(Resolution::Pending);
        let metrics = ForwardMetrics::default();
        let settings = UpstreamSettings {
            timeout: Duration::from_secs(1),
            retry: RetryPolicy::from_spec(None),
            breaker,
            scope: NamespaceScope::Prefer("default".into()),
        };
        let upstream = Upstream::new(
            "upload".into(),
            settings,
            rx,
            metrics.upstream("upload"),
            PoolLimits::default(),
        );
        (upstream, tx)
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(100)
    }

    #[test]
    fn the_callers_namespace_is_preferred_and_an_explicit_one_is_kept_to() {
        let at = |id: &str, port, namespace: Option<&str>| Endpoint {
            namespace: namespace.map(String::from),
            ..endpoint(id, port)
        };
        let all = vec![
            at("media-1", 1, Some("media")),
            at("sandbox-1", 2, Some("sandbox")),
            at("seed-1", 3, None),
        ];
        let ids = |endpoints: Vec<Endpoint>| -> Vec<String> {
            endpoints.into_iter().map(|e| e.id).collect()
        };
        let prefer = |ns: &str| NamespaceScope::Prefer(ns.into());
        assert_eq!(ids(prefer("media").select(&all)), ["media-1"]);
        // None in the caller's namespace: every instance, seed services included.
        assert_eq!(ids(prefer("edge").select(&all)).len(), 3);
        let only = NamespaceScope::Only("sandbox".into());
        assert_eq!(ids(only.select(&all)), ["sandbox-1"]);
        assert!(NamespaceScope::Only("edge".into()).select(&all).is_empty());
    }

    #[tokio::test]
    async fn instances_that_stay_keep_their_state() {
        let (upstream, tx) = upstream(None);
        tx.send(Resolution::Known(Arc::from(vec![
            endpoint("a", 1),
            endpoint("b", 2),
        ])))
        .unwrap();
        let first = upstream.instances(soon()).await.unwrap();
        tx.send(Resolution::Known(Arc::from(vec![
            endpoint("b", 2),
            endpoint("c", 3),
        ])))
        .unwrap();
        let second = upstream.instances(soon()).await.unwrap();
        assert_eq!(second.len(), 2);
        assert!(Arc::ptr_eq(&first[1], &second[0]), "b kept");
        assert_eq!(second[1].endpoint.id, "c");
    }

    #[tokio::test]
    async fn no_answer_from_discovery_is_not_resolved() {
        let (upstream, _tx) = upstream(None);
        let result = upstream.instances(soon()).await;
        assert_eq!(result.err(), Some(NoInstance::NotResolved));
    }

    #[tokio::test]
    async fn a_retry_avoids_the_instance_it_tried() {
        let (upstream, tx) = upstream(None);
        tx.send(Resolution::Known(Arc::from(vec![
            endpoint("a", 1),
            endpoint("b", 2),
        ])))
        .unwrap();
        let instances = upstream.instances(soon()).await.unwrap();
        for _ in 0..50 {
            let (chosen, _) = upstream.pick(&instances, &[0], Instant::now()).unwrap();
            assert_eq!(chosen, 1);
        }
        // With every instance tried, any is fine again.
        assert!(upstream.pick(&instances, &[0, 1], Instant::now()).is_ok());
    }

    #[tokio::test]
    async fn every_instance_ejected_fails_fast() {
        let config = BreakerConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
        };
        let (upstream, tx) = upstream(Some(config));
        tx.send(Resolution::Known(Arc::from(vec![endpoint("a", 1)])))
            .unwrap();
        let instances = upstream.instances(soon()).await.unwrap();
        let now = Instant::now();
        instances[0].breaker.as_ref().unwrap().record(false, now);
        assert_eq!(
            upstream.pick(&instances, &[], now).err(),
            Some(NoInstance::AllEjected(1))
        );
    }

    #[tokio::test]
    async fn no_passing_instance_is_reported_as_such() {
        let (upstream, tx) = upstream(None);
        tx.send(Resolution::Known(Arc::from(Vec::new()))).unwrap();
        let instances = upstream.instances(soon()).await.unwrap();
        assert_eq!(
            upstream.pick(&instances, &[], Instant::now()).err(),
            Some(NoInstance::NonePassing)
        );
    }
}
