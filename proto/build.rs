//! Compiles the workspace's .proto files with protox (pure Rust, no protoc needed) and
//! generates tonic clients and servers from the resulting descriptors.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "streamgate/sidecar/v1/events.proto",
        "streamgate/app/v1/event_handler.proto",
        "streamgate/demo/v1/upload.proto",
        "streamgate/testing/v1/echo.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
