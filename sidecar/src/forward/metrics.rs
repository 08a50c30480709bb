//! Per-upstream forwarding metrics (requests by status code, latency, retries,
//! ejections, open connections) and inbound ones (calls by caller and status, refusals).
//!
//! The hot path never hashes a label set: each upstream keeps its own series handles,
//! created on first use (a status code nobody returned stays out of `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// Distinct callers the inbound series name; calls from further ones are counted under
/// [`OTHER_CALLERS`]. Without mTLS the caller is whatever the calling sidecar wrote in a
/// header, so a peer sending a new name per call would otherwise grow `/metrics` (and
/// the sidecar's memory) without bound.
pub const MAX_CALLERS: usize = 64;
pub const OTHER_CALLERS: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub upstream: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabels {
    pub caller: String,
    pub code: &'static str,
}

type LatencyFamily = Family<UpstreamLabels, Histogram, fn() -> Histogram>;

/// Every forwarding metric family, registered once.
pub struct ForwardMetrics {
    requests: Family<CodeLabels, Counter>,
    duration: LatencyFamily,
    retries: Family<UpstreamLabels, Counter>,
    ejections: Family<UpstreamLabels, Counter>,
    connections: Family<UpstreamLabels, Gauge>,
    inbound: Family<InboundLabels, Counter>,
    inbound_denied: Family<InboundLabels, Counter>,
    /// Each caller's inbound series handles, so a call hashes its caller once and
    /// allocates nothing.
    callers: Mutex<HashMap<String, Arc<CallerSeries>>>,
    /// The mTLS certificate in use: when it expires, how many roots verify peers.
    certificate_expiry: Gauge,
    trust_roots: Gauge,
    issuance_failures: Counter,
}

/// One caller's inbound series, created on first use.
struct CallerSeries {
    label: String,
    by_code: ByCode,
    denied: OnceLock<Counter>,
}

impl Default for ForwardMetrics {
    fn default() -> Self {
        ForwardMetrics {
            requests: Family::default(),
            // 50 µs .. ~13 s: a loopback hop is tens of microseconds, timeouts seconds.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 18))
            }),
            retries: Family::default(),
            ejections: Family::default(),
            connections: Family::default(),
            inbound: Family::default(),
            inbound_denied: Family::default(),
            callers: Mutex::new(HashMap::new()),
            certificate_expiry: Gauge::default(),
            trust_roots: Gauge::default(),
            issuance_failures: Counter::default(),
        }
    }
}

impl ForwardMetrics {
    /// A new certificate is in use.
    pub fn certificate_installed(&self, identity: &super::tls::Identity) {
        self.certificate_expiry.set(identity.not_after);
        self.trust_roots
            .set(i64::try_from(identity.trust_roots).unwrap_or(i64::MAX));
    }

    pub fn issuance_failed(&self) {
        self.issuance_failures.inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mtls_certificate_expiry_timestamp_seconds",
            "When the mTLS certificate in use expires (renewed at half its lifetime)",
            self.certificate_expiry.clone(),
        );
        registry.register(
            "mtls_trust_roots",
            "Root certificates peers are verified with (two while the CA is rotated)",
            self.trust_roots.clone(),
        );
        registry.register(
            "mtls_certificate_issuance_failures",
            "Attempts to get a certificate from the identity endpoint that failed",
            self.issuance_failures.clone(),
        );
        registry.register(
            "forward_requests",
            "Calls forwarded to an upstream, by final gRPC status code",
            self.requests.clone(),
        );
        registry.register(
            "forward_request_duration_seconds",
            "Time from the app's call to the upstream's response headers",
            self.duration.clone(),
        );
        registry.register(
            "forward_retries",
            "Attempts sent again to another instance",
            self.retries.clone(),
        );
        registry.register(
            "forward_ejections",
            "Instances ejected by the circuit breaker",
            self.ejections.clone(),
        );
        registry.register(
            "forward_open_connections",
            "HTTP/2 connections open to the upstream's instances",
            self.connections.clone(),
        );
        registry.register(
            "inbound_requests",
            "Calls received from other sidecars, by caller and gRPC status code",
            self.inbound.clone(),
        );
        registry.register(
            "inbound_denied",
            "Calls refused because the caller is not in allowedCallers",
            self.inbound_denied.clone(),
        );
    }

    /// The series of one upstream.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let labels = UpstreamLabels {
            upstream: name.to_string(),
        };
        // The OK series exists from the start: rate() panels and error-ratio alerts have
        // their denominator before the first call.
        drop(self.requests.get_or_create(&CodeLabels {
            upstream: name.to_string(),
            code: code_name(tonic::Code::Ok),
        }));
        UpstreamMetrics {
            name: name.to_string(),
            family: self.requests.clone(),
            by_code: ByCode::default(),
            duration: self.duration.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            ejections: self.ejections.get_or_create(&labels).clone(),
            connections: self.connections.get_or_create(&labels).clone(),
        }
    }

    /// Removes every series of upstream `name` (it is no longer followed).
    pub fn forget(&self, name: &str) {
        let labels = UpstreamLabels {
            upstream: name.to_string(),
        };
        self.duration.remove(&labels);
        self.retries.remove(&labels);
        self.ejections.remove(&labels);
        self.connections.remove(&labels);
        for code in 0..=16 {
            self.requests.remove(&CodeLabels {
                upstream: name.to_string(),
                code: code_name(tonic::Code::from_i32(code)),
            });
        }
    }

    pub fn inbound(&self, caller: &str, code: tonic::Code) {
        let series = self.caller(caller);
        series.by_code.inc(code, || {
            self.inbound
                .get_or_create(&InboundLabels {
                    caller: series.label.clone(),
                    code: code_name(code),
                })
                .clone()
        });
    }

    pub fn inbound_denied(&self, caller: &str) {
        let series = self.caller(caller);
        series
            .denied
            .get_or_init(|| {
                self.inbound_denied
                    .get_or_create(&InboundLabels {
                        caller: series.label.clone(),
                        code: code_name(tonic::Code::PermissionDenied),
                    })
                    .clone()
            })
            .inc();
    }

    /// The series of `caller`, or of [`OTHER_CALLERS`] once [`MAX_CALLERS`] are named.
    fn caller(&self, caller: &str) -> Arc<CallerSeries> {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = callers.get(caller) {
            return series.clone();
        }
        let label = if callers.len() < MAX_CALLERS {
            caller
        } else {
            OTHER_CALLERS
        };
        callers
            .entry(label.to_string())
            .or_insert_with(|| {
                Arc::new(CallerSeries {
                    label: label.to_string(),
                    by_code: ByCode::default(),
                    denied: OnceLock::new(),
                })
            })
            .clone()
    }
}

/// One upstream's series, cheap to bump.
pub struct UpstreamMetrics {
    name: String,
    family: Family<CodeLabels, Counter>,
    by_code: ByCode,
    pub duration: Histogram,
    pub retries: Counter,
    pub ejections: Counter,
    pub connections: Gauge,
}

impl UpstreamMetrics {
    pub fn finished(&self, code: tonic::Code) {
        self.by_code.inc(code, || {
            self.family
                .get_or_create(&CodeLabels {
                    upstream: self.name.clone(),
                    code: code_name(code),
                })
                .clone()
        });
    }

    pub fn observe_latency(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }
}

/// One counter per gRPC status code, each made on first use (a code nobody returned
/// stays out of `/metrics`), so bumping one hashes no label set.
struct ByCode([OnceLock<Counter>; 17]);

impl Default for ByCode {
    fn default() -> Self {
        ByCode(std::array::from_fn(|_| OnceLock::new()))
    }
}

impl ByCode {
    fn inc(&self, code: tonic::Code, make: impl FnOnce() -> Counter) {
        self.0[(code as usize).min(16)].get_or_init(make).inc();
    }
}

/// The canonical upper-case name of a gRPC status code, as gRPC tooling prints it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_counts_calls_by_code() {
        let metrics = ForwardMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let upload = metrics.upstream("upload");
        upload.finished(tonic::Code::Ok);
        upload.finished(tonic::Code::Ok);
        upload.finished(tonic::Code::Unavailable);
        upload.retries.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "forward_requests_total{upstream=\"upload\",code=\"OK\"} 2",
            "forward_requests_total{upstream=\"upload\",code=\"UNAVAILABLE\"} 1",
            "forward_retries_total{upstream=\"upload\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(!text.contains("NOT_FOUND"), "unused codes stay out");

        metrics.forget("upload");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("upload"), "forgotten series remain:\n{text}");
    }

    #[test]
    fn inbound_callers_are_named_up_to_a_bound() {
        let metrics = ForwardMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let callers = MAX_CALLERS + 36;
        for i in 0..callers {
            metrics.inbound(&format!("caller-{i}"), tonic::Code::Ok);
        }
        metrics.inbound("caller-0", tonic::Code::Ok);
        metrics.inbound_denied(&format!("caller-{}", callers + 1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let ok_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("inbound_requests_total{"))
            .collect();
        assert_eq!(
            ok_lines.len(),
            MAX_CALLERS + 1,
            "named callers plus 'other'"
        );
        let total: u64 = ok_lines
            .iter()
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        assert_eq!(total, callers as u64 + 1, "every call counted");
        for needle in [
            "inbound_requests_total{caller=\"caller-0\",code=\"OK\"} 2",
            "inbound_requests_total{caller=\"other\",code=\"OK\"} 36",
            "inbound_denied_total{caller=\"other\",code=\"PERMISSION_DENIED\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
