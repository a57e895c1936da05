//! `handoff-http`: the reference HTTP/1.1 server. See `handoff_servers`.
fn main() -> std::process::ExitCode {
    handoff_servers::cli::main(handoff_servers::Protocol::Http)
}
