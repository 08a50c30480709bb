//! `streamgate-demo-app`: see the library's documentation.

fn main() -> std::process::ExitCode {
    streamgate_demo_app::main()
}
