//! Standard output and error that a closed pipe ends quietly, as a Unix filter should.
//!
//! `println!` panics when stdout is gone (`handoff list | head -1`: "failed printing to stdout:
//! Broken pipe"), and `eprintln!` likewise on stderr. Here a write that fails marks the stream
//! closed, and every later write to it is skipped: the command goes on with what matters (a
//! check still judges, writes its report files and sets its exit status), and says nothing more
//! where nobody reads.

use std::fmt;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to stdout and flushes; false once stdout is closed (this write failed, or an
/// earlier one did).
pub fn print(args: fmt::Arguments<'_>) -> bool {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return false;
    }
    let mut out = io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.flush()).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        return false;
    }
    true
}

/// Writes `args` to stderr; nothing once stderr is closed.
pub fn eprint(args: fmt::Arguments<'_>) {
    if STDERR_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if io::stderr().lock().write_fmt(args).is_err() {
        STDERR_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether stdout was found closed.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `println!` that a closed stdout does not panic: evaluates to false once it is closed.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that a closed stderr does not panic.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::eprint(format_args!("{}\n", format_args!($($arg)*)))
    };
}
