//! Why the sidecar could not start. Each component has its own error type, named after
//! what failed; [`StartError`] gathers them with the configuration field or component at
//! fault, as the one line an operator reads in `kubectl logs`.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
    /// `field` is the configuration field of the address, e.g. `listen.admin`.
    #[error("{field}: cannot listen on {addr}: {}", crate::error_chain(source))]
    Listen {
        field: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("health check: {0}")]
    Health(#[from] crate::health::probe::ProbeError),
    #[error("events: {0}")]
    Events(#[from] crate::events::StartError),
    #[error("forwarding: {0}")]
    Forward(#[from] crate::forward::StartError),
    #[error("traces: {0}")]
    Traces(#[from] streamgate_telemetry::TraceError),
    #[error("Consul HTTP client: {}", crate::error_chain(.0))]
    ConsulClient(#[source] streamgate_consul::ConsulError),
}
