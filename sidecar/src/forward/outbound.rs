//! Outbound: the app's gRPC calls to other services, forwarded from the app listener.
//!
//! One call goes through the layers in order: [`target`](super::target) names the
//! service; [`deadline`](super::deadline) caps the call by the upstream's timeout;
//! [`Upstream`] gives the instances (discovery) and picks one (breaker + balancer);
//! the [`Pool`](super::pool::Pool) leases a stream; the response is relayed as it comes
//! and watched ([`Observed`]) for its final status, which feeds the breaker and the
//! metrics. A failure that may be retried (a request no instance processed: no
//! connection, REFUSED_STREAM, a graceful GOAWAY; or a trailers-only status in
//! `retryOn`) is sent again to another instance after a backoff, while the attempts,
//! the body copy, the retry budget and the deadline allow.

use super::body::{Observed, Replay};
use super::deadline::{effective_timeout, format_grpc_timeout, parse_grpc_timeout};
use super::discovery::Discovery;
use super::metrics::ForwardMetrics;
use super::outcome::{AttemptOutcome, CallOutcome};
use super::pool::{Dialer, Lease, PoolLimits};
use super::retry::MAX_RETRY_BODY;
use super::status::{grpc_error, grpc_status};
use super::target::{SERVICE_METADATA, target_service};
use super::trace::CallSpan;
use super::upstream::{Backend, NamespaceScope, NoInstance, Upstream, UpstreamSettings};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use streamgate_crds::Upstream as UpstreamSpec;
use streamgate_telemetry::Traces;
use tokio::time::Instant as Deadline;
use tonic::Code;

/// The header that tells the server's sidecar (and app) who calls. Under mTLS the
/// server takes the caller from the certificate instead and overwrites it.
pub const CALLER_HEADER: &str = "streamgate-caller";
/// How long a call waits for discovery's first answer about a service.
const DISCOVERY_WAIT: Duration = Duration::from_secs(3);
/// Connections unused this long are closed.
const IDLE_CONNECTION: Duration = Duration::from_secs(90);
/// An upstream nobody declared and nobody called for this long is forgotten: its
/// discovery stops, its connections close and its metric series go, so an app that
/// calls many names (a typo in a loop, names built from data) cannot grow the sidecar
/// without bound. Declared upstreams are followed for the sidecar's whole life.
const IDLE_UPSTREAM: Duration = Duration::from_secs(600);
/// Attempts for a request no instance processed (the connection could not be opened,
/// or the stream was refused), which is always safe to send again.
const CONNECT_ATTEMPTS: u32 = 3;

/// Forwards the app's calls to the instances of other services.
pub struct Forwarder {
    own_service: HeaderValue,
    /// The caller's namespace: its upstreams' instances there are preferred.
    own_namespace: String,
    specs: HashMap<String, UpstreamSpec>,
    upstreams: Mutex<HashMap<String, Followed>>,
    discovery: Discovery,
    dialer: Dialer,
    metrics: Arc<ForwardMetrics>,
    limits: PoolLimits,
    traces: Option<Arc<Traces>>,
}

/// An upstream the forwarder follows, and when a call last asked for it.
struct Followed {
    upstream: Arc<Upstream>,
    last_used: Instant,
}

impl Forwarder {
    pub fn new(
        own_service: &str,
        own_namespace: &str,
        specs: &[UpstreamSpec],
        discovery: Discovery,
        dialer: Dialer,
        metrics: Arc<ForwardMetrics>,
        traces: Option<Arc<Traces>>,
    ) -> Arc<Self> {
        let forwarder = Arc::new(Forwarder {
            own_service: HeaderValue::from_str(own_service)
                .unwrap_or(HeaderValue::from_static("unknown")),
            own_namespace: own_namespace.to_string(),
            specs: specs
                .iter()
                .map(|s| (s.service.clone(), s.clone()))
                .collect(),
            upstreams: Mutex::new(HashMap::new()),
            discovery,
            dialer,
            metrics,
            limits: PoolLimits::default(),
            traces,
        });
        // Follow the declared upstreams from the start, so the first call finds them.
        for spec in specs {
            forwarder.upstream(&spec.service);
        }
        forwarder
    }

    /// Every half idle period, for as long as the forwarder lives: forgets idle
    /// undeclared upstreams and closes idle connections.
    pub fn spawn_idle_closer(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_CONNECTION / 2);
            loop {
                tick.tick().await;
                let Some(forwarder) = weak.upgrade() else {
                    return;
                };
                forwarder.forget_idle(Instant::now());
                let upstreams: Vec<_> = forwarder
                    .lock()
                    .values()
                    .map(|f| f.upstream.clone())
                    .collect();
                for upstream in upstreams {
                    upstream.close_idle(IDLE_CONNECTION);
                }
            }
        });
    }

    /// Forgets each undeclared upstream unused since `now - IDLE_UPSTREAM` that no call
    /// holds. Under the map's lock, so a call either finds it (and keeps it) or makes a
    /// new one whose metric series start again.
    fn forget_idle(&self, now: Instant) -> Vec<String> {
        let mut upstreams = self.lock();
        let idle: Vec<String> = upstreams
            .iter()
            .filter(|(name, followed)| {
                !self.specs.contains_key(*name)
                    && Arc::strong_count(&followed.upstream) == 1
                    && now.saturating_duration_since(followed.last_used) >= IDLE_UPSTREAM
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &idle {
            upstreams.remove(name);
            self.metrics.forget(name);
            tracing::debug!(upstream = %name, "forgot an idle upstream");
        }
        idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Followed>> {
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn upstream(&self, service: &str) -> Arc<Upstream> {
        self.upstream_at(service, Instant::now())
    }

    fn upstream_at(&self, service: &str, now: Instant) -> Arc<Upstream> {
        let mut upstreams = self.lock();
        if let Some(followed) = upstreams.get_mut(service) {
            followed.last_used = now;
            return followed.upstream.clone();
        }
        let mut settings =
            UpstreamSettings::from_spec(self.specs.get(service), &self.own_namespace);
        // Strict mTLS checks a server's certificate against the namespace its Consul
        // entry names; anyone who can write to Consul could name their own namespace, so
        // only the caller's namespace (or the one `upstreams[].namespace` names) counts.
        if self.dialer.is_strict()
            && let NamespaceScope::Prefer(own) = &settings.scope
        {
            settings.scope = NamespaceScope::Only(own.clone());
        }
        let upstream = Arc::new(Upstream::new(
            service.to_string(),
            settings,
            self.discovery.watch(service),
            self.metrics.upstream(service),
            self.limits,
        ));
        upstreams.insert(
            service.to_string(),
            Followed {
                upstream: upstream.clone(),
                last_used: now,
            },
        );
        upstream
    }

    /// Forwards one call; every failure is answered as a gRPC status.
    pub async fn forward(&self, request: Request<Body>) -> Response<Body> {
        let started = Deadline::now();
        let (parts, body) = request.into_parts();
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(header::HOST)?.to_str().ok());
        let service = match target_service(authority, &parts.headers) {
            Ok(service) => service,
            Err(e) => return grpc_error(Code::InvalidArgument, &e.to_string()),
        };
        let upstream = self.upstream(&service);
        let span = self
            .traces
            .as_ref()
            .map(|traces| CallSpan::client(traces, &parts.headers, &service, parts.uri.path()));
        let call = CallOutcome::new(upstream.clone(), span);
        let caller_timeout = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = started + effective_timeout(caller_timeout, upstream.settings.timeout);

        let instances = match upstream
            .instances(deadline.min(started + DISCOVERY_WAIT))
            .await
        {
            Ok(instances) => instances,
            Err(reason) => return answer(call, Code::Unavailable, unavailable(&upstream, reason)),
        };
        let mut head = RequestHead::new(parts, &service, &self.own_service);
        if let Some(span) = call.span() {
            span.inject(&mut head.headers);
        }
        let outcome = call;
        let call = Call {
            forwarder: self,
            upstream: &upstream,
            instances: &instances,
            head: &head,
            deadline,
        };
        call.run(outcome, body).await
    }
}

/// What is sent again on every attempt: the request without its body.
struct RequestHead {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl RequestHead {
    fn new(parts: axum::http::request::Parts, service: &str, caller: &HeaderValue) -> Self {
        let mut headers = parts.headers;
        for name in [
            header::CONNECTION,
            header::HOST,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::HeaderName::from_static("keep-alive"),
            header::HeaderName::from_static("proxy-connection"),
            header::HeaderName::from_static(SERVICE_METADATA),
        ] {
            headers.remove(name);
        }
        // The app may not claim to be someone else.
        headers.insert(CALLER_HEADER, caller.clone());
        let uri = if parts.uri.scheme().is_some() && parts.uri.authority().is_some() {
            parts.uri
        } else {
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            Uri::builder()
                .scheme("http")
                .authority(service)
                .path_and_query(path)
                .build()
                .unwrap_or(parts.uri)
        };
        RequestHead {
            method: parts.method,
            uri,
            headers,
        }
    }

    fn build(&self, body: Body, remaining: Duration) -> Request<Body> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = Version::HTTP_2;
        let mut headers = self.headers.clone();
        if let Ok(value) = HeaderValue::from_str(&format_grpc_timeout(remaining)) {
            headers.insert("grpc-timeout", value);
        }
        *request.headers_mut() = headers;
        request
    }
}

/// One call's attempts.
struct Call<'a> {
    forwarder: &'a Forwarder,
    upstream: &'a Arc<Upstream>,
    instances: &'a [Arc<Backend>],
    head: &'a RequestHead,
    deadline: Deadline,
}

/// How one attempt ended.
enum Attempt {
    /// A response whose body (and final status) is still to come.
    Streaming(Streaming),
    /// A trailers-only answer: the call's status is known already.
    Status(Code, Response<Body>),
    /// Nothing was sent: the connection could not be opened.
    NotSent(String),
    /// Sent, and the instance said it did not process it: the stream was refused
    /// (REFUSED_STREAM), came after the last one a GOAWAY accepted, or never left the
    /// connection's queue before the connection closed. As safe to retry as `NotSent`.
    Refused(String),
    /// Sent, and the exchange failed before a response (reset, connection lost).
    Failed(String),
    TimedOut,
}

/// A response being relayed: its end is the call's and the attempt's outcome.
struct Streaming {
    response: Response<hyper::body::Incoming>,
    /// Held until the body ends: the stream's slot on the connection.
    lease: Lease,
    attempt: AttemptOutcome,
}

impl Streaming {
    /// The response relayed to the app, watched for its final status.
    fn observed(self, call: CallOutcome, deadline: Deadline) -> Response<Body> {
        let Streaming {
            response,
            lease,
            attempt,
        } = self;
        let on_end = Box::new(move |code: Code| {
            drop(lease);
            call.finish(code);
            attempt.answered(code);
        });
        let (parts, incoming) = response.into_parts();
        let body = Observed::new(Body::new(incoming), None, Some(deadline), on_end);
        Response::from_parts(parts, Body::new(body))
    }
}

impl Call<'_> {
    async fn run(self, mut call: CallOutcome, body: Body) -> Response<Body> {
        let upstream = self.upstream;
        let policy = &upstream.settings.retry;
        upstream.budget.deposit(Instant::now());
        // Kept for every call, not only those with retries configured: a request the
        // instance refused unprocessed (an instance shutting down sends GOAWAY, an
        // overloaded one REFUSED_STREAM) goes to another one whatever the policy. The
        // copy holds the body's own buffers, up to MAX_RETRY_BODY, not a duplicate.
        let replay = Replay::new(body, MAX_RETRY_BODY);
        let mut tried: Vec<usize> = Vec::new();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (index, admission) = match upstream.pick(self.instances, &tried, Instant::now()) {
                Ok(chosen) => chosen,
                Err(reason) => {
                    return answer(call, Code::Unavailable, unavailable(upstream, reason));
                }
            };
            tried.push(index);
            let instance = &self.instances[index];
            call.attempt(instance, admission);
            let observed = AttemptOutcome::new(upstream.clone(), instance.clone(), admission);
            let outcome = self.attempt(instance, observed, || replay.attempt()).await;
            // What a retry would answer if it is not made.
            let (code, last, nothing_sent) = match outcome {
                Attempt::Streaming(streaming) => return streaming.observed(call, self.deadline),
                Attempt::Status(code, response) if policy.retries(code) => {
                    (code, Ok(response), false)
                }
                Attempt::Status(code, response) => {
                    call.finish(code);
                    return response;
                }
                Attempt::NotSent(reason) | Attempt::Refused(reason) => {
                    (Code::Unavailable, Err(reason), true)
                }
                Attempt::Failed(reason) => (Code::Unavailable, Err(reason), false),
                Attempt::TimedOut => {
                    let message = format!("{}: no response before the deadline", upstream.name);
                    return answer(call, Code::DeadlineExceeded, message);
                }
            };
            // Nothing the instance processed (no connection, or a refused stream): always
            // safe to retry.
            let (max_attempts, retryable) = if nothing_sent {
                (policy.attempts.max(CONNECT_ATTEMPTS), true)
            } else {
                (policy.attempts, policy.retries(code))
            };
            let body_intact = replay.replayable();
            let delay = policy.backoff(attempts, fastrand::f64());
            let may_retry = retryable
                && attempts < max_attempts
                && body_intact
                && Deadline::now() + delay < self.deadline
                && upstream.budget.try_withdraw(Instant::now());
            if !may_retry {
                return match last {
                    Ok(response) => {
                        call.finish(code);
                        response
                    }
                    Err(reason) => answer(call, code, format!("{}: {reason}", upstream.name)),
                };
            }
            upstream.metrics.retries.inc();
            tracing::debug!(upstream = %upstream.name, attempts, "retrying on another instance");
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt on `instance`; `observed` is told how the instance did (or dropped,
    /// when the attempt says nothing about it).
    async fn attempt(
        &self,
        instance: &Arc<Backend>,
        observed: AttemptOutcome,
        body: impl FnOnce() -> Body,
    ) -> Attempt {
        let upstream = self.upstream;
        let dialer = &self.forwarder.dialer;
        let leased = tokio::time::timeout_at(
            self.deadline,
            instance
                .pool
                .lease(|| dialer.dial(&upstream.name, &instance.endpoint)),
        )
        .await;
        let lease = match leased {
            Err(_) => return Attempt::TimedOut,
            Ok(Err(e)) => {
                observed.instance_failed();
                return Attempt::NotSent(e.to_string());
            }
            Ok(Ok(lease)) => lease,
        };
        let started = Instant::now();
        let pending = instance.load.start();
        let remaining = self.deadline.saturating_duration_since(Deadline::now());
        let request = self.head.build(body(), remaining);
        let mut sender = lease.sender.clone();
        let sent = tokio::time::timeout_at(self.deadline, sender.send_request(request)).await;
        let response = match sent {
            Err(_) => {
                observed.instance_failed();
                return Attempt::TimedOut;
            }
            Ok(Err(e)) => {
                observed.instance_failed();
                let reason = crate::error_chain(&e);
                return if never_processed(&e) {
                    Attempt::Refused(reason)
                } else {
                    Attempt::Failed(reason)
                };
            }
            Ok(Ok(response)) => response,
        };
        let took = started.elapsed();
        pending.complete(took, Instant::now());
        upstream.metrics.observe_latency(took);
        if let Some(code) = grpc_status(response.headers()) {
            observed.answered(code);
            let (parts, incoming) = response.into_parts();
            return Attempt::Status(code, Response::from_parts(parts, Body::new(incoming)));
        }
        Attempt::Streaming(Streaming {
            response,
            lease,
            attempt: observed,
        })
    }
}

/// Ends the call with a status the sidecar makes itself.
fn answer(call: CallOutcome, code: Code, message: impl AsRef<str>) -> Response<Body> {
    call.finish(code);
    grpc_error(code, message.as_ref())
}

/// Why no instance can take the call, for the app to read.
fn unavailable(upstream: &Upstream, reason: NoInstance) -> String {
    let name = &upstream.name;
    match reason {
        NoInstance::NonePassing => match &upstream.settings.scope {
            NamespaceScope::Only(namespace) => format!(
                "service {name}: no passing instance of it in namespace {namespace} (upstreams[].namespace)"
            ),
            NamespaceScope::Prefer(_) => {
                format!("unknown service {name}: no passing instance of it in Consul")
            }
        },
        NoInstance::AllEjected(n) => {
            format!("service {name}: all {n} instances are ejected by the circuit breaker")
        }
        NoInstance::NotResolved => {
            format!("service {name}: Consul has not answered about its instances yet")
        }
    }
}

/// True when the instance did not process the request, by HTTP/2's own guarantees: it
/// refused the stream (REFUSED_STREAM: "no application processing"), or a graceful
/// GOAWAY excluded it, or hyper never wrote it because the connection closed first
/// (canceled). A GOAWAY counts only with NO_ERROR: h2 gives that error only to the
/// streams above the GOAWAY's last accepted one, while a GOAWAY with an error code ends
/// the streams below it (possibly processed) with the same error.
fn never_processed(error: &hyper::Error) -> bool {
    if error.is_canceled() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return match h2.reason() {
                Some(h2::Reason::REFUSED_STREAM) => true,
                Some(h2::Reason::NO_ERROR) => h2.is_go_away() && h2.is_remote(),
                _ => false,
            };
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(service: &str) -> UpstreamSpec {
        serde_json::from_value(serde_json::json!({ "service": service })).unwrap()
    }

    fn forwarder() -> Arc<Forwarder> {
        // Nothing listens there: discovery stays pending, which these tests do not mind.
        let discovery = Discovery::new("http://127.0.0.1:9".into(), None);
        Forwarder::new(
            "upload",
            "default",
            &[spec("metadata")],
            discovery,
            Dialer::new(None, "default".into()),
            Arc::new(ForwardMetrics::default()),
            None,
        )
    }

    #[tokio::test]
    async fn an_idle_undeclared_upstream_is_forgotten_and_a_declared_one_kept() {
        let forwarder = forwarder();
        drop(forwarder.upstream("typo-service"));
        let now = Instant::now();
        assert!(forwarder.forget_idle(now).is_empty(), "not idle yet");
        let later = now + IDLE_UPSTREAM + Duration::from_secs(1);
        assert_eq!(
            forwarder.forget_idle(later),
            vec!["typo-service".to_string()]
        );
        let followed: Vec<String> = forwarder.lock().keys().cloned().collect();
        assert_eq!(followed, vec!["metadata".to_string()]);
    }

    #[tokio::test]
    async fn an_upstream_a_call_holds_is_kept() {
        let forwarder = forwarder();
        let held = forwarder.upstream("transcoder");
        let later = Instant::now() + IDLE_UPSTREAM * 2;
        assert!(forwarder.forget_idle(later).is_empty());
        drop(held);
        assert_eq!(forwarder.forget_idle(later), vec!["transcoder".to_string()]);
    }

    #[tokio::test]
    async fn a_call_makes_an_upstream_fresh_again() {
        let forwarder = forwarder();
        let start = Instant::now();
        drop(forwarder.upstream_at("transcoder", start));
        let asked_again = start + IDLE_UPSTREAM;
        drop(forwarder.upstream_at("transcoder", asked_again));
        assert!(
            forwarder
                .forget_idle(asked_again + IDLE_UPSTREAM / 2)
                .is_empty()
        );
        assert_eq!(forwarder.forget_idle(asked_again + IDLE_UPSTREAM).len(), 1);
    }
}
