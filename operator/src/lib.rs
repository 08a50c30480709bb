//! The StreamGate operator.
//!
//! - [`cli`]: the command line (`crd`, `run`), flags with environment fallbacks.
//! - [`crdgen`]: the CRD YAML generated from the API types.
//!
//! The reconciler is a pipeline of named steps over one `StreamGateService`:
//! validate → build the desired objects (a pure function) → apply → update status.

pub mod cli;
pub mod crdgen;
pub mod desired;
pub mod labels;
pub mod render;
pub mod settings;
