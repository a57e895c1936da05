//! The restart protocol's decisions, with no I/O in them: which upgrade requests are accepted,
//! what becomes of an upgrade given what its child did and when, what a stop does to an upgrade
//! in flight, and when a drain ends.
//!
//! [`Upgrader`](crate::Upgrader) feeds the machine what it sees, with the time read from its
//! own clock, and carries out what the machine answers: it forks, kills, reaps and waits, the
//! machine only decides. Time is an input ([`Tick`]), so a test can drive these rules through
//! every interleaving and across every deadline, and exercise the very code production runs.
//!
//! The life of an upgrade, as the upgrader drives it:
//! 1. [`request_upgrade`](Machine::request_upgrade): accepted (with its ready deadline) or
//!    refused, before anything is forked.
//! 2. [`before_fork`](Machine::before_fork) under the lock the fork is made under, then
//!    [`spawned`](Machine::spawned) or [`spawn_failed`](Machine::spawn_failed).
//! 3. [`observe`](Machine::observe) after each wake-up of the readiness wait, until it answers
//!    [`Step::HandOver`] or [`Step::RollBack`].
//! 4. [`handed_over`](Machine::handed_over) once the handover is done, or
//!    [`rolled_back`](Machine::rolled_back) once the child is killed and reaped.
//! 5. With a rollback window, after a handover: [`watch`](Machine::watch) after each wake-up
//!    of the wait on the new generation, until it answers [`WindowStep::Close`] (the window
//!    is over: take one last look at the child, and if it has died meanwhile tell `watch`,
//!    which then resumes; otherwise let go of the listeners and the child, then
//!    [`window_closed`](Machine::window_closed)) or [`WindowStep::Resume`] (the new generation
//!    died in the window: reap it, then [`resumed`](Machine::resumed), and this generation
//!    serves again if no stop came meanwhile).
//!
//! [`stop`](Machine::stop) may come at any point in between, from another thread. The
//! application's drain ends with [`end_drain`](Machine::end_drain), which says whether to exit
//! or to serve again: every handover is seen by the application, even one undone before it
//! looked (see [`stopped_serving`](Machine::stopped_serving)).

use std::ops::Add;
use std::time::Duration;

use crate::sys::ExitStatus;

/// Where a process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Acquiring listeners; [`Upgrader::ready`](crate::Upgrader::ready) not called yet.
    Starting,
    /// Serving; an upgrade may be requested.
    Serving,
    /// A new generation has been started and is not ready yet. Still serving.
    Upgrading,
    /// The new generation is ready and owns the listeners: stop accepting, drain, exit. With a
    /// rollback window, this generation keeps its copies of the listeners (without accepting)
    /// until the window closes, and if the new generation dies within it, goes back to
    /// [`Phase::Serving`]: see [`Builder::rollback_window`](crate::Builder::rollback_window).
    HandedOver,
    /// A final stop was requested: stop accepting, drain, exit.
    Stopping,
}

impl Phase {
    /// Whether the application should stop accepting and drain.
    pub fn is_done(self) -> bool {
        matches!(self, Phase::HandedOver | Phase::Stopping)
    }
}

/// A point in time, as a distance from an arbitrary origin (the upgrader takes its creation).
/// The machine is told the time; it never reads a clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(Duration);

impl Tick {
    /// The origin.
    pub(crate) const ZERO: Tick = Tick(Duration::ZERO);

    /// The point `elapsed` after the origin.
    pub(crate) fn after_origin(elapsed: Duration) -> Tick {
        Tick(elapsed)
    }

    /// How long from this point until `later`; zero when `later` is not later.
    pub(crate) fn until(self, later: Tick) -> Duration {
        later.0.saturating_sub(self.0)
    }
}

impl Add<Duration> for Tick {
    type Output = Tick;

    /// Saturates: a deadline too far away to represent is one that is never reached.
    fn add(self, d: Duration) -> Tick {
        Tick(self.0.saturating_add(d))
    }
}

/// Why an upgrade request was refused. Nothing is started for a refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This generation has not reported ready yet.
    BeforeReady,
    /// Another upgrade is in flight: its child is starting, being handed over to, or being
    /// killed and reaped.
    InFlight,
    /// The previous generation has not exited yet; a new one now would make three alive.
    PredecessorDraining,
    /// This generation has handed over.
    HandedOver,
    /// A final stop has been requested.
    Stopping,
}

/// Why an upgrade was rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Creating the readiness pipe or forking failed; there is no child.
    Spawn,
    /// The child reported that its exec failed, with this errno.
    Exec(i32),
    /// The child exited with this code before it was ready.
    Exited(i32),
    /// The child was killed by this signal before it was ready.
    Crashed(i32),
    /// The ready deadline came first.
    ReadyTimeout,
    /// A stop was requested first.
    Stopped,
    /// Watching the child failed (a poll or read error); it is given up.
    WaitFailed,
    /// The child has ended but its status cannot be read: something else in this process
    /// reaped it (`SIGCHLD` ignored, a `waitpid(-1)` loop).
    Vanished,
}

/// A decision to roll an upgrade back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rollback {
    /// What went wrong.
    pub(crate) failure: Failure,
    /// The child to kill (harmless when it has exited: it is unreaped, so the pid is still its
    /// own) and then reap, before [`Machine::rolled_back`]; `None` when none was forked.
    pub(crate) child: Option<u32>,
}

/// What the readiness wait saw of the child when it woke up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observed {
    /// Nothing about the child: the wait ran out, or something else woke it (a stop).
    Nothing,
    /// `ready\n` arrived on the readiness pipe.
    Ready,
    /// The child reported on the pipe that its exec failed, with this errno.
    ExecFailed(i32),
    /// The pipe closed without a report, and the child still lives.
    PipeClosed,
    /// The child has ended (and is not reaped yet).
    Exited(ExitStatus),
    /// The child has ended (its pidfd is readable, or its end of the link closed), but its
    /// status cannot be read: it was reaped by someone else.
    Vanished,
    /// The child said on the link that it is stopping on purpose (a final stop of its own).
    Stopping,
    /// Polling or reading failed.
    WaitFailed,
}

/// What to do next with the upgrade in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep waiting for the child, at most until this deadline.
    WaitUntil(Tick),
    /// The child is ready: hand over to it (PID file, service manager), then call
    /// [`Machine::handed_over`].
    HandOver(u32),
    /// Roll back.
    RollBack(Rollback),
}

/// How a handover ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handover {
    /// The phase is now [`Phase::HandedOver`]; no rollback window: let go of the listeners.
    Complete,
    /// The phase is now [`Phase::HandedOver`], and the rollback window is open until `closes`:
    /// keep the listeners, and watch the new generation (see [`Machine::watch`]).
    Window {
        /// When the window closes.
        closes: Tick,
    },
    /// A stop came while the child was being handed over to: the child is the service now,
    /// so the stop is passed on to it (a graceful `SIGTERM`), and the phase stays
    /// [`Phase::Stopping`].
    PassStopOn(u32),
}

/// What to do next in the rollback window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WindowStep {
    /// Keep watching the new generation, at most until this point.
    WaitUntil(Tick),
    /// The window is over (its time has come, a stop came, the new generation stops on
    /// purpose, or it cannot be watched): take a last look at the child (a death seen now is
    /// told to [`Machine::watch`], which resumes), else let go of the listeners and of the
    /// child, then call [`Machine::window_closed`].
    Close,
    /// The new generation died within the window, as this says: reap it, take the service back
    /// (PID file, service manager), then call [`Machine::resumed`].
    Resume(Failure),
}

/// What a stop request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stop {
    /// The child of the upgrade in flight to kill now, if one is starting. Killed under the
    /// lock the machine is kept under, while the upgrade has not reaped it.
    pub(crate) kill: Option<u32>,
    /// This generation is the service (it has not handed over, or it is taking the service
    /// back from a successor that died): the service manager is to be told `STOPPING=1`. In
    /// an open rollback window the service is the successor's, which speaks for itself.
    pub(crate) service: bool,
}

/// How a drain ends, once any rollback window is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DrainEnd {
    /// Exit.
    Exit,
    /// A handover was undone (the new generation died in the rollback window): serve again.
    Resume,
}

/// The drain of a generation that stops accepting: it ends when no connection is left, or at
/// its deadline, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Drain {
    deadline: Tick,
}

/// Where a drain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DrainStep {
    /// No connection is left.
    Done,
    /// Connections are open: wait for them, at most until this deadline.
    WaitUntil(Tick),
    /// The deadline has come with this many connections still open: exit anyway.
    Cut {
        /// Connections still open.
        left: usize,
    },
}

impl Drain {
    /// A drain that starts at `now` and gives the connections `timeout`.
    pub(crate) fn new(now: Tick, timeout: Duration) -> Drain {
        Drain {
            deadline: now + timeout,
        }
    }

    /// What to do at `now` with `active` connections open.
    pub(crate) fn poll(self, now: Tick, active: usize) -> DrainStep {
        if active == 0 {
            DrainStep::Done
        } else if now < self.deadline {
            DrainStep::WaitUntil(self.deadline)
        } else {
            DrainStep::Cut { left: active }
        }
    }
}

/// The phase of one generation, its upgrade in flight and its drain, and the rules that move
/// them.
#[derive(Debug)]
pub(crate) struct Machine {
    phase: Phase,
    ready_timeout: Duration,
    drain_timeout: Duration,
    rollback_window: Duration,
    upgrade: Option<Upgrade>,
    drain: Option<Drain>,
    window: Option<Window>,
    /// A handover was undone by a resume, and the application's drain has not yet answered
    /// [`DrainEnd::Resume`] for it: until it does (or a stop, or the next handover), the
    /// application is to stop serving and drain, whether or not it saw the handover.
    resume_pending: bool,
}

/// The rollback window after a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    /// Open: the new generation is watched until `closes`. `stopping`: it said it stops on
    /// purpose, so its end is no reason to take the service back.
    Open { closes: Tick, stopping: bool },
    /// The new generation died in it; the upgrader is reaping it.
    Resuming,
}

/// The upgrade in flight, from the accepted request until its child is handed over to, or
/// reaped. While there is one, no other upgrade starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upgrade {
    /// Accepted; the child is not forked yet.
    Forking { deadline: Tick },
    /// Forked; it has until `deadline` to report ready.
    Waiting { pid: u32, deadline: Tick },
    /// It reported ready in time; the upgrader is handing over and has not published it.
    HandingOver { pid: u32 },
    /// Failed; the upgrader is killing and reaping the child, if any.
    RollingBack,
}

impl Machine {
    /// A generation that is starting: a new generation gets `ready_timeout` from the request
    /// to report ready, a drain lasts at most `drain_timeout`, and after a handover the new
    /// generation is watched for `rollback_window` (zero: not at all).
    pub(crate) fn new(
        ready_timeout: Duration,
        drain_timeout: Duration,
        rollback_window: Duration,
    ) -> Machine {
        Machine {
            phase: Phase::Starting,
            ready_timeout,
            drain_timeout,
            rollback_window,
            upgrade: None,
            drain: None,
            window: None,
            resume_pending: false,
        }
    }

    /// Whether a rollback window is open (or resuming): the listeners are still this
    /// generation's, and its drain is not over until the window is.
    pub(crate) fn window_open(&self) -> bool {
        self.window.is_some()
    }

    /// The phase, as published to the application.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the application is to stop serving, and why: the phase when it is
    /// [done](Phase::is_done); [`Phase::HandedOver`] while a handover undone by a resume has not
    /// been answered by a drain (the application may not have seen it, and must not miss it:
    /// its drain answers [`DrainEnd::Resume`] at once); `None` while it serves.
    pub(crate) fn stopped_serving(&self) -> Option<Phase> {
        if self.phase.is_done() {
            Some(self.phase)
        } else if self.resume_pending {
            Some(Phase::HandedOver)
        } else {
            None
        }
    }

    /// Whether a drain is to stop waiting for connections and answer
    /// [`DrainEnd::Resume`]: a resume is pending and no stop or handover came since.
    pub(crate) fn resume_due(&self) -> bool {
        self.resume_pending && !self.phase.is_done()
    }

    /// The end of the application's drain, once any rollback window is over (the upgrader
    /// waits for [`window_open`](Machine::window_open) to be false): exit, or serve again when
    /// a handover was undone and no stop or handover came since. Answering
    /// [`DrainEnd::Resume`] settles that handover: the next drain starts afresh.
    pub(crate) fn end_drain(&mut self) -> DrainEnd {
        if self.resume_due() {
            self.resume_pending = false;
            self.drain = None;
            DrainEnd::Resume
        } else {
            DrainEnd::Exit
        }
    }

    /// This generation serves. Allowed once, while starting; otherwise the phase it was in is
    /// returned and nothing changes.
    pub(crate) fn ready(&mut self) -> Result<(), Phase> {
        match self.phase {
            Phase::Starting => {
                self.phase = Phase::Serving;
                Ok(())
            }
            other => Err(other),
        }
    }

    /// An upgrade is requested at `now`; `predecessor_exited` says whether the generation
    /// before this one (if any) is gone. Accepted only while serving with no upgrade in
    /// flight and no predecessor alive; then the phase is [`Phase::Upgrading`] and the child
    /// has until the returned deadline to report ready.
    pub(crate) fn request_upgrade(
        &mut self,
        now: Tick,
        predecessor_exited: bool,
    ) -> Result<Tick, Refusal> {
        match self.phase {
            Phase::Starting => Err(Refusal::BeforeReady),
            Phase::Upgrading => Err(Refusal::InFlight),
            Phase::HandedOver => Err(Refusal::HandedOver),
            Phase::Stopping => Err(Refusal::Stopping),
            Phase::Serving if !predecessor_exited => Err(Refusal::PredecessorDraining),
            Phase::Serving => {
                let deadline = now + self.ready_timeout;
                self.upgrade = Some(Upgrade::Forking { deadline });
                self.phase = Phase::Upgrading;
                Ok(deadline)
            }
        }
    }

    /// The child is about to be forked. Refused when a stop came since the request: nothing is
    /// forked, and the rollback has no child.
    ///
    /// # Panics
    /// When no accepted upgrade awaits its fork (a bug in the caller's order of calls).
    pub(crate) fn before_fork(&mut self) -> Result<(), Rollback> {
        self.expect_forking("before_fork");
        if self.phase == Phase::Stopping {
            return Err(self.fail(Failure::Stopped, None));
        }
        Ok(())
    }

    /// The child was forked as `pid`; it counts as in flight until it is handed over to or
    /// reaped.
    ///
    /// # Panics
    /// When no accepted upgrade awaits its fork.
    pub(crate) fn spawned(&mut self, pid: u32) {
        let deadline = self.expect_forking("spawned");
        self.upgrade = Some(Upgrade::Waiting { pid, deadline });
    }

    /// The readiness pipe or the fork failed: roll back, with no child.
    ///
    /// # Panics
    /// When no accepted upgrade awaits its fork.
    pub(crate) fn spawn_failed(&mut self) -> Rollback {
        self.expect_forking("spawn_failed");
        self.fail(Failure::Spawn, None)
    }

    /// The readiness wait saw `seen` of the child at `now`. A stop that came meanwhile wins
    /// (the stop has killed the child); then the deadline (ready at or after it is too late);
    /// then what the child did. A closed pipe alone is no verdict: a child that lives on gets
    /// until the deadline.
    ///
    /// # Panics
    /// When no child is being waited for.
    pub(crate) fn observe(&mut self, now: Tick, seen: Observed) -> Step {
        let Some(Upgrade::Waiting { pid, deadline }) = self.upgrade else {
            panic!(
                "Machine::observe with no child to wait for: {:?}",
                self.upgrade
            );
        };
        let failure = if self.phase == Phase::Stopping {
            Failure::Stopped
        } else if now >= deadline {
            Failure::ReadyTimeout
        } else {
            match seen {
                // A child stopping on purpose before it was ready is about to exit.
                Observed::Nothing | Observed::PipeClosed | Observed::Stopping => {
                    return Step::WaitUntil(deadline);
                }
                Observed::Ready => {
                    self.upgrade = Some(Upgrade::HandingOver { pid });
                    return Step::HandOver(pid);
                }
                Observed::ExecFailed(errno) => Failure::Exec(errno),
                Observed::Exited(ExitStatus::Exited(code)) => Failure::Exited(code),
                Observed::Exited(ExitStatus::Signaled(signal)) => Failure::Crashed(signal),
                Observed::Vanished => Failure::Vanished,
                Observed::WaitFailed => Failure::WaitFailed,
            }
        };
        Step::RollBack(self.fail(failure, Some(pid)))
    }

    /// The handover to a ready child is done at `now`. The phase becomes
    /// [`Phase::HandedOver`], with the rollback window open from now if there is one, unless a
    /// stop came meanwhile: then the stop is passed on to the child, and there is no window.
    ///
    /// # Panics
    /// When no handover is under way.
    pub(crate) fn handed_over(&mut self, now: Tick) -> Handover {
        let Some(Upgrade::HandingOver { pid }) = self.upgrade else {
            panic!("Machine::handed_over with no handover: {:?}", self.upgrade);
        };
        self.upgrade = None;
        if self.phase == Phase::Stopping {
            return Handover::PassStopOn(pid);
        }
        // This handover supersedes any undone one the application has not answered yet.
        self.resume_pending = false;
        self.phase = Phase::HandedOver;
        if self.rollback_window.is_zero() {
            return Handover::Complete;
        }
        let closes = now + self.rollback_window;
        self.window = Some(Window::Open {
            closes,
            stopping: false,
        });
        Handover::Window { closes }
    }

    /// The wait on the new generation in the rollback window saw `seen` at `now`. A stop that
    /// came meanwhile closes the window (this generation is to go either way), and so does
    /// the new generation saying it stops on purpose (its end is then no failure). Otherwise
    /// a death resumes, whenever it is judged: a death seen is never let go of, even when
    /// the window's time has come since it was seen. Then the window's time (its end closes
    /// it); then a wait that failed closes the window: the new generation can no longer be
    /// watched, and it reported ready.
    ///
    /// # Panics
    /// When no window is open.
    pub(crate) fn watch(&mut self, now: Tick, seen: Observed) -> WindowStep {
        let Some(Window::Open { closes, stopping }) = self.window else {
            panic!("Machine::watch with no open window: {:?}", self.window);
        };
        let stopping = stopping || seen == Observed::Stopping;
        self.window = Some(Window::Open { closes, stopping });
        if self.phase == Phase::Stopping || stopping {
            return WindowStep::Close;
        }
        let failure = match seen {
            Observed::Exited(ExitStatus::Exited(code)) => Failure::Exited(code),
            Observed::Exited(ExitStatus::Signaled(signal)) => Failure::Crashed(signal),
            Observed::Vanished => Failure::Vanished,
            _ if now >= closes => return WindowStep::Close,
            Observed::WaitFailed => return WindowStep::Close,
            Observed::Nothing
            | Observed::Ready
            | Observed::ExecFailed(_)
            | Observed::PipeClosed
            | Observed::Stopping => {
                return WindowStep::WaitUntil(closes);
            }
        };
        self.window = Some(Window::Resuming);
        WindowStep::Resume(failure)
    }

    /// The window closed and the upgrader let go of the listeners and the child.
    ///
    /// # Panics
    /// When no window is open.
    pub(crate) fn window_closed(&mut self) {
        assert!(
            matches!(self.window, Some(Window::Open { .. })),
            "Machine::window_closed with no open window: {:?}",
            self.window
        );
        self.window = None;
    }

    /// The new generation that died in the window is reaped: this generation serves again
    /// ([`Phase::Serving`], with a drain of its own to come at its next handover, and a
    /// resume pending for the application's drain to answer), unless a stop came meanwhile.
    /// Returns whether it serves again: only then does the upgrader take the service back
    /// (PID file, service manager, event).
    ///
    /// # Panics
    /// When no resume is under way.
    pub(crate) fn resumed(&mut self) -> bool {
        assert_eq!(
            self.window,
            Some(Window::Resuming),
            "Machine::resumed with no resume"
        );
        self.window = None;
        if self.phase != Phase::HandedOver {
            return false;
        }
        self.phase = Phase::Serving;
        self.drain = None;
        self.resume_pending = true;
        true
    }

    /// The failed upgrade's child is killed and reaped (or there was none): back to
    /// [`Phase::Serving`], unless a stop came meanwhile.
    ///
    /// # Panics
    /// When no rollback is under way.
    pub(crate) fn rolled_back(&mut self) {
        assert_eq!(
            self.upgrade,
            Some(Upgrade::RollingBack),
            "Machine::rolled_back with no rollback"
        );
        self.upgrade = None;
        if self.phase == Phase::Upgrading {
            self.phase = Phase::Serving;
        }
    }

    /// A final stop is requested. `None` when this generation is already stopping, or has
    /// handed over with no rollback window open: nothing changes. Otherwise the phase is
    /// [`Phase::Stopping`] (an open window closes at its next [`watch`](Machine::watch), a
    /// resume under way does not serve again, and a pending one is dropped: the drain
    /// answers exit) and a child that is starting is to be killed now; a child being handed
    /// over to is not (see [`Handover::PassStopOn`]), nor one being rolled back (the upgrade
    /// kills it), nor the new generation of a window (it is the service).
    pub(crate) fn stop(&mut self) -> Option<Stop> {
        let handed_over_for_good = self.phase == Phase::HandedOver && self.window.is_none();
        if self.phase == Phase::Stopping || handed_over_for_good {
            return None;
        }
        let service = self.phase != Phase::HandedOver || self.window == Some(Window::Resuming);
        self.phase = Phase::Stopping;
        self.resume_pending = false;
        let kill = match self.upgrade {
            Some(Upgrade::Waiting { pid, .. }) => Some(pid),
            _ => None,
        };
        Some(Stop { kill, service })
    }

    /// The drain, started at `now` if it has not started yet. A generation drains once: a
    /// second call, or a drain that was abandoned and begun again, keeps the first deadline.
    pub(crate) fn drain(&mut self, now: Tick) -> Drain {
        let timeout = self.drain_timeout;
        *self.drain.get_or_insert_with(|| Drain::new(now, timeout))
    }

    fn expect_forking(&self, call: &str) -> Tick {
        match self.upgrade {
            Some(Upgrade::Forking { deadline }) => deadline,
            other => panic!("Machine::{call} with no upgrade awaiting its fork: {other:?}"),
        }
    }

    fn fail(&mut self, failure: Failure, child: Option<u32>) -> Rollback {
        self.upgrade = Some(Upgrade::RollingBack);
        Rollback { failure, child }
    }
}

#[cfg(test)]
mod tests;
