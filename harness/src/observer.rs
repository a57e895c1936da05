//! The process observer: sees every process of the target tree start, exit, and hold (or let
//! go of) the target's listening sockets, and kills the whole tree at the end.
//!
//! Where exits come from: the target is started under a shim (see [`crate::target::spawn`])
//! that is a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`), so a generation orphaned by
//! its parent's exit is re-parented to the shim, which reaps it and reports its status. The
//! harness itself is deliberately *not* a subreaper: an orphan's `getppid()` names its
//! adopter, and servers that signal "their parent" racing that parent's exit would otherwise
//! signal (and with SIGKILL, end) the harness. The harness's own children (shims, trigger
//! commands) are reaped by one reaper thread ([`init`]: `waitpid(-1, WNOHANG)`), into the same
//! table of exits that observers and [`run_command`] read.
//!
//! An [`Observer`] polls `/proc` every few milliseconds for the processes of one target tree
//! (descendants of the spawned process; orphans adopted by its shim; and any process in the
//! target's process group or carrying the run's tag, which covers orphans that went to init
//! because their shim was killed, and daemons left by trigger commands), reads their
//! descriptors to find which of the target's listening sockets they hold, and so tells
//! generations apart.
//!
//! # Caveats
//! Once [`init`] ran, the reaper owns the exit status of every child of this process: code in
//! the same process must not `wait` for its own children (it would race the reaper and may get
//! `ECHILD`); run helper commands with [`run_command`], which reads the reaper's table.
//!
//! Polling sees a process only if it lives across one poll (a few milliseconds). A process that
//! forks, and whose child is orphaned, before the first poll sees either, is still recognised by
//! its process group or by the run tag in its environment; one that also cleared its
//! environment and left the group is missed. An orphan that went to init (its shim was killed)
//! has no exit status in the record, only the time it was seen gone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::model::{GenerationRecord, ProcessRecord};
use crate::target::{ConnectAddr, RUN_TAG_VAR};

/// Time between two polls of `/proc`.
const POLL_INTERVAL: Duration = Duration::from_millis(4);
/// A generation's full descriptor table is re-read at least this often, so that even one that
/// serves for a fraction of a second is sampled (in between, only the descriptors known to
/// hold a listener are checked, which stays cheap with thousands of connections).
const FULL_FD_SCAN_EVERY: Duration = Duration::from_millis(20);
/// A large descriptor table (at least [`LARGE_FD_TABLE`] descriptors) is read in full again
/// only after this many times the CPU time its last full read took (see [`scan_fds`]): at most
/// about a tenth of a core goes to one large table. Smaller tables are read as before.
const FULL_SCAN_COST_FACTOR: u32 = 10;
const LARGE_FD_TABLE: u32 = 1024;
/// Descriptor-count samples of the serving generation are taken this often (or as often as
/// its table is read in full, when that is less often).
const FD_SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The listening-socket table is re-read at most this often when unknown sockets appear. For
/// TCP a re-read is cheap (only the listeners are read, see [`tcp_listeners`]), so it happens
/// on every poll that needs it; `/proc/net/unix` lists every unix socket, so it is read less often.
const LISTEN_REFRESH_MIN_TCP: Duration = Duration::ZERO;
const LISTEN_REFRESH_MIN_UNIX: Duration = Duration::from_millis(25);
/// A socket found not listening is re-checked after this long: it may have been caught
/// between `bind` and `listen`.
const NOT_LISTEN_TTL: Duration = Duration::from_millis(250);
/// ... and at least this often regardless.
const LISTEN_REFRESH_MAX: Duration = Duration::from_millis(500);
/// How long a process whose /proc entry is gone is still checked for a status from the reaper.
/// A shim's report of an exit it reaped can lag by tens of milliseconds on a loaded machine
/// (more when the process closed thousands of connections as it exited), so this is generous;
/// a process in this state already counts as gone for every wait.
const GONE_GRACE: Duration = Duration::from_millis(1000);
/// Exit statuses nobody claimed are forgotten after this long (bounded table).
const EXIT_RETENTION: Duration = Duration::from_secs(300);
/// The cache of sockets known not to be listeners is pruned past this size.
const NOT_LISTEN_CACHE_MAX: usize = 100_000;

/// Errors of the observer.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// A thread could not be started, or the signal guard could not be installed.
    #[error("starting the observer's {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// The process-wide reaper.
// ---------------------------------------------------------------------------------------------

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
        guard::process_pending();
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

// ---------------------------------------------------------------------------------------------
// The signal guard.
// ---------------------------------------------------------------------------------------------

/// Whether an interrupt (SIGINT, SIGTERM or SIGHUP from outside the targets) arrived, when
/// interrupts were enabled with [`enable_interrupts`].
pub fn interrupted() -> bool {
    guard::INTERRUPTED.load(Ordering::SeqCst)
}

/// Makes SIGINT, SIGTERM and SIGHUP from outside the targets set [`interrupted`] instead of
/// ending the process; starts the reaper too (see [`init`]).
///
/// # Errors
/// As [`init`].
pub fn enable_interrupts() -> Result<(), ObserverError> {
    guard::INTERRUPTS.store(true, Ordering::SeqCst);
    init()
}

/// How many signals processes of a target sent to the harness (and were ignored).
pub fn signals_from_targets() -> u64 {
    guard::FROM_TARGETS.load(Ordering::SeqCst)
}

/// Keeps a target from killing the harness with a signal.
///
/// A process the harness spawned (a trigger command, or a target started without a shim)
/// has the harness as its parent, and servers of the "child kills its parent" kind signal
/// their parent; a default disposition would end the run with a wrong verdict, or leave the
/// tree orphaned. (Generations have the shim or init as parent, never the harness.) So the
/// terminating signals a server might send get a handler that only queues `(signal, sender)`;
/// the reaper thread then decides: a sender that is a process of a target is ignored; from
/// anyone else, SIGINT/SIGTERM/SIGHUP interrupt the run (when enabled), and the others get
/// their default action after all, as if the guard were not there.
///
/// # Caveats
/// SIGKILL and SIGSTOP cannot be caught: a target that sends them to the harness still ends
/// or stops it.
mod guard {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Mutex, OnceLock};

    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, raise, sigaction};

    pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    pub(super) static INTERRUPTS: AtomicBool = AtomicBool::new(false);
    pub(super) static FROM_TARGETS: AtomicU64 = AtomicU64::new(0);

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
            || super::exit_of(pid).is_some()
        {
            return true;
        }
        for _ in 0..5 {
            if super::environ_var(pid, super::RUN_TAG_VAR) {
                return true;
            }
            if super::read_stat(pid).is_none() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// /proc parsing (pure).
// ---------------------------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` the observer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    /// Start time in clock ticks since boot: tells a reused pid from the process it replaced.
    pub starttime: u64,
}

/// Parses `/proc/PID/stat`. The command name may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        // Field 22 of the whole line; the list starts at field 3.
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub port: u16,
    pub state: u8,
    /// For a listener: connections waiting in its accept queue.
    pub rx_queue: u64,
    pub inode: u64,
}

/// Parses one row of `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn parse_proc_net_tcp_line(line: &str) -> Option<TcpRow> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let local = f.get(1)?;
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let rx_queue = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
    let inode = f.get(9)?.parse().ok()?;
    Some(TcpRow {
        port,
        state,
        rx_queue,
        inode,
    })
}

mod sock_diag;

/// Every listening TCP socket: from sock_diag (see [`sock_diag`]), whose cost does not depend
/// on how many connections exist, or from `/proc/net/tcp` where netlink is not available.
fn tcp_listeners() -> Vec<TcpRow> {
    static NO_SOCK_DIAG: AtomicBool = AtomicBool::new(false);
    if !NO_SOCK_DIAG.load(Ordering::Relaxed) {
        match sock_diag::tcp_listeners() {
            Ok(rows) => return rows,
            // Not there, or not allowed: for good. Anything else: /proc this once.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EAFNOSUPPORT
                            | libc::EPROTONOSUPPORT
                            | libc::EPERM
                            | libc::EACCES
                            | libc::EINVAL
                            | libc::ENOENT
                    )
                ) =>
            {
                NO_SOCK_DIAG.store(true, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    proc_tcp_listeners()
}

/// The listening rows of `/proc/net/tcp` and `tcp6`, read only up to the end of their
/// listening section: the kernel lists listeners first and generates the file lazily, so the
/// rows behind them are not formatted. (Each read still walks the kernel's established hash
/// table to find where the listeners end, which is why [`sock_diag`] is preferred.)
fn proc_tcp_listeners() -> Vec<TcpRow> {
    let mut rows = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(file) = fs::File::open(table) else {
            continue;
        };
        for line in BufReader::new(file).lines().skip(1) {
            let Ok(line) = line else { break };
            let Some(row) = parse_proc_net_tcp_line(&line) else {
                continue;
            };
            if row.state != TCP_LISTEN {
                break;
            }
            rows.push(row);
        }
    }
    rows
}

/// `TCP_LISTEN` in `/proc/net/tcp`'s `st` column.
const TCP_LISTEN: u8 = 0x0A;
/// `__SO_ACCEPTCON` in `/proc/net/unix`'s `Flags` column: the socket is listening.
const SO_ACCEPTCON: u32 = 0x0001_0000;

/// One row of `/proc/net/unix`: `(inode, listening, path)`.
pub fn parse_proc_net_unix_line(line: &str) -> Option<(u64, bool, Option<&str>)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
    let inode = f.get(6)?.parse().ok()?;
    Some((inode, flags & SO_ACCEPTCON != 0, f.get(7).copied()))
}

/// The inode of a `socket:[N]` descriptor link.
pub fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Reads the inodes of every listening socket for `addr` (see [`tcp_listeners`] for the cost).
fn listening_inodes(addr: &ConnectAddr) -> HashSet<u64> {
    let mut found = HashSet::new();
    match addr {
        ConnectAddr::Tcp(sa) => {
            found.extend(
                tcp_listeners()
                    .into_iter()
                    .filter(|r| r.port == sa.port())
                    .map(|r| r.inode),
            );
        }
        ConnectAddr::Unix(path) => {
            let Ok(file) = fs::File::open("/proc/net/unix") else {
                return found;
            };
            let want = path.to_string_lossy();
            for line in BufReader::new(file).lines().skip(1) {
                let Ok(line) = line else { break };
                if let Some((inode, true, Some(p))) = parse_proc_net_unix_line(&line)
                    && p == want
                {
                    found.insert(inode);
                }
            }
        }
    }
    found
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn read_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut s = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ");
    if s.len() > 512 {
        let mut cut = 512;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    Some(s)
}

/// Whether `var` is set at all in the environment of `pid`.
fn environ_var(pid: u32, var: &str) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let prefix = format!("{var}=");
    raw.split(|&b| b == 0)
        .any(|kv| kv.starts_with(prefix.as_bytes()))
}

fn environ_has(pid: u32, var: &str, value: &str) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{var}={value}");
    raw.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
}

/// Socket inodes behind a process's descriptors, and how many descriptors it has.
///
/// One `readlinkat` per descriptor, relative to the open `/proc/PID/fd` directory (no path
/// walk per descriptor). The cost is still linear in the size of the table (tens of
/// milliseconds for 10,000 connections on a busy machine), which is why the observer re-reads
/// large tables less often (see [`FULL_SCAN_COST_FACTOR`]).
fn scan_fds(pid: u32) -> Option<(Vec<(i32, u64)>, u32)> {
    let path = PathBuf::from(format!("/proc/{pid}/fd"));
    let dir = FdDir::open(&path)?;
    let mut sockets = Vec::new();
    let mut count = 0u32;
    for entry in fs::read_dir(&path).ok()? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A descriptor closed since the directory was listed (a connection ending) is not
        // counted: counted, it would pass for one that is not a socket.
        if let Some(socket) = dir.link(fd) {
            count += 1;
            if let Some(inode) = socket {
                sockets.push((fd, inode));
            }
        }
    }
    Some((sockets, count))
}

/// The CPU time the calling thread has used (not wall time: a scan preempted on a busy
/// machine did not cost the observer more).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// An open `/proc/PID/fd` directory, to read descriptor links relative to it.
struct FdDir(fs::File);

impl FdDir {
    fn open(path: &Path) -> Option<FdDir> {
        fs::File::open(path).ok().map(FdDir)
    }

    /// The socket inode behind descriptor `fd`, if it is a socket.
    fn socket_inode(&self, fd: i32) -> Option<u64> {
        self.link(fd).flatten()
    }

    /// Whether descriptor `fd` is open (`Some`) and, if it is a socket, its inode.
    fn link(&self, fd: i32) -> Option<Option<u64>> {
        use std::os::fd::AsRawFd;
        // The descriptor number as a NUL-terminated name.
        let mut name = [0u8; 12];
        let digits = fd.to_string();
        name.get_mut(..digits.len())?
            .copy_from_slice(digits.as_bytes());
        // Long enough for `socket:[4294967295]`; longer links (paths) are cut, and are not
        // sockets anyway.
        let mut link = [0u8; 32];
        // SAFETY: the directory descriptor is open; `name` is NUL-terminated (at most 11
        // digits and sign in 12 zeroed bytes); `link` is writable for its length.
        let n = unsafe {
            libc::readlinkat(
                self.0.as_raw_fd(),
                name.as_ptr().cast(),
                link.as_mut_ptr().cast(),
                link.len(),
            )
        };
        let n = usize::try_from(n).ok()?;
        let text = std::str::from_utf8(link.get(..n)?).ok();
        Some(text.and_then(parse_socket_link))
    }
}

// ---------------------------------------------------------------------------------------------
// The observer of one target tree.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Proc {
    pid: u32,
    ppid: u32,
    starttime: u64,
    cmdline: String,
    first_seen: Duration,
    exited: Option<Duration>,
    status: Option<String>,
    /// Seen dead: a zombie waiting for its parent to collect the status, or gone.
    zombie: bool,
    /// When its /proc entry was first found gone.
    gone_at: Option<Duration>,
    /// Descriptors that held a listening socket at the last scan.
    listen_fds: Vec<(i32, u64)>,
    last_full_scan: Option<Instant>,
    /// The CPU time the last full scan of its descriptors took, when its table was large (at
    /// least [`LARGE_FD_TABLE`] descriptors); zero otherwise.
    full_scan_cost: Duration,
    generation: Option<usize>,
}

#[derive(Debug)]
struct Gen {
    proc_index: usize,
    listening_since: Duration,
    stopped_listening: Option<Duration>,
    listen_inodes: BTreeSet<u64>,
    fd_samples: Vec<(Duration, u32)>,
    last_sample: Option<Instant>,
}

struct Shared {
    t0: Instant,
    main: u32,
    /// The shim that spawned `main` and adopts the tree's orphans: every process it adopts
    /// belongs to the tree.
    adopter: Option<u32>,
    tag: String,
    connect: ConnectAddr,
    self_pid: u32,
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    procs: Vec<Proc>,
    /// pid -> index in `procs`, for processes not yet known to have exited.
    live: HashMap<u32, usize>,
    gens: Vec<Gen>,
    listen: HashSet<u64>,
    /// Sockets found not listening, and when.
    not_listen: HashMap<u64, Instant>,
    last_refresh: Option<Instant>,
    previous_listing: HashSet<u32>,
    /// Descendants of the harness not (yet) in the tree, re-examined on every poll: a child
    /// of the harness has the run's tag in its environment only after its `execve`, and a
    /// trigger command's daemon joins the tree only once it is orphaned to the harness.
    watch: HashSet<u32>,
    /// A process whose descriptors the next scan reads in full and samples (see
    /// [`Observer::sample_now`]).
    sample_now: Option<u32>,
}

/// Watches one target tree. Dropping it kills whatever is left of the tree.
pub struct Observer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    finished: bool,
}

impl Observer {
    /// Starts watching the tree rooted at `main` (spawned in its own process group, by this
    /// process or by the `adopter` shim, which then adopts the tree's orphans), whose
    /// processes carry `tag` in [`RUN_TAG_VAR`] and whose listening sockets are those bound to
    /// `connect`. Times are offsets from `t0`.
    ///
    /// # Errors
    /// [`init`] was not called or failed, or the polling thread could not start.
    pub fn start(
        main: u32,
        adopter: Option<u32>,
        tag: &str,
        connect: ConnectAddr,
        t0: Instant,
    ) -> Result<Observer, ObserverError> {
        init()?;
        // Before the first poll: the target may signal the harness at once.
        guard::register(main);
        let shared = Arc::new(Shared {
            t0,
            main,
            adopter,
            tag: tag.to_string(),
            connect,
            self_pid: std::process::id(),
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        shared.scan();
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("observer".into())
            .spawn(move || {
                while !for_thread.stop.load(Ordering::Relaxed) {
                    for_thread.scan();
                    std::thread::sleep(POLL_INTERVAL);
                }
            })
            .map_err(|source| ObserverError::Thread {
                what: "polling",
                source,
            })?;
        Ok(Observer {
            shared,
            thread: Some(thread),
            finished: false,
        })
    }

    /// Polls once now (the thread polls anyway; this gives a fresh view before a decision).
    pub fn scan(&self) {
        self.shared.scan();
    }

    /// Polls once now, reading the descriptor table of `pid` in full and recording a
    /// descriptor sample if it is the newest generation still listening, however recently it
    /// was last sampled (unless its table is large: those are read by their cost, see
    /// [`FULL_SCAN_COST_FACTOR`]). The harness calls this right before it signals a restart to
    /// a generation that is serving alone: a generation replaced within milliseconds may fall
    /// between two periodic samples, and then a leak of one descriptor per generation shows
    /// over more restarts than it takes.
    pub fn sample_now(&self, pid: u32) {
        self.shared.scan_sampling(Some(pid));
    }

    /// The spawned process's exit status, once it has exited.
    pub fn main_exit(&self) -> Option<String> {
        let state = self.shared.lock();
        state
            .procs
            .iter()
            .find(|p| p.pid == self.shared.main && p.exited.is_some())
            .map(|p| p.status.clone().unwrap_or_else(|| "exited".into()))
            .or_else(|| exit_of(self.shared.main).map(|e| e.status))
    }

    /// Connections waiting in the accept queues of the target's listening sockets (TCP only;
    /// `None` for a unix socket, whose queue `/proc` does not show, or when no listener is
    /// known).
    pub fn accept_queue(&self) -> Option<u64> {
        if !matches!(self.shared.connect, ConnectAddr::Tcp(_)) {
            return None;
        }
        let listen = self.shared.lock().listen.clone();
        if listen.is_empty() {
            return None;
        }
        Some(
            tcp_listeners()
                .into_iter()
                .filter(|r| listen.contains(&r.inode))
                .map(|r| r.rx_queue)
                .sum(),
        )
    }

    /// Pids of the processes of the tree that have not exited.
    pub fn live_pids(&self) -> Vec<u32> {
        let state = self.shared.lock();
        let mut pids: Vec<u32> = state
            .live
            .iter()
            .filter(|(_, i)| !state.procs[**i].zombie)
            .map(|(p, _)| *p)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// The pid of generation `n` (1-based, in order of first listening), if it is still alive.
    pub fn generation_pid(&self, n: u32) -> Option<u32> {
        let state = self.shared.lock();
        let g = state.gens.get((n as usize).checked_sub(1)?)?;
        let p = &state.procs[g.proc_index];
        p.exited.is_none().then_some(p.pid)
    }

    /// The pids of the generations that are alive, oldest first.
    pub fn live_generation_pids(&self) -> Vec<u32> {
        let state = self.shared.lock();
        state
            .gens
            .iter()
            .map(|g| &state.procs[g.proc_index])
            .filter(|p| p.exited.is_none() && !p.zombie)
            .map(|p| p.pid)
            .collect()
    }

    /// The pid of the newest generation that is alive.
    pub fn newest_generation_pid(&self) -> Option<u32> {
        let state = self.shared.lock();
        state
            .gens
            .iter()
            .rev()
            .map(|g| &state.procs[g.proc_index])
            .find(|p| p.exited.is_none() && !p.zombie)
            .map(|p| p.pid)
    }

    /// Waits until at most one generation is alive (no superseded one still draining) or
    /// `timeout` passes, or `abort` returns true; returns whether that state was reached.
    pub fn wait_settled(&self, timeout: Duration, abort: impl Fn() -> bool) -> bool {
        self.wait_until(timeout, abort, || self.live_generation_pids().len() <= 1)
    }

    /// How many generations have been seen so far, alive or not.
    pub fn generations_seen(&self) -> usize {
        self.shared.lock().gens.len()
    }

    /// Waits until more than `seen` generations have been seen or `pid` is gone, or `timeout`
    /// passes, or `abort` returns true; returns whether a successor or the exit was seen.
    pub fn wait_successor(
        &self,
        seen: usize,
        pid: u32,
        timeout: Duration,
        abort: impl Fn() -> bool,
    ) -> bool {
        self.wait_until(timeout, abort, || {
            self.generations_seen() > seen || !self.live_pids().contains(&pid)
        })
    }

    /// Waits until no process of the tree is alive (zombies count as gone) or `timeout`
    /// passes, or `abort` returns true; returns whether the tree is gone.
    pub fn wait_gone(&self, timeout: Duration, abort: impl Fn() -> bool) -> bool {
        self.wait_until(timeout, abort, || self.live_pids().is_empty())
    }

    /// Scans until `reached` holds (true), `timeout` passes or `abort` returns true (false).
    fn wait_until(
        &self,
        timeout: Duration,
        abort: impl Fn() -> bool,
        reached: impl Fn() -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.shared.scan();
            if reached() {
                return true;
            }
            if Instant::now() >= deadline || abort() {
                return false;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the whole tree: SIGTERM to the process group and to every live process of the
    /// tree, up to `grace` for them to exit, then SIGKILL, and waits (bounded) until every one
    /// is reaped. Returns the pids that were still alive when this was called.
    pub fn kill_tree(&mut self, grace: Duration) -> Vec<u32> {
        self.shared.scan();
        let initially = self.live_pids();
        if !initially.is_empty() {
            self.signal_all(Signal::SIGTERM);
            if !self.wait_gone(grace, || false) {
                self.signal_all(Signal::SIGKILL);
                // Keep killing: a process may fork between our scan and the signal.
                let deadline = Instant::now() + Duration::from_secs(5);
                while !self.wait_gone(Duration::from_millis(100), || false)
                    && Instant::now() < deadline
                {
                    self.signal_all(Signal::SIGKILL);
                }
            }
        }
        // Give the reaper a moment to collect the last statuses of our own children, so that
        // the record carries them (bounded, as long as a gone process is looked up anyway; a
        // status normally arrives within milliseconds, but a loaded machine can delay a shim's
        // report; zombies of other parents are not ours to wait for).
        let deadline = Instant::now() + GONE_GRACE;
        while Instant::now() < deadline && self.shared.lock().live.values().next().is_some() {
            self.shared.scan();
            std::thread::sleep(POLL_INTERVAL);
        }
        self.finished = true;
        initially
    }

    fn signal_all(&self, sig: Signal) {
        // The group first (catches what the poll has not seen yet), then each known process
        // (catches those that left the group).
        let _ = killpg(Pid::from_raw(self.shared.main as i32), sig);
        for pid in self.live_pids() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// What was observed: every process in order of first sight, and the generations. The
    /// generations' `ready_at` is left `None` for the runner to fill from the journal and log.
    pub fn records(&self) -> (Vec<ProcessRecord>, Vec<GenerationRecord>) {
        let state = self.shared.lock();
        let procs = state
            .procs
            .iter()
            .map(|p| ProcessRecord {
                pid: p.pid,
                ppid: p.ppid,
                cmdline: p.cmdline.clone(),
                first_seen: p.first_seen,
                exited: p.exited,
                status: p.status.clone(),
            })
            .collect();
        let gens = state
            .gens
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let p = &state.procs[g.proc_index];
                GenerationRecord {
                    generation: i as u32 + 1,
                    pid: p.pid,
                    listening_since: g.listening_since,
                    ready_at: None,
                    stopped_listening: g.stopped_listening,
                    exited: p.exited,
                    status: p.status.clone(),
                    listen_inodes: g.listen_inodes.iter().copied().collect(),
                    fd_samples: g.fd_samples.clone(),
                }
            })
            .collect();
        (procs, gens)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if !self.finished {
            self.kill_tree(Duration::from_millis(500));
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for p in &self.shared.lock().procs {
            guard::unregister(p.pid);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scan(&self) {
        self.scan_sampling(None);
    }

    /// A scan that also samples the descriptors of `sample_now` (see [`Observer::sample_now`]).
    fn scan_sampling(&self, sample_now: Option<u32>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let now_instant = Instant::now();
        let now = now_instant.duration_since(self.t0);
        state.sample_now = sample_now;
        self.scan_exits(state, now);
        self.discover(state, now);
        self.scan_listeners(state, now_instant, now);
        state.sample_now = None;
    }

    /// Marks exited processes: by the reaper's table (exact status), a zombie state, or the
    /// disappearance (or reuse) of the pid.
    fn scan_exits(&self, state: &mut State, now: Duration) {
        let pids: Vec<(u32, usize)> = state.live.iter().map(|(p, i)| (*p, *i)).collect();
        for (pid, i) in pids {
            let stat = read_stat(pid);
            let reaped =
                exit_of(pid).filter(|e| e.at.duration_since(self.t0) >= state.procs[i].first_seen);
            let p = &mut state.procs[i];
            if let Some(exit) = reaped {
                let at = exit.at.duration_since(self.t0);
                p.exited = Some(p.exited.map_or(at, |z| z.min(at)));
                p.status = Some(exit.status);
                state.live.remove(&pid);
                continue;
            }
            match stat {
                // Alive. Its ppid may have changed (re-parented to the harness when its parent
                // exited); the record keeps the parent that forked it, which says more.
                Some(s) if s.starttime == p.starttime && s.state != 'Z' && s.state != 'X' => {}
                Some(s) if s.starttime == p.starttime => {
                    // A zombie: dead, not yet collected. It stays on the watch list until
                    // it is gone: if it is (or becomes, when its parent dies) a child of the
                    // harness, the reaper reports its status on a later poll.
                    if !p.zombie {
                        p.zombie = true;
                        p.exited = Some(now);
                    }
                }
                _ => {
                    // Gone: collected by another parent, or by the reaper, which removes the
                    // /proc entry (in waitpid) a moment before it records the status; or the
                    // pid was reused. Keep looking for the reaper's record a little while.
                    if p.exited.is_none() {
                        p.exited = Some(now);
                    }
                    p.zombie = true;
                    let gone_at = *p.gone_at.get_or_insert(now);
                    if now.saturating_sub(gone_at) >= GONE_GRACE {
                        state.live.remove(&pid);
                    }
                }
            }
        }
    }

    /// Finds new processes of the tree: new pids in `/proc` whose parent is in the tree, or
    /// that were re-parented to the harness and carry the run's process group or tag.
    fn discover(&self, state: &mut State, now: Duration) {
        let Ok(dir) = fs::read_dir("/proc") else {
            return;
        };
        let listing: HashSet<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let mut candidates: Vec<(u32, Stat)> = listing
            .iter()
            .filter(|pid| {
                (!state.previous_listing.contains(pid) || state.watch.contains(pid))
                    && !state.live.contains_key(pid)
            })
            .filter_map(|&pid| Some((pid, read_stat(pid)?)))
            .filter(|(_, s)| s.state != 'Z' && s.state != 'X')
            .collect();
        state.previous_listing = listing;
        // Oldest first, so that a parent found in the same poll as its child is recorded
        // before it ("in order of first sight" then also reads as the order of birth).
        candidates.sort_by_key(|(pid, s)| (s.starttime, *pid));
        let watched = std::mem::take(&mut state.watch);
        // Parents may be among the new pids themselves: add until nothing more joins.
        loop {
            let before = candidates.len();
            let mut i = 0;
            while i < candidates.len() {
                let (pid, s) = candidates[i];
                // Orphans whose adopter (the shim) was killed go to init: the process group
                // or the run's tag (inherited from the spawned process) still names them.
                let in_tree = pid == self.main
                    || state.live.contains_key(&s.ppid)
                    || Some(s.ppid) == self.adopter
                    || s.pgid == self.main
                    || environ_has(pid, RUN_TAG_VAR, &self.tag);
                if in_tree {
                    candidates.remove(i);
                    let index = state.procs.len();
                    state.procs.push(Proc {
                        pid,
                        ppid: s.ppid,
                        starttime: s.starttime,
                        cmdline: read_cmdline(pid).unwrap_or_default(),
                        first_seen: now,
                        exited: None,
                        status: None,
                        zombie: false,
                        gone_at: None,
                        listen_fds: Vec::new(),
                        last_full_scan: None,
                        full_scan_cost: Duration::ZERO,
                        generation: None,
                    });
                    state.live.insert(pid, index);
                    guard::register(pid);
                } else {
                    i += 1;
                }
            }
            if candidates.len() == before {
                break;
            }
        }
        // What is left is not in the tree now; keep watching the harness's own descendants.
        let mut watch: HashSet<u32> = HashSet::new();
        loop {
            let before = watch.len();
            for (pid, s) in &candidates {
                if Some(*pid) != self.adopter
                    && (s.ppid == self.self_pid
                        || watch.contains(&s.ppid)
                        || watched.contains(&s.ppid))
                {
                    watch.insert(*pid);
                }
            }
            if watch.len() == before {
                break;
            }
        }
        state.watch = watch;
    }

    /// For every live process: which listening sockets of the target it holds.
    fn scan_listeners(&self, state: &mut State, now_instant: Instant, now: Duration) {
        let live: Vec<usize> = state
            .live
            .values()
            .copied()
            .filter(|&i| !state.procs[i].zombie)
            .collect();
        if state
            .last_refresh
            .is_none_or(|t| now_instant.duration_since(t) >= LISTEN_REFRESH_MAX)
        {
            self.refresh_listeners(state, now_instant);
        }
        for i in live {
            let pid = state.procs[i].pid;
            // A process exec'ing a new program changes its command line: keep it current
            // during the first second.
            let mut exec_seen = false;
            if now.saturating_sub(state.procs[i].first_seen) < Duration::from_secs(1)
                && let Some(c) = read_cmdline(pid)
                && c != state.procs[i].cmdline
            {
                exec_seen = true;
                state.procs[i].cmdline = c;
            }
            let p = &state.procs[i];
            let knows_listener = p.generation.is_some() && !p.listen_fds.is_empty();
            // A full scan reads every descriptor: a process holding thousands of connections
            // is re-read only after FULL_SCAN_COST_FACTOR times the CPU time its last full scan
            // took, so that the observer stays a small share of a core whatever the load. In
            // between, a generation's known listeners are checked on every poll (cheap), and a
            // new program (exec) is read in full at once.
            let min_gap = if knows_listener {
                FULL_FD_SCAN_EVERY
            } else {
                Duration::ZERO
            }
            .max(p.full_scan_cost.saturating_mul(FULL_SCAN_COST_FACTOR));
            let forced = state.sample_now == Some(pid) && p.full_scan_cost.is_zero();
            let due = exec_seen
                || forced
                || p.last_full_scan
                    .is_none_or(|t| now_instant.duration_since(t) >= min_gap);
            let mut held: Vec<(i32, u64)> = Vec::new();
            let mut full_count = None;
            if knows_listener && !due {
                let Some(dir) = FdDir::open(Path::new(&format!("/proc/{pid}/fd"))) else {
                    continue; // Gone since the exit scan; the next poll records it.
                };
                held = p
                    .listen_fds
                    .iter()
                    .filter(|(fd, inode)| dir.socket_inode(*fd) == Some(*inode))
                    .copied()
                    .collect();
            } else if !due {
                // Not holding a listener, and read in full a moment ago: nothing to learn.
                continue;
            }
            // Read in full when due, and at once when the known listeners are no longer where
            // they were: they may have moved to other descriptors, or the process stopped
            // listening (that moment is recorded).
            if due || held.is_empty() {
                let started = thread_cpu_time();
                let Some((sockets, count)) = scan_fds(pid) else {
                    continue; // Gone since the exit scan; the next poll records it.
                };
                state.procs[i].full_scan_cost = if count >= LARGE_FD_TABLE {
                    thread_cpu_time().saturating_sub(started)
                } else {
                    Duration::ZERO
                };
                let unknown = sockets.iter().any(|(_, inode)| {
                    !state.listen.contains(inode)
                        && state
                            .not_listen
                            .get(inode)
                            .is_none_or(|t| now_instant.duration_since(*t) >= NOT_LISTEN_TTL)
                });
                let min_gap = match self.connect {
                    ConnectAddr::Tcp(_) => LISTEN_REFRESH_MIN_TCP,
                    ConnectAddr::Unix(_) => LISTEN_REFRESH_MIN_UNIX,
                };
                if unknown
                    && state
                        .last_refresh
                        .is_none_or(|t| now_instant.duration_since(t) >= min_gap)
                {
                    self.refresh_listeners(state, now_instant);
                    if state.not_listen.len() > NOT_LISTEN_CACHE_MAX {
                        state
                            .not_listen
                            .retain(|_, t| now_instant.duration_since(*t) < NOT_LISTEN_TTL);
                    }
                    for (_, inode) in &sockets {
                        if !state.listen.contains(inode) {
                            state.not_listen.insert(*inode, now_instant);
                        }
                    }
                }
                held = sockets
                    .iter()
                    .filter(|(_, inode)| state.listen.contains(inode))
                    .copied()
                    .collect();
                state.procs[i].last_full_scan = Some(now_instant);
                // Connections come and go with the load; counted, they drown a leak of one
                // descriptor per generation in noise. So the sample is every descriptor but
                // the sockets that are not listeners (see `GenerationRecord::fd_samples`).
                let connections = (sockets.len() - held.len()) as u32;
                full_count = Some(count - connections);
            }
            state.procs[i].listen_fds = held.clone();
            self.update_generation(state, i, &held, now_instant, now, full_count);
        }
    }

    fn refresh_listeners(&self, state: &mut State, now_instant: Instant) {
        let fresh = listening_inodes(&self.connect);
        // A socket once seen listening stays known: an old generation still holding the same
        // (inherited) socket is still holding a listener, even if the table is re-read while
        // the socket is being handed over.
        state.listen.extend(fresh);
        state.last_refresh = Some(now_instant);
    }

    fn update_generation(
        &self,
        state: &mut State,
        i: usize,
        held: &[(i32, u64)],
        now_instant: Instant,
        now: Duration,
        full_count: Option<u32>,
    ) {
        match state.procs[i].generation {
            None if !held.is_empty() => {
                state.procs[i].generation = Some(state.gens.len());
                state.gens.push(Gen {
                    proc_index: i,
                    listening_since: now,
                    stopped_listening: None,
                    listen_inodes: held.iter().map(|(_, n)| *n).collect(),
                    fd_samples: Vec::new(),
                    last_sample: None,
                });
            }
            None => return,
            Some(g) => {
                let record = &mut state.gens[g];
                if held.is_empty() {
                    if record.stopped_listening.is_none() {
                        record.stopped_listening = Some(now);
                    }
                } else {
                    record.listen_inodes.extend(held.iter().map(|(_, n)| *n));
                }
            }
        }
        // Descriptor samples, for the newest generation still listening only.
        let Some(count) = full_count else { return };
        let newest_serving = state.gens.iter().rposition(|g| {
            g.stopped_listening.is_none() && state.procs[g.proc_index].exited.is_none()
        });
        if let Some(g) = state.procs[i].generation
            && newest_serving == Some(g)
        {
            let record = &mut state.gens[g];
            if state.sample_now == Some(state.procs[i].pid)
                || record
                    .last_sample
                    .is_none_or(|t| now_instant.duration_since(t) >= FD_SAMPLE_EVERY)
            {
                record.fd_samples.push((now, count));
                record.last_sample = Some(now_instant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let line =
            "4242 (a) b (c) S 100 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                ppid: 100,
                pgid: 4242,
                starttime: 987654
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_proc_net_tcp_rows() {
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 31337 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_proc_net_tcp_line(listen),
            Some(TcpRow {
                port: 8080,
                state: 0x0A,
                rx_queue: 0,
                inode: 31337
            })
        );
        let v6 = "   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 20 4 1 10 -1";
        assert_eq!(
            parse_proc_net_tcp_line(v6),
            Some(TcpRow {
                port: 8080,
                state: 0x01,
                rx_queue: 0,
                inode: 99
            })
        );
        let queued = "   0: 0100007F:1F90 00000000:0000 0A 00000080:0000000C 00:00000000 00000000     0        0 7 1";
        assert_eq!(
            parse_proc_net_tcp_line(queued).map(|r| r.rx_queue),
            Some(12)
        );
        assert_eq!(
            parse_proc_net_tcp_line("  sl  local_address rem_address   st tx_queue"),
            None
        );
    }

    #[test]
    fn parses_proc_net_unix_rows() {
        let listening = "0000000034a314eb: 00000002 00000000 00010000 0001 01 4711 /tmp/x/sock";
        assert_eq!(
            parse_proc_net_unix_line(listening),
            Some((4711, true, Some("/tmp/x/sock")))
        );
        let connected = "0000000034a314eb: 00000003 00000000 00000000 0001 03  1649";
        assert_eq!(
            parse_proc_net_unix_line(connected),
            Some((1649, false, None))
        );
    }

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    fn alive(pid: u32) -> bool {
        read_stat(pid).is_some_and(|s| s.state != 'Z')
    }

    #[test]
    // The observer's reaper collects the child's status, not a `wait` here.
    #[allow(clippy::zombie_processes)]
    fn dropping_the_observer_kills_the_whole_tree_including_orphans() {
        // The subshell exits at once, orphaning its `sleep` (to init: there is no shim here);
        // it stays in the target's process group, so it must still be counted and killed.
        let child = Command::new("sh")
            .args(["-c", "(sleep 30 &); sleep 31 & sleep 32"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let main = child.id();
        let t0 = Instant::now();
        let observer = Observer::start(
            main,
            None,
            "test-tag-drop",
            ConnectAddr::Tcp("127.0.0.1:9".parse().expect("addr")),
            t0,
        )
        .expect("observer");
        // Wait until the shape is settled: `sh` and three `sleep`s alive, the subshell gone
        // (the command lines are read afresh: one read at first sight may fall between a fork
        // and its exec).
        let sleeps = |pids: &[u32]| {
            pids.iter()
                .filter(|p| read_cmdline(**p).is_some_and(|c| c.starts_with("sleep")))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pids = Vec::new();
        while Instant::now() < deadline {
            observer.scan();
            pids = observer.live_pids();
            if pids.len() == 4 && sleeps(&pids) == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pids.len(), 4, "sh and three sleeps: {pids:?}");
        assert_eq!(sleeps(&pids), 3, "three sleeps: {pids:?}");
        let (procs, gens) = observer.records();
        assert!(gens.is_empty(), "nothing listens on port 9: {gens:?}");
        // The short-lived subshell may have been seen too.
        assert!((4..=5).contains(&procs.len()), "{procs:?}");
        drop(observer);
        for pid in pids {
            assert!(!alive(pid), "pid {pid} survived the observer");
        }
    }

    #[test]
    // The observer's reaper collects the child's status, not a `wait` here.
    #[allow(clippy::zombie_processes)]
    fn kill_tree_reports_exits_with_their_statuses() {
        let child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let mut observer = Observer::start(
            pid,
            None,
            "test-tag-kill",
            ConnectAddr::Tcp("127.0.0.1:9".parse().expect("addr")),
            Instant::now(),
        )
        .expect("observer");
        assert_eq!(observer.live_pids(), vec![pid]);
        assert_eq!(observer.kill_tree(Duration::from_secs(1)), vec![pid]);
        let (procs, _) = observer.records();
        assert_eq!(procs.len(), 1);
        assert_eq!(procs[0].status.as_deref(), Some("signal 15 (SIGTERM)"));
        assert!(procs[0].exited.is_some());
        assert_eq!(observer.main_exit().as_deref(), Some("signal 15 (SIGTERM)"));
    }

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

    #[test]
    fn finds_its_own_listener_in_proc_net_tcp() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let inodes = listening_inodes(&ConnectAddr::Tcp(addr));
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        let (sockets, _) = scan_fds(std::process::id()).expect("own fds");
        assert!(sockets.iter().any(|(_, i)| inodes.contains(i)));
    }

    #[test]
    fn finds_its_own_listener_in_proc_net_unix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let inodes = listening_inodes(&ConnectAddr::Unix(path));
        assert_eq!(inodes.len(), 1, "{inodes:?}");
    }
}
