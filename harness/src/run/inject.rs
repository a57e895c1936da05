//! Injecting events: firing a restart or stop trigger, killing a generation, arming a
//! `fail-next`, and finding which live generation a signal goes to.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::{Run, interrupted};
use crate::model::Which;
use crate::observer;
use crate::target::{self, ResolvedTrigger};

impl Run<'_> {
    /// Fires a restart or stop trigger; returns the pid signalled and any error.
    pub(super) fn fire(&self, trigger: &ResolvedTrigger) -> (Option<u32>, Option<String>) {
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
                    Ok(pid) => (Some(pid), send(signal, pid).err()),
                    Err(e) => (None, Some(e)),
                }
            }
            ResolvedTrigger::Command { argv } => {
                let timeout = self.s.target.ready_timeout.max(Duration::from_secs(10));
                let result = observer::run_command(
                    argv,
                    &self.target.env,
                    Some(&self.tag),
                    timeout,
                    &interrupted,
                );
                (None, result.err())
            }
        }
    }

    /// The newest live generation that has shown it is ready (a `ready pid=` line or a reply
    /// naming it), or, when none has (a target that names no pid), the newest live one.
    ///
    /// A generation that is still starting is passed over on purpose: a restart signal sent to
    /// an upgrade in flight must reach the generation that is serving (that is what the
    /// single-upgrade scenarios test), not the child, which may not handle it yet.
    fn newest_generation(&self) -> Result<u32, String> {
        let (live, ready) = self.live_and_ready();
        live.iter()
            .rev()
            .find(|pid| ready.contains(pid))
            .or(live.last())
            .copied()
            .ok_or_else(|| "no live generation to signal".to_string())
    }

    /// The newest live generation not seen ready: one still starting. Never a serving one.
    fn starting_generation(&self) -> Result<u32, String> {
        let (live, ready) = self.live_and_ready();
        live.iter()
            .rev()
            .find(|pid| !ready.contains(pid))
            .copied()
            .ok_or_else(|| "no generation is starting (every live one was seen ready)".to_string())
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
        let live = self.observer.live_generation_pids();
        if let [pid] = live[..]
            && restarted != Some(pid)
        {
            self.observer.sample_now(pid);
        }
    }

    /// The live generations, oldest first, and the pids seen ready (a ready line or a reply).
    fn live_and_ready(&self) -> (Vec<u32>, HashSet<u32>) {
        self.observer.scan();
        let live = self.observer.live_generation_pids();
        (live, self.ready_pids())
    }

    /// The pids seen ready: a `ready pid=` line, or a reply naming it.
    fn ready_pids(&self) -> HashSet<u32> {
        let lines = self.spawned.output.lock();
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .ready_lines
            .iter()
            .map(|(pid, _, _)| *pid)
            .chain(journal.served_pids())
            .collect()
    }

    pub(super) fn kill(&self, signal: &str, generation: Which) -> (Option<u32>, Option<String>) {
        self.observer.scan();
        let pid = match generation {
            Which::Number(n) => self
                .observer
                .generation_pid(n)
                .ok_or_else(|| format!("generation {n} is not alive (or was never seen)")),
            Which::Newest => self.newest_generation(),
            Which::Starting => self.starting_generation(),
        };
        match pid {
            Ok(pid) => (Some(pid), send(signal, pid).err()),
            Err(e) => (None, Some(e)),
        }
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
