//! `handoff`: run graceful-restart conformance scenarios against a server and judge them. The
//! command line and its exit codes live in `handoff_harness::cli`.
fn main() -> std::process::ExitCode {
    handoff_harness::cli::main()
}
