//! Stopping: a stop at any phase, waiting for this generation's end, and the signal thread.

use std::os::fd::AsFd;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Phase;
use crate::sys;

use super::{Event, Upgrader};

impl Upgrader {
    /// Requests the final stop: [`phase`](Upgrader::phase) becomes [`Phase::Stopping`], an
    /// upgrade in flight is abandoned (its child killed at once), an open rollback window
    /// closes, and the service manager is told `STOPPING=1` (unless this generation has handed
    /// over: the service is its successor's). Stop accepting, then [`drain`](Upgrader::drain)
    /// and exit.
    ///
    /// A generation whose predecessor is still alive tells it that this stop is on purpose:
    /// a predecessor in its rollback window then closes it and exits rather than take the
    /// service back (a stop is not a crash).
    pub fn stop(&self) {
        let service = {
            let mut st = self.state();
            let Some(stop) = st.machine.stop() else {
                return;
            };
            if let Some(link) = &st.predecessor {
                // Nobody waits for it: a predecessor already gone, or past its window, never
                // reads it.
                let _ = sys::send_byte(link.as_fd(), b's');
            }
            if let Some(child) = stop.kill
                && let Some(process) = st.in_flight.as_ref().filter(|p| p.pid() == child)
            {
                // The machine names a child only until the upgrade lets go of it to reap it,
                // which happens under this lock: the handle still names that child, unreaped.
                let _ = process.signal(libc::SIGKILL);
            }
            self.publish(&st);
            stop.service
        };
        let _ = sys::write_all(self.inner.wake_w.as_fd(), b"s");
        if service {
            self.sd_notify("STOPPING=1");
        }
        tracing::info!("stopping");
        self.emit(&Event::Stopping);
    }

    /// Blocks until this process should stop accepting (handed over, or stopping) and
    /// returns that phase.
    ///
    /// Every handover is reported, even one undone before this was called (the new generation died
    /// within the rollback window at once): this then returns [`Phase::HandedOver`] although the
    /// phase is [`Phase::Serving`] again, and the [`drain`](Upgrader::drain) that follows answers
    /// [`Drained::Resume`](crate::Drained::Resume) at once. So an application that stops accepting
    /// here and decides from the drain never stops serving for good by mistake, nor leaves an
    /// accept loop parked.
    pub fn wait_done(&self) -> Phase {
        let mut st = self.state();
        loop {
            if let Some(phase) = st.machine.stopped_serving() {
                return phase;
            }
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Starts a thread that turns signals into actions: the upgrade signal (SIGHUP unless
    /// configured) runs [`upgrade`](Upgrader::upgrade) on a thread of its own, so that a
    /// second signal during the upgrade is refused at once rather than queued; SIGTERM and
    /// SIGINT call [`stop`](Upgrader::stop).
    ///
    /// # Caveats
    /// Signal handlers are process-wide and stay installed for the life of the process.
    /// Deliveries of one signal coalesce: two SIGHUPs sent a microsecond apart may arrive as
    /// one, which is one upgrade either way.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] when the handlers cannot be installed.
    pub fn spawn_signal_thread(&self) -> Result<std::thread::JoinHandle<()>> {
        let upgrade_signal = self.inner.upgrade_signal;
        let mut signals =
            signal_hook::iterator::Signals::new([upgrade_signal, libc::SIGTERM, libc::SIGINT])
                .map_err(|e| Error::io(ErrorKind::Io, "installing signal handlers", e))?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("handoff-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if signal == upgrade_signal {
                        let this = this.clone();
                        std::thread::spawn(move || this.upgrade());
                    } else {
                        this.stop();
                    }
                }
            })
            .map_err(|e| Error::io(ErrorKind::Io, "starting the signal thread", e))
    }
}
