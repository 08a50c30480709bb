//! `forward-bench serve ADDR`: the gRPC server every path ends at, on one thread.

use std::net::SocketAddr;
use std::process::ExitCode;
use streamgate_proto::demo::v1::upload_service_server::{UploadService, UploadServiceServer};
use streamgate_proto::demo::v1::{GetUploadRequest, UploadRequest, UploadResponse};
use tonic::{Request, Response, Status};

/// The demo app's UploadService without its in-memory store, so nothing grows (and
/// no map resize stalls a run) over hundreds of thousands of calls.
struct Echo;

#[tonic::async_trait]
impl UploadService for Echo {
    async fn upload(
        &self,
        request: Request<UploadRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(UploadResponse {
            upload_id: "bench".into(),
            size: i64::try_from(request.content.len()).unwrap_or(i64::MAX),
            filename: request.filename,
            served_by: "forward-bench".into(),
        }))
    }

    async fn get_upload(
        &self,
        _: Request<GetUploadRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        Err(Status::unimplemented("forward-bench serves Upload only"))
    }
}

/// Serves on `addr` until killed.
pub fn serve(addr: Option<&str>) -> ExitCode {
    let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: forward-bench serve 127.0.0.1:PORT");
        return ExitCode::from(2);
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime.block_on(async {
                tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(UploadServiceServer::new(Echo))
                    .serve(addr)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forward-bench serve: {e}");
            ExitCode::from(2)
        }
    }
}
