//! Instances registered under a host name: resolved when Consul answers for their
//! service (so a name follows the instance's own changes, and a long-lived instance is
//! re-resolved at least every blocking-query wait), with the last good answer kept while
//! DNS fails, since an instance Consul still calls passing most likely still answers.

use super::{Endpoint, Named};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A lookup slower than this leaves the name to its last good answer (or out).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `text` can be a DNS host name: dot-separated labels of letters, digits and
/// `-`, at most 253 characters. Anything else in an address field is not dialled.
pub fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The last good address of each name, per followed service.
#[derive(Default)]
pub struct Resolver {
    last_good: HashMap<String, IpAddr>,
}

impl Resolver {
    /// The instances with their names resolved; a name DNS cannot resolve now keeps its
    /// last good address, and one never resolved is left out (warned about once).
    pub async fn resolve(&mut self, service: &str, named: Vec<Named>) -> Vec<Endpoint> {
        let lookups = named.iter().map(|n| lookup(&n.host, n.port));
        let answers = futures::future::join_all(lookups).await;
        let mut resolved = Vec::with_capacity(named.len());
        for (instance, answer) in named.into_iter().zip(answers) {
            if let Err(reason) = &answer {
                if self.last_good.contains_key(&instance.host) {
                    tracing::debug!(%service, host = %instance.host, %reason,
                        "host name lookup failed; keeping its last address");
                } else {
                    tracing::warn!(%service, id = %instance.endpoint.id, host = %instance.host,
                        %reason, "cannot resolve an instance's host name; skipping it");
                }
            }
            if let Some(ip) = self.settle(&instance.host, answer) {
                resolved.push(Endpoint {
                    addr: SocketAddr::new(ip, instance.port),
                    ..instance.endpoint
                });
            }
        }
        resolved
    }
}

impl Resolver {
    /// The address to use for `host` after a lookup: the answer (remembered), or the
    /// last good one when the lookup failed.
    fn settle(&mut self, host: &str, answer: Result<IpAddr, String>) -> Option<IpAddr> {
        match answer {
            Ok(ip) => {
                self.last_good.insert(host.to_string(), ip);
                Some(ip)
            }
            Err(_) => self.last_good.get(host).copied(),
        }
    }
}

/// One address of `host` (the first of the sorted answer, so the choice is stable).
async fn lookup(host: &str, port: u16) -> Result<IpAddr, String> {
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("no answer within {LOOKUP_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let mut addresses: Vec<IpAddr> = answer.map(|a| a.ip()).collect();
    addresses.sort();
    addresses
        .first()
        .copied()
        .ok_or_else(|| "no address".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_told_from_garbage() {
        for name in [
            "localhost",
            "upload-service",
            "upload.media.svc.cluster.local.",
        ] {
            assert!(is_host_name(name), "{name}");
        }
        for not in [
            "",
            "a..b",
            "-upload",
            "up_load",
            "upload:80",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(!is_host_name(not), "{not}");
        }
    }

    /// Only `localhost` is looked up here: it resolves from /etc/hosts, so no DNS query
    /// leaves the machine.
    #[tokio::test]
    async fn a_name_resolves_to_an_address_with_the_registered_port() {
        let named = |host: &str| Named {
            host: host.to_string(),
            port: 9091,
            endpoint: Endpoint {
                id: format!("seed-{host}"),
                addr: SocketAddr::from(([0, 0, 0, 0], 9091)),
                namespace: None,
                mtls: false,
            },
        };
        let mut resolver = Resolver::default();
        let resolved = resolver.resolve("upload", vec![named("localhost")]).await;
        assert_eq!(resolved.len(), 1);
        assert!(resolved[0].addr.ip().is_loopback(), "{resolved:?}");
        assert_eq!(resolved[0].addr.port(), 9091);
        assert_eq!(resolved[0].id, "seed-localhost");
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_good_address_and_a_new_name_stays_out() {
        let mut resolver = Resolver::default();
        let failed = || Err("timed out".to_string());
        assert_eq!(resolver.settle("seed-upload", failed()), None);
        let ip = IpAddr::from([10, 0, 0, 9]);
        assert_eq!(resolver.settle("seed-upload", Ok(ip)), Some(ip));
        assert_eq!(resolver.settle("seed-upload", failed()), Some(ip));
        let moved = IpAddr::from([10, 0, 0, 10]);
        assert_eq!(resolver.settle("seed-upload", Ok(moved)), Some(moved));
    }
}
