//! Publishing as a seed service does, but through the sidecar's gRPC events API at
//! `STREAMGATE_SIDECAR_ADDR`: `POST /admin/publish` with
//! `{"type", "data"?, "id"?, "count"?, "batch"?, "idPrefix"?}` publishes `count` events
//! (ids `<idPrefix>-<n>` when a prefix is given) in PublishBatch calls of `batch`
//! (1 = unary Publish), and answers with what happened, gRPC code included.

use axum::extract::State;
use axum::{Json, Router, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use streamgate_proto::sidecar::v1::events_client::EventsClient;
use streamgate_proto::sidecar::v1::{PublishBatchRequest, PublishRequest};
use tonic::transport::{Channel, Endpoint};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Publish {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    id_prefix: Option<String>,
    #[serde(default = "one")]
    count: usize,
    #[serde(default = "one")]
    batch: usize,
}

fn one() -> usize {
    1
}

/// None when no sidecar address is configured.
pub fn router(sidecar: Option<String>) -> Router {
    let channel = sidecar.and_then(|addr| {
        Endpoint::from_shared(format!("http://{addr}"))
            .ok()
            .map(|e| e.connect_lazy())
    });
    Router::new()
        .route("/admin/publish", post(publish))
        .with_state(Arc::new(channel))
}

async fn publish(
    State(channel): State<Arc<Option<Channel>>>,
    Json(p): Json<Publish>,
) -> Json<Value> {
    let Some(channel) = channel.as_ref().clone() else {
        return Json(
            json!({"ok": false, "code": "NoSidecar", "message": "STREAMGATE_SIDECAR_ADDR is not set"}),
        );
    };
    let mut client = EventsClient::new(channel);
    let data_json = p.data.as_ref().map(Value::to_string).unwrap_or_default();
    let request = |n: usize| PublishRequest {
        r#type: p.event_type.clone(),
        data_json: data_json.clone(),
        id: match &p.id_prefix {
            Some(prefix) => format!("{prefix}-{n}"),
            None => p.id.clone(),
        },
    };
    let (mut ids, mut spooled) = (Vec::new(), 0usize);
    let batch = p.batch.max(1);
    let mut n = 0;
    while n < p.count {
        let end = (n + batch).min(p.count);
        let result = if batch == 1 {
            client
                .publish(request(n))
                .await
                .map(|r| vec![r.into_inner()])
        } else {
            let events = (n..end).map(request).collect();
            client
                .publish_batch(PublishBatchRequest { events })
                .await
                .map(|r| r.into_inner().results)
        };
        match result {
            Ok(results) => {
                spooled += results.iter().filter(|r| r.spooled).count();
                ids.extend(results.into_iter().map(|r| r.id));
            }
            Err(status) => {
                return Json(json!({
                    "ok": false,
                    "code": format!("{:?}", status.code()),
                    "message": status.message(),
                    "ids": ids,
                    "spooled": spooled,
                }));
            }
        }
        n = end;
    }
    Json(json!({"ok": true, "ids": ids, "spooled": spooled}))
}
