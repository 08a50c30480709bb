//! StreamGate's protobuf APIs, generated at build time by tonic/prost from `proto/streamgate`.
//!
//! - [`sidecar::v1`]: the sidecar's app-facing events API.
//! - [`demo::v1`]: the demo app's upload service (the seed's UploadService, simplified).
//! - [`testing::v1`]: an echo service in all four call kinds, for the forwarding tests
//!   and benchmark.

pub mod sidecar {
    pub mod v1 {
        tonic::include_proto!("streamgate.sidecar.v1");
    }
}

pub mod demo {
    pub mod v1 {
        tonic::include_proto!("streamgate.demo.v1");
    }
}

pub mod testing {
    pub mod v1 {
        tonic::include_proto!("streamgate.testing.v1");
    }
}
