//! Failing on purpose, so that rollback can be shown: a new generation reads a file the test
//! controls, deletes it, and fails the way it says before it reports ready.

use std::path::Path;
use std::str::FromStr;

/// How the next generation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Abort (SIGABRT) before ready.
    Crash,
    /// Exit with status 1 before ready.
    Exit,
    /// Never report ready (the parent's ready deadline kills it).
    Hang,
}

impl FromStr for FailMode {
    type Err = String;
    fn from_str(s: &str) -> Result<FailMode, String> {
        match s.trim() {
            "crash" => Ok(FailMode::Crash),
            "exit" => Ok(FailMode::Exit),
            "hang" => Ok(FailMode::Hang),
            other => Err(format!(
                "unknown failure mode {other:?}: expected crash, exit or hang"
            )),
        }
    }
}

/// Reads and removes the fail-next file. Only the first generation to see it acts on it, so
/// one write fails exactly one upgrade.
pub(crate) fn take(path: &Path) -> Option<FailMode> {
    let text = std::fs::read_to_string(path).ok()?;
    // If the file cannot be removed, failing anyway would fail every later upgrade too.
    std::fs::remove_file(path).ok()?;
    match text.parse() {
        Ok(mode) => Some(mode),
        Err(e) => {
            eprintln!("ignoring {}: {e}", path.display());
            None
        }
    }
}

/// Fails as `mode` says. Never returns.
pub(crate) fn fail(mode: FailMode) -> ! {
    eprintln!("failing on purpose before ready: {mode:?}");
    match mode {
        FailMode::Crash => std::process::abort(),
        FailMode::Exit => std::process::exit(1),
        FailMode::Hang => loop {
            std::thread::park();
        },
    }
}
