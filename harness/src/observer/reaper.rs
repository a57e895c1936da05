//! The process-wide reaper: one thread collects the exit status of every child of the harness
//! (`waitpid(-1, WNOHANG)`) into a table that observers and [`run_command`] read; the shims
//! add the exits they reap (see [`crate::target::spawn`]).
//!
//! # Caveats
//! Once [`init`] ran, the reaper owns the exit status of every child of this process: code in
//! the same process must not `wait` for its own children (it would race the reaper and may get
//! `ECHILD`); run helper commands with [`run_command`], which reads the reaper's table.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{ObserverError, guard};
use crate::target::RUN_TAG_VAR;

/// Exit statuses nobody claimed are forgotten after this long (bounded table).
const EXIT_RETENTION: Duration = Duration::from_secs(300);

/// One reaped child.
#[derive(Clone, Debug)]
pub struct Exit {
    pub at: Instant,
    /// `exit 0`, `signal 9 (SIGKILL)`, ...
    pub status: String,
}

#[derive(Default)]
struct Reaper {
    exits: Mutex<HashMap<u32, Exit>>,
    reaped: Condvar,
}

static REAPER: OnceLock<Result<Reaper, String>> = OnceLock::new();

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Exit>> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Installs the signal guard and starts the reaper thread; idempotent.
///
/// # Errors
/// The sigaction or the thread spawn failed; the error is remembered and returned by every later
/// call too.
pub fn init() -> Result<(), ObserverError> {
    let result = REAPER.get_or_init(|| {
        guard::install().map_err(|e| format!("installing the signal guard: {e}"))?;
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(reap_forever)
            .map_err(|e| format!("starting the reaper thread: {e}"))?;
        Ok(Reaper::default())
    });
    match result {
        Ok(_) => Ok(()),
        Err(e) => Err(ObserverError::Thread {
            what: "reaper",
            source: io::Error::other(e.clone()),
        }),
    }
}

fn reaper() -> Option<&'static Reaper> {
    REAPER.get().and_then(|r| r.as_ref().ok())
}

fn reap_forever() {
    // The reaper cannot be created before REAPER is set, so wait for it (get_or_init returns
    // right after this thread starts).
    let reaper = loop {
        match REAPER.get() {
            Some(Ok(r)) => break r,
            Some(Err(_)) => return,
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    loop {
        match waitpid(
            None::<Pid>,
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(1)),
            Ok(status) => {
                let (pid, text) = match status {
                    WaitStatus::Exited(pid, code) => (pid, format!("exit {code}")),
                    WaitStatus::Signaled(pid, sig, core) => (
                        pid,
                        format!(
                            "signal {} ({}){}",
                            sig as i32,
                            sig.as_str(),
                            if core { ", core dumped" } else { "" }
                        ),
                    ),
                    // Stop/continue notifications are not requested; nothing to record.
                    _ => continue,
                };
                let now = Instant::now();
                let mut exits = reaper.lock();
                exits.retain(|_, e| now.duration_since(e.at) < EXIT_RETENTION);
                exits.insert(
                    pid.as_raw() as u32,
                    Exit {
                        at: now,
                        status: text,
                    },
                );
                reaper.reaped.notify_all();
            }
            Err(Errno::EINTR) => {}
            // ECHILD: no children right now. Anything else: nothing better to do than retry.
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Records an exit reaped elsewhere (by a target's shim, see [`crate::target::spawn`]).
pub(crate) fn record_exit(pid: u32, at: Instant, status: String) {
    if let Some(reaper) = reaper() {
        let mut exits = reaper.lock();
        exits.retain(|_, e| at.saturating_duration_since(e.at) < EXIT_RETENTION);
        exits.insert(pid, Exit { at, status });
        reaper.reaped.notify_all();
    }
}

/// A raw `waitpid` status as the record writes it: `exit 0`, `signal 9 (SIGKILL)`, ...; `None`
/// for a stop or continue notification.
pub(crate) fn status_text(raw: i32) -> Option<String> {
    if libc::WIFEXITED(raw) {
        return Some(format!("exit {}", libc::WEXITSTATUS(raw)));
    }
    if libc::WIFSIGNALED(raw) {
        let n = libc::WTERMSIG(raw);
        let name = Signal::try_from(n).map(|s| s.as_str()).unwrap_or("unknown");
        let core = if libc::WCOREDUMP(raw) {
            ", core dumped"
        } else {
            ""
        };
        return Some(format!("signal {n} ({name}){core}"));
    }
    None
}

/// The exit of `pid` if the reaper collected it (without removing it).
pub fn exit_of(pid: u32) -> Option<Exit> {
    reaper().and_then(|r| r.lock().get(&pid).cloned())
}

/// Runs a trigger command (e.g. `nginx -s reload`) to completion, with `env` added to its
/// environment, and `tag` under [`RUN_TAG_VAR`] when given.
///
/// With the run's tag, whatever the command leaves running (a daemon it starts, such as a new
/// `haproxy -D -sf` generation) is recognised by the observer as part of the target once it is
/// orphaned to the harness, so it is watched and killed at the end like the rest of the tree.
/// The command itself runs in its own process group, so that it cannot be confused with the
/// target's group.
///
/// # Errors
/// A message when it could not start, did not finish within `timeout` or before `abort`
/// returned true (it is then killed), or exited unsuccessfully; the message includes the start
/// of its output.
pub fn run_command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    tag: Option<&str>,
    timeout: Duration,
    abort: &dyn Fn() -> bool,
) -> Result<(), String> {
    let reaper = reaper().ok_or("the process observer is not initialised")?;
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let command_line = argv.join(" ");
    let io_err = |e: io::Error| format!("`{command_line}`: {e}");
    let out = tempfile::tempfile().map_err(io_err)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .env_remove(RUN_TAG_VAR)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(io_err)?)
        .stderr(out.try_clone().map_err(io_err)?)
        .process_group(0);
    if let Some(tag) = tag {
        cmd.env(RUN_TAG_VAR, tag);
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting `{command_line}`: {e}"))?;
    let pid = child.id();
    let deadline = started + timeout;
    let mut exits = reaper.lock();
    let exit = loop {
        // Not removed: the observer may want the same status for its record. Entries are
        // pruned by age, and one older than the spawn belongs to an earlier process.
        if let Some(exit) = exits.get(&pid).filter(|e| e.at >= started) {
            break Some(exit.clone());
        }
        let now = Instant::now();
        if now >= deadline || abort() {
            break None;
        }
        exits = reaper
            .reaped
            .wait_timeout(exits, (deadline - now).min(Duration::from_millis(50)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    };
    drop(exits);
    let output = || {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let mut f = &out;
        let _ = f.rewind();
        let _ = f.take(4096).read_to_string(&mut text);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!("; output: {text}")
        }
    };
    match exit {
        None => {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            Err(format!(
                "`{command_line}` did not finish within {timeout:?} (or the run was interrupted) and was killed{}",
                output()
            ))
        }
        Some(e) if e.status == "exit 0" => Ok(()),
        Some(e) => Err(format!(
            "`{command_line}` ended with {}{}",
            e.status,
            output()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_commands_report_their_failures() {
        init().expect("init");
        let env = BTreeMap::from([("HELPER_SAYS".to_string(), "nope".to_string())]);
        let run = |argv: &[&str], timeout: Duration| {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            run_command(&argv, &env, Some("helper-tag"), timeout, &|| false)
        };
        assert_eq!(run(&["true"], Duration::from_secs(5)), Ok(()));
        let err = run(
            &[
                "sh",
                "-c",
                "echo $HELPER_SAYS $HANDOFF_HARNESS_RUN >&2; exit 4",
            ],
            Duration::from_secs(5),
        )
        .expect_err("exit 4");
        assert!(
            err.contains("exit 4") && err.contains("nope helper-tag"),
            "{err}"
        );
        let err = run(&["sleep", "30"], Duration::from_millis(100)).expect_err("too slow");
        assert!(err.contains("did not finish"), "{err}");
        assert!(run(&["/nonexistent/x"], Duration::from_secs(1)).is_err());
        let started = Instant::now();
        let argv = ["sleep".to_string(), "30".to_string()];
        let err =
            run_command(&argv, &env, None, Duration::from_secs(30), &|| true).expect_err("aborted");
        assert!(err.contains("interrupted"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
