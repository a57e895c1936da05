//! Keeps a target from killing the harness with a signal.
//!
//! A process the harness spawned (a trigger command, or a target started without a shim)
//! has the harness as its parent, and servers of the "child kills its parent" kind signal
//! their parent; a default disposition would end the run with a wrong verdict, or leave the
//! tree orphaned. (Generations have the shim or init as parent, never the harness.) So the
//! terminating signals a server might send get a handler that only queues `(signal, sender)`;
//! the reaper thread then decides: a sender that is a process of a target is ignored; from
//! anyone else, SIGINT/SIGTERM/SIGHUP interrupt the run (when enabled), and the others get
//! their default action after all, as if the guard were not there.
//!
//! # Caveats
//! SIGKILL and SIGSTOP cannot be caught: a target that sends them to the harness still ends

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, raise, sigaction};

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

const GUARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

const SLOTS: usize = 64;
/// A filled slot: bit 63 set, the signal in bits 32..40, the sender's pid below.
const FILLED: u64 = 1 << 63;
static QUEUE: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static WRITE: AtomicUsize = AtomicUsize::new(0);
static READ: Mutex<usize> = Mutex::new(0);

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

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: atomics only.
    let sender = if info.is_null() {
        0
    } else {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; si_pid is
        // meaningful for signals sent with kill(2) and 0 otherwise.
        unsafe { (*info).si_pid() }
    };
    let slot = WRITE.fetch_add(1, Ordering::SeqCst) % SLOTS;
    let entry = FILLED | ((sig as u64 & 0xff) << 32) | (sender as u32 as u64);
    QUEUE[slot].store(entry, Ordering::SeqCst);
}

pub(super) fn install() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::SigAction(on_signal),
        SaFlags::SA_RESTART | SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    for sig in GUARDED {
        // SAFETY: the handler only touches atomics, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Decides on the queued signals (called by the reaper thread every millisecond or so).
pub(super) fn process_pending() {
    let mut read = READ.lock().unwrap_or_else(|p| p.into_inner());
    while *read < WRITE.load(Ordering::SeqCst) {
        let entry = QUEUE[*read % SLOTS].swap(0, Ordering::SeqCst);
        if entry & FILLED == 0 {
            // The handler has claimed the slot but not stored into it yet.
            return;
        }
        *read += 1;
        let sender = (entry & 0xffff_ffff) as u32;
        let Ok(sig) = Signal::try_from(((entry >> 32) & 0xff) as i32) else {
            continue;
        };
        decide(sig, sender);
    }
}

fn decide(sig: Signal, sender: u32) {
    if sender != 0 && is_target(sender) {
        FROM_TARGETS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let interrupt = matches!(sig, Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP);
    if interrupt && INTERRUPTS.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
        return;
    }
    // Not ours to absorb: the default action, as if the guard were not installed.
    // SAFETY: restoring the default disposition replaces only our own handler.
    let _ = unsafe {
        sigaction(
            sig,
            &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
        )
    };
    let _ = raise(sig);
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
