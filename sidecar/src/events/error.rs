//! The event relay's errors: what stops it from starting (naming the configuration
//! field), and what makes a subscription start over (retried with backoff).

use async_nats::jetstream::consumer::pull::BatchError;
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::stream::ConsumerError;
use std::path::PathBuf;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("nats.credentialsDir: {0}")]
    Credentials(#[from] streamgate_nats::credentials::CredentialsError),
    #[error("nats.url: {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("spoolDir: {}: {source}", dir.display())]
    Spool {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP client for deliveries: {}", crate::error_chain(.0))]
    HttpClient(#[source] reqwest::Error),
    #[error("gRPC endpoint of the app for deliveries: {0}")]
    AppEndpoint(#[source] tonic::transport::Error),
}

/// Why the relay's subjects are not all captured by a stream yet (retried by its
/// callers).
pub use streamgate_nats::streams::StreamError;

/// Why a subscription stopped pulling; it starts over after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("consumer on stream {stream}: {source}")]
    Consumer {
        stream: String,
        #[source]
        source: ConsumerError,
    },
    #[error("{0}")]
    NoStream(String),
    #[error("the health checker stopped")]
    HealthStopped,
    #[error("pull request: {0}")]
    Batch(#[source] BatchError),
    /// async-nats reports a broken batch as a boxed error.
    #[error("receiving a batch: {0}")]
    Receive(async_nats::Error),
    #[error("the delivery slots were closed")]
    SlotsClosed,
}

/// Why an event could not be handed to the app (it is redelivered, then dead-lettered).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{}", crate::error_chain(.0))]
    Request(#[source] reqwest::Error),
    #[error("the app answered {status}: {body}")]
    Refused {
        status: reqwest::StatusCode,
        /// The start of the app's answer, for the log and the dead letter.
        body: String,
    },
    #[error("the app answered gRPC {}: {}", .0.code(), .0.message())]
    Grpc(tonic::Status),
    #[error("the app asked for a retry: {0}")]
    AskedToRetry(String),
}

/// Why a dead letter could not be published.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter publish: {0}")]
pub struct DeadLetterError(#[source] pub PublishError);
