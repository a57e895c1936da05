//! The machine against a reference model, with time as an input.
//!
//! Random sequences of what can happen to a generation (it reports ready; upgrades are
//! requested; children are forked, report ready, fail to exec, close their pipe, exit, crash
//! or stay silent; after a handover, with a rollback window, the new generation dies in the
//! window (seen on time, late, or only at the last look before the window is let go of), is
//! reaped by someone else, stops on purpose, or lives on, and this generation resumes or lets
//! go; time leaps, across and onto the deadlines and the window's end; stops; the predecessor
//! exits; connections open and close; the application looks whether to stop serving; the
//! drain starts, is polled and ends) are played against the machine, in the order of calls
//! the upgrader makes. After every step:
//! - the machine's answer must equal the model's, and the phases must agree;
//! - the protocol's invariants must hold, checked from what the machine answered alone: among
//!   them, that a death seen in the window is never let go of unless a stop (of either
//!   generation) came, and that an application which saw a handover is told to serve again
//!   exactly when that handover was undone.
//!
//! Every broken property of a step is reported together. `PROPTEST_CASES` raises the number of
//! cases (256 by default); failing cases are kept under `proptest-regressions/`.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

use super::*;

/// Model time: whole milliseconds since the origin, small enough that leaps land on deadlines.
type Ms = u64;

fn tick(ms: Ms) -> Tick {
    Tick::after_origin(Duration::from_millis(ms))
}

/// What the readiness wait sees when it wakes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Silent,
    Ready,
    ExecFailed(i32),
    PipeClosed,
    Exits(i32),
    Crashes(i32),
    /// The child has ended and its status is gone (reaped elsewhere).
    Vanishes,
    /// The child says it stops on purpose.
    Stops,
    WaitFails,
}

impl Seen {
    /// Whether this is the child's end.
    fn death(self) -> bool {
        matches!(self, Seen::Exits(_) | Seen::Crashes(_) | Seen::Vanishes)
    }

    /// Whether seeing this needs the pipe still open.
    fn on_the_pipe(self) -> bool {
        matches!(self, Seen::Ready | Seen::ExecFailed(_) | Seen::PipeClosed)
    }

    fn observed(self) -> Observed {
        match self {
            Seen::Silent => Observed::Nothing,
            Seen::Ready => Observed::Ready,
            Seen::ExecFailed(errno) => Observed::ExecFailed(errno),
            Seen::PipeClosed => Observed::PipeClosed,
            Seen::Exits(code) => Observed::Exited(ExitStatus::Exited(code)),
            Seen::Crashes(signal) => Observed::Exited(ExitStatus::Signaled(signal)),
            Seen::Vanishes => Observed::Vanished,
            Seen::Stops => Observed::Stopping,
            Seen::WaitFails => Observed::WaitFailed,
        }
    }
}

/// One thing that happens, in the order the upgrader calls the machine.
#[derive(Clone, Copy, Debug)]
enum Op {
    Ready,
    RequestUpgrade,
    /// The upgrader forks the accepted upgrade's child; `ok: false` is a failed fork.
    Fork {
        ok: bool,
    },
    /// The readiness wait wakes up and sees this of the child.
    Child(Seen),
    /// The upgrader has handed over (PID file, service manager).
    FinishHandover,
    /// The upgrader has killed and reaped the failed child.
    FinishRollback,
    /// The wait on the new generation in the rollback window wakes up and sees this of it (or,
    /// once the machine said to close the window, the last look before letting go does).
    WindowChild(Seen),
    /// The upgrader has let go of the listeners and the child at the window's close.
    FinishWindowClose,
    /// The upgrader has reaped the new generation that died in the window and taken the
    /// service back.
    FinishResume,
    Advance(Ms),
    /// Time jumps to this point (generated around a deadline).
    AdvanceTo(Ms),
    Stop,
    PredecessorExits,
    Open,
    Close,
    /// `drain()` is called.
    Drain,
    /// The drain wakes up and asks whether it is over.
    DrainPoll,
    /// The application looks whether to stop serving (`done`, `wait_done`).
    AppLooks,
    /// The drain is over and no window is open: it ends, with exit or resume.
    DrainEnd,
}

/// What the machine answers to an [`Op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// The op does not call the machine.
    Silent,
    Ready(Result<(), Phase>),
    Request(Result<Tick, Refusal>),
    Fork(Result<u32, Rollback>),
    Step(Step),
    Handover(Handover),
    RolledBack,
    Window(WindowStep),
    WindowClosed,
    Resumed(bool),
    Stop(Option<Stop>),
    Drain(Drain),
    DrainStep(DrainStep),
    Looks(Option<Phase>),
    DrainEnd(DrainEnd),
}

/// The reference model: plain facts and timestamps, from which the phase and every answer are
/// worked out afresh.
#[derive(Clone, Debug)]
struct Model {
    now: Ms,
    ready_timeout: Ms,
    drain_timeout: Ms,
    reported_ready: bool,
    stopped: bool,
    handed_over: bool,
    predecessor_alive: bool,
    /// When the upgrade in flight was accepted.
    accepted_at: Option<Ms>,
    /// Its child, once forked.
    child: Option<u32>,
    pipe_closed: bool,
    /// The machine has said "hand over" and the upgrader has not finished.
    handing_over: bool,
    /// The machine has said "roll back" and the upgrader has not finished.
    rolling_back: bool,
    next_pid: u32,
    connections: usize,
    drain_started_at: Option<Ms>,
    rollback_window: Ms,
    /// The handed-over child and when its rollback window closes, while it is open.
    window: Option<(u32, Ms)>,
    /// The machine has said "close the window" and the upgrader has not finished.
    window_closing: bool,
    /// The machine has said "resume" and the upgrader has not finished.
    resuming: bool,
    /// The new generation of the open window said it stops on purpose.
    successor_stopping: bool,
    /// A resume undid a handover, and no drain has answered it (nor a stop or handover came).
    resume_pending: bool,
    /// What the machine must answer to the op just applied.
    expect: Answer,
}

const FIRST_PID: u32 = 100;

impl Model {
    fn phase(&self) -> Phase {
        if self.stopped {
            Phase::Stopping
        } else if self.handed_over {
            Phase::HandedOver
        } else if !self.reported_ready {
            Phase::Starting
        } else if self.accepted_at.is_some() {
            Phase::Upgrading
        } else {
            Phase::Serving
        }
    }

    fn awaiting_fork(&self) -> bool {
        self.accepted_at.is_some() && self.child.is_none() && !self.rolling_back
    }

    fn waiting_for_child(&self) -> bool {
        self.child.is_some() && !self.handing_over && !self.rolling_back
    }

    fn ready_deadline(&self) -> Option<Ms> {
        self.accepted_at.map(|at| at + self.ready_timeout)
    }

    /// The window is open and its wait is going on, or its last look before it is let go of
    /// (not being resumed).
    fn watching_window(&self) -> bool {
        self.window.is_some() && !self.resuming
    }

    fn drain_deadline(&self) -> Option<Ms> {
        self.drain_started_at.map(|at| at + self.drain_timeout)
    }

    fn end_upgrade(&mut self) {
        self.accepted_at = None;
        self.child = None;
        self.pipe_closed = false;
        self.handing_over = false;
        self.rolling_back = false;
    }

    /// The model's answer to `op`, and its new facts.
    fn step(&mut self, op: Op) -> Answer {
        match op {
            Op::Ready => {
                if self.reported_ready || self.stopped {
                    return Answer::Ready(Err(self.phase()));
                }
                self.reported_ready = true;
                Answer::Ready(Ok(()))
            }
            Op::RequestUpgrade => {
                let refusal = if self.stopped {
                    Some(Refusal::Stopping)
                } else if self.handed_over {
                    Some(Refusal::HandedOver)
                } else if !self.reported_ready {
                    Some(Refusal::BeforeReady)
                } else if self.accepted_at.is_some() {
                    Some(Refusal::InFlight)
                } else if self.predecessor_alive {
                    Some(Refusal::PredecessorDraining)
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    return Answer::Request(Err(refusal));
                }
                self.accepted_at = Some(self.now);
                Answer::Request(Ok(tick(self.now + self.ready_timeout)))
            }
            Op::Fork { ok } => {
                let failure = if self.stopped {
                    Some(Failure::Stopped)
                } else if !ok {
                    Some(Failure::Spawn)
                } else {
                    None
                };
                if let Some(failure) = failure {
                    self.rolling_back = true;
                    return Answer::Fork(Err(Rollback {
                        failure,
                        child: None,
                    }));
                }
                let pid = self.next_pid;
                self.next_pid += 1;
                self.child = Some(pid);
                Answer::Fork(Ok(pid))
            }
            Op::Child(seen) => {
                let deadline = self.ready_deadline().expect("a child is waited for");
                if seen == Seen::PipeClosed {
                    self.pipe_closed = true;
                }
                let failure = if self.stopped {
                    Failure::Stopped
                } else if self.now >= deadline {
                    Failure::ReadyTimeout
                } else {
                    match seen {
                        Seen::Silent | Seen::PipeClosed | Seen::Stops => {
                            return Answer::Step(Step::WaitUntil(tick(deadline)));
                        }
                        Seen::Ready => {
                            self.handing_over = true;
                            return Answer::Step(Step::HandOver(self.child.unwrap()));
                        }
                        Seen::ExecFailed(errno) => Failure::Exec(errno),
                        Seen::Exits(code) => Failure::Exited(code),
                        Seen::Crashes(signal) => Failure::Crashed(signal),
                        Seen::Vanishes => Failure::Vanished,
                        Seen::WaitFails => Failure::WaitFailed,
                    }
                };
                self.rolling_back = true;
                Answer::Step(Step::RollBack(Rollback {
                    failure,
                    child: self.child,
                }))
            }
            Op::FinishHandover => {
                let pid = self.child.unwrap();
                self.end_upgrade();
                if self.stopped {
                    Answer::Handover(Handover::PassStopOn(pid))
                } else if self.rollback_window == 0 {
                    self.handed_over = true;
                    self.resume_pending = false;
                    Answer::Handover(Handover::Complete)
                } else {
                    self.handed_over = true;
                    self.resume_pending = false;
                    self.successor_stopping = false;
                    let closes = self.now + self.rollback_window;
                    self.window = Some((pid, closes));
                    Answer::Handover(Handover::Window {
                        closes: tick(closes),
                    })
                }
            }
            Op::WindowChild(seen) => {
                let (_, closes) = self.window.expect("a window is open");
                if seen == Seen::Stops {
                    self.successor_stopping = true;
                }
                let failure = match seen {
                    _ if self.stopped || self.successor_stopping => None,
                    Seen::Exits(code) => Some(Failure::Exited(code)),
                    Seen::Crashes(signal) => Some(Failure::Crashed(signal)),
                    Seen::Vanishes => Some(Failure::Vanished),
                    _ if self.now >= closes => None,
                    Seen::WaitFails => None,
                    _ => {
                        self.window_closing = false;
                        return Answer::Window(WindowStep::WaitUntil(tick(closes)));
                    }
                };
                match failure {
                    Some(failure) => {
                        self.window_closing = false;
                        self.resuming = true;
                        Answer::Window(WindowStep::Resume(failure))
                    }
                    None => {
                        self.window_closing = true;
                        Answer::Window(WindowStep::Close)
                    }
                }
            }
            Op::FinishWindowClose => {
                self.window = None;
                self.window_closing = false;
                Answer::WindowClosed
            }
            Op::FinishResume => {
                self.window = None;
                self.resuming = false;
                if self.stopped {
                    return Answer::Resumed(false);
                }
                self.handed_over = false;
                self.drain_started_at = None;
                self.resume_pending = true;
                Answer::Resumed(true)
            }
            Op::FinishRollback => {
                self.end_upgrade();
                Answer::RolledBack
            }
            Op::Stop => {
                if self.stopped || (self.handed_over && self.window.is_none()) {
                    return Answer::Stop(None);
                }
                let service = !self.handed_over || self.resuming;
                self.stopped = true;
                self.resume_pending = false;
                let kill = if self.waiting_for_child() {
                    self.child
                } else {
                    None
                };
                Answer::Stop(Some(Stop { kill, service }))
            }
            Op::Advance(ms) => {
                self.now += ms;
                Answer::Silent
            }
            Op::AdvanceTo(at) => {
                self.now = at;
                Answer::Silent
            }
            Op::PredecessorExits => {
                self.predecessor_alive = false;
                Answer::Silent
            }
            Op::Open => {
                self.connections += 1;
                Answer::Silent
            }
            Op::Close => {
                self.connections -= 1;
                Answer::Silent
            }
            Op::Drain => {
                let started = *self.drain_started_at.get_or_insert(self.now);
                Answer::Drain(Drain {
                    deadline: tick(started + self.drain_timeout),
                })
            }
            Op::DrainPoll => {
                let deadline = self.drain_deadline().expect("the drain has started");
                Answer::DrainStep(if self.connections == 0 {
                    DrainStep::Done
                } else if self.now < deadline {
                    DrainStep::WaitUntil(tick(deadline))
                } else {
                    DrainStep::Cut {
                        left: self.connections,
                    }
                })
            }
            Op::AppLooks => Answer::Looks(if self.phase().is_done() {
                Some(self.phase())
            } else if self.resume_pending {
                Some(Phase::HandedOver)
            } else {
                None
            }),
            Op::DrainEnd => {
                if self.resume_pending {
                    self.resume_pending = false;
                    self.drain_started_at = None;
                    Answer::DrainEnd(DrainEnd::Resume)
                } else {
                    Answer::DrainEnd(DrainEnd::Exit)
                }
            }
        }
    }
}

fn seen(pipe_open: bool) -> BoxedStrategy<Seen> {
    let mut choices = vec![
        (4, Just(Seen::Silent).boxed()),
        (2, (0..=255).prop_map(Seen::Exits).boxed()),
        (1, (1..=64).prop_map(Seen::Crashes).boxed()),
        (1, Just(Seen::Vanishes).boxed()),
        (1, Just(Seen::Stops).boxed()),
        (1, Just(Seen::WaitFails).boxed()),
    ];
    if pipe_open {
        choices.push((4, Just(Seen::Ready).boxed()));
        choices.push((1, (1..=133).prop_map(Seen::ExecFailed).boxed()));
        choices.push((1, Just(Seen::PipeClosed).boxed()));
    }
    proptest::strategy::Union::new_weighted(choices).boxed()
}

/// Time leaps: mostly small, sometimes far past every deadline.
fn leap() -> impl Strategy<Value = Ms> {
    prop_oneof![9 => 0..=25u64, 1 => 26..=5_000u64]
}

/// Leaps to just before, onto, or just after `deadline`, those not in the past.
fn around(now: Ms, deadline: Ms) -> Option<BoxedStrategy<Op>> {
    let earliest = deadline.saturating_sub(1).max(now);
    let latest = deadline + 1;
    (earliest <= latest).then(|| (earliest..=latest).prop_map(Op::AdvanceTo).boxed())
}

impl ReferenceStateMachine for Model {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        let window = prop_oneof![1 => Just(0u64), 2 => 1..=30u64];
        (0..=40u64, 0..=60u64, any::<bool>(), window)
            .prop_map(
                |(ready_timeout, drain_timeout, predecessor_alive, rollback_window)| Model {
                    now: 0,
                    ready_timeout,
                    drain_timeout,
                    reported_ready: false,
                    stopped: false,
                    handed_over: false,
                    predecessor_alive,
                    accepted_at: None,
                    child: None,
                    pipe_closed: false,
                    handing_over: false,
                    rolling_back: false,
                    next_pid: FIRST_PID,
                    connections: 0,
                    drain_started_at: None,
                    rollback_window,
                    window: None,
                    window_closing: false,
                    resuming: false,
                    successor_stopping: false,
                    resume_pending: false,
                    expect: Answer::Silent,
                },
            )
            .boxed()
    }

    fn transitions(m: &Model) -> BoxedStrategy<Op> {
        // Weighted so that most sequences go through several upgrades before the end of this
        // generation's life (after which every request is refused), and that stops often land
        // in the middle of one.
        let done = m.phase().is_done();
        let mut ops = vec![
            (
                if m.reported_ready { 1 } else { 10 },
                Just(Op::Ready).boxed(),
            ),
            (if done { 1 } else { 6 }, Just(Op::RequestUpgrade).boxed()),
            (4, leap().prop_map(Op::Advance).boxed()),
            (
                if m.accepted_at.is_some() { 2 } else { 1 },
                Just(Op::Stop).boxed(),
            ),
            (2, Just(Op::Open).boxed()),
            (1, Just(Op::Drain).boxed()),
            (2, Just(Op::AppLooks).boxed()),
        ];
        if m.drain_started_at.is_some() && m.window.is_none() {
            ops.push((2, Just(Op::DrainEnd).boxed()));
        }
        if m.predecessor_alive {
            ops.push((3, Just(Op::PredecessorExits).boxed()));
        }
        if m.connections > 0 {
            ops.push((2, Just(Op::Close).boxed()));
        }
        if let Some(deadline) = m.drain_deadline() {
            ops.push((3, Just(Op::DrainPoll).boxed()));
            ops.extend(around(m.now, deadline).map(|leap| (2, leap)));
        }
        if m.awaiting_fork() {
            let ok = proptest::bool::weighted(0.8);
            ops.push((20, ok.prop_map(|ok| Op::Fork { ok }).boxed()));
        }
        if let Some(deadline) = m.ready_deadline() {
            ops.extend(around(m.now, deadline).map(|leap| (3, leap)));
        }
        if m.waiting_for_child() {
            ops.push((20, seen(!m.pipe_closed).prop_map(Op::Child).boxed()));
        }
        if m.handing_over {
            ops.push((15, Just(Op::FinishHandover).boxed()));
        }
        if m.rolling_back {
            ops.push((15, Just(Op::FinishRollback).boxed()));
        }
        if m.watching_window() {
            ops.push((12, seen(false).prop_map(Op::WindowChild).boxed()));
        }
        if let Some((_, closes)) = m.window {
            ops.extend(around(m.now, closes).map(|leap| (3, leap)));
        }
        if m.window_closing {
            ops.push((15, Just(Op::FinishWindowClose).boxed()));
        }
        if m.resuming {
            ops.push((15, Just(Op::FinishResume).boxed()));
        }
        proptest::strategy::Union::new_weighted(ops).boxed()
    }

    /// What the upgrader can do in each state; checked again while shrinking.
    fn preconditions(m: &Model, op: &Op) -> bool {
        match *op {
            Op::Fork { .. } => m.awaiting_fork(),
            Op::Child(seen) => m.waiting_for_child() && !(seen.on_the_pipe() && m.pipe_closed),
            Op::FinishHandover => m.handing_over,
            Op::FinishRollback => m.rolling_back,
            Op::WindowChild(seen) => m.watching_window() && !seen.on_the_pipe(),
            Op::FinishWindowClose => m.window_closing,
            Op::FinishResume => m.resuming,
            Op::AdvanceTo(at) => at >= m.now,
            Op::PredecessorExits => m.predecessor_alive,
            Op::Close => m.connections > 0,
            Op::DrainPoll => m.drain_started_at.is_some(),
            Op::DrainEnd => m.drain_started_at.is_some() && m.window.is_none(),
            Op::Ready
            | Op::RequestUpgrade
            | Op::Advance(_)
            | Op::Stop
            | Op::Open
            | Op::Drain
            | Op::AppLooks => true,
        }
    }

    fn apply(mut m: Model, op: &Op) -> Model {
        m.expect = m.step(*op);
        m
    }
}

/// The upgrade in flight, as the upgrader sees it from the machine's answers.
#[derive(Debug)]
struct Flight {
    deadline: Tick,
    pid: Option<u32>,
    /// The machine's verdict, once given; the upgrader then finishes the handover or rollback.
    verdict: Option<Step>,
}

/// The machine, driven the way the upgrader drives it, with a record of what it was told to do
/// to processes.
struct Sut {
    machine: Machine,
    ready_timeout: Duration,
    drain_timeout: Duration,
    now: Tick,
    predecessor_alive: bool,
    connections: usize,
    next_pid: u32,
    flight: Option<Flight>,
    drain: Option<(Tick, Drain)>,
    stopped: bool,
    forked: Vec<u32>,
    killed: BTreeSet<u32>,
    reaped: BTreeSet<u32>,
    /// Children seen to die on their own (in a rollback window).
    died: BTreeSet<u32>,
    handed_to: Option<u32>,
    rollback_window: Duration,
    /// The open rollback window: its child, when it closes, and the machine's verdict once
    /// given.
    window: Option<(u32, Tick, Option<WindowStep>)>,
    /// The new generation of the open window said it stops on purpose.
    successor_stopping: bool,
    /// Handovers so far (complete or with a window).
    handovers: u64,
    /// The handover the last resume undid.
    undone: Option<u64>,
    /// Handovers up to this one have been answered `Resume` by a drain.
    answered: u64,
    /// The application stopped serving when it looked, after this many handovers; until its
    /// drain ends.
    app_saw: Option<u64>,
    /// A drain answered exit: the application is gone.
    app_exited: bool,
    /// Broken properties of the current step.
    broken: Vec<String>,
}

/// Records a broken property.
macro_rules! require {
    ($sut:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            $sut.broken.push(format!($($msg)+));
        }
    };
}

impl Sut {
    fn new(m: &Model) -> Sut {
        let ready_timeout = Duration::from_millis(m.ready_timeout);
        let drain_timeout = Duration::from_millis(m.drain_timeout);
        let rollback_window = Duration::from_millis(m.rollback_window);
        Sut {
            machine: Machine::new(ready_timeout, drain_timeout, rollback_window),
            ready_timeout,
            drain_timeout,
            now: tick(m.now),
            predecessor_alive: m.predecessor_alive,
            connections: 0,
            next_pid: FIRST_PID,
            flight: None,
            drain: None,
            stopped: false,
            forked: Vec::new(),
            killed: BTreeSet::new(),
            reaped: BTreeSet::new(),
            died: BTreeSet::new(),
            handed_to: None,
            rollback_window,
            window: None,
            successor_stopping: false,
            handovers: 0,
            undone: None,
            answered: 0,
            app_saw: None,
            app_exited: false,
            broken: Vec::new(),
        }
    }

    /// Plays `op` on the machine, checks what it answers against the rules, and returns it.
    fn run(&mut self, op: Op) -> Answer {
        match op {
            Op::Ready => Answer::Ready(self.machine.ready()),
            Op::RequestUpgrade => self.request_upgrade(),
            Op::Fork { ok } => self.fork(ok),
            Op::Child(seen) => self.observe(seen),
            Op::FinishHandover => self.finish_handover(),
            Op::FinishRollback => self.finish_rollback(),
            Op::WindowChild(seen) => self.watch_window(seen),
            Op::FinishWindowClose => self.finish_window_close(),
            Op::FinishResume => self.finish_resume(),
            Op::Stop => self.stop(),
            Op::Advance(ms) => {
                self.now = self.now + Duration::from_millis(ms);
                Answer::Silent
            }
            Op::AdvanceTo(at) => {
                self.now = tick(at);
                Answer::Silent
            }
            Op::PredecessorExits => {
                self.predecessor_alive = false;
                Answer::Silent
            }
            Op::Open => {
                self.connections += 1;
                Answer::Silent
            }
            Op::Close => {
                self.connections -= 1;
                Answer::Silent
            }
            Op::Drain => {
                let drain = self.machine.drain(self.now);
                let (started, _) = *self.drain.get_or_insert((self.now, drain));
                require!(
                    self,
                    drain.deadline == started + self.drain_timeout,
                    "the drain deadline is {:?}, not its start {started:?} + {:?}",
                    drain.deadline,
                    self.drain_timeout
                );
                Answer::Drain(drain)
            }
            Op::DrainPoll => self.drain_poll(),
            Op::AppLooks => self.app_looks(),
            Op::DrainEnd => self.drain_end(),
        }
    }

    fn request_upgrade(&mut self) -> Answer {
        let before = self.machine.phase();
        let answer = self
            .machine
            .request_upgrade(self.now, !self.predecessor_alive);
        if let Ok(deadline) = answer {
            require!(
                self,
                self.flight.is_none(),
                "an upgrade was accepted while another is in flight: {:?}",
                self.flight
            );
            require!(
                self,
                !self.predecessor_alive,
                "an upgrade was accepted while the predecessor drains"
            );
            require!(
                self,
                before == Phase::Serving,
                "an upgrade was accepted in {before:?}"
            );
            require!(
                self,
                deadline == self.now + self.ready_timeout,
                "the ready deadline is {deadline:?}, not {:?} + {:?}",
                self.now,
                self.ready_timeout
            );
            self.flight = Some(Flight {
                deadline,
                pid: None,
                verdict: None,
            });
        }
        Answer::Request(answer)
    }

    fn fork(&mut self, ok: bool) -> Answer {
        let answer = match self.machine.before_fork() {
            Err(rollback) => {
                require!(
                    self,
                    self.stopped && rollback.failure == Failure::Stopped,
                    "fork refused with {rollback:?}, stopped: {}",
                    self.stopped
                );
                Err(rollback)
            }
            Ok(()) if ok => {
                require!(self, !self.stopped, "a child is forked after a stop");
                let pid = self.next_pid;
                self.next_pid += 1;
                self.machine.spawned(pid);
                self.forked.push(pid);
                self.flight.as_mut().unwrap().pid = Some(pid);
                Ok(pid)
            }
            Ok(()) => Err(self.machine.spawn_failed()),
        };
        if let Err(rollback) = answer {
            require!(
                self,
                rollback.child.is_none(),
                "a rollback before the fork names a child: {rollback:?}"
            );
            self.flight.as_mut().unwrap().verdict = Some(Step::RollBack(rollback));
        }
        Answer::Fork(answer)
    }

    fn observe(&mut self, seen: Seen) -> Answer {
        let step = self.machine.observe(self.now, seen.observed());
        let now = self.now;
        let stopped = self.stopped;
        let flight = self.flight.as_ref().unwrap();
        let (deadline, pid) = (flight.deadline, flight.pid);
        match step {
            Step::WaitUntil(until) => {
                require!(
                    self,
                    matches!(seen, Seen::Silent | Seen::PipeClosed | Seen::Stops)
                        && until == deadline
                        && now < until
                        && !stopped,
                    "told to wait until {until:?} at {now:?} having seen {seen:?} (deadline \
                     {deadline:?}, stopped: {stopped})"
                );
            }
            Step::HandOver(to) => {
                require!(
                    self,
                    seen == Seen::Ready && now < deadline && !stopped && Some(to) == pid,
                    "told to hand over to {to} at {now:?} having seen {seen:?} (deadline \
                     {deadline:?}, stopped: {stopped}, child {pid:?})"
                );
            }
            Step::RollBack(rollback) => {
                require!(
                    self,
                    rollback.child == pid,
                    "the rollback names {:?}, the child is {pid:?}",
                    rollback.child
                );
                let right = match rollback.failure {
                    Failure::Stopped => stopped,
                    Failure::ReadyTimeout => !stopped && now >= deadline,
                    other => {
                        !stopped
                            && now < deadline
                            && match (other, seen) {
                                (Failure::Exec(a), Seen::ExecFailed(b)) => a == b,
                                (Failure::Exited(a), Seen::Exits(b)) => a == b,
                                (Failure::Crashed(a), Seen::Crashes(b)) => a == b,
                                (Failure::WaitFailed, Seen::WaitFails) => true,
                                (Failure::Vanished, Seen::Vanishes) => true,
                                _ => false,
                            }
                    }
                };
                require!(
                    self,
                    right,
                    "rolled back for {:?} at {now:?} having seen {seen:?} (deadline \
                     {deadline:?}, stopped: {stopped})",
                    rollback.failure
                );
            }
        }
        if !matches!(step, Step::WaitUntil(_)) {
            self.flight.as_mut().unwrap().verdict = Some(step);
        }
        Answer::Step(step)
    }

    fn finish_handover(&mut self) -> Answer {
        let handover = self.machine.handed_over(self.now);
        let pid = self.flight.take().and_then(|f| f.pid).unwrap();
        self.handed_to = Some(pid);
        if !matches!(handover, Handover::PassStopOn(_)) {
            self.handovers += 1;
            self.successor_stopping = false;
        }
        let phase = self.machine.phase();
        let right = match handover {
            Handover::Complete => {
                !self.stopped && phase == Phase::HandedOver && self.rollback_window.is_zero()
            }
            Handover::Window { closes } => {
                self.window = Some((pid, closes, None));
                !self.stopped
                    && phase == Phase::HandedOver
                    && !self.rollback_window.is_zero()
                    && closes == self.now + self.rollback_window
            }
            Handover::PassStopOn(to) => self.stopped && to == pid && phase == Phase::Stopping,
        };
        require!(
            self,
            right,
            "handover to {pid} ended {handover:?} in {phase:?}, stopped: {}",
            self.stopped
        );
        Answer::Handover(handover)
    }

    fn finish_rollback(&mut self) -> Answer {
        let flight = self.flight.take().unwrap();
        let Some(Step::RollBack(rollback)) = flight.verdict else {
            panic!("finishing a rollback the machine did not decide: {flight:?}");
        };
        if let Some(pid) = rollback.child {
            // What the upgrader does with a rollback's child.
            self.killed.insert(pid);
            self.reaped.insert(pid);
        }
        self.machine.rolled_back();
        let phase = self.machine.phase();
        let expected = if self.stopped {
            Phase::Stopping
        } else {
            Phase::Serving
        };
        require!(
            self,
            phase == expected,
            "after a rollback the phase is {phase:?}, not {expected:?}"
        );
        Answer::RolledBack
    }

    fn watch_window(&mut self, seen: Seen) -> Answer {
        let step = self.machine.watch(self.now, seen.observed());
        let (now, stopped) = (self.now, self.stopped);
        if seen == Seen::Stops {
            self.successor_stopping = true;
        }
        let on_purpose = stopped || self.successor_stopping;
        let (pid, closes, _) = self.window.unwrap();
        let right = match step {
            WindowStep::WaitUntil(until) => {
                seen == Seen::Silent && until == closes && now < closes && !on_purpose
            }
            WindowStep::Close => {
                on_purpose || (!seen.death() && (now >= closes || seen == Seen::WaitFails))
            }
            WindowStep::Resume(failure) => {
                !on_purpose
                    && match (failure, seen) {
                        (Failure::Exited(a), Seen::Exits(b)) => a == b,
                        (Failure::Crashed(a), Seen::Crashes(b)) => a == b,
                        (Failure::Vanished, Seen::Vanishes) => true,
                        _ => false,
                    }
            }
        };
        require!(
            self,
            right,
            "the window of child {pid} answers {step:?} at {now:?} having seen {seen:?} (it \
             closes at {closes:?}, stopped: {stopped}, successor stopping: {})",
            self.successor_stopping
        );
        // Whatever the time: a death seen in the window, with no stop of either generation,
        // takes the service back; it is never let go of.
        if seen.death() && !on_purpose {
            require!(
                self,
                matches!(step, WindowStep::Resume(_)),
                "child {pid} was seen to die at {now:?} (window closes at {closes:?}) and the \
                 window answers {step:?}"
            );
        }
        if let WindowStep::Resume(_) = step {
            self.died.insert(pid);
        }
        self.window.as_mut().unwrap().2 = match step {
            WindowStep::WaitUntil(_) => None,
            step => Some(step),
        };
        Answer::Window(step)
    }

    fn finish_window_close(&mut self) -> Answer {
        let (pid, _, verdict) = self.window.take().unwrap();
        assert_eq!(
            verdict,
            Some(WindowStep::Close),
            "closing a window not closed"
        );
        self.machine.window_closed();
        require!(
            self,
            !self.machine.window_open() && self.machine.phase().is_done(),
            "after the window of child {pid} closed: open {}, phase {:?}",
            self.machine.window_open(),
            self.machine.phase()
        );
        Answer::WindowClosed
    }

    fn finish_resume(&mut self) -> Answer {
        let (pid, _, verdict) = self.window.take().unwrap();
        assert!(
            matches!(verdict, Some(WindowStep::Resume(_))),
            "resuming without a verdict to: {verdict:?}"
        );
        // What the upgrader does with a child that died in the window.
        self.reaped.insert(pid);
        if self.handed_to == Some(pid) {
            self.handed_to = None;
        }
        let resumed = self.machine.resumed();
        let phase = self.machine.phase();
        let expected = if self.stopped {
            Phase::Stopping
        } else {
            // A generation that serves again drains afresh at its next handover.
            self.drain = None;
            self.undone = Some(self.handovers);
            Phase::Serving
        };
        require!(
            self,
            phase == expected && !self.machine.window_open() && resumed != self.stopped,
            "after child {pid} died in the window the phase is {phase:?}, not {expected:?}; \
             resumed: {resumed}, stopped: {}",
            self.stopped
        );
        Answer::Resumed(resumed)
    }

    /// The application looks whether to stop serving: once it has stopped, it stays stopped
    /// until its drain ends. Every handover is seen, even one undone before the look.
    fn app_looks(&mut self) -> Answer {
        let looks = self.machine.stopped_serving();
        let unanswered = self.handovers > self.answered;
        if self.app_saw.is_none() && !self.app_exited {
            require!(
                self,
                looks.is_some() == (self.stopped || unanswered),
                "the application, serving, is told {looks:?} with {} handovers, {} answered by \
                 a drain (stopped: {})",
                self.handovers,
                self.answered,
                self.stopped
            );
        }
        if looks.is_some() && self.app_saw.is_none() {
            self.app_saw = Some(self.handovers);
        }
        Answer::Looks(looks)
    }

    /// The drain ends: after a handover the application saw, it says to serve again exactly
    /// when that handover was undone and no stop came.
    fn drain_end(&mut self) -> Answer {
        let end = self.machine.end_drain();
        if let Some(saw) = self.app_saw.take()
            && !self.app_exited
        {
            let undone =
                !self.stopped && saw > self.answered && self.undone == Some(self.handovers);
            require!(
                self,
                (end == DrainEnd::Resume) == undone,
                "the drain after handover {saw} (of {}) ends {end:?}; the last one undone: {:?}, \
                 stopped: {}",
                self.handovers,
                self.undone,
                self.stopped
            );
        }
        match end {
            DrainEnd::Resume => {
                self.answered = self.handovers;
                self.drain = None;
            }
            DrainEnd::Exit => self.app_exited = true,
        }
        Answer::DrainEnd(end)
    }

    fn stop(&mut self) -> Answer {
        let was_done = self.machine.phase().is_done();
        let window_open = self.window.is_some();
        let answer = self.machine.stop();
        match answer {
            None => require!(
                self,
                was_done && (self.stopped || !window_open),
                "a stop in a serving phase (or in an open rollback window) did nothing"
            ),
            Some(stop) => {
                self.stopped = true;
                let waiting = self
                    .flight
                    .as_ref()
                    .filter(|f| f.verdict.is_none())
                    .and_then(|f| f.pid);
                require!(
                    self,
                    stop.kill == waiting,
                    "a stop kills {:?}, the child starting is {waiting:?}",
                    stop.kill
                );
                // The service manager hears of a stop from the generation that is the service:
                // not from one whose successor serves through an open window.
                let successor_serves = self
                    .window
                    .is_some_and(|(_, _, verdict)| !matches!(verdict, Some(WindowStep::Resume(_))));
                require!(
                    self,
                    stop.service != successor_serves,
                    "a stop says the service is ours: {}; the window: {:?}",
                    stop.service,
                    self.window
                );
                if let Some(pid) = stop.kill {
                    self.killed.insert(pid);
                }
            }
        }
        Answer::Stop(answer)
    }

    fn drain_poll(&mut self) -> Answer {
        let (_, drain) = self.drain.unwrap();
        let step = drain.poll(self.now, self.connections);
        let (now, open, deadline) = (self.now, self.connections, drain.deadline);
        let right = match step {
            DrainStep::Done => open == 0,
            DrainStep::WaitUntil(until) => open > 0 && now < deadline && until == deadline,
            DrainStep::Cut { left } => left == open && open > 0 && now >= deadline,
        };
        require!(
            self,
            right,
            "the drain answers {step:?} at {now:?} with {open} open (deadline {deadline:?})"
        );
        Answer::DrainStep(step)
    }

    /// Properties of the state after every step.
    fn check_state(&mut self, m: &Model) {
        let phase = self.machine.phase();
        require!(
            self,
            phase == m.phase(),
            "the machine is in {phase:?}, the model in {:?}",
            m.phase()
        );
        if self.stopped {
            require!(self, phase == Phase::Stopping, "{phase:?} after a stop");
        }
        require!(
            self,
            (phase == Phase::Upgrading) == (self.flight.is_some() && !self.stopped),
            "{phase:?} with the upgrade in flight {:?}",
            self.flight
        );
        let in_flight = self.flight.as_ref().and_then(|f| f.pid);
        let unsettled: Vec<u32> = self
            .forked
            .iter()
            .copied()
            .filter(|pid| !self.reaped.contains(pid) && self.handed_to != Some(*pid))
            .collect();
        require!(
            self,
            unsettled == in_flight.into_iter().collect::<Vec<_>>(),
            "children neither handed over to nor reaped: {unsettled:?}; in flight: {in_flight:?}"
        );
        for pid in &self.reaped {
            require!(
                self,
                self.killed.contains(pid) || self.died.contains(pid),
                "child {pid} was reaped without being killed or seen to die"
            );
        }
        require!(
            self,
            self.machine.window_open() == self.window.is_some(),
            "the machine says a window is open: {}; the upgrader holds {:?}",
            self.machine.window_open(),
            self.window
        );
        if let Some((pid, _, _)) = self.window {
            require!(
                self,
                self.handed_to == Some(pid),
                "a window watches {pid}, the generation handed over to is {:?}",
                self.handed_to
            );
        }
        let alive = usize::from(self.predecessor_alive)
            + 1
            + unsettled.len()
            + usize::from(self.handed_to.is_some());
        require!(
            self,
            alive <= 2,
            "{alive} generations alive (predecessor alive: {}, unsettled children \
             {unsettled:?}, handed over to {:?})",
            self.predecessor_alive,
            self.handed_to
        );
    }
}

struct MachineTest;

impl StateMachineTest for MachineTest {
    type SystemUnderTest = Sut;
    type Reference = Model;

    fn init_test(m: &Model) -> Sut {
        Sut::new(m)
    }

    fn apply(mut sut: Sut, m: &Model, op: Op) -> Sut {
        let answer = sut.run(op);
        require!(
            sut,
            answer == m.expect,
            "the machine answers {answer:?}, the model expects {:?}",
            m.expect
        );
        sut.check_state(m);
        if !sut.broken.is_empty() {
            panic!(
                "after {op:?} at {:?}:\n  - {}",
                sut.now,
                sut.broken.join("\n  - ")
            );
        }
        sut
    }
}

prop_state_machine! {
    #[test]
    fn the_machine_follows_the_model(sequential 1..100 => MachineTest);
}

// A few rules spelled out, as examples of what the model says.

#[test]
fn ready_on_the_deadline_is_too_late() {
    let mut m = Machine::new(Duration::from_secs(1), Duration::ZERO, Duration::ZERO);
    m.ready().unwrap();
    let deadline = m.request_upgrade(Tick::ZERO, true).unwrap();
    m.before_fork().unwrap();
    m.spawned(7);
    let step = m.observe(deadline, Observed::Ready);
    assert_eq!(
        step,
        Step::RollBack(Rollback {
            failure: Failure::ReadyTimeout,
            child: Some(7)
        })
    );
    m.rolled_back();
    assert_eq!(m.phase(), Phase::Serving);
}

#[test]
fn a_stop_while_handing_over_is_passed_on_to_the_new_generation() {
    let mut m = Machine::new(Duration::from_secs(1), Duration::ZERO, Duration::ZERO);
    m.ready().unwrap();
    m.request_upgrade(Tick::ZERO, true).unwrap();
    m.before_fork().unwrap();
    m.spawned(7);
    assert_eq!(m.observe(Tick::ZERO, Observed::Ready), Step::HandOver(7));
    assert_eq!(
        m.stop(),
        Some(Stop {
            kill: None,
            service: true
        })
    );
    assert_eq!(m.handed_over(Tick::ZERO), Handover::PassStopOn(7));
    assert_eq!(m.phase(), Phase::Stopping);
}

#[test]
fn a_stop_before_the_fork_forks_nothing() {
    let mut m = Machine::new(Duration::from_secs(1), Duration::ZERO, Duration::ZERO);
    m.ready().unwrap();
    m.request_upgrade(Tick::ZERO, true).unwrap();
    assert_eq!(
        m.stop(),
        Some(Stop {
            kill: None,
            service: true
        })
    );
    assert_eq!(
        m.before_fork(),
        Err(Rollback {
            failure: Failure::Stopped,
            child: None
        })
    );
    m.rolled_back();
    assert_eq!(m.phase(), Phase::Stopping);
}

#[test]
fn a_drain_keeps_its_first_deadline() {
    let mut m = Machine::new(Duration::ZERO, Duration::from_secs(2), Duration::ZERO);
    let first = m.drain(Tick::ZERO);
    let again = m.drain(tick(1_500));
    assert_eq!(first, again);
    assert_eq!(
        again.poll(tick(1_999), 3),
        DrainStep::WaitUntil(tick(2_000))
    );
    assert_eq!(again.poll(tick(2_000), 3), DrainStep::Cut { left: 3 });
    assert_eq!(again.poll(tick(2_000), 0), DrainStep::Done);
}

#[test]
fn a_death_in_the_rollback_window_resumes_service_and_a_fresh_drain() {
    let window = Duration::from_millis(500);
    let mut m = Machine::new(Duration::from_secs(1), Duration::from_secs(2), window);
    m.ready().unwrap();
    m.request_upgrade(Tick::ZERO, true).unwrap();
    m.before_fork().unwrap();
    m.spawned(7);
    assert_eq!(m.observe(tick(10), Observed::Ready), Step::HandOver(7));
    assert_eq!(
        m.handed_over(tick(10)),
        Handover::Window { closes: tick(510) }
    );
    assert_eq!(m.phase(), Phase::HandedOver);
    let first = m.drain(tick(20));
    assert_eq!(
        m.watch(tick(30), Observed::Nothing),
        WindowStep::WaitUntil(tick(510))
    );
    assert_eq!(
        m.watch(tick(40), Observed::Exited(ExitStatus::Signaled(9))),
        WindowStep::Resume(Failure::Crashed(9))
    );
    assert!(m.resumed());
    assert_eq!(m.phase(), Phase::Serving);
    assert!(!m.window_open());
    assert_eq!(m.end_drain(), DrainEnd::Resume);
    assert_ne!(m.drain(tick(900)), first, "the next drain starts afresh");
}

/// A window whose child 7 was handed over at zero, closing at the returned tick.
fn windowed(window_ms: u64) -> (Machine, Tick) {
    let mut m = Machine::new(
        Duration::from_secs(1),
        Duration::ZERO,
        Duration::from_millis(window_ms),
    );
    m.ready().unwrap();
    m.request_upgrade(Tick::ZERO, true).unwrap();
    m.before_fork().unwrap();
    m.spawned(7);
    m.observe(Tick::ZERO, Observed::Ready);
    let Handover::Window { closes } = m.handed_over(Tick::ZERO) else {
        panic!("a window opens")
    };
    (m, closes)
}

#[test]
fn a_death_judged_at_the_close_of_the_window_still_resumes() {
    // Seen a moment before the close, judged after it (the watching thread was descheduled),
    // or seen by the last look before letting go: the new generation is dead either way, and
    // letting go would leave nobody serving.
    let (mut m, closes) = windowed(5);
    assert_eq!(m.watch(closes, Observed::Nothing), WindowStep::Close);
    assert_eq!(
        m.watch(closes, Observed::Exited(ExitStatus::Exited(1))),
        WindowStep::Resume(Failure::Exited(1))
    );
    assert!(m.resumed());
    assert_eq!(m.phase(), Phase::Serving);
}

#[test]
fn a_successor_reaped_elsewhere_is_dead_not_unwatchable() {
    let (mut m, closes) = windowed(5_000);
    assert_eq!(
        m.watch(tick(300), Observed::Vanished),
        WindowStep::Resume(Failure::Vanished)
    );
    assert!(tick(300) < closes);
}

#[test]
fn a_successor_stopping_on_purpose_closes_the_window() {
    let (mut m, _) = windowed(5_000);
    assert_eq!(m.watch(tick(10), Observed::Stopping), WindowStep::Close);
    // Its exit that follows is the stop's, not a crash.
    assert_eq!(
        m.watch(tick(11), Observed::Exited(ExitStatus::Exited(0))),
        WindowStep::Close
    );
    m.window_closed();
    assert_eq!(m.phase(), Phase::HandedOver);
    assert_eq!(m.end_drain(), DrainEnd::Exit);
}

#[test]
fn a_stop_during_a_resume_takes_nothing_back() {
    let (mut m, _) = windowed(5_000);
    assert_eq!(
        m.watch(tick(10), Observed::Exited(ExitStatus::Signaled(9))),
        WindowStep::Resume(Failure::Crashed(9))
    );
    assert_eq!(
        m.stop(),
        Some(Stop {
            kill: None,
            service: true
        }),
        "the service was about to be ours again: the manager hears of the stop"
    );
    assert!(!m.resumed());
    assert_eq!(m.phase(), Phase::Stopping);
    assert_eq!(m.end_drain(), DrainEnd::Exit);
}

#[test]
fn a_handover_undone_before_the_application_looked_is_still_seen() {
    let (mut m, _) = windowed(5_000);
    assert_eq!(
        m.watch(tick(1), Observed::Exited(ExitStatus::Exited(3))),
        WindowStep::Resume(Failure::Exited(3))
    );
    assert!(m.resumed());
    assert_eq!(m.phase(), Phase::Serving);
    assert_eq!(m.stopped_serving(), Some(Phase::HandedOver));
    m.drain(tick(2));
    assert_eq!(m.end_drain(), DrainEnd::Resume);
    assert_eq!(m.stopped_serving(), None, "answered once");
    assert_eq!(m.end_drain(), DrainEnd::Exit);
}
