//! The StreamGate local platform: real etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok, Consul and NATS, started on 127.0.0.1 with free ports, and
//! optionally a real node (kubelet, containerd, runc, CNI, kube-proxy) on a bridge of its
//! own.
//!
//! Building blocks:
//!
//! - [`tools`] finds the binaries `make tools` built (versions from `scripts/versions.sh`);
//!   [`bins`] builds and finds the workspace's own (operator, sidecar, demo app).
//! - [`pki`] makes the cluster's CA, serving and client certificates and the
//!   service-account signing key.
//! - [`ports`] hands out free loopback ports; [`wait`] polls a condition until a
//!   deadline instead of sleeping.
//! - [`process`] runs one component as a child process with its own log file and makes
//!   sure it cannot outlive us; a `Group` starts, readies and stops several.
//!
//! The platform:
//!
//! - [`components`] knows each component's command line and readiness check.
//! - [`platform`] starts them in order, writes `.streamgate/env`, and stops them.
//! - [`node`] a real node (containerd, runc, CNI bridge, kubelet, kube-proxy) running the
//!   project's OCI images as real pods, when a platform is started with one.
//! - [`shared`] gives each integration test a ready platform shared per test binary, with
//!   a namespace and name prefix of its own, and prints component log tails on failure.
//!
//! What tests run on top of it:
//!
//! - [`operator`] runs the real operator as its own ServiceAccount with the chart's RBAC.
//! - [`sidecar`] the sidecar and the demo app as processes, a pod of both
//!   (`started_sidecar`), and views of Consul's catalog.
//! - [`consul_agent`] and [`nats_server`]: a Consul agent or nats-server of a test's own,
//!   for tests that kill, restart or start without them.
//! - [`echo`] a real gRPC Echo server for the forwarding tests and benchmarks.
//!
//! `make env-up` / `make env-down` drive the same code through the `streamgate-env` binary.

pub mod bins;
pub mod components;
pub mod consul_agent;
pub mod echo;
pub mod jaeger;
pub mod nats_server;
pub mod node;
pub mod operator;
pub mod pki;
pub mod platform;
pub mod ports;
pub mod process;
pub mod shared;
pub mod sidecar;
pub mod tools;
pub mod wait;

pub use platform::{Platform, PlatformInfo};
pub use shared::TestEnv;
