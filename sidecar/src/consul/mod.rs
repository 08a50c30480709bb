//! The pod's Consul instance: what it is ([`instance`]), the way into Consul in the
//! configured registration mode ([`client`]), and the lifecycle that keeps it true ([`registration`]): registered at
//! start, its TTL check following the app's health, registered again when Consul lost
//! it, deregistered on shutdown.

pub mod client;
pub mod instance;
pub mod registration;

pub use client::ConsulClient;
pub use instance::{CheckStatus, PodInstance, pod_instance};
pub use registration::Registrar;
pub use streamgate_consul::ConsulError;
