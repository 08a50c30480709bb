//! StreamGate's one home for Consul, used by the operator and the sidecar alike:
//!
//! - [`contract`]: how an instance is named and which meta it carries (what the
//!   operator's sweep and status read back from what the sidecar wrote);
//! - [`http`]: the HTTP API client (token, timeouts, blocking queries, errors);
//! - [`health`]: what a health query answers;
//! - [`registry`]: writing an instance through an agent or straight into the catalog.

pub mod contract;
pub mod health;
pub mod http;
pub mod registry;

pub use http::{Answer, ConsulError, ConsulHttp, Seen, Timeouts};
