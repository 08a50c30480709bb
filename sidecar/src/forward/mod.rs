//! gRPC forwarding: the app's calls to other services (outbound, on the app listener)
//! and other sidecars' calls to this app (inbound, on the pod IP's port 15006).
//!
//! The data path is a stack of small layers, each in its own module and tested alone:
//!
//! - [`target`]: which service a request names (`:authority` or `streamgate-service`);
//! - [`discovery`]: passing instances from Consul, followed with blocking queries;
//! - [`balance`]: power of two choices over peak-EWMA cost;
//! - [`breaker`]: per-instance circuit breaking with ejection backoff and one probe;
//! - [`retry`]: which failures are retried, backoff with jitter, and a retry budget;
//! - [`deadline`]: `grpc-timeout` parsed, capped by the upstream's timeout, re-encoded;
//! - [`pool`]: persistent HTTP/2 connections per instance, plaintext or mTLS ([`tls`],
//!   the certificate from the operator through [`issuance`]);
//! - [`upstream`]: one service's settings, instances and the choice of one;
//! - [`body`]: the request copy kept for retries and the watched response stream;
//! - [`outcome`]: the one place a call's status (metrics) and an attempt's verdict on
//!   its instance (breaker) are observed, each exactly once;
//! - [`outbound`]: the app's calls, through all of the above; [`inbound`]: other
//!   sidecars' calls to this app, with the caller's identity and `allowedCallers`;
//! - [`metrics`] and [`status`]: per-upstream metrics, and the answers the sidecar
//!   makes itself.
//!
//! Decisions a user may want to know (see docs/forwarding.md): a service that the
//! spec's `upstreams` does not list can still be called, with the CRD's defaults; the
//! upstream timeout bounds the whole call, streams included; retries happen only
//! before a response started (connection failures, or a trailers-only status in
//! `retryOn`) and only with a request body of at most 64 KiB.

pub mod balance;
pub mod body;
pub mod breaker;
pub mod deadline;
pub mod discovery;
pub mod inbound;
pub mod issuance;
pub mod metrics;
pub mod outbound;
pub mod outcome;
pub mod pool;
pub mod retry;
pub mod status;
pub mod target;
pub mod tls;
pub mod trace;
pub mod upstream;

use crate::config::Settings;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why forwarding could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("mTLS identity: {0}")]
    Identity(#[from] tls::IdentityError),
    #[error("appHost: cannot resolve {0}")]
    AppAddress(String),
}

/// The outbound forwarder (for the app listener) and the inbound listener's handler.
pub struct Forwarding {
    pub outbound: Arc<outbound::Forwarder>,
    pub inbound: Arc<inbound::Inbound>,
    /// Whether the inbound listener takes mTLS (advertised in Consul meta).
    pub mtls: bool,
    /// The identity the operator issues: the instance registers once it holds one, so
    /// callers never find an instance that cannot answer them yet.
    pub issued: Option<Arc<tls::IdentityStore>>,
}

/// How this sidecar uses mTLS, from its configuration.
struct Security {
    store: Arc<tls::IdentityStore>,
    inbound: inbound::InboundSecurity,
    /// Every outbound call is mTLS, whatever an instance advertises.
    outbound_strict: bool,
    issued: bool,
}

/// The identity issued by the operator (`identity` in the configuration), else the one
/// in the mTLS directory's files, if any.
fn security(
    settings: &Settings,
    metrics: &Arc<metrics::ForwardMetrics>,
) -> Result<Security, StartError> {
    use inbound::InboundSecurity;
    use streamgate_crds::sidecar_config::MtlsMode;
    if let Some(identity) = &settings.document.identity {
        let store = tls::IdentityStore::issued();
        issuance::Issuance::new(
            &identity.endpoint,
            &identity.endpoint_ca,
            settings.identity_token_file.clone(),
            metrics.clone(),
        )
        .spawn(store.clone());
        let strict = identity.mode == MtlsMode::Strict;
        // A service that names its callers takes no plaintext caller, whatever the mode:
        // over plaintext a caller is a header anyone can write.
        let mtls_only = strict || !settings.document.service.allowed_callers.is_empty();
        tracing::info!(endpoint = %identity.endpoint, mode = identity.mode.as_str(), "mTLS with an identity issued by the operator");
        return Ok(Security {
            inbound: if mtls_only {
                InboundSecurity::MtlsOnly(store.clone())
            } else {
                InboundSecurity::Either(store.clone())
            },
            store,
            outbound_strict: strict,
            issued: true,
        });
    }
    let store = tls::IdentityStore::open(&settings.mtls_dir)?;
    store.spawn_reload();
    // Inbound is TLS-only when a certificate was there at start: a sidecar whose files
    // appear later keeps plaintext inbound (as registered in Consul) and uses the
    // certificate for its own calls.
    let inbound = match store.current() {
        Some(identity) => {
            tracing::info!(workload = ?identity.workload, dir = %settings.mtls_dir.display(), "mTLS on, from files");
            InboundSecurity::MtlsOnly(store.clone())
        }
        None => InboundSecurity::Plaintext,
    };
    Ok(Security {
        store,
        inbound,
        outbound_strict: false,
        issued: false,
    })
}

/// Builds forwarding from the settings: the workload identity (issued, or from files),
/// discovery of the declared upstreams.
pub async fn start(
    settings: &Settings,
    metrics: Arc<metrics::ForwardMetrics>,
    traces: Option<Arc<streamgate_telemetry::Traces>>,
) -> Result<Forwarding, StartError> {
    let security = security(settings, &metrics)?;
    let mtls = !matches!(security.inbound, inbound::InboundSecurity::Plaintext);
    let doc = &settings.document;
    let service = &doc.service;
    let discovery = discovery::Discovery::new(
        settings.consul.address.clone(),
        settings.consul.token.as_ref().map(|t| t.0.clone()),
    );
    let dialer = pool::Dialer::new(Some(security.store.clone()), doc.pod.namespace.clone())
        .strict(security.outbound_strict);
    let outbound = outbound::Forwarder::new(
        &service.service_name,
        &doc.pod.namespace,
        &service.upstreams,
        discovery,
        dialer,
        metrics.clone(),
        traces.clone(),
    );
    outbound.spawn_idle_closer();
    let app = app_address(&settings.health.authority_for(service.port)).await?;
    let inbound = inbound::Inbound::new(
        &service.service_name,
        &doc.pod.namespace,
        service.allowed_callers.clone(),
        security.inbound,
        app,
        metrics,
        traces,
    );
    Ok(Forwarding {
        outbound,
        inbound,
        mtls,
        issued: security.issued.then_some(security.store),
    })
}

async fn app_address(authority: &str) -> Result<SocketAddr, StartError> {
    if let Ok(addr) = authority.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(authority)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| StartError::AppAddress(authority.to_string()))
}
