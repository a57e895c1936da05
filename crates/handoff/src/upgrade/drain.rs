//! Draining after a handover: the connections in flight, the drain's end, and the final cleanup.

use crate::conn::{ConnGuard, ConnTracker};
use crate::machine::{Drain, DrainEnd, Phase};
use crate::{pidfile, sys};

use super::{Drained, Upgrader};

impl Upgrader {
    /// Counts one open connection until the guard is dropped; [`drain`](Upgrader::drain)
    /// waits for them.
    pub fn conn_guard(&self) -> ConnGuard {
        self.inner.tracker.guard()
    }

    /// The connection tracker behind [`conn_guard`](Upgrader::conn_guard).
    pub fn tracker(&self) -> &ConnTracker {
        &self.inner.tracker
    }

    /// Blocks until every guarded connection is done or the drain timeout has passed, and
    /// any rollback window is over; then says whether to exit or to serve again. On a final
    /// stop, also removes the PID file if it still names this process.
    ///
    /// The answer is [`Drained::Resume`] exactly when a handover was undone (the new
    /// generation died in the rollback window) and no stop or new handover came since,
    /// whenever that happened: before this call (even before the application saw the
    /// handover), or while it waits (it then returns at once, without waiting for the
    /// connections). Each undone handover is answered `Resume` once. Otherwise
    /// [`Drained::Exit`].
    ///
    /// The drain timeout counts from the first call (of this or of `drain_async`) after this
    /// generation stopped serving: calling again does not extend it. A generation that
    /// resumed drains afresh after its next handover.
    pub fn drain(&self) -> Drained {
        let drain = self.begin_drain();
        let left = self
            .inner
            .tracker
            .wait_drained(drain, self.inner.origin, || self.resume_due());
        let mut st = self.state();
        while st.machine.window_open() {
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        let end = st.machine.end_drain();
        self.publish(&st);
        drop(st);
        self.drained(end, left)
    }

    /// Whether a drain is to end at once with [`Drained::Resume`].
    pub(crate) fn resume_due(&self) -> bool {
        self.state().machine.resume_due()
    }

    /// The machine's end of a drain whose window is over (see [`Machine::end_drain`]).
    #[cfg(feature = "tokio")]
    pub(crate) fn end_drain(&self) -> DrainEnd {
        let mut st = self.state();
        let end = st.machine.end_drain();
        self.publish(&st);
        end
    }

    /// The drain's answer, as the machine ended it, with `left` connections still open.
    pub(crate) fn drained(&self, end: DrainEnd, left: usize) -> Drained {
        match end {
            DrainEnd::Resume => Drained::Resume,
            DrainEnd::Exit => {
                self.drain_finish();
                Drained::Exit { remaining: left }
            }
        }
    }

    /// The drain, as the machine has it: started now unless it already has.
    pub(crate) fn begin_drain(&self) -> Drain {
        self.state().machine.drain(self.now())
    }

    /// Whether a rollback window is open.
    #[cfg(feature = "tokio")]
    pub(crate) fn window_open(&self) -> bool {
        self.state().machine.window_open()
    }

    /// Notified when a rollback window closes or the generation resumes.
    #[cfg(feature = "tokio")]
    pub(crate) fn window_settled_notify(&self) -> &tokio::sync::Notify {
        &self.inner.window_settled
    }

    /// Where the clock of [`begin_drain`](Upgrader::begin_drain)'s deadline starts.
    #[cfg(feature = "tokio")]
    pub(crate) fn origin(&self) -> std::time::Instant {
        self.inner.origin
    }

    fn drain_finish(&self) {
        if self.phase() == Phase::Stopping {
            if let Some(path) = &self.inner.pid_file {
                pidfile::remove_if_ours(path, sys::getpid());
            }
            for bound in self
                .inner
                .bound
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                bound.remove();
            }
        }
    }
}
