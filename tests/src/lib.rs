//! The StreamGate local platform: real etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok, Consul and NATS, started on 127.0.0.1 with free ports, and
//! optionally a real node (kubelet, containerd, runc, CNI, kube-proxy) on a bridge of its
//! own.
//!
//! - [`tools`] finds the binaries `make tools` built (versions from `scripts/versions.sh`).
//! - [`pki`] makes the cluster's CA, serving and client certificates and the
//!   service-account signing key.
//! - [`process`] runs one component as a child process with its own log file and makes
//!   sure it cannot outlive us.
//! - [`components`] knows each component's command line and readiness check.
//! - [`platform`] starts them in order, writes `.streamgate/env`, and stops them.
//! - [`node`] a real node (containerd, runc, CNI bridge, kubelet, kube-proxy) running the
//!   project's OCI images as real pods, when a platform is started with one.
//! - [`shared`] gives each integration test a ready platform shared per test binary, with
//!   a namespace and name prefix of its own, and prints component log tails on failure.
//!
//! `make env-up` / `make env-down` drive the same code through the `streamgate-env` binary.

pub mod bins;
pub mod components;
pub mod consul_agent;
pub mod echo;
pub mod nats_server;
pub mod node;
pub mod operator;
pub mod pki;
pub mod platform;
pub mod ports;
pub mod process;
pub mod shared;
pub mod tools;
pub mod wait;

pub use platform::{Platform, PlatformInfo};
pub use shared::TestEnv;
