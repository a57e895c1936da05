//! Injecting events: firing a restart or stop trigger (a command runs in the background, see
//! [`Background`]), killing a generation, arming a `fail-next`, and finding which live
//! generation a signal goes to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::{Run, interrupted};
use crate::model::{Action, CommandRun, Generation, Injected, Which};
use crate::observer;
use crate::target::{self, ReadyHook, ResolvedTrigger};

/// What firing a trigger did.
pub(super) struct Fired {
    /// The pid a signal was sent to.
    pub(super) pid: Option<u32>,
    /// Why the trigger could not be fired.
    pub(super) error: Option<String>,
    /// A command, started and running in the background.
    pub(super) command: Option<Background>,
}

impl Fired {
    /// What was done at once: a signal sent to `pid` (if any), or why it could not be.
    pub(super) fn signal(pid: Option<u32>, error: Option<String>) -> Fired {
        Fired {
            pid,
            error,
            command: None,
        }
    }
}

/// A trigger command running on its own thread, so that one that takes seconds (an upgrade
/// script waiting for a new master) does not shift the rest of the schedule.
pub(super) struct Background {
    handle: JoinHandle<(Result<(), String>, Instant)>,
}

impl Background {
    /// Starts `argv` with the target's `env` and the run's `tag` (see
    /// [`observer::run_command`]); it is killed after `timeout`, on an interrupt, or once
    /// `abort` is set.
    fn start(
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        tag: String,
        timeout: Duration,
        abort: Arc<AtomicBool>,
    ) -> Background {
        let handle = std::thread::spawn(move || {
            let stop = || interrupted() || abort.load(Ordering::SeqCst);
            let result = observer::run_command(&argv, &env, Some(&tag), timeout, &stop);
            (result, Instant::now())
        });
        Background { handle }
    }

    /// Whether the command has ended.
    pub(super) fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the command to end: how it went (times from `t0`), and its error.
    pub(super) fn join(self, t0: Instant) -> (CommandRun, Option<String>) {
        match self.handle.join() {
            Ok((result, ended)) => (
                CommandRun {
                    ended: Some(ended.saturating_duration_since(t0)),
                    ok: result.is_ok(),
                },
                result.err(),
            ),
            Err(_) => (
                CommandRun {
                    ended: None,
                    ok: false,
                },
                Some("the thread running the command panicked".to_string()),
            ),
        }
    }
}

impl Run<'_> {
    /// Fires a restart or stop trigger: a signal at once, a command started in the
    /// background.
    pub(super) fn fire(&self, trigger: &ResolvedTrigger) -> Fired {
        match trigger {
            ResolvedTrigger::Signal { signal, to } => {
                let pid = match to {
                    crate::model::SignalTo::Main => Ok(self.spawned.pid),
                    crate::model::SignalTo::PidFile => match &self.target.pid_file {
                        Some(p) => target::read_pid_file(p),
                        None => Err(
                            "`signal.to = \"pid-file\"` but `target.pid_file` is not set".into(),
                        ),
                    },
                    crate::model::SignalTo::Newest => self.newest_generation(),
                };
                match pid {
                    Ok(pid) => Fired::signal(Some(pid), send(signal, pid).err()),
                    Err(e) => Fired::signal(None, Some(e)),
                }
            }
            ResolvedTrigger::Spawn { argv } => {
                let spawned = target::spawn_more(
                    argv,
                    &self.target,
                    &self.tag,
                    &self.spawned.output,
                    self.t0,
                    self.opts.verbose,
                );
                match spawned {
                    Ok(pid) => {
                        self.progress(format_args!("spawned pid {pid}: {}", argv.join(" ")));
                        // Seen by the observer from its next poll, by the run's tag.
                        self.observer.scan();
                        Fired::signal(None, None)
                    }
                    Err(e) => Fired::signal(None, Some(e.to_string())),
                }
            }
            ResolvedTrigger::Command { argv } => {
                let timeout = self.s.target.ready_timeout.max(Duration::from_secs(10));
                Fired {
                    pid: None,
                    error: None,
                    command: Some(Background::start(
                        argv.clone(),
                        self.target.env.clone(),
                        self.tag.clone(),
                        timeout,
                        Arc::clone(&self.abort_commands),
                    )),
                }
            }
        }
    }

    /// Records how the background command of injection `index` went, once it has ended.
    pub(super) fn command_ended(&mut self, index: usize, command: Background) {
        let (run, error) = command.join(self.t0);
        let Some(i) = self.injected.get(index) else {
            return;
        };
        self.progress(format_args!(
            "the {:?} command started at {:.3}s {}",
            i.action,
            i.at.as_secs_f64(),
            match &error {
                None => "succeeded".to_string(),
                Some(e) => format!("failed: {e}"),
            }
        ));
        let i = &mut self.injected[index];
        i.command = Some(run);
        if i.error.is_none() {
            i.error = error;
        }
    }

    /// Waits (until `deadline`) for the restart commands still running; false if an interrupt
    /// came meanwhile.
    pub(super) fn wait_commands(&mut self, deadline: Instant) -> bool {
        while self.commands.iter().any(|(_, c)| !c.is_finished()) {
            if interrupted() {
                return false;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.collect_commands(false);
        true
    }

    /// Records the commands that have ended; with `all`, first stops the ones still running
    /// (the run is over) and records them too.
    pub(super) fn collect_commands(&mut self, all: bool) {
        if all {
            self.abort_commands.store(true, Ordering::SeqCst);
        }
        let pending = std::mem::take(&mut self.commands);
        for (index, command) in pending {
            if all || command.is_finished() {
                self.command_ended(index, command);
            } else {
                self.commands.push((index, command));
            }
        }
    }

    /// The newest live generation that has shown it is ready (a `ready pid=` line or a reply
    /// naming one of its members), or, when none has (a target that names no pid), the newest
    /// live one: its first live member.
    ///
    /// A generation that is still starting is passed over on purpose: a restart signal sent to
    /// an upgrade in flight must reach the generation that is serving (that is what the
    /// single-upgrade scenarios test), not the child, which may not handle it yet.
    fn newest_generation(&self) -> Result<u32, String> {
        let live = self.live_generations();
        live.iter()
            .rev()
            .find(|g| g.ready_at.is_some())
            .or(live.last())
            .and_then(|g| self.first_live(g))
            .ok_or_else(|| "no live generation to signal".to_string())
    }

    /// The newest live generation not seen ready: one still starting. Never a serving one.
    fn starting_generation(&self) -> Result<u32, String> {
        self.live_generations()
            .iter()
            .rev()
            .find(|g| g.ready_at.is_none())
            .and_then(|g| self.first_live(g))
            .ok_or_else(|| "no generation is starting (every live one was seen ready)".to_string())
    }

    /// The first member of `g` still alive: its master, or its only process, while they live.
    fn first_live(&self, g: &Generation) -> Option<u32> {
        let live = self.observer.live_pids();
        g.members.iter().copied().find(|pid| live.contains(pid))
    }

    /// Takes a descriptor sample of the generation about to be asked to restart, when it is
    /// serving alone: the only live generation (the one before it is gone, so it is serving
    /// even if its ready line has not been read yet), and not the one the last restart signal
    /// went to (that one may still be preparing the upgrade it asked for, holding a readiness
    /// pipe, or have just rolled one back). Otherwise the periodic samples stand.
    ///
    /// Decided on the observer's last poll, without a fresh one: the signals of a burst must
    /// not wait for a scan each. A poll that is a little old can only show more generations
    /// alive than there are, or miss a child forked since by the restart already sent.
    pub(super) fn sample_serving(&self, restarted: Option<u32>) {
        let live = self.observer.live_pids();
        let lineage = self.lineage_now();
        let alive = super::lineage::live(&lineage, &live);
        if let [g] = alive[..]
            && !restarted.is_some_and(|pid| g.contains(pid))
        {
            for pid in g.members.iter().filter(|pid| live.contains(pid)) {
                self.observer.sample_now(*pid);
            }
        }
    }

    pub(super) fn kill(&self, signal: &str, generation: Which) -> (Option<u32>, Option<String>) {
        self.observer.scan();
        let pid = match generation {
            Which::Number(n) => self
                .lineage_now()
                .generations
                .get((n as usize).saturating_sub(1))
                .and_then(|g| self.first_live(g))
                .ok_or_else(|| format!("generation {n} is not alive (or was never seen)")),
            Which::Newest => self.newest_generation(),
            Which::Starting => self.starting_generation(),
            // Armed, not sent at once: see `arm_kill_on_ready`.
            Which::NextReady => {
                Err("a kill of the next generation to report ready is armed, not sent".into())
            }
        };
        match pid {
            Ok(pid) => (Some(pid), send(signal, pid).err()),
            Err(e) => (None, Some(e)),
        }
    }

    /// Arms a kill of the next generation to report ready: the thread that reads the
    /// target's output sends `signal` the moment it reads the `ready pid=N` line, and the
    /// injection is recorded with that moment (see [`Run::collect_kills_on_ready`]).
    pub(super) fn arm_kill_on_ready(&mut self, signal: &str, now: Duration) {
        let action = Action::Kill {
            signal: signal.to_string(),
            generation: Which::NextReady,
        };
        if self.armed_on_ready.is_some() {
            let open_connections = self.open_connections();
            self.injected.push(Injected {
                at: now,
                action,
                pid: None,
                error: Some(
                    "a kill of the next generation to report ready is already armed".into(),
                ),
                open_connections,
                command: None,
            });
            return;
        }
        self.progress(format_args!("{action:?} -> armed"));
        self.armed_on_ready = Some((now, action.clone()));
        let fired = Arc::clone(&self.fired_on_ready);
        let journal = Arc::clone(&self.journal);
        let signal = signal.to_string();
        self.spawned.output.lock().on_next_ready = Some(ReadyHook(Box::new(move |pid, at| {
            let error = send(&signal, pid).err();
            let open_connections = journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .open_connections();
            fired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Injected {
                    at,
                    action,
                    pid: Some(pid),
                    error,
                    open_connections,
                    command: None,
                });
        })));
    }

    /// Adds the armed kill to the injections, as fired, or (when no generation reported
    /// ready after it) as an error at the time it was armed; keeps them in time order.
    pub(super) fn collect_kills_on_ready(&mut self) {
        let Some((armed, action)) = self.armed_on_ready.take() else {
            return;
        };
        let unfired = self.spawned.output.lock().on_next_ready.take().is_some();
        let fired = std::mem::take(
            &mut *self
                .fired_on_ready
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.injected.extend(fired);
        if unfired {
            self.injected.push(Injected {
                at: armed,
                action,
                pid: None,
                error: Some(
                    "no generation reported ready (a `ready pid=N` line) after the kill was armed"
                        .into(),
                ),
                open_connections: 0,
                command: None,
            });
        }
        self.injected.sort_by_key(|i| i.at);
    }

    pub(super) fn fail_next(&self, mode: &str) -> Result<(), String> {
        let path = self
            .target
            .fail_next_file
            .as_deref()
            .ok_or("`fail-next` needs `target.fail_next_file`, which is not set")?;
        std::fs::write(path, format!("{mode}\n"))
            .map_err(|e| format!("writing `{mode}` to `{}`: {e}", path.display()))
    }
}

fn send(signal: &str, pid: u32) -> Result<(), String> {
    let sig = target::parse_signal(signal)?;
    kill(Pid::from_raw(pid as i32), sig).map_err(|e| format!("sending {sig} to pid {pid}: {e}"))
}
