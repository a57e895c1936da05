//! `handoff-test-init`: the minimal init `tests/pid1.rs` runs as PID 1 of a PID namespace.
//! It starts the program on its command line, then reaps every process that ends in the
//! namespace (generations orphaned by their predecessors' exit are reparented to it) until
//! none is left, and exits 0. Unlike tini or `docker --init`, it does not exit when its first
//! child does: that child is generation 1, which exits at the first handover. It exists for
//! the tests only.
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: handoff-test-init PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    if std::process::id() != 1 {
        eprintln!("handoff-test-init: run as PID 1 of a PID namespace");
        return ExitCode::from(2);
    }
    if let Err(e) = Command::new(&program).args(args).spawn() {
        eprintln!("handoff-test-init: starting {}: {e}", program.display());
        return ExitCode::FAILURE;
    }
    handoff_support::reap_until_none_left();
    ExitCode::SUCCESS
}
