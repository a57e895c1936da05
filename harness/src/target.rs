//! The target adapter: turns a [`TargetSpec`] into a running process.
//!
//! It substitutes the placeholders (`{port}`, `{dir}`, `{bin}`), spawns the command in its own
//! process group with stdout and stderr piped to reader threads, and keeps what those threads
//! see: a bounded tail of the output (for setup errors), the time a readiness log line appeared,
//! and the `ready pid=<p> gen=<n>` lines the reference servers print.
//!
//! The target's exit status is *not* collected here: the process observer reaps every process
//! of the run (see [`crate::observer`]), so nothing in this module calls `wait`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::model::{Ready, TargetSpec, Trigger};

/// How many lines of the target's output are kept for error messages.
pub const TAIL_LINES: usize = 20;

/// Longest output line kept (longer ones are cut, so a target printing without newlines cannot
/// grow the harness's memory).
const MAX_LINE: usize = 4096;

/// The environment variable that marks every process of one run, so that a process orphaned
/// before the observer saw it can still be recognised as part of the target.
pub const RUN_TAG_VAR: &str = "HANDOFF_HARNESS_RUN";

/// Errors of the target adapter.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No free loopback port could be found.
    #[error("picking a free port on 127.0.0.1 for `{{port}}`: {0}")]
    Port(#[source] io::Error),
    /// `target.connect` is not an address the load can use.
    #[error(
        "`target.connect` is `{0}` after substitution; expected `127.0.0.1:PORT`, `[::1]:PORT` or `unix:/path`"
    )]
    Connect(String),
    /// The command could not be started.
    #[error("starting the target `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// The command line is empty.
    #[error("`target.command` is empty; it must name the server executable")]
    EmptyCommand,
}

/// The values substituted into a scenario's strings.
#[derive(Clone, Debug)]
pub struct Placeholders {
    /// `{port}`: a free loopback port the harness picked.
    pub port: u16,
    /// `{dir}`: the run's private temporary directory.
    pub dir: PathBuf,
    /// `{bin}`: the directory of the harness executable, where our servers are built.
    pub bin: PathBuf,
}

impl Placeholders {
    /// Replaces every `{port}`, `{dir}` and `{bin}` in `s`.
    pub fn substitute(&self, s: &str) -> String {
        s.replace("{port}", &self.port.to_string())
            .replace("{dir}", &self.dir.to_string_lossy())
            .replace("{bin}", &self.bin.to_string_lossy())
    }

    fn substitute_all(&self, v: &[String]) -> Vec<String> {
        v.iter().map(|s| self.substitute(s)).collect()
    }
}

/// Picks a loopback port that is free right now by binding `127.0.0.1:0` (the kernel chooses),
/// then releasing it for the target.
///
/// # Caveats
/// Another process may take the port between this call and the target's bind; the kernel hands
/// out ephemeral ports round-robin, so that is unlikely within one run's start-up.
pub fn pick_free_port() -> Result<u16, TargetError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(TargetError::Port)?;
    Ok(listener.local_addr().map_err(TargetError::Port)?.port())
}

/// Where the load connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ConnectAddr {
    /// Parses `127.0.0.1:PORT`, `[::1]:PORT` or `unix:/path`. Only loopback addresses are
    /// accepted: the harness never drives load at another machine.
    pub fn parse(s: &str) -> Result<ConnectAddr, TargetError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(TargetError::Connect(s.to_string()));
            }
            return Ok(ConnectAddr::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = s.parse().map_err(|_| TargetError::Connect(s.to_string()))?;
        if !addr.ip().is_loopback() || addr.port() == 0 {
            return Err(TargetError::Connect(s.to_string()));
        }
        Ok(ConnectAddr::Tcp(addr))
    }

    /// The TCP port, if this is a TCP address.
    pub fn port(&self) -> Option<u16> {
        match self {
            ConnectAddr::Tcp(a) => Some(a.port()),
            ConnectAddr::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for ConnectAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectAddr::Tcp(a) => write!(f, "{a}"),
            ConnectAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A trigger with its placeholders substituted.
#[derive(Clone, Debug)]
pub enum ResolvedTrigger {
    Signal {
        signal: String,
        to: crate::model::SignalTo,
    },
    Command {
        argv: Vec<String>,
    },
}

/// A [`TargetSpec`] with every placeholder substituted.
#[derive(Clone, Debug)]
pub struct ResolvedTarget {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub connect: ConnectAddr,
    pub ready: Ready,
    pub pid_file: Option<PathBuf>,
    pub fail_next_file: Option<PathBuf>,
    pub restart: Option<ResolvedTrigger>,
    pub stop: ResolvedTrigger,
}

impl ResolvedTarget {
    /// Substitutes `ph` into every string of `spec` that may carry a placeholder.
    pub fn resolve(spec: &TargetSpec, ph: &Placeholders) -> Result<ResolvedTarget, TargetError> {
        if spec.command.is_empty() {
            return Err(TargetError::EmptyCommand);
        }
        let trigger = |t: &Trigger| match t {
            Trigger::Signal { signal, to } => ResolvedTrigger::Signal {
                signal: signal.clone(),
                to: *to,
            },
            Trigger::Command { argv } => ResolvedTrigger::Command {
                argv: ph.substitute_all(argv),
            },
        };
        let ready = match &spec.ready {
            Ready::LogLine { contains } => Ready::LogLine {
                contains: ph.substitute(contains),
            },
            other => other.clone(),
        };
        Ok(ResolvedTarget {
            command: ph.substitute_all(&spec.command),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), ph.substitute(v)))
                .collect(),
            connect: ConnectAddr::parse(&ph.substitute(&spec.connect))?,
            ready,
            pid_file: spec.pid_file.as_deref().map(|p| ph.substitute(p).into()),
            fail_next_file: spec
                .fail_next_file
                .as_deref()
                .map(|p| ph.substitute(p).into()),
            restart: spec.restart.as_ref().map(trigger),
            stop: trigger(&spec.stop),
        })
    }

    /// The command line as one string, for messages.
    pub fn command_line(&self) -> String {
        self.command.join(" ")
    }
}

/// Parses a signal name as scenario files write it: `SIGHUP`, `HUP` or `hup`, or a number.
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("`{name}` is not a signal number"));
    }
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("`{name}` is not a signal name (expected e.g. SIGHUP, SIGTERM)"))
}

/// Parses a `ready pid=<p> gen=<n> ...` line printed by the reference servers.
pub fn parse_ready_line(line: &str) -> Option<(u32, u32)> {
    let rest = line.trim_start().strip_prefix("ready ")?;
    let mut pid = None;
    let mut generation = None;
    for word in rest.split_whitespace() {
        if let Some(v) = word.strip_prefix("pid=") {
            pid = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("gen=") {
            generation = v.parse().ok();
        }
    }
    Some((pid?, generation?))
}

/// Reads a PID file: one decimal pid, surrounding whitespace allowed.
pub fn read_pid_file(path: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading PID file `{}`: {e}", path.display()))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            format!(
                "PID file `{}` holds `{}`, expected one positive decimal pid",
                path.display(),
                text.trim()
            )
        })
}

/// What the output reader threads have seen so far.
#[derive(Debug, Default)]
pub struct OutputState {
    /// The last [`TAIL_LINES`] lines of stdout and stderr, interleaved, prefixed by stream.
    pub tail: VecDeque<String>,
    /// When a line containing the `ready = log-line` text first appeared.
    pub log_ready_at: Option<Duration>,
    /// `(pid, generation, at)` for each `ready pid=.. gen=..` line.
    pub ready_lines: Vec<(u32, u32, Duration)>,
}

/// The shared view of the target's output.
#[derive(Clone, Debug)]
pub struct Output {
    state: Arc<Mutex<OutputState>>,
}

impl Output {
    /// Locks the state; a reader thread that panicked cannot leave it inconsistent (every
    /// update is a single push or assignment), so a poisoned lock is simply taken over.
    pub fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tail as one indented block, for error messages.
    pub fn tail_text(&self) -> String {
        let state = self.lock();
        if state.tail.is_empty() {
            return "    (no output)".to_string();
        }
        state
            .tail
            .iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A spawned target.
#[derive(Debug)]
pub struct SpawnedTarget {
    /// The pid of the process the harness spawned (also its process group id).
    pub pid: u32,
    /// The shim that started it and adopts its orphans (see [`spawn`]).
    pub adopter: u32,
    pub output: Output,
}

/// Spawns the resolved target under a shim, in its own process group, with `tag` in its
/// environment under [`RUN_TAG_VAR`], stdin from /dev/null, and stdout/stderr read by two
/// detached threads.
///
/// # Why a shim
/// The process that adopts orphans (the subreaper) is what an orphaned generation's
/// `getppid()` names, and servers of the "child kills its parent" kind signal that pid, racing
/// their parent's exit. If the harness were the subreaper, such a server could kill the harness
/// (SIGKILL cannot be caught) and leave the tree orphaned. So the harness forks a shim that
/// becomes the subreaper, ignores every signal it can, starts the target, and reports each
/// exit it reaps (pid, status, time) to the harness over a pipe, which feeds the observer's
/// exit table. If the shim is SIGKILLed all the same, its orphans go to init, which ignores
/// such signals; the observer still finds them by process group and tag, and kills them at the
/// end (their exit statuses are then unknown).
///
/// `verbose` echoes every output line to the harness's stderr.
///
/// # Caveats
/// The parent-death signal is tied to the thread that forked the shim: call this from a
/// thread that outlives the run (`run_scenario` does, as it is synchronous).
pub fn spawn(
    target: &ResolvedTarget,
    tag: &str,
    t0: Instant,
    verbose: bool,
) -> Result<SpawnedTarget, TargetError> {
    let spawn_err = |source: io::Error| TargetError::Spawn {
        command: target.command_line(),
        source,
    };
    let (program, _) = target
        .command
        .split_first()
        .ok_or(TargetError::EmptyCommand)?;
    let mut env: BTreeMap<std::ffi::OsString, std::ffi::OsString> = std::env::vars_os().collect();
    for (k, v) in &target.env {
        env.insert(k.into(), v.into());
    }
    env.insert(RUN_TAG_VAR.into(), tag.into());
    let path = env.get(std::ffi::OsStr::new("PATH")).cloned();
    let exe = find_program(program, path.as_deref()).map_err(spawn_err)?;
    let launched = launch::launch(&exe, &target.command, &env).map_err(spawn_err)?;

    let output = Output {
        state: Arc::new(Mutex::new(OutputState::default())),
    };
    let log_ready = match &target.ready {
        Ready::LogLine { contains } => Some(contains.clone()),
        _ => None,
    };
    start_reader(
        std::fs::File::from(launched.stdout),
        "stdout",
        output.clone(),
        log_ready.clone(),
        t0,
        verbose,
    );
    start_reader(
        std::fs::File::from(launched.stderr),
        "stderr",
        output.clone(),
        log_ready,
        t0,
        verbose,
    );
    let status = std::fs::File::from(launched.status);
    let forwarded = std::thread::Builder::new()
        .name("shim-exits".into())
        .spawn(move || launch::forward_exits(status));
    if let Err(e) = forwarded {
        // Without the forwarder the statuses are lost, but the observer still sees exits
        // through /proc; say so rather than fail the run.
        output
            .lock()
            .tail
            .push_back(format!("(harness could not read exit statuses: {e})"));
    }
    Ok(SpawnedTarget {
        pid: launched.main,
        adopter: launched.shim,
        output,
    })
}

/// Resolves `program` the way `execvp` would: as given if it names a path, else the first
/// executable file of that name in `path` (the target's `PATH`).
fn find_program(program: &str, path: Option<&std::ffi::OsStr>) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let dirs = path.map(std::env::split_paths).into_iter().flatten();
    for dir in dirs {
        let candidate = dir.join(program);
        if std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("`{program}` is not an executable file in any directory of PATH"),
    ))
}

/// The shim: everything between `fork` and `execve` lives here, in async-signal-safe libc
/// calls only (the harness is multi-threaded, so the forked child may not allocate or lock).
mod launch {
    use std::collections::BTreeMap;
    use std::ffi::{CString, OsString};
    use std::io::{self, Read};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use nix::fcntl::OFlag;
    use nix::unistd::pipe2;

    /// A record from the shim: kind, pid, raw wait status, CLOCK_MONOTONIC nanoseconds.
    const RECORD: usize = 24;
    const KIND_STARTED: u32 = 1;
    const KIND_EXITED: u32 = 2;

    pub(super) struct Launched {
        pub shim: u32,
        pub main: u32,
        pub stdout: OwnedFd,
        pub stderr: OwnedFd,
        pub status: OwnedFd,
    }

    fn cstring(bytes: &[u8]) -> io::Result<CString> {
        CString::new(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the command or environment",
            )
        })
    }

    fn errno_err(what: &str) -> io::Error {
        let e = io::Error::last_os_error();
        io::Error::new(e.kind(), format!("{what}: {e}"))
    }

    /// Forks the shim, which forks and execs the target. Returns once the target's `execve`
    /// succeeded (or with its error).
    pub(super) fn launch(
        exe: &Path,
        argv: &[String],
        env: &BTreeMap<OsString, OsString>,
    ) -> io::Result<Launched> {
        // Everything the children need is prepared here, before the fork.
        let path = cstring(exe.as_os_str().as_bytes())?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        let devnull = c"/dev/null";

        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (exec_r, exec_w) = pipe2(OFlag::O_CLOEXEC)?;
        // The target waits for EOF on this before its execve, so that the shim has reported
        // its pid before the target can do anything (such as kill the shim).
        let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC)?;
        let fds = ChildFds {
            out_w: out_w.as_raw_fd(),
            err_w: err_w.as_raw_fd(),
            status_w: status_w.as_raw_fd(),
            exec_w: exec_w.as_raw_fd(),
            go_r: go_r.as_raw_fd(),
            go_w: go_w.as_raw_fd(),
            reads: [
                out_r.as_raw_fd(),
                err_r.as_raw_fd(),
                status_r.as_raw_fd(),
                exec_r.as_raw_fd(),
            ],
        };

        // SAFETY: getpid and SIGRTMAX (a libc constant lookup) have no preconditions.
        let (harness, gone_signal) = unsafe { (libc::getpid(), libc::SIGRTMAX()) };
        // SAFETY: the child runs only `shim`, which makes async-signal-safe calls on memory
        // prepared above (no allocation, no locks), and never returns.
        let shim = unsafe { libc::fork() };
        if shim < 0 {
            return Err(errno_err("fork"));
        }
        if shim == 0 {
            // SAFETY: in the forked child; see `shim`.
            unsafe {
                self::shim(
                    &fds,
                    harness,
                    gone_signal,
                    path.as_ptr(),
                    argv_ptrs.as_ptr(),
                    envp_ptrs.as_ptr(),
                    devnull.as_ptr(),
                )
            }
        }
        drop((out_w, err_w, status_w, exec_w, go_r, go_w));

        // The exec pipe closes on a successful execve; an errno arrives if it failed.
        let mut exec_r = std::fs::File::from(exec_r);
        let mut errno = Vec::new();
        exec_r.read_to_end(&mut errno)?;
        if let Ok(bytes) = <[u8; 4]>::try_from(errno.as_slice()) {
            return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(bytes)));
        }
        let mut status = std::fs::File::from(status_r);
        let mut first = [0u8; RECORD];
        status
            .read_exact(&mut first)
            .map_err(|e| io::Error::new(e.kind(), format!("the shim reported no start: {e}")))?;
        let (kind, pid, _, _) = decode(&first);
        if kind != KIND_STARTED {
            return Err(io::Error::other("the shim's first report is not the start"));
        }
        Ok(Launched {
            shim: shim as u32,
            main: pid as u32,
            stdout: out_r,
            stderr: err_r,
            status: status.into(),
        })
    }

    struct ChildFds {
        out_w: libc::c_int,
        err_w: libc::c_int,
        status_w: libc::c_int,
        exec_w: libc::c_int,
        go_r: libc::c_int,
        go_w: libc::c_int,
        reads: [libc::c_int; 4],
    }

    fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill; clock_gettime is async-signal-safe.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }

    fn encode(kind: u32, pid: i32, status: i32, ns: u64) -> [u8; RECORD] {
        let mut r = [0u8; RECORD];
        r[0..4].copy_from_slice(&kind.to_ne_bytes());
        r[4..8].copy_from_slice(&pid.to_ne_bytes());
        r[8..12].copy_from_slice(&status.to_ne_bytes());
        r[16..24].copy_from_slice(&ns.to_ne_bytes());
        r
    }

    fn decode(r: &[u8; RECORD]) -> (u32, i32, i32, u64) {
        let word = |a: usize| [r[a], r[a + 1], r[a + 2], r[a + 3]];
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&r[16..24]);
        (
            u32::from_ne_bytes(word(0)),
            i32::from_ne_bytes(word(4)),
            i32::from_ne_bytes(word(8)),
            u64::from_ne_bytes(ns),
        )
    }

    /// Writes all of `buf` to `fd`, retrying on EINTR (async-signal-safe).
    ///
    /// # Safety
    /// `fd` must be an open descriptor this code owns (writing to another's would corrupt it).
    unsafe fn write_all(fd: libc::c_int, buf: &[u8]) {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: the pointer and length describe the rest of `buf`.
            let n = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
            if n > 0 {
                done += n as usize;
            } else if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                return;
            }
        }
    }

    /// Sets every catchable signal's disposition to `handler` (SIG_IGN or SIG_DFL), except
    /// SIGCHLD, whose default the shim needs to be able to wait for its children.
    ///
    /// # Safety
    /// Changes process-wide signal dispositions: only in the forked shim or target, where no
    /// other code relies on them.
    unsafe fn set_all_signals(handler: libc::sighandler_t) {
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == libc::SIGCHLD {
                continue;
            }
            // SAFETY: a zeroed sigaction with a plain handler is valid; errors (signals the C
            // library reserves) are ignored.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = handler;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }

    /// Closes every descriptor above the standard streams except `keep` (async-signal-safe:
    /// `close_range`, or `close` in a loop on kernels older than 5.9).
    ///
    /// # Safety
    /// Only in a forked child that owns no descriptor it still needs besides `keep` and 0-2.
    unsafe fn close_all_but(keep: &[libc::c_int; 6]) {
        let mut keep = *keep;
        keep.sort_unstable();
        let mut from: libc::c_int = 3;
        // The gaps between the kept descriptors, then everything above the last one.
        for next in keep.iter().copied().chain([libc::c_int::MAX]) {
            if next > from {
                let last = if next == libc::c_int::MAX {
                    libc::c_uint::MAX
                } else {
                    (next - 1) as libc::c_uint
                };
                // SAFETY: close_range only closes descriptors; see the function's contract.
                let rc = unsafe {
                    libc::syscall(libc::SYS_close_range, from as libc::c_uint, last, 0u32)
                };
                if rc != 0 {
                    // SAFETY: as above; getrlimit writes only into `lim`.
                    unsafe {
                        let mut lim: libc::rlimit = std::mem::zeroed();
                        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                            lim.rlim_cur.min(1 << 20) as libc::c_int
                        } else {
                            1024
                        };
                        for fd in from..next.min(top) {
                            libc::close(fd);
                        }
                    }
                }
            }
            from = from.max(next.saturating_add(1));
        }
    }

    /// The target's process group, for [`on_harness_gone`] (in the shim only).
    static TARGET_GROUP: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

    /// The shim's parent-death signal handler: the harness is gone, so nobody will stop the
    /// target; kill its process group (async-signal-safe: an atomic load and `kill`).
    extern "C" fn on_harness_gone(_: libc::c_int) {
        let group = TARGET_GROUP.load(std::sync::atomic::Ordering::SeqCst);
        if group > 0 {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }

    /// The shim's whole life, in the forked child.
    ///
    /// # Safety
    /// Only in the child of `fork`, with every pointer valid (they point into the parent's
    /// memory, which the child has a copy of).
    unsafe fn shim(
        fds: &ChildFds,
        harness: libc::pid_t,
        gone_signal: libc::c_int,
        path: *const libc::c_char,
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
        devnull: *const libc::c_char,
    ) -> ! {
        // SAFETY: for the whole body: async-signal-safe calls on valid fds and pointers.
        unsafe {
            for fd in fds.reads {
                libc::close(fd);
            }
            // A fork copies every descriptor of the harness, and the shim never execs, so
            // without this it would hold, for the whole run, whatever the harness had open at
            // that moment: in a process running several scenarios at once (the test suite),
            // another run's client connections, whose close would then never reach their
            // server (a draining generation would wait for them until its deadline).
            close_all_but(&[
                fds.out_w,
                fds.err_w,
                fds.status_w,
                fds.exec_w,
                fds.go_r,
                fds.go_w,
            ]);
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            // Its command line is the harness's (a fork without exec); the name tells it apart
            // in `ps -o comm` and in /proc/PID/stat.
            libc::prctl(libc::PR_SET_NAME, c"handoff-shim".as_ptr(), 0, 0, 0);
            set_all_signals(libc::SIG_IGN);
            // If the harness dies (SIGKILL, a crash, a CI timeout) the tree must not outlive
            // it: the kernel then sends `gone_signal`, whose handler kills the target's group.
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_harness_gone as *const () as libc::sighandler_t;
            libc::sigaction(gone_signal, &sa, std::ptr::null_mut());
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                gone_signal as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != harness {
                // It died before the prctl took effect.
                libc::_exit(1);
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            let main = libc::fork();
            if main == 0 {
                // The target: default dispositions, its own process group, the pipes as its
                // standard streams, then the program.
                set_all_signals(libc::SIG_DFL);
                libc::setpgid(0, 0);
                libc::close(fds.go_w);
                let mut byte = 0u8;
                while libc::read(fds.go_r, (&mut byte as *mut u8).cast(), 1) < 0
                    && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                let null = libc::open(devnull, libc::O_RDONLY);
                if null >= 0 {
                    libc::dup2(null, 0);
                }
                libc::dup2(fds.out_w, 1);
                libc::dup2(fds.err_w, 2);
                libc::execve(path, argv, envp);
                let errno = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::ENOEXEC);
                write_all(fds.exec_w, &errno.to_ne_bytes());
                libc::_exit(127);
            }
            if main < 0 {
                let errno = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EAGAIN);
                write_all(fds.exec_w, &errno.to_ne_bytes());
                libc::_exit(127);
            }
            // Also set in the parent, so that the harness never sees the target in the
            // shim's group, whichever of the two runs first.
            libc::setpgid(main, main);
            TARGET_GROUP.store(main, std::sync::atomic::Ordering::SeqCst);
            libc::close(fds.out_w);
            libc::close(fds.err_w);
            libc::close(fds.exec_w);
            write_all(fds.status_w, &encode(KIND_STARTED, main, 0, monotonic_ns()));
            libc::close(fds.go_r);
            libc::close(fds.go_w);
            loop {
                let mut status: libc::c_int = 0;
                let pid = libc::waitpid(-1, &mut status, libc::__WALL);
                if pid > 0 {
                    write_all(
                        fds.status_w,
                        &encode(KIND_EXITED, pid, status, monotonic_ns()),
                    );
                } else if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    // ECHILD: the tree is gone; nothing can be orphaned to the shim any more.
                    libc::_exit(0);
                }
            }
        }
    }

    /// Reads the shim's exit reports until it ends, and hands them to the observer.
    pub(super) fn forward_exits(mut status: std::fs::File) {
        let mut record = [0u8; RECORD];
        while status.read_exact(&mut record).is_ok() {
            let (kind, pid, raw, ns) = decode(&record);
            if kind != KIND_EXITED {
                continue;
            }
            let ago = Duration::from_nanos(monotonic_ns().saturating_sub(ns));
            let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            if let Some(text) = crate::observer::status_text(raw) {
                crate::observer::record_exit(pid as u32, at, text);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn records_round_trip() {
            let r = encode(KIND_EXITED, 4242, 9, 123_456_789_012);
            assert_eq!(decode(&r), (KIND_EXITED, 4242, 9, 123_456_789_012));
        }
    }
}

fn start_reader(
    stream: impl Read + Send + 'static,
    name: &'static str,
    output: Output,
    log_ready: Option<String>,
    t0: Instant,
    verbose: bool,
) {
    let for_thread = output.clone();
    // Detached on purpose: the pipe reaches EOF only when every process holding it is gone,
    // and a process that escaped the tree must not be able to hang the harness in a join.
    let spawned = std::thread::Builder::new()
        .name(format!("target-{name}"))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match read_bounded_line(&mut reader, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = t0.elapsed();
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if verbose {
                    eprintln!("  target {name}| {line}");
                }
                let mut state = for_thread.lock();
                if state.log_ready_at.is_none()
                    && log_ready.as_deref().is_some_and(|t| line.contains(t))
                {
                    state.log_ready_at = Some(at);
                }
                if let Some((pid, generation)) = parse_ready_line(line) {
                    state.ready_lines.push((pid, generation, at));
                }
                if state.tail.len() == TAIL_LINES {
                    state.tail.pop_front();
                }
                state.tail.push_back(format!("{name}: {line}"));
            }
        });
    if let Err(e) = spawned {
        output
            .lock()
            .tail
            .push_back(format!("(harness could not read {name}: {e})"));
    }
}

/// Reads one line into `buf`, keeping at most [`MAX_LINE`] bytes of it (the rest of a longer
/// line is consumed and dropped). Returns the number of bytes consumed.
fn read_bounded_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut consumed = 0;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(consumed);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let n = chunk.len();
        reader.consume(n);
        consumed += n;
        if done {
            return Ok(consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SignalTo;

    fn ph() -> Placeholders {
        Placeholders {
            port: 4242,
            dir: PathBuf::from("/tmp/run-x"),
            bin: PathBuf::from("/opt/b"),
        }
    }

    #[test]
    fn substitutes_every_placeholder_everywhere() {
        assert_eq!(
            ph().substitute("{bin}/srv --listen 127.0.0.1:{port} --pid {dir}/p {port}"),
            "/opt/b/srv --listen 127.0.0.1:4242 --pid /tmp/run-x/p 4242"
        );
        assert_eq!(ph().substitute("no placeholders"), "no placeholders");
    }

    #[test]
    fn resolves_a_whole_target_spec() {
        let spec = TargetSpec {
            command: vec![
                "{bin}/handoff-echo".into(),
                "--listen".into(),
                "unix:{dir}/s".into(),
            ],
            env: [("X".to_string(), "{port}".to_string())].into(),
            connect: "unix:{dir}/s".into(),
            ready: Ready::LogLine {
                contains: "listening on {port}".into(),
            },
            ready_timeout: Duration::from_secs(1),
            restart: Some(Trigger::Command {
                argv: vec!["{bin}/ctl".into(), "reload".into()],
            }),
            stop: Trigger::Signal {
                signal: "SIGTERM".into(),
                to: SignalTo::Main,
            },
            stop_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            fail_next_file: Some("{dir}/fail".into()),
            pid_file: Some("{dir}/pid".into()),
        };
        let r = ResolvedTarget::resolve(&spec, &ph()).expect("resolves");
        assert_eq!(r.command[0], "/opt/b/handoff-echo");
        assert_eq!(r.env["X"], "4242");
        assert_eq!(r.connect, ConnectAddr::Unix("/tmp/run-x/s".into()));
        assert_eq!(r.pid_file, Some(PathBuf::from("/tmp/run-x/pid")));
        assert_eq!(r.fail_next_file, Some(PathBuf::from("/tmp/run-x/fail")));
        assert!(
            matches!(r.ready, Ready::LogLine { ref contains } if contains == "listening on 4242")
        );
        assert!(
            matches!(r.restart, Some(ResolvedTrigger::Command { ref argv }) if argv[0] == "/opt/b/ctl")
        );
    }

    #[test]
    fn connect_addresses_must_be_loopback() {
        assert_eq!(
            ConnectAddr::parse("127.0.0.1:80")
                .ok()
                .and_then(|a| a.port()),
            Some(80)
        );
        assert!(ConnectAddr::parse("[::1]:80").is_ok());
        assert!(ConnectAddr::parse("unix:/x/y").is_ok());
        for bad in [
            "10.0.0.1:80",
            "127.0.0.1:0",
            "unix:",
            "localhost:80",
            "nonsense",
        ] {
            let err = ConnectAddr::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn parses_signal_names_in_every_spelling() {
        assert_eq!(parse_signal("SIGHUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("USR2"), Ok(Signal::SIGUSR2));
        assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn parses_ready_lines_of_the_reference_servers() {
        assert_eq!(
            parse_ready_line("ready pid=123 gen=2 listen=127.0.0.1:5"),
            Some((123, 2))
        );
        assert_eq!(parse_ready_line("ready gen=2 pid=9"), Some((9, 2)));
        assert_eq!(parse_ready_line("upgrade ok pid=1 child=2"), None);
        assert_eq!(parse_ready_line("ready pid=x gen=1"), None);
        assert_eq!(parse_ready_line("already pid=1 gen=1"), None);
    }

    #[test]
    fn reads_pid_files_strictly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pid");
        std::fs::write(&p, "4242\n").expect("write");
        assert_eq!(read_pid_file(&p), Ok(4242));
        std::fs::write(&p, "zero").expect("write");
        assert!(read_pid_file(&p).unwrap_err().contains("zero"));
        assert!(read_pid_file(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn long_lines_are_cut_not_buffered_whole() {
        let mut input = vec![b'a'; MAX_LINE * 3];
        input.extend_from_slice(b"\nnext\n");
        let mut reader = BufReader::with_capacity(64, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_bounded_line(&mut reader, &mut buf).ok(),
            Some(MAX_LINE * 3 + 1)
        );
        assert_eq!(buf.len(), MAX_LINE);
        buf.clear();
        assert_eq!(read_bounded_line(&mut reader, &mut buf).ok(), Some(5));
        assert_eq!(buf, b"next\n");
    }
}
