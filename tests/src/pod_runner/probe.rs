//! Probes against the pod IP: `httpGet` (HTTP only; 200–399 passes), `tcpSocket` and
//! `grpc` (a TCP connect: the runner carries no gRPC health client). `exec` probes are
//! not run and count as passing.

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// One probe of one container with its thresholds and counters.
#[derive(Debug)]
pub struct ProbeState {
    probe: Probe,
    /// Resolved port (named ports looked up in the container).
    port: Option<u16>,
    next: Instant,
    successes: i32,
    failures: i32,
    /// The probe's verdict so far: `Some(true)` after successThreshold successes,
    /// `Some(false)` after failureThreshold failures.
    pub verdict: Option<bool>,
}

impl ProbeState {
    pub fn new(probe: &Probe, container: &Container, started: Instant) -> ProbeState {
        let port = port_of(probe).and_then(|p| resolve_port(&p, container));
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        ProbeState {
            probe: probe.clone(),
            port,
            next: started + Duration::from_secs(delay),
            successes: 0,
            failures: 0,
            verdict: None,
        }
    }

    /// Runs the probe if it is due; returns true when the verdict changed.
    pub async fn tick(&mut self, ip: Ipv4Addr, http: &reqwest::Client) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        let period = self.probe.period_seconds.unwrap_or(10).max(1) as u64;
        self.next = now + Duration::from_secs(period);
        let ok = self.run(ip, http).await;
        let before = self.verdict;
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.probe.success_threshold.unwrap_or(1).max(1) {
                self.verdict = Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1) {
                self.verdict = Some(false);
            }
        }
        before != self.verdict
    }

    async fn run(&self, ip: Ipv4Addr, http: &reqwest::Client) -> bool {
        let timeout = Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        if self.probe.exec.is_some() {
            return true;
        }
        let Some(port) = self.port else {
            return false;
        };
        if let Some(get) = &self.probe.http_get {
            let host = get.host.clone().unwrap_or_else(|| ip.to_string());
            let path = get.path.clone().unwrap_or_else(|| "/".into());
            let url = format!("http://{host}:{port}{path}");
            return http
                .get(url)
                .timeout(timeout)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() < 400);
        }
        matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await,
            Ok(Ok(_))
        )
    }
}

fn port_of(probe: &Probe) -> Option<IntOrString> {
    if let Some(get) = &probe.http_get {
        return Some(get.port.clone());
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Some(tcp.port.clone());
    }
    probe.grpc.as_ref().map(|g| IntOrString::Int(g.port))
}

/// A port number, or a named port of `container`.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => name.parse().ok().or_else(|| {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
        }),
    }
}
