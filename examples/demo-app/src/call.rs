//! Calling another service as a seed service would, but through the sidecar at
//! `STREAMGATE_SIDECAR_ADDR`: `POST /admin/call` with `{"service", "filename"?}` makes one
//! `UploadService/Upload` call with the service named in `:authority`, and answers with
//! the pod that served it (or the gRPC code and message of the failure).

use axum::extract::State;
use axum::{Json, Router, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use streamgate_proto::demo::v1::UploadRequest;
use streamgate_proto::demo::v1::upload_service_client::UploadServiceClient;
use tonic::transport::Endpoint;

#[derive(Deserialize)]
struct Call {
    service: String,
    #[serde(default = "default_filename")]
    filename: String,
}

fn default_filename() -> String {
    "demo.mp4".into()
}

pub fn router(sidecar: Option<String>) -> Router {
    Router::new()
        .route("/admin/call", post(call))
        .with_state(Arc::new(sidecar))
}

async fn call(State(sidecar): State<Arc<Option<String>>>, Json(c): Json<Call>) -> Json<Value> {
    let Some(addr) = sidecar.as_ref() else {
        return Json(
            json!({"ok": false, "code": "NoSidecar", "message": "STREAMGATE_SIDECAR_ADDR is not set"}),
        );
    };
    let origin = format!("http://{}", c.service).parse::<axum::http::Uri>();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"));
    let (Ok(origin), Ok(endpoint)) = (origin, endpoint) else {
        let message = format!("cannot call {} through {addr}", c.service);
        return Json(json!({"ok": false, "code": "InvalidArgument", "message": message}));
    };
    // One channel per call keeps this simple; it is a test and demo path, not a hot one.
    let channel = endpoint.origin(origin).connect_lazy();
    let request = UploadRequest {
        filename: c.filename,
        content: b"demo".to_vec(),
        ..Default::default()
    };
    match UploadServiceClient::new(channel).upload(request).await {
        Ok(response) => {
            let response = response.into_inner();
            Json(
                json!({"ok": true, "servedBy": response.served_by, "uploadId": response.upload_id}),
            )
        }
        Err(status) => Json(
            json!({"ok": false, "code": format!("{:?}", status.code()), "message": status.message()}),
        ),
    }
}
