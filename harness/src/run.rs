//! The runner: one scenario, start to finish.
//!
//! spawn the target → wait until it is ready (`first_ready`) → start the load → inject the
//! events at `first_ready + at` (a restart command runs in the background, so that the
//! schedule does not wait for it; a restart marked `after_drain` first waits for the restart
//! commands still running and for the superseded generations to exit, and shifts the rest of
//! the schedule by that wait) → at `duration` (or the `stop` event) trigger the final stop,
//! stop the load, wait up to `stop_timeout` for the tree to be gone → kill what is left → the
//! [`RunRecord`], with every time an offset from `t0` (taken just before the spawn).
//!
//! The tree is killed on every way out: normally, on a setup error, on an interrupt (see
//! [`install_interrupt_handler`]), and on a panic (the observer's `Drop`).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::journal::{DEFAULT_FAILURES_CAP, Journal};
use crate::load::{self, LoadControl, LoadPlan};
use crate::model::{Action, Event, Injected, Profile, RunRecord, Scenario, Which};
use crate::observer::{self, Observer};
use crate::target::{self, Placeholders, ResolvedTarget};
use crate::usage::UsageMeter;

mod inject;
mod lineage;
mod ready;
mod watch;

pub use watch::{RunProgress, WATCH_EVERY, Watch};

use inject::{Background, Fired};

/// How the runner runs.
#[derive(Clone)]
pub struct RunOptions {
    /// What `{bin}` stands for: the directory of the harness executable.
    pub bin_dir: PathBuf,
    /// Print progress to stderr.
    pub verbose: bool,
    /// Told how the run goes, every [`WATCH_EVERY`] and at each of its steps.
    pub watch: Option<Watch>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("bin_dir", &self.bin_dir)
            .field("verbose", &self.verbose)
            .field("watch", &self.watch.is_some())
            .finish()
    }
}

/// Why a run produced no record.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The target could not be spawned, or was not ready within `ready_timeout`: the message
    /// includes the command line and the tail of its output.
    #[error("{0}")]
    Setup(String),
    /// SIGINT/SIGTERM arrived; the target tree was killed.
    #[error("interrupted")]
    Interrupted,
}

/// Grace between SIGTERM and SIGKILL when the harness kills what is left of a tree.
const KILL_GRACE: Duration = Duration::from_millis(1000);
/// Polling step of the runner's waits (readiness, schedule): also how fast it notices an
/// interrupt.
const STEP: Duration = Duration::from_millis(10);
/// How long an `after-drain` restart waits for the child of a restart signalled just before
/// it to be seen: until then the generation signalled looks settled (a child that dies before
/// it is ever seen costs this much delay, no more).
const CHILD_SEEN_WITHIN: Duration = Duration::from_millis(50);

/// Installs SIGINT/SIGTERM (and SIGHUP) handling that makes a run in progress abort (killing
/// the target tree, then returning [`RunError::Interrupted`]) instead of killing the harness
/// outright; call once at CLI start.
///
/// Signals that processes of a target send to the harness are ignored, whatever they are (see
/// [`crate::observer`]'s signal guard).
///
/// # Caveats
/// Signal handlers are process-wide and are never reset. Deliveries coalesce: one or several
/// signals have the same effect, and the flag stays set, so every later run in this process
/// returns `Interrupted` at once. This also starts the reaper (see [`run_scenario`]).
///
/// # Errors
/// `sigaction` failed, or the reaper thread could not start.
pub fn install_interrupt_handler() -> io::Result<()> {
    observer::enable_interrupts().map_err(io::Error::other)
}

/// Whether an interrupt arrived (see [`install_interrupt_handler`]).
pub fn interrupted() -> bool {
    observer::interrupted()
}

/// Runs one scenario and returns what was observed.
///
/// # Errors
/// [`RunError::Setup`] when the target cannot be spawned or is not ready in time;
/// [`RunError::Interrupted`] on SIGINT/SIGTERM. In both cases no process of the target is left.
///
/// # Caveats
/// The harness reaps every child of this process from then on (see [`crate::observer`]): do
/// not `wait` for other children in the same process.
pub fn run_scenario(s: &Scenario, opts: &RunOptions) -> Result<RunRecord, RunError> {
    if interrupted() {
        return Err(RunError::Interrupted);
    }
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        RunError::Setup(format!("scenario `{}`: {what}: {e}", s.id))
    };
    observer::init().map_err(|e| setup("starting the process observer", &e))?;
    let meter = UsageMeter::start();
    let port = target::pick_free_port().map_err(|e| setup("preparing the target", &e))?;
    let dir = tempfile::Builder::new()
        .prefix("handoff-run-")
        .tempdir()
        .map_err(|e| setup("creating the run's temporary directory for `{dir}`", &e))?;
    let ph = Placeholders {
        port,
        dir: dir.path().to_path_buf(),
        bin: opts.bin_dir.clone(),
    };
    let target =
        ResolvedTarget::resolve(&s.target, &ph).map_err(|e| setup("preparing the target", &e))?;
    let tag = run_tag();
    let t0 = Instant::now();
    let spawned = target::spawn(&target, &tag, t0, opts.verbose)
        .map_err(|e| setup("starting the target", &e))?;
    let observer = match Observer::start(
        spawned.pid,
        Some(spawned.adopter),
        &tag,
        target.connect.clone(),
        t0,
    ) {
        Ok(o) => o,
        Err(e) => {
            let _ = killpg(Pid::from_raw(spawned.pid as i32), Signal::SIGKILL);
            return Err(setup("observing the target", &e));
        }
    };
    let mut run = Run {
        s,
        opts,
        target,
        spawned,
        observer,
        t0,
        injected: Vec::new(),
        journal: Arc::new(Mutex::new(Journal::new(DEFAULT_FAILURES_CAP))),
        tag,
        meter,
        seed: s.load.seed.unwrap_or_else(load::fresh_seed),
        commands: Vec::new(),
        abort_commands: Arc::new(AtomicBool::new(false)),
        armed_on_ready: None,
        fired_on_ready: Arc::new(Mutex::new(Vec::new())),
        watcher: watch::Watcher::new(opts.watch.clone(), t0),
    };
    let result = run.execute();
    // The tree is gone (execute kills it on every path, and the observer's Drop again on a
    // panic); only now may the directory it used go.
    drop(run);
    drop(dir);
    result
}

fn run_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

struct Run<'a> {
    s: &'a Scenario,
    opts: &'a RunOptions,
    target: ResolvedTarget,
    spawned: target::SpawnedTarget,
    observer: Observer,
    t0: Instant,
    injected: Vec<Injected>,
    journal: Arc<Mutex<Journal>>,
    tag: String,
    meter: UsageMeter,
    /// The seed of the load's draws.
    seed: u64,
    /// Restart commands running in the background, with the index of their injection.
    commands: Vec<(usize, Background)>,
    /// Set when the run is over: commands still running are killed.
    abort_commands: Arc<AtomicBool>,
    /// An armed kill of the next generation to report ready: when it was armed, and the
    /// injection the output reader records when it fires.
    armed_on_ready: Option<(Duration, Action)>,
    fired_on_ready: Arc<Mutex<Vec<Injected>>>,
    /// Tells `opts.watch` how the run goes.
    watcher: watch::Watcher,
}

/// The load of a run: its runtime, the clients' control and plan (replaced by a profile
/// switch), and every task started.
struct Load {
    runtime: tokio::runtime::Runtime,
    ctl: Arc<LoadControl>,
    plan: Arc<LoadPlan>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// A switch of the load's profile: the clients running retire, a new load takes over with
    /// the same clock, journal and deadline.
    fn switch(&mut self, profile: Profile) {
        self.ctl.retire();
        self.ctl = self.ctl.successor();
        self.plan = Arc::new(self.plan.switched(profile));
        let run = load::run(Arc::clone(&self.plan), Arc::clone(&self.ctl));
        self.tasks.push(self.runtime.spawn(run));
    }
}

/// Where the schedule stands.
#[derive(Default)]
struct Schedule {
    /// How much later than written the events now come (waits for drains, samples).
    delay: Duration,
    /// The final stop, once triggered.
    final_stop: Option<Duration>,
    /// A `fail-next` waiting for the restart it arms.
    armed: Option<String>,
    /// The pid the last restart signal went to, and when, with the generations seen then.
    last_restart: Option<(u32, Instant, usize)>,
}

impl Run<'_> {
    fn progress(&self, msg: std::fmt::Arguments<'_>) {
        if self.opts.verbose {
            crate::errln!(
                "[{:>8.3}s] {}: {msg}",
                self.t0.elapsed().as_secs_f64(),
                self.s.id
            );
        }
        self.watcher.step(msg, &self.journal);
    }

    fn execute(&mut self) -> Result<RunRecord, RunError> {
        self.progress(format_args!(
            "spawned pid {}: {}",
            self.spawned.pid,
            self.target.command_line()
        ));
        let ready_at = match self.wait_ready() {
            Ok(at) => at,
            Err(e) => {
                self.observer.kill_tree(KILL_GRACE);
                return Err(e);
            }
        };
        let first_ready = ready_at.duration_since(self.t0);
        self.progress(format_args!("ready"));
        let mut load = match self.start_load(ready_at) {
            Ok(load) => load,
            Err(e) => {
                self.observer.kill_tree(KILL_GRACE);
                return Err(e);
            }
        };
        let mut schedule = Schedule::default();
        for event in &self.s.events {
            let scheduled = ready_at + schedule.delay + event.at;
            if !self.sleep_until(scheduled) {
                return self.interrupted(load.runtime, &load.ctl);
            }
            if !self.inject(event, scheduled, &mut schedule, &mut load) {
                return self.interrupted(load.runtime, &load.ctl);
            }
            if schedule.final_stop.is_some() {
                break;
            }
        }
        if schedule.final_stop.is_none() {
            if !self.sleep_until(ready_at + self.s.duration + schedule.delay) {
                return self.interrupted(load.runtime, &load.ctl);
            }
            self.final_stop(&mut schedule, &load.ctl);
        }
        let stop_instant = self.t0 + schedule.final_stop.unwrap_or_default();

        // Wait for the tree to go, then for the load to finish what it had in flight.
        let remaining =
            (stop_instant + self.s.target.stop_timeout).saturating_duration_since(Instant::now());
        let gone = self.observer.wait_gone(remaining, interrupted);
        if interrupted() {
            return self.interrupted(load.runtime, &load.ctl);
        }
        let killed_at_end = if gone {
            Vec::new()
        } else {
            self.observer.live_pids()
        };
        if !gone {
            self.progress(format_args!(
                "still alive after stop_timeout: {killed_at_end:?}"
            ));
        }
        self.observer.kill_tree(KILL_GRACE);
        self.collect_commands(true);
        self.finish_load(load);
        let end = self.t0.elapsed();
        self.progress(format_args!("done"));
        Ok(self.record(first_ready, schedule.final_stop, end, killed_at_end))
    }

    /// Starts the load's runtime and its clients, once the target is ready at `ready_at`.
    fn start_load(&self, ready_at: Instant) -> Result<Load, RunError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("load")
            .enable_all()
            .build()
            .map_err(|e| {
                RunError::Setup(format!(
                    "scenario `{}`: starting the load's runtime: {e}",
                    self.s.id
                ))
            })?;
        let load = &self.s.load;
        let ctl = LoadControl::new(self.t0, Arc::clone(&self.journal));
        let end_of_run = ready_at + self.s.duration;
        // A restart that waits for the drain delays the rest of the schedule by its wait; the
        // load may run that much longer.
        let most_delay = (self.s.target.drain_timeout + self.s.expect.drain_slack)
            * self.s.events.iter().filter(|e| e.after_drain).count() as u32;
        let plan = LoadPlan::new(
            load.clone(),
            self.target.connect.clone(),
            end_of_run + most_delay + load.connect_timeout + load.reply_timeout,
            self.seed,
        )
        .map_err(|e| RunError::Setup(format!("scenario `{}`: the load: {e}", self.s.id)))?;
        let plan = Arc::new(plan);
        let tasks = vec![runtime.spawn(load::run(Arc::clone(&plan), Arc::clone(&ctl)))];
        Ok(Load {
            runtime,
            ctl,
            plan,
            tasks,
        })
    }

    /// Injects one event of the schedule, due at `scheduled`, and records it; false if an
    /// interrupt came while it waited for a drain.
    fn inject(
        &mut self,
        event: &Event,
        scheduled: Instant,
        schedule: &mut Schedule,
        load: &mut Load,
    ) -> bool {
        if event.after_drain && !self.wait_for_drain(schedule.last_restart) {
            return false;
        }
        self.collect_commands(false);
        // The descriptor sample before a restart, except between the signals of a burst (a
        // restart within moments of the previous one, not waiting for a drain): those must go
        // out as scheduled, without waiting for the observer. Its time is added to the
        // schedule's delay, like a wait for the drain, so that the gaps between the later
        // events stay as written.
        let sample = event.action == Action::Restart
            && (event.after_drain
                || schedule
                    .last_restart
                    .is_none_or(|(_, sent, _)| sent.elapsed() >= CHILD_SEEN_WITHIN));
        if sample {
            self.sample_serving(schedule.last_restart.map(|(pid, _, _)| pid));
        }
        if event.after_drain || sample {
            schedule.delay += Instant::now().saturating_duration_since(scheduled);
        }
        let now = self.t0.elapsed();
        let open_connections = self.open_connections();
        let fired = match &event.action {
            Action::Restart => self.restart(schedule, load),
            Action::Stop => {
                self.quiesce(&load.ctl);
                schedule.final_stop = Some(self.t0.elapsed());
                let stop = self.target.stop.clone();
                self.fire(&stop)
            }
            Action::Kill {
                signal,
                generation: Which::NextReady,
            } => {
                // Recorded when it fires (or at the end, if it never does).
                self.arm_kill_on_ready(signal, now);
                return true;
            }
            Action::Kill { signal, generation } => {
                let (pid, error) = self.kill(signal, *generation);
                Fired::signal(pid, error)
            }
            Action::FailNext { mode } => {
                schedule.armed = Some(mode.clone());
                Fired::signal(None, None)
            }
            Action::Load { profile } => {
                load.switch(*profile);
                Fired::signal(None, None)
            }
        };
        self.record_injection(now, event.action.clone(), fired, open_connections);
        true
    }

    /// Records an injection made at `now`. A command the final stop ran is waited for (the
    /// schedule is over); a restart command goes on in the background.
    fn record_injection(
        &mut self,
        now: Duration,
        action: Action,
        fired: Fired,
        open_connections: u64,
    ) {
        let Fired {
            pid,
            error,
            command,
        } = fired;
        self.progress(format_args!(
            "{action:?} -> {}{} ({open_connections} connections open)",
            match (pid, &command) {
                (Some(pid), _) => format!("pid {pid}"),
                (None, Some(_)) => "command started".to_string(),
                (None, None) => "done".to_string(),
            },
            error
                .as_deref()
                .map(|e| format!(" failed: {e}"))
                .unwrap_or_default()
        ));
        let stop = action == Action::Stop;
        self.injected.push(Injected {
            at: now,
            action,
            pid,
            error,
            open_connections,
            command: None,
        });
        if let Some(command) = command {
            let index = self.injected.len() - 1;
            if stop {
                self.command_ended(index, command);
            } else {
                self.commands.push((index, command));
            }
        }
    }

    /// Before an `after-drain` restart: waits (bounded) until the restart commands still
    /// running have ended and no superseded generation is left; false if an interrupt came
    /// meanwhile.
    fn wait_for_drain(&mut self, last_restart: Option<(u32, Instant, usize)>) -> bool {
        let bound = self.s.target.drain_timeout + self.s.expect.drain_slack;
        let deadline = Instant::now() + bound;
        // A restart command still running has not finished its upgrade: the generation it
        // supersedes may not even look superseded yet.
        if !self.wait_commands(deadline) {
            return false;
        }
        // A restart signalled a moment ago may not have forked yet: until its child is seen,
        // the generation it went to looks settled. Wait (bounded) to see it.
        if let Some((pid, sent, seen)) = last_restart {
            let left = (sent + CHILD_SEEN_WITHIN).saturating_duration_since(Instant::now());
            if !left.is_zero() {
                self.observer.wait_successor(seen, pid, left, interrupted);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let settled = self.wait_settled(left);
        if interrupted() {
            return false;
        }
        if !settled {
            self.progress(format_args!(
                "a superseded generation outlived its drain deadline; restarting anyway"
            ));
        }
        true
    }

    /// A restart: arms a pending `fail-next` right before the signal (written earlier, a
    /// generation still starting from a previous restart could read it instead), fires the
    /// trigger, and starts the burst of the `burst` profile.
    fn restart(&self, schedule: &mut Schedule, load: &mut Load) -> Fired {
        let armed = match schedule.armed.take() {
            Some(mode) => self.fail_next(&mode).err(),
            None => None,
        };
        let seen = self.observer.listeners_seen();
        let r = match (armed, self.target.restart.clone()) {
            (Some(e), _) => Fired::signal(None, Some(e)),
            (None, Some(t)) => self.fire(&t),
            (None, None) => {
                Fired::signal(None, Some("the scenario has no `target.restart`".into()))
            }
        };
        if let (Some(pid), None) = (r.pid, &r.error) {
            schedule.last_restart = Some((pid, Instant::now(), seen));
        }
        if load.plan.spec.profile == Profile::Burst {
            let burst = load::burst(Arc::clone(&load.plan), Arc::clone(&load.ctl));
            load.tasks.push(load.runtime.spawn(burst));
        }
        r
    }

    /// The final stop at the end of the run, when no `stop` event came first.
    fn final_stop(&mut self, schedule: &mut Schedule, ctl: &LoadControl) {
        self.quiesce(ctl);
        let now = self.t0.elapsed();
        schedule.final_stop = Some(now);
        let stop = self.target.stop.clone();
        let open_connections = self.open_connections();
        let fired = self.fire(&stop);
        self.record_injection(now, Action::Stop, fired, open_connections);
    }

    /// Lets the load finish what it had in flight (bounded), then shuts its runtime down.
    fn finish_load(&self, mut load: Load) {
        let spec = &self.s.load;
        let load_deadline = spec.connect_timeout + spec.reply_timeout + Duration::from_secs(1);
        load.runtime.block_on(async {
            let _ = tokio::time::timeout(load_deadline, async {
                for t in load.tasks.iter_mut() {
                    let _ = t.await;
                }
            })
            .await;
        });
        load.runtime.shutdown_timeout(Duration::from_secs(1));
    }

    /// The record of the run, with its generations inferred (see [`crate::model::infer`]).
    fn record(
        &mut self,
        first_ready: Duration,
        final_stop: Option<Duration>,
        end: Duration,
        killed_at_end: Vec<u32>,
    ) -> RunRecord {
        let summary = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .summary();
        self.collect_kills_on_ready();
        let (processes, listeners) = self.observer.records();
        let mut r = RunRecord {
            first_ready: Some(first_ready),
            final_stop,
            end,
            injected: std::mem::take(&mut self.injected),
            processes,
            listeners: self.with_readiness(listeners, &summary.served_by),
            lineage: Default::default(),
            journal: summary,
            killed_at_end,
            harness: self.meter.finish(),
            seed: self.seed,
        };
        r.lineage = crate::model::infer(&r, self.s.target.shape);
        r
    }

    fn interrupted(
        &mut self,
        runtime: tokio::runtime::Runtime,
        ctl: &LoadControl,
    ) -> Result<RunRecord, RunError> {
        self.progress(format_args!("interrupted: killing the target"));
        ctl.stop();
        self.observer.kill_tree(KILL_GRACE);
        self.collect_commands(true);
        runtime.shutdown_timeout(Duration::from_millis(500));
        Err(RunError::Interrupted)
    }

    /// Before the final stop: the load stops starting connections, then the harness waits
    /// (bounded by the load's connect timeout) until the target has accepted every connection
    /// already queued on its listener. The final stop is triggered right after, and its time
    /// is the one recorded (the deadlines after it are the target's, not the harness's wait).
    ///
    /// Why: a connection still in the kernel's accept queue when the server closes its
    /// listener is reset by the kernel. At a restart that is exactly the loss the harness must
    /// catch (the socket should be handed over, queue and all); at the final stop there is no
    /// successor to hand over to, so the harness does not pose that question: what it asks is
    /// that the stopping server finishes what it accepted.
    fn quiesce(&self, ctl: &LoadControl) {
        ctl.stop();
        let deadline = Instant::now() + self.s.load.connect_timeout;
        while let Some(queued) = self.observer.accept_queue() {
            if queued == 0 || Instant::now() >= deadline || interrupted() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Connections the load holds established right now.
    fn open_connections(&self) -> u64 {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open_connections()
    }

    /// Sleeps until `when`, in short steps; false if interrupted.
    fn sleep_until(&self, when: Instant) -> bool {
        loop {
            if interrupted() {
                return false;
            }
            let now = Instant::now();
            if now >= when {
                return true;
            }
            self.watcher.tick(now, &self.journal);
            std::thread::sleep((when - now).min(STEP));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Runs against `python3 -m http.server`, a real server that restarts badly: SIGHUP kills
    //! it. The reference servers are exercised by `harness/tests/runner.rs`.

    use super::*;
    use crate::model::{Event, Protocol, SignalTo, Trigger};
    use crate::scenario;

    fn python_scenario(command: Vec<&str>, events: Vec<Event>) -> Scenario {
        let mut s = scenario::inline("inline/python-http", &command, Duration::from_millis(800));
        s.description = "python's http.server".into();
        s.requirement = "MUST serve".into();
        s.target.ready_timeout = Duration::from_secs(10);
        s.target.restart = Some(Trigger::signal("SIGHUP", SignalTo::Main));
        s.target.stop_timeout = Duration::from_secs(2);
        s.target.drain_timeout = Duration::from_secs(1);
        s.load.protocol = Protocol::Http1;
        s.load.clients = 2;
        s.load.interval = Duration::from_millis(20);
        s.load.reply_timeout = Duration::from_secs(2);
        s.events = events;
        s
    }

    fn opts() -> RunOptions {
        RunOptions {
            bin_dir: PathBuf::from("/nonexistent"),
            verbose: false,
            watch: None,
        }
    }

    // The observer reaps every child, so a pid still running after a run is a live process.
    use observer::running as alive;

    const PY_HTTP: [&str; 6] = [
        "python3",
        "-m",
        "http.server",
        "{port}",
        "--bind",
        "127.0.0.1",
    ];

    #[test]
    fn a_server_killed_by_the_restart_signal_shows_refusals_and_its_exit() {
        let s = python_scenario(
            PY_HTTP.to_vec(),
            vec![Event::at(Duration::from_millis(300), Action::Restart)],
        );
        let r = run_scenario(&s, &opts()).expect("the run completes");
        assert!(r.first_ready.is_some());
        assert_eq!(r.listeners.len(), 1, "{:#?}", r.listeners);
        let g = &r.listeners[0];
        assert_eq!(g.status.as_deref(), Some("signal 1 (SIGHUP)"), "{g:#?}");
        // http.server does not name its pid in replies, and prints no `ready pid=` line: the
        // record must not pretend to know when this generation was ready.
        assert_eq!(g.ready_at, None, "{g:#?}");
        assert!(r.journal.replies_without_pid > 0, "{:#?}", r.journal);
        assert!(!g.fd_samples.is_empty(), "{g:#?}");
        assert_eq!(r.injected.len(), 2, "{:#?}", r.injected);
        assert_eq!(r.injected[0].pid, Some(g.pid));
        assert!(r.journal.outcomes["ok"] > 0, "{:#?}", r.journal);
        assert!(r.journal.outcomes["refused"] > 0, "{:#?}", r.journal);
        assert!(r.killed_at_end.is_empty());
        for p in &r.processes {
            assert!(!alive(p.pid), "pid {} outlived the run", p.pid);
        }
    }

    #[test]
    fn a_clean_run_has_no_failures_and_a_clean_stop() {
        let s = python_scenario(PY_HTTP.to_vec(), Vec::new());
        let r = run_scenario(&s, &opts()).expect("the run completes");
        // SIGTERM kills http.server at once: a request in flight at the final stop may be cut,
        // and rightly counts as a failure; nothing before the stop fails.
        let stop = r.final_stop.expect("a final stop");
        assert!(
            r.journal.failures.iter().all(|c| c.done >= stop),
            "{:#?}",
            r.journal
        );
        assert!(r.journal.failures.len() <= 2, "{:#?}", r.journal.failures);
        assert!(r.journal.connections > 5);
        assert_eq!(r.listeners.len(), 1);
        assert_eq!(
            r.listeners[0].status.as_deref(),
            Some("signal 15 (SIGTERM)")
        );
        assert!(r.final_stop.is_some() && r.end >= r.final_stop.unwrap_or_default());
        assert!(r.killed_at_end.is_empty());
    }

    #[test]
    fn processes_that_ignore_the_stop_are_killed_and_listed() {
        // The shell and its python child both ignore SIGTERM (an ignored disposition survives
        // exec), so neither stops; the harness must SIGKILL both.
        let script = format!("trap '' TERM; {} & wait", PY_HTTP.join(" "));
        let s = python_scenario(vec!["sh", "-c", &script], Vec::new());
        let r = run_scenario(&s, &opts()).expect("the run completes");
        assert_eq!(
            r.killed_at_end.len(),
            2,
            "killed {:?} of {:#?}",
            r.killed_at_end,
            r.processes
        );
        assert_eq!(r.listeners.len(), 1, "{:#?}", r.listeners);
        let sh = r
            .processes
            .iter()
            .find(|p| p.cmdline.starts_with("sh -c"))
            .expect("the shell was seen");
        assert_ne!(r.listeners[0].pid, sh.pid, "python, not sh, listens");
        for p in &r.processes {
            assert!(!alive(p.pid), "pid {} outlived the run", p.pid);
            // Short-lived helpers (the pyenv shim's subshells) were reaped by their parent;
            // the two that outlived the stop were killed by the harness.
            if r.killed_at_end.contains(&p.pid) {
                assert_eq!(p.status.as_deref(), Some("signal 9 (SIGKILL)"), "{p:#?}");
            }
        }
    }

    #[test]
    fn what_a_restart_command_leaves_running_belongs_to_the_target() {
        // Like `haproxy -D -sf`: the trigger command starts a daemon and returns. The daemon
        // must be watched and killed with the tree, not leaked.
        let mut s = python_scenario(
            PY_HTTP.to_vec(),
            vec![Event::at(Duration::from_millis(200), Action::Restart)],
        );
        s.target.restart = Some(Trigger::Command {
            argv: ["sh", "-c", "sleep 37 >/dev/null 2>&1 &"]
                .map(String::from)
                .to_vec(),
        });
        s.target.stop_timeout = Duration::from_millis(500);
        let r = run_scenario(&s, &opts()).expect("the run completes");
        assert_eq!(r.injected[0].error, None, "{:#?}", r.injected);
        let daemon = r
            .processes
            .iter()
            .find(|p| p.cmdline == "sleep 37")
            .unwrap_or_else(|| panic!("the daemon was seen: {:#?}", r.processes));
        assert!(
            r.killed_at_end.contains(&daemon.pid),
            "{:#?}",
            r.killed_at_end
        );
        assert!(!alive(daemon.pid));
        assert_eq!(r.listeners.len(), 1, "the daemon does not listen");
    }

    #[test]
    fn restart_commands_run_in_the_background_and_their_failures_are_recorded() {
        // A slow failing command does not shift the next event; an after-drain restart waits
        // for it (its upgrade is not over until it ends).
        let sh = |script: &str| Trigger::Command {
            argv: ["sh", "-c", script].map(String::from).to_vec(),
        };
        let mut s = python_scenario(
            PY_HTTP.to_vec(),
            vec![
                Event::at(Duration::from_millis(100), Action::Restart),
                Event::at(
                    Duration::from_millis(300),
                    Action::Kill {
                        signal: "SIGCONT".into(),
                        generation: crate::model::Which::Newest,
                    },
                ),
                Event {
                    after_drain: true,
                    ..Event::at(Duration::from_millis(350), Action::Restart)
                },
            ],
        );
        s.duration = Duration::from_millis(1500);
        s.target.restart = Some(sh("sleep 0.6; echo no new master >&2; exit 3"));
        let r = run_scenario(&s, &opts()).expect("the run completes");
        let [slow, kill, waited, _stop] = &r.injected[..] else {
            panic!("four injections: {:#?}", r.injected);
        };
        let run = slow.command.as_ref().expect("a command run");
        let ended = run.ended.expect("it ended");
        assert!(!run.ok, "{slow:#?}");
        assert!(ended >= slow.at + Duration::from_millis(550), "{slow:#?}");
        let error = slow.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("exit 3") && error.contains("no new master"),
            "{error}"
        );
        // The kill went out on time, while the command was still running.
        assert!(kill.at < ended, "{kill:#?} before {ended:?}");
        assert!(
            kill.at < slow.at + Duration::from_millis(450),
            "{kill:#?} after {slow:#?}"
        );
        // The after-drain restart waited for the command.
        assert!(waited.at >= ended, "{waited:#?} before {ended:?}");
        assert!(waited.command.is_some(), "{waited:#?}");
        // A failed restart is an injection error: the checkers see no restart there.
        assert!(
            crate::checkers::restarts(&r)
                .iter()
                .all(|i| i.at != slow.at)
        );
    }

    #[test]
    fn signals_a_target_sends_its_parent_neither_kill_nor_interrupt_the_harness() {
        install_interrupt_handler().expect("interrupt handling");
        // The spawned process's parent is the shim, as is an orphaned generation's: it ignores
        // them all.
        let script = format!(
            "kill -USR1 $PPID; kill -TERM $PPID; kill -HUP $PPID; exec {}",
            PY_HTTP.join(" ")
        );
        let s = python_scenario(vec!["sh", "-c", &script], Vec::new());
        let r = run_scenario(&s, &opts()).expect("not interrupted");
        assert!(r.journal.connections > 5, "{:#?}", r.journal);

        // SIGKILL cannot be ignored: the shim dies and its orphan goes to init. The run goes
        // on, the orphan is still watched (process group, tag) and killed at the end.
        let script = format!("kill -KILL $PPID; exec {}", PY_HTTP.join(" "));
        let s = python_scenario(vec!["sh", "-c", &script], Vec::new());
        let r = run_scenario(&s, &opts()).expect("not interrupted");
        assert!(r.journal.connections > 5, "{:#?}", r.journal);
        assert_eq!(r.listeners.len(), 1, "{:#?}", r.listeners);
        assert!(r.listeners[0].exited.is_some(), "{:#?}", r.listeners);
        assert!(!interrupted());
        for p in &r.processes {
            assert!(!alive(p.pid), "pid {} outlived the run", p.pid);
        }
    }

    #[test]
    fn a_target_that_never_listens_is_a_setup_error_with_its_output() {
        let mut s = python_scenario(vec!["sh", "-c", "echo starting up; sleep 30"], Vec::new());
        s.target.ready_timeout = Duration::from_millis(300);
        let err = run_scenario(&s, &opts()).expect_err("never ready");
        let msg = err.to_string();
        assert!(msg.contains("not ready within"), "{msg}");
        assert!(msg.contains("starting up"), "{msg}");
        assert!(msg.contains("sleep 30"), "{msg}");
    }

    #[test]
    fn a_target_that_exits_early_is_a_setup_error_at_once() {
        let s = python_scenario(vec!["sh", "-c", "echo bad flag >&2; exit 3"], Vec::new());
        let started = Instant::now();
        let err = run_scenario(&s, &opts()).expect_err("exits");
        let msg = err.to_string();
        assert!(msg.contains("exit 3"), "{msg}");
        assert!(msg.contains("bad flag"), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
