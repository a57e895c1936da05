use std::io;
use std::time::Duration;

/// The error type of this crate: a [`ErrorKind`] saying what went wrong, a message saying what
/// was being done to what, and the underlying I/O error when there is one.
///
/// `Display` prints the message alone; the underlying error is its
/// [`source`](std::error::Error::source), printed once by whoever walks the chain (`{:#}` with
/// `anyhow`, or [`Error::chain`]).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<io::Error>,
}

/// What went wrong. Upgrade failures carry the child's pid and what became of it, so a caller
/// can report "failed: child 4242 exited 1 before ready" without parsing the message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES` or a `HANDOFF_*` variable is malformed.
    BadEnvironment,
    /// An inherited descriptor is not the kind of socket it was adopted as.
    BadInheritedFd,
    /// Creating, binding or configuring a listener failed.
    Listen,
    /// An upgrade was requested while another one is in flight; nothing was started.
    UpgradeInProgress,
    /// This process no longer serves (it handed over, or is stopping) and will not upgrade.
    NotServing,
    /// The API was used out of order (e.g. a listener requested after `ready`, or a second
    /// upgrader built in one process).
    Usage,
    /// A listener name that `LISTEN_FDNAMES` cannot carry: empty, longer than 255 bytes, or
    /// other than printable ASCII without `:`.
    InvalidName,
    /// This process is PID 1 of its PID namespace and will not upgrade: its exit would make
    /// the kernel kill every process in the namespace, the next generation included.
    Pid1,
    /// Creating the readiness pipe, spawning or executing the new generation failed.
    Spawn,
    /// The new generation exited with `code` before it reported ready.
    ChildExited {
        /// The child's pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
    /// The new generation was killed by `signal` before it reported ready.
    ChildCrashed {
        /// The child's pid.
        pid: u32,
        /// The signal that killed it.
        signal: i32,
    },
    /// The new generation ended before it reported ready, and something else in this process
    /// reaped it (`SIGCHLD` ignored, or a `waitpid(-1)` loop), so how it ended is lost.
    ChildVanished {
        /// The child's pid.
        pid: u32,
    },
    /// The new generation did not report ready within `timeout`; it was killed.
    ReadyTimeout {
        /// The child's pid.
        pid: u32,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// A stop was requested while the upgrade was in flight; the new generation was killed.
    Stopped {
        /// The child's pid.
        pid: u32,
    },
    /// The new generation reported ready and then died within the rollback window; this
    /// process serves again.
    DiedAfterReady {
        /// The child's pid.
        pid: u32,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// A hand-over over a unix socket failed on the new process's side: the socket could not
    /// be reached, the running process refused or rolled back, or its message or descriptors
    /// were malformed (every descriptor that came with it is closed).
    Handover,
    /// The process taking over through the hand-over socket closed the connection, or ended,
    /// before it reported ready; it was killed if it still lived.
    PeerLeft {
        /// The peer's pid, as the kernel recorded it at connect.
        pid: u32,
    },
    /// Writing or replacing the PID file failed.
    PidFile,
    /// Any other I/O failure.
    Io,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn io(kind: ErrorKind, message: impl Into<String>, source: io::Error) -> Error {
        Error {
            kind,
            message: message.into(),
            source: Some(source),
        }
    }

    /// The message followed by each cause, `: `-separated, each printed once (what
    /// `anyhow`'s `{:#}` prints), for logs that have only a `Display`.
    ///
    /// # Examples
    /// ```
    /// # fn f(err: handoff::Error) {
    /// eprintln!("upgrade failed: {}", err.chain());
    /// # }
    /// ```
    pub fn chain(&self) -> impl std::fmt::Display + '_ {
        Chain(self)
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The pid of the new generation an upgrade failure is about, if any.
    pub fn child_pid(&self) -> Option<u32> {
        match self.kind {
            ErrorKind::ChildExited { pid, .. }
            | ErrorKind::ChildCrashed { pid, .. }
            | ErrorKind::ChildVanished { pid }
            | ErrorKind::ReadyTimeout { pid, .. }
            | ErrorKind::Stopped { pid }
            | ErrorKind::PeerLeft { pid }
            | ErrorKind::DiedAfterReady { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.kind {
            ErrorKind::BadEnvironment | ErrorKind::BadInheritedFd | ErrorKind::InvalidName => {
                io::ErrorKind::InvalidInput
            }
            ErrorKind::Pid1 => io::ErrorKind::Unsupported,
            ErrorKind::UpgradeInProgress => io::ErrorKind::ResourceBusy,
            ErrorKind::ReadyTimeout { .. } => io::ErrorKind::TimedOut,
            _ => err
                .source
                .as_ref()
                .map_or(io::ErrorKind::Other, io::Error::kind),
        };
        io::Error::new(kind, err)
    }
}

struct Chain<'a>(&'a Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
