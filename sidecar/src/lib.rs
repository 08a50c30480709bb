//! The StreamGate sidecar: runs beside each app container, knows whether the app is
//! healthy, keeps the pod's Consul registration true at every moment, and relays the
//! app's events to and from NATS JetStream.
//!
//! How the modules fit together:
//!
//! - [`cli`] and [`config`] turn the configuration document (`--config FILE` or
//!   `STREAMGATE_CONFIG`), flags and environment into one validated [`config::Settings`];
//!   a bad value stops start-up with one line naming the field.
//! - [`health`] probes the app (HTTP, gRPC health or TCP) every period and turns results
//!   into healthy/unhealthy through failure and success thresholds; it publishes the
//!   state on a watch channel.
//! - [`consul`] registers the pod's instance, drives its TTL check from that state,
//!   notices when Consul lost the registration and registers again, and deregisters on
//!   shutdown. Every retry waits with [`backoff`].
//! - [`state`] holds readiness (app healthy AND registered AND not draining); [`admin`]
//!   serves it with `/livez`, `/metrics` ([`metrics`]) and `/config`.
//! - [`events`] relays events between the app and NATS JetStream (publish API, spool,
//!   subscriptions); [`app_listener`] serves the app-facing port that carries its API.
//! - [`forward`] carries the app's gRPC calls to other services and other services'
//!   calls to the app: discovery from Consul, balancing, retries, timeouts, circuit
//!   breaking, pooled HTTP/2 connections with mTLS, and `allowedCallers` on the way in.
//! - [`departure`] takes a terminating pod out of the mesh before its app is stopped
//!   (the app's `preStop` hook calls the admin server's `/leave`).
//! - [`shutdown`] turns SIGTERM into the drain sequence; [`run`] wires everything and
//!   [`error`] names what stopped it from starting.

pub mod admin;
pub mod app_listener;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod consul;
pub mod departure;
pub mod error;
pub mod events;
pub mod forward;
pub mod health;
pub mod metrics;
pub mod run;
pub mod shutdown;
pub mod state;

use std::process::ExitCode;

/// Exit code for a configuration the sidecar refuses.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when the drain deadline or a second signal cut shutdown short, or a
/// listener could not be opened.
pub const EXIT_FAILURE: u8 = 1;

/// An HTTP client builder for the app and Consul: never through a proxy from the
/// environment (both are local), with the ring TLS provider the workspace uses.
pub fn http_client() -> reqwest::ClientBuilder {
    // Fails only when a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy()
}

/// An error with its causes, on one line: reqwest's own message hides the cause.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parses the command line, loads the configuration and runs the sidecar.
pub fn main() -> ExitCode {
    let cli = <cli::Cli as clap::Parser>::parse();
    let settings = match config::load(&cli, &|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(e) => {
            // One line naming the field: what an operator sees in `kubectl logs`.
            eprintln!("streamgate-sidecar: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One small runtime thread: the sidecar's work is a few sockets and timers, and a
    // single thread keeps idle memory and start-up time low.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("streamgate-sidecar: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(run::run(settings));
    // Do not wait for blocking DNS lookups still in flight: we are leaving.
    runtime.shutdown_background();
    ExitCode::from(code)
}
