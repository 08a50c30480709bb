//! The pod's Consul instance: what it is ([`instance`]), the agent's HTTP API
//! ([`client`]), and the lifecycle that keeps it true ([`registration`]): registered at
//! start, its TTL check following the app's health, registered again when Consul lost
//! it, deregistered on shutdown.

pub mod client;
pub mod instance;
pub mod registration;

pub use client::{ConsulClient, ConsulError};
pub use instance::{CheckStatus, PodInstance};
pub use registration::Registrar;
