//! StreamGate's benchmarks (`make bench`, see `scripts/bench.sh`): four binaries, each
//! printing its figures beside a baseline measured in the same run, because the machines
//! they run on are shared and noisy.
//!
//! - `sidecar-bench`: the sidecar's idle RSS and start-to-ready time.
//! - `events-bench`: publishing through the sidecar against straight to JetStream.
//! - `forward-bench`: gRPC through two sidecars against direct calls and nginx.
//! - `operator-bench`: StreamGateServices reconciled against direct Deployment writes.
//!
//! They start their components the way the integration tests do, through the harness
//! library (`streamgate-tests`: free ports, processes that die with their parent, Consul
//! and nats-server of their own, pinned tool versions). This library holds only what the
//! bench binaries share beyond it:
//!
//! - [`siblings`] finds the workspace binaries a bench runs, next to its own executable.
//! - [`tools`] finds Consul, nats-server, ghz and nginx.
//! - [`consul`] Consul at `CONSUL_HTTP_ADDR`, or a dev agent of the bench's own.
//! - [`running`] a child process stopped when dropped.
//! - [`work_dir`] a run's own temporary directory, removed when dropped.
//! - [`procfs`] a process's RSS and CPU time.
//! - [`figures`] how figures and verdicts are written, and a bench's exit code.

pub mod consul;
pub mod figures;
pub mod procfs;
pub mod running;
pub mod siblings;
pub mod tools;
pub mod work_dir;
