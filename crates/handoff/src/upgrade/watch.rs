//! Waiting for the next generation's ready, reading what it reports, and rolling back.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::{Failure, Observed, Rollback, Step};
use crate::sys;

use super::{Upgrader, spawn::spawn_error};

impl Upgrader {
    /// Tells the machine what the readiness wait sees of the child, until it decides: hand
    /// over, or roll back (with the error behind a failed wait, if that is why). Neither kills
    /// nor reaps the child: [`roll_back`](Upgrader::roll_back) does.
    pub(super) fn wait_ready(
        &self,
        process: &sys::Process,
        ready_r: &OwnedFd,
        link: &OwnedFd,
    ) -> Result<(), (Rollback, Option<Error>)> {
        let mut watch = Watch {
            process,
            ready_r: Some(ready_r),
            pipe_open: true,
            report: Vec::with_capacity(REPORT_MAX),
            link,
            link_closed: false,
        };
        let mut seen = Observed::Nothing;
        let mut wait_error = None;
        loop {
            let now = self.now();
            let step = self.state().machine.observe(now, seen);
            let deadline = match step {
                Step::WaitUntil(deadline) => deadline,
                Step::HandOver(_) => return Ok(()),
                Step::RollBack(rollback) => {
                    if let (Failure::Exec(errno), Some((false, _))) =
                        (rollback.failure, parse_exec_failed(&watch.report))
                    {
                        wait_error = Some(spawn_error(
                            &format!(
                                "setting up the child before its exec (placing its descriptors, \
                                 changing to {})",
                                self.inner
                                    .cwd
                                    .as_deref()
                                    .map_or("its directory".into(), |d| d.display().to_string())
                            ),
                            std::io::Error::from_raw_os_error(errno),
                        ));
                    }
                    return Err((rollback, wait_error));
                }
            };
            seen = self
                .watch(&mut watch, now.until(deadline))
                .unwrap_or_else(|error| {
                    wait_error = Some(error);
                    Observed::WaitFailed
                });
        }
    }

    /// Waits up to `timeout` for news of the child (or for a stop) and says what it was.
    pub(super) fn watch(&self, w: &mut Watch<'_>, timeout: Duration) -> Result<Observed> {
        #[derive(Clone, Copy)]
        enum Source {
            Pipe,
            Wake,
            Exit,
            Link,
        }
        let mut fds = Vec::with_capacity(4);
        let mut sources = Vec::with_capacity(4);
        // The pipe comes first: a child that wrote and then exited is judged by what it wrote.
        if let Some(ready_r) = w.ready_r
            && w.pipe_open
        {
            fds.push(ready_r.as_fd());
            sources.push(Source::Pipe);
        }
        fds.push(self.inner.wake_r.as_fd());
        sources.push(Source::Wake);
        // The link, whose other end only the child holds (close-on-exec in it, so not its own
        // children after their exec): it carries the byte the child sends when it stops on
        // purpose, and closes when the child ends. It comes before the pidfd: a child that
        // said it stops and then exited is judged by what it said, not taken for a crash.
        if !w.link_closed {
            fds.push(w.link.as_fd());
            sources.push(Source::Link);
        }
        // The child's pidfd, where there is one.
        if let Some(exit) = w.process.exit_fd() {
            fds.push(exit);
            sources.push(Source::Exit);
        }
        // Without a pidfd, the link closes as the child exits, a moment before the kernel lets
        // it be waited for: until then, look again every millisecond.
        let awaiting_status = w.link_closed && w.process.exit_fd().is_none();
        let timeout = if awaiting_status {
            timeout.min(Duration::from_millis(1))
        } else {
            timeout
        };
        let ready = sys::poll_readable(&fds, timeout)
            .map_err(|e| Error::io(ErrorKind::Io, "waiting for the next generation", e))?;
        let sys::Readable::Fd(i) = ready else {
            return Ok(match awaiting_status {
                true => self.status(w, Observed::Nothing),
                false => Observed::Nothing,
            });
        };
        match sources[i] {
            Source::Wake => {
                // A stop, which the machine already knows of. Empty the pipe so that the next
                // wait does not wake at once.
                let mut buf = [0u8; 64];
                while matches!(sys::read(self.inner.wake_r.as_fd(), &mut buf), Ok(n) if n > 0) {}
                Ok(Observed::Nothing)
            }
            // A readable pidfd is an ended child, whether or not its status can still be read.
            Source::Exit => Ok(self.status(w, Observed::Vanished)),
            Source::Link => {
                let mut buf = [0u8; 16];
                match sys::read(w.link.as_fd(), &mut buf) {
                    Ok(n) if n > 0 => Ok(Observed::Stopping),
                    // Closed (or reset): the child is ending. With a pidfd its end is seen
                    // there; without, its status is looked for until it can be read.
                    _ => {
                        w.link_closed = true;
                        Ok(match w.process.exit_fd() {
                            Some(_) => Observed::Nothing,
                            None => self.status(w, Observed::Nothing),
                        })
                    }
                }
            }
            Source::Pipe => {
                let ready_r = w
                    .ready_r
                    .expect("the pipe is watched only while there is one");
                let mut buf = [0u8; REPORT_MAX];
                let n = sys::read(ready_r.as_fd(), &mut buf)
                    .map_err(|e| Error::io(ErrorKind::Io, "reading the readiness pipe", e))?;
                let room = REPORT_MAX - w.report.len();
                w.report.extend_from_slice(&buf[..n.min(room)]);
                if w.report.windows(6).any(|x| x == b"ready\n") {
                    return Ok(Observed::Ready);
                }
                if let Some((_, errno)) = parse_exec_failed(&w.report) {
                    return Ok(Observed::ExecFailed(errno));
                }
                if n > 0 {
                    return Ok(Observed::Nothing);
                }
                // Every copy of the write end is closed: the child has exited, or closed it
                // without reporting ready (and then has until the deadline; its exit, if it
                // comes, is seen on its pidfd or its link).
                w.pipe_open = false;
                Ok(self.status(w, Observed::PipeClosed))
            }
        }
    }

    /// The child's exit status as an observation, or `running` while it has none. A child
    /// whose status is gone (`ECHILD`: something else in this process reaped it) has ended:
    /// [`Observed::Vanished`].
    fn status(&self, w: &Watch<'_>, running: Observed) -> Observed {
        if !w.process.is_child() {
            // A hand-over peer: its status is not ours to read. Its pidfd readable
            // (`running` is then `Vanished`) or its connection closed means it has ended.
            return if w.link_closed {
                Observed::Vanished
            } else {
                running
            };
        }
        match w.process.exit_status() {
            Ok(Some(status)) => Observed::Exited(status),
            Ok(None) => running,
            Err(error) => {
                tracing::warn!(
                    %error,
                    child = w.process.pid(),
                    "the next generation has ended but its exit status cannot be read (reaped \
                     elsewhere in this process: SIGCHLD ignored, or a waitpid(-1) loop?)"
                );
                Observed::Vanished
            }
        }
    }

    /// Carries out a rollback the machine decided: kills and reaps the child, if one was
    /// spawned, and tells the machine, which goes back to serving (unless stopping).
    pub(super) fn roll_back(&self, rollback: Rollback, process: Option<Arc<sys::Process>>) {
        debug_assert_eq!(rollback.child, process.as_ref().map(|p| p.pid()));
        self.state().in_flight = None;
        if let Some(process) = process {
            // It is unreaped, so its pid (and pidfd) still name it: kill it if it still lives
            // (a no-op on a zombie), then reap it.
            let pid = process.pid();
            let _ = process.signal(libc::SIGKILL);
            if let Err(error) = process.reap() {
                tracing::error!(%error, child = pid, "reaping the failed next generation");
            }
        }
        let mut st = self.state();
        st.machine.rolled_back();
        self.publish(&st);
    }

    /// The error for an upgrade whose child `pid` failed.
    pub(super) fn failure_error(
        &self,
        pid: u32,
        failure: Failure,
        wait_error: Option<Error>,
    ) -> Error {
        match failure {
            Failure::Stopped => Error::new(
                ErrorKind::Stopped { pid },
                format!("stop requested while child {pid} was starting; killed it"),
            ),
            Failure::Exited(code) => Error::new(
                ErrorKind::ChildExited { pid, code },
                format!("child {pid} exited {code} before ready"),
            ),
            Failure::Crashed(signal) => Error::new(
                ErrorKind::ChildCrashed { pid, signal },
                format!("child {pid} was killed by signal {signal} before ready"),
            ),
            Failure::ReadyTimeout => {
                let timeout = self.inner.ready_timeout;
                Error::new(
                    ErrorKind::ReadyTimeout { pid, timeout },
                    format!(
                        "child {pid} was not ready within {} ms; killed it",
                        timeout.as_millis()
                    ),
                )
            }
            Failure::Exec(errno) => wait_error.unwrap_or_else(|| {
                Error::io(
                    ErrorKind::Spawn,
                    format!(
                        "executing {} for the next generation",
                        Path::new(&self.inner.exe).display()
                    ),
                    std::io::Error::from_raw_os_error(errno),
                )
            }),
            Failure::Vanished => Error::new(
                ErrorKind::ChildVanished { pid },
                format!(
                    "child {pid} ended before ready, and something else in this process reaped \
                     it (SIGCHLD ignored, or a waitpid(-1) loop): its exit status is lost"
                ),
            ),
            Failure::Spawn | Failure::WaitFailed => wait_error.unwrap_or_else(|| {
                Error::new(ErrorKind::Io, format!("watching child {pid} failed"))
            }),
        }
    }
}

/// The most of the readiness pipe that is kept: enough for `ready\n` or an exec failure
/// report. A child writing more is not reporting anything we understand, and must not make us
/// buffer without bound.
const REPORT_MAX: usize = 64;

/// What the wait on a child watches: the pipe it reports ready on (until it has), and its
/// exit, on its pidfd or, without one, on the link.
pub(super) struct Watch<'a> {
    pub(super) process: &'a sys::Process,
    pub(super) ready_r: Option<&'a OwnedFd>,
    pub(super) pipe_open: bool,
    /// What the child wrote so far, at most [`REPORT_MAX`] bytes.
    pub(super) report: Vec<u8>,
    /// Our end of the link; the child's end closes when it exits.
    pub(super) link: &'a OwnedFd,
    /// The link has closed; the child is exiting and not yet waitable.
    pub(super) link_closed: bool,
}

/// What a child that failed before its exec reported on the readiness pipe: whether the exec
/// itself failed (`exec-failed <errno>\n`) or placing its descriptors did
/// (`setup-failed <errno>\n`), and the errno.
fn parse_exec_failed(got: &[u8]) -> Option<(bool, i32)> {
    let text = std::str::from_utf8(got).ok()?;
    let (exec, rest) = match text.strip_prefix("exec-failed ") {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix("setup-failed ")?),
    };
    Some((exec, rest.strip_suffix('\n')?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failure_report_is_parsed() {
        assert_eq!(
            parse_exec_failed(b"exec-failed 0000000002\n"),
            Some((true, 2))
        );
        assert_eq!(
            parse_exec_failed(b"setup-failed 0000000024\n"),
            Some((false, 24))
        );
        assert_eq!(parse_exec_failed(b"exec-failed 00000"), None);
        assert_eq!(parse_exec_failed(b"ready\n"), None);
    }
}
