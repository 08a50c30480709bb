//! The StreamGate operator. Its design, with the decisions behind it: docs/operator.md.
//!
//! Process and tasks:
//!
//! - [`cli`]: the command line (`crd`, `run`), flags with environment fallbacks;
//!   [`crdgen`]: the CRD YAML generated from the API types.
//! - [`run`]: wires the tasks — metrics server ([`server`], [`metrics`]) and the webhook
//!   with the [`identity`] endpoint beside it on every replica; after [`leader`]
//!   election, the controller and the ghost [`sweep`] on the leader only.
//!
//! The reconciler ([`reconcile`]), typed steps over one `StreamGateService`:
//!
//! - validate and build: [`desired`] (pure) with the one sidecar renderer [`render`] and
//!   the operator-wide [`sidecar_defaults`]; [`labels`] names every label and annotation;
//! - apply: [`apply`] (server-side apply, skipped when nothing differs), reading the
//!   children through [`known`];
//! - status: [`status`] (pure), written once thanks to [`written`] (both built on
//!   [`recent`]);
//! - [`error`]: one error per step, the step as the metric label; [`backoff`]: the error
//!   policy's per-object exponential backoff.
//!
//! Outside Kubernetes: [`consul`] (the instances StreamGate registered, and their
//! removal) and [`consul_watch`] (each service's instances followed with a blocking
//! query, what the status reads). Injection into existing workloads: [`webhook`].

pub mod apply;
pub mod backoff;
pub mod cli;
pub mod consul;
pub mod consul_watch;
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
pub mod streams;
pub mod sweep;
pub mod trace;
pub mod webhook;
pub mod written;
