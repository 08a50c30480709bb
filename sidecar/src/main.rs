//! `streamgate-sidecar`: see the library's documentation for how it is put together.

fn main() -> std::process::ExitCode {
    streamgate_sidecar::main()
}
