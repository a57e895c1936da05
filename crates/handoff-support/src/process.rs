//! Process helpers for the code around the library (the known-bad servers, the tests, the
//! bench): pidfds, waiting for a descriptor to be readable, close-on-exec pipes, and placing
//! descriptors at fixed numbers in a child. Every call goes through rustix, except the two
//! that must run between `fork` and `exec` in [`place_fds`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// A pidfd (`pidfd_open(2)`): a descriptor that refers to one process for as long as it is
/// held, so that a signal sent through it never reaches a process that reused the pid, and
/// that polls readable once the process has exited (a zombie counts as exited).
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// `pidfd_open(2)` for `pid`; `None` when there is no such process (it exited and was
    /// reaped) or pidfds are not available.
    pub fn open(pid: u32) -> Option<Pidfd> {
        let pid = Pid::from_raw(i32::try_from(pid).ok()?)?;
        pidfd_open(pid, PidfdFlags::empty()).ok().map(Pidfd)
    }

    /// `pidfd_send_signal(2)` of signal number `sig`.
    ///
    /// # Errors
    /// `sig` is not a signal number, or the call failed (`ESRCH` once the process has exited
    /// and been reaped).
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        let sig = Signal::from_named_raw(sig).ok_or(Errno::INVAL)?;
        Ok(pidfd_send_signal(&self.0, sig)?)
    }

    /// Waits up to `timeout` for the process to exit: the instant the exit was seen, or
    /// `None` when `timeout` passed first.
    pub fn wait_exit(&self, timeout: Duration) -> Option<Instant> {
        wait_readable(&self.0, timeout)
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&self) -> bool {
        self.wait_exit(Duration::ZERO).is_some()
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Waits up to `timeout` for process `pid` (not necessarily a child of this one) to exit;
/// true if it did, or was already gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    Pidfd::open(pid).is_none_or(|p| p.wait_exit(timeout).is_some())
}

/// `poll(2)` for readability of `fd`, interrupted calls resumed with what is left of
/// `timeout`: the instant it was seen readable (or hung up), or `None` when `timeout` passed.
pub fn wait_readable(fd: impl AsFd, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let limit = Timespec::try_from(left).ok();
        match poll(&mut fds, limit.as_ref()) {
            Ok(n) if n > 0 => return Some(Instant::now()),
            Ok(_) => return None,
            Err(Errno::INTR) if !left.is_zero() => {}
            Err(_) => return None,
        }
    }
}

/// Reaps every child of this process as it ends (for an init: every orphan reparented to it
/// too), until none is left.
pub fn reap_until_none_left() {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(_) | Err(Errno::INTR) => continue,
            // ECHILD: nobody is left.
            Err(_) => return,
        }
    }
}

/// `pipe2(O_CLOEXEC)`: both ends are close-on-exec from birth, so a concurrent fork+exec
/// cannot leak them. `(read end, write end)`.
///
/// # Errors
/// The call failed (out of descriptors).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe_with(PipeFlags::CLOEXEC)?)
}

/// Makes `cmd` start its process with each `(fd, number)` of `fds` open at `number`, without
/// close-on-exec (every other descriptor of this process stays close-on-exec as it was): the
/// way a next generation is handed its listening socket at 3 and its readiness pipe at 4.
///
/// Each `fd` is first copied above every target number, so that placing one cannot clobber
/// another that sits at its target (a source may already be at its own target).
///
/// # Caveats
/// The `fd`s must stay open until the command is spawned: closed, they make the spawn fail
/// (`EBADF`), or reused, pass whatever took the number. The standard library's own pipe for
/// reporting an `exec` failure may sit at a target number if that number is free in this
/// process when the command is spawned: keep the target numbers occupied (the bench opens
/// `/dev/null` on them first) where that matters.
pub fn place_fds(cmd: &mut Command, fds: &[(RawFd, RawFd)]) {
    // Prepared here: the hook may not allocate, it runs between fork and exec.
    let mut plan: Vec<(RawFd, RawFd)> = fds.to_vec();
    let above = fds.iter().map(|&(_, to)| to).max().unwrap_or(2) + 1;
    let hook = move || {
        for (from, _) in plan.iter_mut() {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) is async-signal-safe and touches no memory.
            let high = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, above) };
            if high < 0 {
                return Err(io::Error::last_os_error());
            }
            *from = high;
        }
        for &(high, to) in plan.iter() {
            // SAFETY: dup2 is async-signal-safe and touches no memory; the copy at `to` has no
            // close-on-exec, the high one closes at exec.
            if unsafe { libc::dup2(high, to) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only calls fcntl and dup2, which are async-signal-safe, and mutates
    // memory it owns without allocating.
    unsafe { cmd.pre_exec(hook) };
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn a_pidfd_sees_its_process_exit() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pidfd = Pidfd::open(child.id()).expect("pidfd");
        assert!(!pidfd.has_exited());
        assert_eq!(pidfd.wait_exit(Duration::from_millis(20)), None);
        pidfd.signal(libc::SIGTERM).expect("signal");
        assert!(pidfd.wait_exit(Duration::from_secs(10)).is_some());
        assert!(!child.wait().expect("reap").success());
        assert!(wait_gone(child.id(), Duration::ZERO));
        assert!(pidfd.signal(0x7777).is_err());
    }

    #[test]
    fn descriptors_land_at_their_numbers_and_nowhere_else() {
        let (r, w) = pipe().expect("pipe");
        let (r2, w2) = pipe().expect("pipe");
        let mut cmd = Command::new("sh");
        // fd 3 and 4 are the write ends: the child writes to both, then lists 5.
        cmd.args([
            "-c",
            "echo three >&3; echo four >&4; if [ -e /proc/self/fd/5 ]; then echo five >&3; fi",
        ])
        .stdin(Stdio::null());
        use std::os::fd::AsRawFd;
        place_fds(&mut cmd, &[(w.as_raw_fd(), 3), (w2.as_raw_fd(), 4)]);
        let status = cmd.status().expect("run sh");
        assert!(status.success());
        drop((w, w2));
        let (mut out, mut out2) = (String::new(), String::new());
        std::fs::File::from(r)
            .read_to_string(&mut out)
            .expect("read");
        std::fs::File::from(r2)
            .read_to_string(&mut out2)
            .expect("read");
        assert_eq!(out, "three\n");
        assert_eq!(out2, "four\n");
    }

    #[test]
    fn a_pipe_end_becomes_readable() {
        let (r, w) = pipe().expect("pipe");
        assert_eq!(wait_readable(&r, Duration::from_millis(10)), None);
        std::fs::File::from(w).write_all(b"x").expect("write");
        assert!(wait_readable(&r, Duration::from_secs(5)).is_some());
    }
}
