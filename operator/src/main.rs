//! `streamgate-operator`: parses the command line and hands over to [`streamgate_operator::cli`].

fn main() -> std::process::ExitCode {
    streamgate_operator::cli::main()
}
