//! Starting an upgrade: the single-upgrade guard, and the next generation's spawn.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use crate::activation;
use crate::error::{Error, ErrorKind, Result};
use crate::machine::{Phase, Refusal};
use crate::sys;

use super::{Child, Event, Upgrader};

impl Upgrader {
    /// Starts the next generation and waits (blocking) until it reports ready, then hands
    /// over: the PID file names the new pid, the service manager is told the new `MAINPID`,
    /// and [`phase`](Upgrader::phase) becomes [`Phase::HandedOver`]; this process's listener
    /// copies are closed (at once, or when the rollback window closes). At most one upgrade is
    /// in flight at a time.
    ///
    /// If the new generation exits, crashes or misses the ready deadline, it is killed (if
    /// still alive) and reaped, this process goes on serving as before, and the error says
    /// what happened. With a [rollback window](crate::Builder::rollback_window), this returns once
    /// the window has closed, or with [`ErrorKind::DiedAfterReady`] when the new generation
    /// died within it and this process serves again.
    ///
    /// A refused or failed upgrade answers a service manager's reload (`RELOADING=1`, then
    /// `READY=1`), so that `systemctl reload` does not wait for its timeout.
    ///
    /// # Errors
    /// [`ErrorKind::UpgradeInProgress`] while another upgrade is in flight or the previous
    /// generation still drains, [`ErrorKind::NotServing`] after a handover or stop, and
    /// [`ErrorKind::Pid1`] in a process that is PID 1 of its namespace (nothing is started
    /// in any of these cases); [`ErrorKind::Usage`] before [`ready`](Upgrader::ready);
    /// [`ErrorKind::Spawn`], [`ErrorKind::ChildExited`], [`ErrorKind::ChildCrashed`],
    /// [`ErrorKind::ReadyTimeout`] and [`ErrorKind::Stopped`] for a failed upgrade (rolled
    /// back); [`ErrorKind::DiedAfterReady`] for a new generation that died in the rollback
    /// window.
    pub fn upgrade(&self) -> Result<Child> {
        if let Err((error, answer_reload)) = self.begin_upgrade() {
            tracing::warn!(error = %error.chain(), "upgrade refused");
            self.emit(&Event::UpgradeRefused { error: &error });
            if answer_reload {
                self.sd_notify(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}",
                    sys::monotonic_usec()
                ));
                self.sd_notify("READY=1");
            }
            return Err(error);
        }
        self.sd_notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            sys::monotonic_usec()
        ));
        match self.start_and_wait() {
            Ok((child, process, link)) => match self.hand_over(child, &process) {
                None => {
                    self.keep_successor_link(link);
                    Ok(child)
                }
                Some(closes) => self.watch_window(child, process, link, closes),
            },
            Err(error) => {
                if self.phase() != Phase::Stopping {
                    self.sd_notify("READY=1");
                }
                tracing::warn!(error = %error.chain(), "upgrade failed; still serving");
                self.emit(&Event::UpgradeFailed { error: &error });
                Err(error)
            }
        }
    }

    /// The single-upgrade guard. The machine refuses while another upgrade is in flight, while
    /// the previous generation may still be draining, and outside [`Phase::Serving`]; and a
    /// process that is PID 1 of its namespace never upgrades. With the error, whether the
    /// refusal must answer a reload the service manager may be waiting on (no other upgrade
    /// will).
    pub(super) fn begin_upgrade(&self) -> Result<(), (Error, bool)> {
        let mut st = self.state();
        if sys::getpid() == 1 && st.machine.phase() == Phase::Serving {
            return Err((
                Error::new(
                    ErrorKind::Pid1,
                    "this process is PID 1 of its PID namespace: when it exits after the \
                     handover the kernel kills every process in the namespace, the next \
                     generation included; run it under an init that outlives it",
                ),
                true,
            ));
        }
        // Gone when its end of the link has closed (every thread of it has exited, and
        // nothing it forked holds the link), or, where there is its pidfd, when it has
        // exited whoever holds the link.
        let predecessor_exited = st
            .predecessor
            .as_ref()
            .is_none_or(|link| sys::gone(link.as_fd()))
            || st
                .predecessor_pidfd
                .as_ref()
                .is_some_and(|pidfd| sys::gone(pidfd.as_fd()));
        if predecessor_exited {
            // Gone for good: no need to ask again.
            st.predecessor = None;
            st.predecessor_pidfd = None;
        }
        let accepted = st.machine.request_upgrade(self.now(), predecessor_exited);
        self.publish(&st);
        let refusal = match accepted {
            Ok(_deadline) => return Ok(()),
            Err(refusal) => refusal,
        };
        let (kind, message, answer_reload) = match refusal {
            Refusal::BeforeReady => (ErrorKind::Usage, "upgrade requested before ready()", false),
            Refusal::InFlight => (
                ErrorKind::UpgradeInProgress,
                "an upgrade is already in flight",
                false,
            ),
            Refusal::PredecessorDraining => (
                ErrorKind::UpgradeInProgress,
                "the previous generation is still draining",
                true,
            ),
            Refusal::HandedOver => (
                ErrorKind::NotServing,
                "this generation has already handed over",
                false,
            ),
            Refusal::Stopping => (ErrorKind::NotServing, "this generation is stopping", false),
        };
        Err((Error::new(kind, message), answer_reload))
    }

    /// Starts the next generation and waits until the machine decides: hand over (the child,
    /// its handle and our end of the link to it are returned), or roll back (carried out here,
    /// and the error returned).
    fn start_and_wait(&self) -> Result<(Child, Arc<sys::Process>, OwnedFd)> {
        let pipes = sys::pipe_cloexec()
            .map_err(|e| spawn_error("creating the readiness pipe", e))
            .and_then(|ready| {
                let link = sys::socketpair_cloexec()
                    .map_err(|e| spawn_error("creating the link to the next generation", e))?;
                Ok((ready, link))
            });
        let ((ready_r, ready_w), (link, child_link)) = match pipes {
            Ok(pipes) => pipes,
            Err(error) => {
                let rollback = self.state().machine.spawn_failed();
                self.roll_back(rollback, None);
                return Err(error);
            }
        };
        let forking = {
            let mut st = self.state();
            match st.machine.before_fork() {
                Err(rollback) => Err((
                    rollback,
                    Error::new(
                        ErrorKind::NotServing,
                        "stop requested before the next generation was started; started nothing",
                    ),
                )),
                // Copies of the listeners to pass on, so that the spawn runs without the lock.
                // (While an upgrade is in flight nothing closes the upgrader's own copies
                // either: they are let go of only at a handover or a window's close.)
                Ok(()) => st
                    .listeners
                    .iter()
                    .map(|(name, fd)| Ok((name.clone(), fd.try_clone()?)))
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|e| {
                        let error = spawn_error("duplicating the listeners to pass on", e);
                        (st.machine.spawn_failed(), error)
                    }),
            }
        };
        let listeners = match forking {
            Ok(listeners) => listeners,
            Err((rollback, error)) => {
                self.roll_back(rollback, None);
                return Err(error);
            }
        };
        // The spawn returns once the child has executed: the program's path looked up and its
        // file read, a moment on a warm cache, seconds on a cold or network filesystem, and
        // for as long as the child is stopped. Without the lock, so that the application's
        // `phase()` and a stop never wait for it.
        let spawned = self.spawn(&listeners, &ready_w, &child_link);
        drop(listeners);
        let spawned = {
            let mut st = self.state();
            match spawned {
                Ok(process) => {
                    st.machine.spawned(process.pid());
                    if st.machine.phase() == Phase::Stopping {
                        // A stop came during the spawn, with no child yet to kill: kill it now
                        // (the wait rolls back at once).
                        let _ = process.signal(libc::SIGKILL);
                    }
                    let process = Arc::new(process);
                    st.in_flight = Some(Arc::clone(&process));
                    Ok(process)
                }
                Err(error) => Err((st.machine.spawn_failed(), error)),
            }
        };
        let process = match spawned {
            Ok(process) => process,
            Err((rollback, error)) => {
                self.roll_back(rollback, None);
                return Err(error);
            }
        };
        drop((ready_w, child_link));
        let pid = process.pid();
        tracing::info!(
            child = pid,
            "started the next generation; waiting for it to be ready"
        );
        self.emit(&Event::UpgradeStarted { child: pid });
        match self.wait_ready(&process, &ready_r, &link) {
            Ok(()) => Ok((Child { pid }, process, link)),
            Err((rollback, wait_error)) => {
                self.roll_back(rollback, Some(process));
                Err(self.failure_error(pid, rollback.failure, wait_error))
            }
        }
    }

    /// Spawns the next generation with `listeners`, the write end of the readiness pipe and
    /// its end of the link, and returns its handle.
    fn spawn(
        &self,
        listeners: &[(String, OwnedFd)],
        ready_w: &OwnedFd,
        link: &OwnedFd,
    ) -> Result<sys::Process> {
        let names: Vec<&str> = listeners.iter().map(|(n, _)| n.as_str()).collect();
        let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
        let report = fds.len();
        fds.push(ready_w.as_fd());
        fds.push(link.as_fd());
        let count = names.len().to_string();
        let fdnames = names.join(":");
        let ready_fd = (activation::LISTEN_FDS_START as usize + report).to_string();
        let link_fd = (activation::LISTEN_FDS_START as usize + report + 1).to_string();
        let generation = (self.inner.generation + 1).to_string();
        let parent = sys::getpid().to_string();
        let ours = [
            (activation::VAR_PARENT, parent.as_str()),
            (activation::VAR_LISTEN_FDS, count.as_str()),
            (activation::VAR_LISTEN_FDNAMES, fdnames.as_str()),
            (activation::VAR_READY_FD, ready_fd.as_str()),
            (activation::VAR_LINK_FD, link_fd.as_str()),
            (activation::VAR_GEN, generation.as_str()),
        ];
        let env = self
            .inner
            .child_env
            .iter()
            .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
            .chain(ours.iter().map(|(k, v)| (OsStr::new(*k), OsStr::new(*v))));
        let plan = sys::ExecPlan::new(
            &self.inner.exe,
            self.inner.args.iter().map(OsString::as_os_str),
            env,
            self.inner.cwd.as_deref().map(Path::as_os_str),
            &fds,
            report,
        )
        .map_err(|e| spawn_error("preparing the command line", e))?;
        sys::spawn(plan).map_err(|e| spawn_error("clone", e))
    }
}

pub(super) fn spawn_error(what: &str, e: std::io::Error) -> Error {
    Error::io(
        ErrorKind::Spawn,
        format!("starting the next generation: {what}"),
        e,
    )
}
