//! Keeps a target from killing the harness with a signal.
//!
//! A process the harness spawned (a trigger command, or a target started without a shim)
//! has the harness as its parent, and servers of the "child kills its parent" kind signal
//! their parent; a default disposition would end the run with a wrong verdict, or leave the
//! tree orphaned. (Generations have the shim or init as parent, never the harness.) So the
//! terminating signals a server might send are caught with their sender
//! (signal-hook's `SignalsInfo<WithOrigin>`), and one thread decides on each: a sender that is
//! a process of a target is ignored; from anyone else, SIGINT/SIGTERM/SIGHUP interrupt the run
//! (when enabled), and the others get their default action after all, as if the guard were
//! not there.
//!
//! # Caveats
//! SIGKILL and SIGSTOP cannot be caught: a target that sends them to the harness still ends
//! or stops it.
//!
//! Deliveries coalesce, as the kernel's do: signal-hook keeps a few deliveries of each signal
//! (with their senders) until the deciding thread takes them, and drops the ones beyond that,
//! as the kernel drops a standard signal that is already pending. The handlers are
//! process-wide and never reset.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::emulate_default_handler;

use super::ObserverError;
use super::procfs::{environ_var, read_stat};
use super::reaper::{exit_of, init};
use crate::target::RUN_TAG_VAR;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INTERRUPTS: AtomicBool = AtomicBool::new(false);
static FROM_TARGETS: AtomicU64 = AtomicU64::new(0);

/// Whether an interrupt (SIGINT, SIGTERM or SIGHUP from outside the targets) arrived, when
/// interrupts were enabled with [`enable_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Makes SIGINT, SIGTERM and SIGHUP from outside the targets set [`interrupted`] instead of
/// ending the process; starts the reaper too (see [`init`]).
///
/// # Errors
/// As [`init`].
pub fn enable_interrupts() -> Result<(), ObserverError> {
    INTERRUPTS.store(true, Ordering::SeqCst);
    init()
}

/// How many signals processes of a target sent to the harness (and were ignored).
pub fn signals_from_targets() -> u64 {
    FROM_TARGETS.load(Ordering::SeqCst)
}

const GUARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// Pids of target processes, from every observer of this process.
fn registry() -> &'static Mutex<HashSet<u32>> {
    static REGISTRY: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashSet::new()))
}

pub(super) fn register(pid: u32) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(pid);
}

pub(super) fn unregister(pid: u32) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pid);
}

/// Installs the handlers and starts the thread that decides on each caught signal.
///
/// # Errors
/// A handler could not be registered, or the thread could not start.
pub(super) fn install() -> io::Result<()> {
    let mut signals = SignalsInfo::<WithOrigin>::new(GUARDED)?;
    std::thread::Builder::new()
        .name("signal-guard".into())
        .spawn(move || {
            for caught in signals.forever() {
                // The sender is known for signals sent with kill(2) and the like.
                let sender = caught
                    .process
                    .and_then(|p| u32::try_from(p.pid).ok())
                    .unwrap_or(0);
                decide(caught.signal, sender);
            }
        })?;
    Ok(())
}

fn decide(sig: i32, sender: u32) {
    if sender != 0 && is_target(sender) {
        FROM_TARGETS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let interrupt = matches!(sig, SIGINT | SIGTERM | SIGHUP);
    if interrupt && INTERRUPTS.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
        return;
    }
    // Not ours to absorb: the default action, as if the guard were not installed.
    let _ = emulate_default_handler(sig);
}

/// A process of a target: seen by an observer, a child the reaper collected (every child
/// of the harness is a target or a trigger command), or tagged with a run's tag. The
/// environment is read a few times: it reads as empty while the process is in `execve`.
fn is_target(pid: u32) -> bool {
    if registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&pid)
        || exit_of(pid).is_some()
    {
        return true;
    }
    for _ in 0..5 {
        if environ_var(pid, RUN_TAG_VAR) {
            return true;
        }
        if read_stat(pid).is_none() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}
