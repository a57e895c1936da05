//! `handoff-ctl`: a server's control socket from the command line. See `handoff_servers::ctl`.
fn main() -> std::process::ExitCode {
    handoff_servers::ctl::main()
}
