//! Passing instances of a service from Consul, followed with blocking queries.
//!
//! One background task per service asks the local agent for
//! `/v1/health/service/<name>?passing=true`, then repeats the query as a blocking query
//! (`index` = the last `X-Consul-Index`, `wait=30s`) so a change arrives as soon as
//! Consul knows it. Subscribers get the sorted, deduplicated set on a watch channel,
//! only when it changed. While Consul cannot be reached the last known set stays: the
//! instances are most likely still there, and forgetting them would fail every call.
//!
//! An instance registered with a host name (the seed's Go services register their
//! hostname unless `SERVICE_HOST` is set; catalogs often hold DNS names) is resolved at
//! each answer for it, with the last good answer kept while DNS fails ([`names`]).

mod names;

use crate::backoff::Backoff;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamgate_crds::upstreams::is_dns_label;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long Consul holds a blocking query open when nothing changes.
const BLOCKING_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The agent is local: any call slower than this on top of the wait is in trouble.
const CALL_SLACK: Duration = Duration::from_secs(5);
/// Consul's advice: never loop on blocking queries faster than this, in case the index
/// misbehaves and every query returns at once.
const MIN_QUERY_SPACING: Duration = Duration::from_millis(50);
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

use streamgate_consul::contract::next_blocking_index as next_index;
use streamgate_consul::contract::{INBOUND_MTLS, META_INBOUND, META_NAMESPACE};
use streamgate_consul::health::{self, HealthEntry};
use streamgate_consul::{Answer, ConsulError, ConsulHttp, Seen, Timeouts};

/// One passing instance of a service: where its sidecar's inbound listener is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Consul's service instance ID.
    pub id: String,
    pub addr: SocketAddr,
    /// The pod's namespace (meta `k8s-namespace`), when registered by a sidecar.
    pub namespace: Option<String>,
    /// Whether the instance's inbound listener requires mTLS (meta
    /// `streamgate-inbound: mtls`).
    pub mtls: bool,
}

/// What discovery knows of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Consul has not answered yet.
    Pending,
    /// Consul's answer: the passing instances, sorted; empty when there are none.
    Known(Arc<[Endpoint]>),
}

/// The answer that was not used for an endpoint, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Skipped {
    pub id: String,
    pub address: String,
}

/// Passing instances in a `/v1/health/service` answer, sorted and deduplicated.
pub fn parse_health(body: &[u8]) -> Result<Vec<Endpoint>, serde_json::Error> {
    parse_health_entries(body).map(|(endpoints, _)| endpoints)
}

/// A passing instance registered under a host name, to resolve before dialling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub host: String,
    pub port: u16,
    /// The endpoint with a placeholder address, everything else from Consul.
    pub endpoint: Endpoint,
}

/// What one health answer holds: instances at an IP, instances under a host name, and
/// entries that cannot be dialled at all.
#[derive(Debug, Default)]
pub struct HealthAnswer {
    pub endpoints: Vec<Endpoint>,
    pub named: Vec<Named>,
    pub skipped: Vec<Skipped>,
}

/// As [`parse_health`], also returning the instances registered under a host name and
/// the entries whose address is neither an IP nor a host name with a port.
pub fn parse_health_entries(
    body: &[u8],
) -> Result<(Vec<Endpoint>, Vec<Skipped>), serde_json::Error> {
    parse_health_answer(body).map(|answer| (answer.endpoints, answer.skipped))
}

/// Every entry of a health answer, sorted into [`HealthAnswer`]'s three kinds.
pub fn parse_health_answer(body: &[u8]) -> Result<HealthAnswer, serde_json::Error> {
    let entries: Vec<HealthEntry> = serde_json::from_slice(body)?;
    let mut endpoints = Vec::with_capacity(entries.len());
    let mut named = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let address = entry.address().to_string();
        let port = entry.service.port;
        let endpoint = |addr| Endpoint {
            id: entry.service.id.clone(),
            addr,
            namespace: entry.meta(META_NAMESPACE).map(str::to_string),
            mtls: entry.meta(META_INBOUND) == Some(INBOUND_MTLS),
        };
        match address.parse::<IpAddr>() {
            Ok(ip) if port != 0 => {
                endpoints.push(endpoint(SocketAddr::new(ip, port)));
            }
            Err(_) if port != 0 && names::is_host_name(&address) => {
                named.push(Named {
                    endpoint: endpoint(SocketAddr::from(([0, 0, 0, 0], port))),
                    host: address,
                    port,
                });
            }
            _ => skipped.push(Skipped {
                id: entry.service.id.clone(),
                address: format!("{address}:{port}"),
            }),
        }
    }
    endpoints.sort();
    endpoints.dedup();
    Ok(HealthAnswer {
        endpoints,
        named,
        skipped,
    })
}

/// Follows services in Consul; one background task per service, shared by every
/// caller of [`Discovery::watch`]. Tasks run on the current tokio runtime.
pub struct Discovery {
    shared: Arc<Shared>,
}

struct Shared {
    /// Building a client fails only when TLS cannot be set up; then nothing resolves
    /// and every watch says why in the log.
    http: Result<ConsulHttp, ConsulError>,
    /// The sender of each followed service: `watch` subscribes to it, its task ends
    /// (and removes it) when the last receiver is gone.
    watches: Mutex<HashMap<String, Arc<watch::Sender<Resolution>>>>,
}

impl Discovery {
    /// `address` is Consul's base URL, e.g. `http://127.0.0.1:8500`.
    pub fn new(address: String, token: Option<String>) -> Self {
        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            call: CALL_SLACK,
        };
        Discovery {
            shared: Arc::new(Shared {
                http: ConsulHttp::new(&address, token, timeouts),
                watches: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The passing instances of `service`, kept current. The first call for a service
    /// starts following it (call from within a tokio runtime).
    pub fn watch(&self, service: &str) -> watch::Receiver<Resolution> {
        if !is_dns_label(service) {
            // Not a name Consul can have for us: no instance, and no query to make.
            return watch::channel(Resolution::Known(Arc::from(Vec::new()))).1;
        }
        let mut watches = self.shared.lock_watches();
        if let Some(sender) = watches.get(service) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(Resolution::Pending);
        let sender = Arc::new(sender);
        watches.insert(service.to_string(), Arc::clone(&sender));
        tokio::spawn(follow(
            Arc::clone(&self.shared),
            service.to_string(),
            sender,
        ));
        receiver
    }
}

impl Shared {
    fn lock_watches(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<watch::Sender<Resolution>>>> {
        // The map is never left half-updated: a poisoned lock is still sound.
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True (and the service forgotten) when nobody watches it any more. Decided under
    /// the map's lock, so a `watch` racing with the end either subscribes before (and
    /// the task goes on) or finds no entry (and starts a new task).
    fn abandon_if_unwatched(&self, service: &str, sender: &watch::Sender<Resolution>) -> bool {
        let mut watches = self.lock_watches();
        if sender.receiver_count() > 0 {
            return false;
        }
        watches.remove(service);
        true
    }

    /// One health query of passing instances; with `index`, a blocking one.
    async fn query(&self, service: &str, index: Option<u64>) -> Result<Answer, ConsulError> {
        let http = self.http.as_ref().map_err(Clone::clone)?;
        let seen = index.map(Seen::Index);
        http.get_blocking(
            &health::service_path(service, true),
            seen.as_ref(),
            BLOCKING_WAIT,
        )
        .await
    }
}

/// The task following one service until nobody watches it.
async fn follow(shared: Arc<Shared>, service: String, sender: Arc<watch::Sender<Resolution>>) {
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut index: Option<u64> = None;
    let mut warned_addresses: HashSet<Skipped> = HashSet::new();
    let mut resolver = names::Resolver::default();
    let mut failing = false;
    loop {
        let started = Instant::now();
        let answer = tokio::select! {
            answer = shared.query(&service, index) => answer,
            () = sender.closed() => {
                if shared.abandon_if_unwatched(&service, &sender) {
                    return;
                }
                continue;
            }
        };
        let parsed = answer.and_then(|answer| {
            parse_health_answer(&answer.body)
                .map(|parsed| (answer.index, parsed))
                .map_err(|e| ConsulError::Decode {
                    what: format!("the health query of {service}"),
                    reason: e.to_string(),
                })
        });
        let pause = match parsed {
            Ok((new_index, answer)) => {
                let HealthAnswer {
                    mut endpoints,
                    named,
                    skipped,
                } = answer;
                endpoints.extend(resolver.resolve(&service, named).await);
                endpoints.sort();
                endpoints.dedup();
                if failing {
                    tracing::info!(%service, "Consul answers again");
                    failing = false;
                }
                backoff.reset();
                for entry in skipped {
                    if !warned_addresses.contains(&entry) {
                        tracing::warn!(%service, id = %entry.id, address = %entry.address,
                            "skipping an instance whose address is neither an IP nor a host name with a port");
                        warned_addresses.insert(entry);
                    }
                }
                publish(&sender, endpoints);
                index = next_index(index, new_index);
                match index {
                    Some(_) => MIN_QUERY_SPACING.saturating_sub(started.elapsed()),
                    // No index to block on: poll, but not in a tight loop.
                    None => backoff.next_delay(),
                }
            }
            Err(reason) => {
                if failing {
                    tracing::debug!(%service, %reason, "discovery still failing");
                } else {
                    tracing::warn!(%service, %reason, "discovery failed; keeping the last known instances");
                    failing = true;
                }
                backoff.next_delay()
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = sender.closed() => {
                    if shared.abandon_if_unwatched(&service, &sender) {
                        return;
                    }
                }
            }
        }
    }
}

/// Sends the set to subscribers only when it differs from what they have.
fn publish(sender: &watch::Sender<Resolution>, endpoints: Vec<Endpoint>) {
    sender.send_if_modified(|current| {
        let unchanged = matches!(current, Resolution::Known(known) if **known == *endpoints);
        if !unchanged {
            *current = Resolution::Known(Arc::from(endpoints));
        }
        !unchanged
    });
}

#[cfg(test)]
mod tests;
