//! `handoff-echo`: the reference line-protocol server. See `handoff_servers`.
fn main() -> std::process::ExitCode {
    handoff_servers::cli::main(handoff_servers::Protocol::Echo)
}
