//! StreamGate's protobuf APIs, generated at build time by tonic/prost from `proto/streamgate`.
//!
//! - [`sidecar::v1`]: the sidecar's app-facing events API.
//! - [`app::v1`]: what a gRPC app implements to receive its events.
//! - [`demo::v1`]: the demo app's upload service (the seed's UploadService, simplified).
//! - [`testing::v1`]: an echo service in all four call kinds, for the forwarding tests
//!   and benchmark.

pub mod sidecar {
    pub mod v1 {
        tonic::include_proto!("streamgate.sidecar.v1");
    }
}

pub mod app {
    pub mod v1 {
        tonic::include_proto!("streamgate.app.v1");
    }
}

pub mod demo {
    pub mod v1 {
        tonic::include_proto!("streamgate.demo.v1");

        /// The source of `upload.proto`, for tools that read .proto files rather than
        /// generated code (ghz in the forwarding benchmark). Included here, by the crate
        /// that owns and compiles the file, rather than by a path from another crate's
        /// directory (`../../../proto/...`) or the source tree at run time: the file
        /// travels with this crate, and a binary needs no checkout to use it.
        pub const UPLOAD_PROTO: &str = include_str!("../streamgate/demo/v1/upload.proto");

        /// [`UPLOAD_PROTO`]'s path under the proto root, as `import` statements, `protoc`
        /// and ghz's `--proto` name it.
        pub const UPLOAD_PROTO_PATH: &str = "streamgate/demo/v1/upload.proto";
    }
}

pub mod testing {
    pub mod v1 {
        tonic::include_proto!("streamgate.testing.v1");
    }
}
