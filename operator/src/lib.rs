//! The StreamGate operator.
//!
//! - [`cli`]: the command line (`crd`, `run`), flags with environment fallbacks.
//! - [`crdgen`]: the CRD YAML generated from the API types.
//!
//! The reconciler is a pipeline of named steps over one `StreamGateService`:
//! validate → build the desired objects (a pure function) → apply → update status.

pub mod apply;
pub mod backoff;
pub mod cli;
pub mod consul;
pub mod crdgen;
pub mod desired;
pub mod error;
pub mod identity;
pub mod known;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod recent;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod server;
pub mod sidecar_defaults;
pub mod status;
pub mod sweep;
pub mod webhook;
pub mod written;
