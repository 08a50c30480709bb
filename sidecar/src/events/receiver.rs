//! How an event reaches the app: an HTTP POST of the envelope to the subscription's
//! path, or a call of `streamgate.app.v1.EventHandler/Handle` on the app's port (gRPC
//! apps, or a subscription with `delivery: grpc`). Either way the answer is one of
//! handled, retry later, or dead-letter now.

use super::envelope::TraceContext;
use super::error::DeliveryError;
use async_nats::jetstream::Message;
use serde::Deserialize;
use std::time::Duration;
use streamgate_proto::app::v1 as pb;
use streamgate_proto::app::v1::event_handler_client::EventHandlerClient;
use tonic::transport::{Channel, Endpoint};

/// Where one subscription's events go.
pub enum AppReceiver {
    Http {
        url: String,
        client: reqwest::Client,
    },
    Grpc {
        client: EventHandlerClient<Channel>,
    },
}

/// Why the app did not take an event.
#[derive(Debug)]
pub enum NotTaken {
    /// Redeliver later (dead-lettered once `maxDeliver` attempts are used).
    Retry(DeliveryError),
    /// The app says it never will: dead-letter now, with its reason.
    DeadLetter(String),
}

impl AppReceiver {
    /// A gRPC receiver at `authority` (the app's `host:port`): the channel connects
    /// lazily and reconnects by itself when the app restarts; each call is bounded by
    /// `timeout`.
    pub fn grpc(authority: &str, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{authority}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(AppReceiver::Grpc {
            client: EventHandlerClient::new(channel),
        })
    }

    /// Where events go, for the log.
    pub fn describe(&self) -> String {
        match self {
            AppReceiver::Http { url, .. } => format!("POST {url}"),
            AppReceiver::Grpc { .. } => "gRPC streamgate.app.v1.EventHandler/Handle".to_string(),
        }
    }

    /// Hands the event to the app once, with `trace` as its trace context (the
    /// delivery's span), or else the one the envelope carries.
    pub async fn deliver(
        &self,
        message: &Message,
        id: &str,
        attempt: i64,
        trace: Option<TraceContext>,
    ) -> Result<(), NotTaken> {
        match self {
            AppReceiver::Http { url, client } => {
                let trace = trace.or_else(|| TraceContext::from_envelope(&message.payload));
                post(client, url, message, id, attempt, trace)
                    .await
                    .map_err(NotTaken::Retry)
            }
            AppReceiver::Grpc { client } => {
                handle(client.clone(), message, id, attempt, trace).await
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    message: &Message,
    id: &str,
    attempt: i64,
    trace: Option<TraceContext>,
) -> Result<(), DeliveryError> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("streamgate-event-id", id)
        .header("streamgate-delivery-attempt", attempt.to_string());
    // The publisher's trace context, so the app's handling joins its trace.
    if let Some(trace) = trace {
        request = request.header("traceparent", trace.traceparent);
        if let Some(state) = trace.tracestate {
            request = request.header("tracestate", state);
        }
    }
    let response = request
        .body(message.payload.to_vec())
        .send()
        .await
        .map_err(DeliveryError::Request)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    Err(DeliveryError::Refused {
        status,
        body: body.trim().to_string(),
    })
}

/// The envelope's fields a gRPC app gets one by one (seed-style envelopes may lack
/// some), and the trace context, read in one pass.
#[derive(Deserialize, Default)]
struct Fields {
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    tracestate: Option<String>,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    timestamp: i64,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
}

async fn handle(
    mut client: EventHandlerClient<Channel>,
    message: &Message,
    id: &str,
    attempt: i64,
    trace: Option<TraceContext>,
) -> Result<(), NotTaken> {
    let fields: Fields = serde_json::from_slice(&message.payload).unwrap_or_default();
    let trace = trace.or_else(|| {
        TraceContext::from_headers(fields.traceparent.as_deref(), fields.tracestate.as_deref())
    });
    let mut request = tonic::Request::new(pb::HandleRequest {
        id: id.to_string(),
        r#type: fields.event_type,
        source: fields.source,
        timestamp: fields.timestamp,
        data_json: fields
            .data
            .map_or_else(|| "{}".to_string(), |d| d.get().to_string()),
        envelope_json: String::from_utf8_lossy(&message.payload).into_owned(),
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
    });
    if let Some(trace) = trace {
        let metadata = request.metadata_mut();
        if let Ok(value) = trace.traceparent.parse() {
            metadata.insert("traceparent", value);
        }
        if let Some(Ok(value)) = trace.tracestate.map(|s| s.parse()) {
            metadata.insert("tracestate", value);
        }
    }
    let answer = client
        .handle(request)
        .await
        .map_err(|status| NotTaken::Retry(DeliveryError::Grpc(status)))?
        .into_inner();
    match pb::handle_response::Result::try_from(answer.result) {
        Ok(pb::handle_response::Result::Ack) => Ok(()),
        Ok(pb::handle_response::Result::Retry) => {
            Err(NotTaken::Retry(DeliveryError::AskedToRetry(answer.reason)))
        }
        Ok(pb::handle_response::Result::DeadLetter) => Err(NotTaken::DeadLetter(format!(
            "the app dead-lettered it: {}",
            answer.reason
        ))),
        Err(_) => Err(NotTaken::Retry(DeliveryError::AskedToRetry(format!(
            "unknown result {} ({})",
            answer.result, answer.reason
        )))),
    }
}
