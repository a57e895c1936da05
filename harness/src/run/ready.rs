//! Readiness: waiting until the target is ready the way its scenario says (a connect, a log
//! line, a PID file naming a live process), and the setup error when it never is.

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::{Run, RunError, STEP, interrupted};
use crate::model::Ready;
use crate::target::{self, ConnectAddr};

impl Run<'_> {
    /// Waits until the target is ready; returns the instant it was seen ready.
    pub(super) fn wait_ready(&self) -> Result<Instant, RunError> {
        let timeout = self.s.target.ready_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if interrupted() {
                return Err(RunError::Interrupted);
            }
            let seen = match &self.target.ready {
                Ready::Connect => probe(&self.target.connect).then(Instant::now),
                Ready::LogLine { .. } => self
                    .spawned
                    .output
                    .lock()
                    .log_ready_at
                    .map(|at| self.t0 + at),
                Ready::PidFile => self
                    .target
                    .pid_file
                    .as_deref()
                    .and_then(|p| target::read_pid_file(p).ok())
                    .filter(|&pid| kill(Pid::from_raw(pid as i32), None).is_ok())
                    .map(|_| Instant::now()),
            };
            if let Some(at) = seen {
                return Ok(at);
            }
            // A target whose main process exits may have daemonised; it failed only when no
            // process of its tree is left.
            self.observer.scan();
            if let Some(status) = self.observer.main_exit()
                && self.observer.live_pids().is_empty()
            {
                return Err(self.setup_error(&format!("exited ({status}) before it was ready")));
            }
            if Instant::now() >= deadline {
                return Err(self.setup_error(&format!(
                    "was not ready within {timeout:?} (ready: {})",
                    self.ready_text()
                )));
            }
            std::thread::sleep(STEP);
        }
    }

    fn ready_text(&self) -> String {
        match &self.target.ready {
            Ready::Connect => format!("a connect to {} succeeds", self.target.connect),
            Ready::LogLine { contains } => format!("a line containing `{contains}`"),
            Ready::PidFile => match &self.target.pid_file {
                Some(p) => format!("PID file `{}` names a live process", p.display()),
                None => "a PID file, but `target.pid_file` is not set".into(),
            },
        }
    }

    pub(super) fn setup_error(&self, what: &str) -> RunError {
        RunError::Setup(format!(
            "scenario `{}`: the target `{}` {what}; last output:\n{}",
            self.s.id,
            self.target.command_line(),
            self.spawned.output.tail_text()
        ))
    }
}

/// One readiness probe: a connect that succeeds (and is closed at once).
fn probe(addr: &ConnectAddr) -> bool {
    match addr {
        ConnectAddr::Tcp(a) => TcpStream::connect_timeout(a, Duration::from_millis(100)).is_ok(),
        ConnectAddr::Unix(p) => UnixStream::connect(p).is_ok(),
    }
}
