//! Telling what happened: the phase to waiters, events to the application and the manager.

use std::sync::atomic::Ordering;

use crate::machine::Phase;

use super::{Event, State, Upgrader};

impl Upgrader {
    /// Publishes the machine's phase after a call that may have changed it. It takes the
    /// locked state so that it runs under the lock: changes are published in the order they
    /// were made, and no waiter sees a stale phase.
    pub(super) fn publish(&self, st: &State) {
        self.inner
            .phase
            .store(phase_to(st.machine.phase()), Ordering::Release);
        self.inner.changed.notify_all();
        #[cfg(feature = "tokio")]
        self.inner.phase_tx.send_if_modified(|published| {
            let now = st.machine.stopped_serving();
            let changed = *published != now;
            *published = now;
            changed
        });
    }

    pub(super) fn emit(&self, event: &Event<'_>) {
        match event {
            Event::UpgradeSucceeded { .. } => {
                self.inner.upgrades.fetch_add(1, Ordering::Relaxed);
            }
            Event::UpgradeFailed { error } | Event::Resumed { error } => {
                *self
                    .inner
                    .last_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(error.chain().to_string());
            }
            _ => {}
        }
        if let Some(f) = &self.inner.on_event {
            f(event);
        }
    }

    pub(super) fn sd_notify(&self, message: &str) {
        if let Some(n) = &self.inner.notifier {
            n.send(message);
        }
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn phase_rx(&self) -> tokio::sync::watch::Receiver<Option<Phase>> {
        self.inner.phase_tx.subscribe()
    }
}

/// A phase as the byte [`Inner::phase`] holds.
pub(super) fn phase_to(phase: Phase) -> u8 {
    match phase {
        Phase::Starting => 0,
        Phase::Serving => 1,
        Phase::Upgrading => 2,
        Phase::HandedOver => 3,
        Phase::Stopping => 4,
    }
}

/// The phase [`phase_to`] made this byte of.
pub(super) fn phase_from(code: u8) -> Phase {
    match code {
        0 => Phase::Starting,
        1 => Phase::Serving,
        2 => Phase::Upgrading,
        3 => Phase::HandedOver,
        _ => Phase::Stopping,
    }
}
