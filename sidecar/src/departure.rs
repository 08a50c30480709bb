//! Leaving the mesh before the app stops.
//!
//! With native sidecars the kubelet stops the app first and the sidecar only after the
//! app has exited, so a sidecar that left Consul on its own SIGTERM would leave too late:
//! callers would keep choosing an instance whose app is already shutting down. Instead
//! the app container's `preStop` hook (rendered by the operator, see
//! `streamgate_crds::contract::lifecycle`) asks the sidecar to leave, and the kubelet
//! sends the app SIGTERM only once the sidecar answered:
//!
//! 1. the registration stops, the check goes critical and the instance is deregistered
//!    (callers' blocking queries see it within milliseconds);
//! 2. the sidecar keeps serving for `leaveDelay`, for callers that resolved Consul just
//!    before (the seed's Go services resolve per call and dial the instance directly);
//! 3. the inbound listener closes and every inbound connection gets a graceful GOAWAY:
//!    in-flight calls finish, a caller that still tries gets a refused connection or
//!    stream, which every StreamGate sidecar retries on another instance.
//!
//! SIGTERM without a `preStop` (a pod whose app has its own hook, a sidecar run by hand)
//! runs the same departure, only later. Leaving happens once, however many ask.

use crate::consul::Registrar;
use crate::forward::inbound::Inbound;
use crate::state::Readiness;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the `preStop` hook waits for Consul to take the instance out.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Departure {
    registrar: Arc<Registrar>,
    /// Ends the registration's maintenance loop, which would otherwise set the check
    /// passing again at its next refresh.
    stop_registration: watch::Sender<bool>,
    maintain: Mutex<Option<JoinHandle<()>>>,
    readiness: Arc<Readiness>,
    inbound: Arc<Inbound>,
    /// How long to keep serving between leaving Consul and stopping inbound.
    leave_delay: Duration,
    started: AtomicBool,
    left: watch::Sender<bool>,
}

impl Departure {
    pub fn new(
        registrar: Arc<Registrar>,
        stop_registration: watch::Sender<bool>,
        maintain: JoinHandle<()>,
        readiness: Arc<Readiness>,
        inbound: Arc<Inbound>,
        leave_delay: Duration,
    ) -> Arc<Self> {
        Arc::new(Departure {
            registrar,
            stop_registration,
            maintain: Mutex::new(Some(maintain)),
            readiness,
            inbound,
            leave_delay,
            started: AtomicBool::new(false),
            left: watch::channel(false).0,
        })
    }

    /// Starts leaving Consul (once); the work goes on in the background, so a caller
    /// that stops waiting does not stop it.
    pub fn start_leaving(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.readiness.start_draining();
        let departure = self.clone();
        tokio::spawn(async move {
            let _ = departure.stop_registration.send(true);
            let maintain = departure
                .maintain
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(maintain) = maintain {
                let _ = maintain.await;
            }
            departure.registrar.leave().await;
            departure.left.send_replace(true);
        });
    }

    /// The `preStop` sequence: leave Consul, serve for `leaveDelay`, stop inbound. Returns
    /// false when Consul could not be told within [`LEAVE_TIMEOUT`] (the app is stopped
    /// anyway: holding the hook would only eat the grace period).
    pub async fn before_app_stops(self: &Arc<Self>) -> bool {
        self.start_leaving();
        let left = self.left_consul(LEAVE_TIMEOUT).await;
        tokio::time::sleep(self.leave_delay).await;
        self.stop_inbound().await;
        left
    }

    /// Waits until the instance is out of Consul; false when `within` ran out first.
    pub async fn left_consul(&self, within: Duration) -> bool {
        let mut left = self.left.subscribe();
        tokio::time::timeout(within, left.wait_for(|left| *left))
            .await
            .is_ok()
    }

    /// No new inbound calls: the listener closes (done when this returns), connections
    /// get a graceful GOAWAY.
    pub async fn stop_inbound(&self) {
        self.inbound.close().await;
    }
}

/// Who may ask the sidecar to leave: the kubelet running the `preStop` hook, whose
/// connection comes from the node's address or — on bridge-style pod networks — from
/// the pod's default gateway, and the pod itself. Another pod asking would take a live
/// instance out of service, so it is refused.
#[derive(Clone, Debug)]
pub struct LeaveCallers {
    pub pod_ip: IpAddr,
    pub host_ip: Option<IpAddr>,
}

impl LeaveCallers {
    pub fn admits(&self, peer: IpAddr) -> bool {
        self.admits_with_gateways(peer, &default_gateways())
    }

    fn admits_with_gateways(&self, peer: IpAddr, gateways: &[IpAddr]) -> bool {
        let peer = canonical(peer);
        peer.is_loopback()
            || peer == canonical(self.pod_ip)
            || self.host_ip.map(canonical) == Some(peer)
            || gateways.contains(&peer)
    }
}

/// An IPv4 peer seen on a dual-stack socket (`::ffff:a.b.c.d`) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The pod's IPv4 default gateways, read at each request (the table is tiny).
fn default_gateways() -> Vec<IpAddr> {
    std::fs::read_to_string("/proc/net/route")
        .map(|table| parse_default_gateways(&table))
        .unwrap_or_default()
}

/// `/proc/net/route`: tab-separated, destination and gateway as little-endian hex.
fn parse_default_gateways(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (destination, gateway) = (fields.get(1)?, fields.get(2)?);
            if *destination != "00000000" {
                return None;
            }
            let raw = u32::from_str_radix(gateway, 16).ok()?;
            (raw != 0).then(|| IpAddr::V4(Ipv4Addr::from(raw.to_le_bytes())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateways_are_read_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0100580A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t0000580A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_default_gateways(table),
            vec![IpAddr::from([10, 88, 0, 1])]
        );
        assert!(parse_default_gateways("Iface\tDestination\tGateway\n").is_empty());
    }

    #[test]
    fn only_the_node_and_the_pod_itself_may_ask_to_leave() {
        let callers = LeaveCallers {
            pod_ip: IpAddr::from([10, 88, 0, 7]),
            host_ip: Some(IpAddr::from([192, 168, 5, 2])),
        };
        let gateways = [IpAddr::from([10, 88, 0, 1])];
        for admitted in [
            "127.0.0.1",
            "::1",
            "10.88.0.7",
            "10.88.0.1",
            "192.168.5.2",
            "::ffff:192.168.5.2",
        ] {
            let peer = admitted.parse().unwrap();
            assert!(callers.admits_with_gateways(peer, &gateways), "{admitted}");
        }
        // Another pod on the same network, and an unknown node.
        for refused in ["10.88.0.8", "192.168.5.3"] {
            let peer = refused.parse().unwrap();
            assert!(!callers.admits_with_gateways(peer, &gateways), "{refused}");
        }
    }
}
