//! The upgrader's types, and the state its parts (the modules under `upgrade/`) share.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::activation::{self, Inherited};
use crate::conn::ConnTracker;
use crate::error::Error;
use crate::handover::place::{Bound, Place};
use crate::listen::ListenOptions;
use crate::machine::{Machine, Phase, Tick};
use crate::notify::Notifier;
use crate::sys;

mod builder;
mod control;
mod drain;
mod listeners;
mod offer;
mod publish;
mod spawn;
mod stop;
mod watch;
mod window;

pub use builder::Builder;
use publish::phase_from;

/// What happened to an upgrade, reported to the callback set with [`Builder::on_event`] as it
/// happens (whichever way the upgrade was triggered).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The new generation was spawned and executed; it is not ready yet.
    UpgradeStarted {
        /// Its pid.
        child: u32,
    },
    /// The new generation reported ready and now owns the listeners.
    UpgradeSucceeded {
        /// Its pid.
        child: u32,
    },
    /// The new generation failed before it was ready; this process keeps serving.
    UpgradeFailed {
        /// What happened to it.
        error: &'a Error,
    },
    /// The request was refused (another upgrade in flight, or this process no longer serves);
    /// nothing was started.
    UpgradeRefused {
        /// Why.
        error: &'a Error,
    },
    /// The new generation died within the rollback window after it reported ready: this
    /// process took the listeners back and serves again (see
    /// [`Builder::rollback_window`]).
    Resumed {
        /// What happened to the new generation.
        error: &'a Error,
    },
    /// A final stop was requested.
    Stopping,
}

/// What a generation that stopped accepting is to do once its drain is over: see
/// [`Upgrader::drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a generation told to resume must accept again rather than exit"]
#[non_exhaustive]
pub enum Drained {
    /// Exit now: every connection is done, or the drain deadline has cut `remaining` of them
    /// (and any rollback window has closed).
    Exit {
        /// Connections still open when the drain ended.
        remaining: usize,
    },
    /// A handover was undone: the new generation died within the rollback window (before
    /// or after the application saw the handover), and this generation serves again
    /// ([`Phase::Serving`]). Take the listeners back with [`Upgrader::kept_listener`] and
    /// accept on them. Answered once per undone handover.
    Resume,
}

type EventFn = dyn Fn(&Event<'_>) + Send + Sync;

/// A new generation that reported ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    pid: u32,
}

impl Child {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Owns this generation's listeners and runs upgrades. Cloning is cheap; clones share state.
///
/// The life of a process: [`Builder::build`], then one `*_listener` call per listener (each
/// inherited from the previous generation when it passed one under that name, bound fresh
/// otherwise), then [`ready`](Upgrader::ready). While serving, [`upgrade`](Upgrader::upgrade)
/// (or the configured signal) starts the next generation; once that one is ready, this one's
/// [`phase`](Upgrader::phase) becomes [`Phase::HandedOver`]: the application stops accepting
/// (drops its listeners), calls [`drain`](Upgrader::drain) and exits.
///
/// # Caveats
/// A listener and its inherited copies are one socket, so its file status flags are shared
/// across generations: `O_NONBLOCK` set by one generation is seen by the other. Use the same
/// mode in every generation (tokio always sets non-blocking).
#[derive(Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

struct Inner {
    ready_timeout: Duration,
    drain_timeout: Duration,
    pid_file: Option<PathBuf>,
    upgrade_signal: i32,
    exe: OsString,
    args: Vec<OsString>,
    /// Where the next generation starts (see `builder::working_dir`); `None` when it cannot be
    /// told, and the child stays where this process is.
    cwd: Option<PathBuf>,
    child_env: Vec<(OsString, OsString)>,
    generation: u32,
    /// The previous generation's pid, if this process was started by an upgrade or took over.
    previous: Option<u32>,
    notifier: Option<Notifier>,
    on_event: Option<Arc<EventFn>>,
    listen_options: ListenOptions,
    /// Where to offer the listeners to an unrelated new process, and where to take commands.
    handover_place: Option<Place>,
    control_place: Option<Place>,
    /// Peers' uids served besides our own.
    allowed_uids: Vec<u32>,
    /// The hand-over and control sockets once bound, to remove at the final stop.
    bound: Mutex<Vec<Arc<Bound>>>,
    /// Upgrades that handed over, whichever way they came.
    upgrades: AtomicU64,
    /// The last upgrade failure, as its error chain.
    last_failure: Mutex<Option<String>>,
    /// Where this upgrader's clock starts: the machine is told the time as a [`Tick`] since.
    origin: Instant,
    state: Mutex<State>,
    /// The machine's phase as last published (see [`publish::phase_to`]), read without the lock.
    phase: AtomicU8,
    changed: Condvar,
    /// Written by `stop` to interrupt an upgrade that is waiting for its child.
    wake_r: OwnedFd,
    wake_w: OwnedFd,
    tracker: ConnTracker,
    /// Whether the application is to stop serving, as
    /// [`Machine::stopped_serving`] says: what `done` waits on.
    #[cfg(feature = "tokio")]
    phase_tx: tokio::sync::watch::Sender<Option<Phase>>,
    /// Notified when a rollback window closes or this generation resumes.
    #[cfg(feature = "tokio")]
    window_settled: tokio::sync::Notify,
    /// This process's one upgrader, until it is dropped.
    _claim: Option<activation::Claim>,
}

struct State {
    /// The phase and every decision of the protocol; this module carries them out.
    machine: Machine,
    /// Inherited descriptors not yet claimed by a `*_listener` call.
    inherited: Vec<Inherited>,
    /// Our copy of each listener, in the order they are passed on.
    listeners: Vec<(String, OwnedFd)>,
    /// Our parent's readiness pipe, until we report ready.
    ready_pipe: Option<OwnedFd>,
    /// Our end of the link to the previous generation while it may still be draining: no
    /// upgrade starts before it is gone, so at most two generations are ever alive. Without
    /// a pidfd, gone means its end closed: a guard that needs no pidfd and cannot be fooled by
    /// a reused pid, but that a child the predecessor forked without exec keeps open. Also
    /// how this generation tells its predecessor that it stops on purpose.
    predecessor: Option<OwnedFd>,
    /// The previous generation's pidfd, where pidfds work: gone means it has exited, whoever
    /// still holds its end of the link.
    predecessor_pidfd: Option<OwnedFd>,
    /// Our end of the link to the generation we handed over to, kept for life.
    successor_link: Option<OwnedFd>,
    /// The child of the upgrade in flight, from its spawn until it is handed over to or
    /// reaped: what a stop kills, through its pidfd.
    in_flight: Option<Arc<sys::Process>>,
    /// The connection to the process we took over from, until we report ready on it; then
    /// it is the link to that process ([`State::predecessor`]).
    takeover: Option<OwnedFd>,
}

impl Upgrader {
    /// This process's generation: 1 for a first start, one more than its parent's after an
    /// upgrade.
    pub fn generation(&self) -> u32 {
        self.inner.generation
    }

    /// Where this process is in its life. Never waits: it reads the phase last published,
    /// so a request path may call it on every request.
    pub fn phase(&self) -> Phase {
        phase_from(self.inner.phase.load(Ordering::Acquire))
    }

    /// Whether this process was started by an upgrade or took over through a hand-over
    /// socket, and the previous generation waits for its ready.
    pub fn has_parent(&self) -> bool {
        let st = self.state();
        st.ready_pipe.is_some() || st.takeover.is_some()
    }

    /// The drain timeout this upgrader was built with.
    pub fn drain_timeout(&self) -> Duration {
        self.inner.drain_timeout
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time, for the machine.
    fn now(&self) -> Tick {
        Tick::after_origin(self.inner.origin.elapsed())
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn upgrade_signal(&self) -> i32 {
        self.inner.upgrade_signal
    }
}
