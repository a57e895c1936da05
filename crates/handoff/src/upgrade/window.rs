//! The handover to a ready generation, and the rollback window that may still undo it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::{Failure, Handover, Observed, Tick, WindowStep};
use crate::{pidfile, sys};

use super::{Child, Event, Upgrader, watch::Watch};

impl Upgrader {
    /// Hands over to the ready `child`. Returns when the rollback window closes, if one opens.
    pub(super) fn hand_over(&self, child: Child, process: &sys::Process) -> Option<Tick> {
        let pid = child.pid;
        // Everything the outside world reads about the handover happens before the phase is
        // published: once it is, the application drains and may exit at once.
        if let Some(path) = &self.inner.pid_file
            && let Err(error) = pidfile::write(path, pid)
        {
            tracing::error!(error = %error.chain(), "upgrade succeeded but the PID file could not be updated");
        }
        self.sd_notify(&format!("MAINPID={pid}\nREADY=1"));
        tracing::info!(child = pid, "next generation is ready; handed over");
        self.emit(&Event::UpgradeSucceeded { child: pid });
        let (handover, listeners) = {
            let mut st = self.state();
            let handover = st.machine.handed_over(self.now());
            st.in_flight = None;
            self.publish(&st);
            let listeners = match handover {
                Handover::Window { .. } => Vec::new(),
                _ => std::mem::take(&mut st.listeners),
            };
            (handover, listeners)
        };
        drop(listeners);
        match handover {
            Handover::Complete => None,
            Handover::Window { closes } => Some(closes),
            Handover::PassStopOn(_) => {
                // A stop that came after the child was ready: the new generation is the
                // service now and may hold connections, so the stop is passed on to it,
                // gracefully.
                let _ = process.signal(libc::SIGTERM);
                None
            }
        }
    }

    /// Keeps our end of the link to the generation we handed over to for the rest of this
    /// process's life: its closing is how that generation learns we are gone.
    pub(super) fn keep_successor_link(&self, link: OwnedFd) {
        self.state().successor_link = Some(link);
    }

    /// Watches the new generation through the rollback window: when the window closes, lets
    /// go of the listeners and returns the child; when the child dies first, reaps it, takes
    /// the service back and returns why.
    pub(super) fn watch_window(
        &self,
        child: Child,
        process: Arc<sys::Process>,
        link: OwnedFd,
        closes: Tick,
    ) -> Result<Child> {
        tracing::info!(
            child = child.pid,
            window_ms = self.now().until(closes).as_millis() as u64,
            "keeping the listeners through the rollback window"
        );
        let mut watch = Watch {
            process: &process,
            ready_r: None,
            pipe_open: false,
            report: Vec::new(),
            link: &link,
            link_closed: false,
        };
        let mut seen = Observed::Nothing;
        let mut last_look = false;
        loop {
            let now = self.now();
            let step = self.state().machine.watch(now, seen);
            match step {
                WindowStep::WaitUntil(until) => {
                    seen = self
                        .watch(&mut watch, now.until(until))
                        .unwrap_or_else(|error| {
                            tracing::warn!(error = %error.chain(), "watching the new generation in the rollback window failed; closing the window");
                            Observed::WaitFailed
                        });
                }
                WindowStep::Close if !last_look => {
                    // One more look before letting go: a death that the wait did not report
                    // yet (it came as the wait timed out) still takes the service back.
                    last_look = true;
                    seen = self
                        .watch(&mut watch, Duration::ZERO)
                        .unwrap_or(Observed::WaitFailed);
                }
                WindowStep::Close => {
                    let listeners = {
                        let mut st = self.state();
                        st.machine.window_closed();
                        st.successor_link = Some(link);
                        self.publish(&st);
                        std::mem::take(&mut st.listeners)
                    };
                    drop(listeners);
                    self.window_settled();
                    tracing::debug!(child = child.pid, "the rollback window closed");
                    return Ok(child);
                }
                WindowStep::Resume(failure) => {
                    let pid = child.pid;
                    if failure != Failure::Vanished
                        && let Err(error) = process.reap()
                    {
                        tracing::error!(%error, child = pid, "reaping the new generation that died");
                    }
                    let own = sys::getpid();
                    // Under the lock, so that a stop comes wholly before (and this generation
                    // does not take the service back) or after (and finds the PID file ours
                    // to remove, the service manager told).
                    let resumed = {
                        let mut st = self.state();
                        let resumed = st.machine.resumed();
                        if resumed {
                            if let Some(path) = &self.inner.pid_file
                                && let Err(e) = pidfile::write(path, own)
                            {
                                tracing::error!(error = %e.chain(), "serving again, but the PID file could not be rewritten");
                            }
                            self.sd_notify(&format!("MAINPID={own}\nREADY=1"));
                            // The successor bound its own sockets where ours were: take the
                            // places back before the application hears it serves again.
                            self.rebind_sockets();
                        }
                        self.publish(&st);
                        resumed
                    };
                    self.window_settled();
                    let error = died_after_ready(pid, failure, resumed);
                    if resumed {
                        tracing::warn!(error = %error.chain(), "the new generation died in the rollback window; serving again");
                        self.emit(&Event::Resumed { error: &error });
                    } else {
                        tracing::info!(error = %error.chain(), "the new generation died in the rollback window; stopping anyway");
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Wakes the drains waiting for the rollback window to be over.
    fn window_settled(&self) {
        self.inner.tracker.wake();
        #[cfg(feature = "tokio")]
        self.inner.window_settled.notify_waiters();
    }
}

/// The error for a new generation that died in the rollback window, as `failure` says; this
/// generation serves again, or (a stop came meanwhile) does not.
fn died_after_ready(pid: u32, failure: Failure, serving_again: bool) -> Error {
    let (code, signal, how) = match failure {
        Failure::Exited(code) => (Some(code), None, format!("exited {code}")),
        Failure::Crashed(signal) => (None, Some(signal), format!("was killed by signal {signal}")),
        Failure::Vanished => (
            None,
            None,
            "ended (its status was reaped elsewhere in this process)".to_owned(),
        ),
        other => (None, None, format!("failed ({other:?})")),
    };
    let then = if serving_again {
        "serving again"
    } else {
        "not serving again: this generation is stopping"
    };
    Error::new(
        ErrorKind::DiedAfterReady { pid, code, signal },
        format!("child {pid} {how} after it reported ready, within the rollback window; {then}"),
    )
}
