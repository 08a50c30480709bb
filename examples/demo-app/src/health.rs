//! The app's health: one switch that both `/health` and gRPC health report, so HTTP,
//! gRPC and (by stopping the process) TCP checks can all be driven by tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

#[derive(Clone)]
pub struct HealthSwitch {
    healthy: Arc<AtomicBool>,
    reporter: HealthReporter,
    server: HealthServer<HealthService>,
}

impl HealthSwitch {
    pub async fn new(healthy: bool) -> Self {
        let reporter = HealthReporter::new();
        let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let switch = HealthSwitch {
            healthy: Arc::new(AtomicBool::new(healthy)),
            reporter,
            server,
        };
        switch.set(healthy).await;
        switch
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Sets HTTP and gRPC health together (gRPC's overall status, service "").
    pub async fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
        let status = if healthy {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        tracing::info!(healthy, "health switched");
    }

    pub fn grpc_server(&self) -> HealthServer<HealthService> {
        self.server.clone()
    }
}
