//! The reference servers' command line, shared by both binaries.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use handoff_support::ServerFlags;

use crate::serve::{Config, Protocol, run};

/// A reference server built on the handoff graceful-restart library. SIGHUP replaces the
/// process with a new generation that inherits the listening socket; SIGTERM or SIGINT stops
/// it after draining.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerFlags,
    /// Tokio worker threads. 0 runs the accept loop, the connections and the signal handling
    /// on the main thread, which keeps a restart's path to the first reply short.
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Hold this many MiB of touched private memory, allocated on a thread of its own after
    /// ready (so readiness is not delayed); `ballast pid=<pid> mb=<n>` is printed once it is
    /// all touched. Stands in for a server's caches, to show what an upgrade costs a large
    /// process.
    #[arg(long, default_value_t = 0)]
    ballast_mb: usize,
    /// For how long after a handover this generation keeps its listeners and takes the service
    /// back if the new generation dies (0: no rollback window). Keep it below the drain
    /// timeout: a generation lives until its window has closed.
    #[arg(long, default_value_t = 0)]
    rollback_window_ms: u64,
    /// Offer the listeners at this unix socket (`@name`: an abstract one) to a new process
    /// started with `--take-over` by anyone: it takes them over, reports ready, and only then
    /// does this one drain and exit. The directory is created 0700 (or must be so), the
    /// socket is 0600, and peers of another uid are refused unless `--allow-uid` names it.
    #[arg(long, value_name = "PATH")]
    handoff_socket: Option<PathBuf>,
    /// Start as the new process of a hand-over: take the listeners from the running server's
    /// `--handoff-socket` at PATH instead of binding them.
    #[arg(long, value_name = "PATH")]
    take_over: Option<PathBuf>,
    /// Take commands at this unix socket: `upgrade` (answered with the outcome) and
    /// `status` (see `handoff-ctl`). Same protections as `--handoff-socket`.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Also serve this uid on the hand-over and control sockets (repeatable).
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
}

/// Parses the command line and runs the server speaking `protocol`.
pub fn main(protocol: Protocol) -> ExitCode {
    let args = Args::parse();
    tracing_init();
    let server = args.server;
    let config = Config {
        listen: server.listen,
        delay: Duration::from_millis(server.delay_ms),
        pid_file: server.pid_file,
        drain_timeout: Duration::from_millis(server.drain_timeout_ms),
        ready_timeout: Duration::from_millis(server.ready_timeout_ms),
        fail_next_file: server.fail_next_file,
        worker_threads: args.worker_threads,
        ballast_mb: args.ballast_mb,
        rollback_window: Duration::from_millis(args.rollback_window_ms),
        handoff_socket: args.handoff_socket,
        take_over: args.take_over,
        control_socket: args.control_socket,
        allow_uids: args.allow_uid,
    };
    match run(config, protocol) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once: the messages do not repeat their sources.
            let mut shown = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                shown.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {shown}");
            ExitCode::from(2)
        }
    }
}

fn tracing_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG")
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
