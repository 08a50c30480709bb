//! `streamgate.demo.v1.UploadService`, modelled on the seed's UploadService: stores
//! uploads in memory and answers with the pod name that served the call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use streamgate_proto::demo::v1::upload_service_server::{UploadService, UploadServiceServer};
use streamgate_proto::demo::v1::{GetUploadRequest, UploadRequest, UploadResponse};
use tonic::{Request, Response, Status};

pub struct Uploads {
    pod_name: String,
    /// Set during a slow shutdown: calls are answered UNAVAILABLE.
    stopping: Arc<AtomicBool>,
    stored: Mutex<HashMap<String, (String, i64)>>,
    next_id: std::sync::atomic::AtomicU64,
}

pub fn server(pod_name: String, stopping: Arc<AtomicBool>) -> UploadServiceServer<Uploads> {
    UploadServiceServer::new(Uploads {
        pod_name,
        stopping,
        stored: Mutex::new(HashMap::new()),
        next_id: std::sync::atomic::AtomicU64::new(1),
    })
}

impl Uploads {
    fn response(&self, upload_id: String, filename: String, size: i64) -> UploadResponse {
        UploadResponse {
            upload_id,
            filename,
            size,
            served_by: self.pod_name.clone(),
        }
    }
}

#[tonic::async_trait]
impl UploadService for Uploads {
    async fn upload(
        &self,
        request: Request<UploadRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(Status::unavailable(format!(
                "{} is shutting down",
                self.pod_name
            )));
        }
        let request = request.into_inner();
        if request.filename.is_empty() {
            return Err(Status::invalid_argument("filename is required"));
        }
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", self.pod_name);
        let size = i64::try_from(request.content.len()).unwrap_or(i64::MAX);
        self.stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (request.filename.clone(), size));
        Ok(Response::new(self.response(id, request.filename, size)))
    }

    async fn get_upload(
        &self,
        request: Request<GetUploadRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        let id = request.into_inner().upload_id;
        let found = self
            .stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        match found {
            Some((filename, size)) => Ok(Response::new(self.response(id, filename, size))),
            None => Err(Status::not_found(format!("no upload {id}"))),
        }
    }
}
