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
use crate::sys::launch;

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
    Spawn {
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
            Trigger::Spawn { argv } => ResolvedTrigger::Spawn {
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
    /// Called (once) with the pid and time of the next ready line, by the thread that reads
    /// it, as soon as it is read.
    pub on_next_ready: Option<ReadyHook>,
}

/// What to do when the next generation reports ready (see [`OutputState::on_next_ready`]).
pub struct ReadyHook(pub Box<dyn FnOnce(u32, Duration) + Send>);

impl std::fmt::Debug for ReadyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadyHook")
    }
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
    let launched = launch_tagged(&target.command, target, tag).map_err(spawn_err)?;
    let output = Output {
        state: Arc::new(Mutex::new(OutputState::default())),
    };
    let main = launched.main;
    let adopter = launched.shim;
    attach(launched, target, &output, t0, verbose);
    Ok(SpawnedTarget {
        pid: main,
        adopter,
        output,
    })
}

/// Starts one more process of the target, `argv` (a restart that starts the next generation
/// itself, not through the running server: one that takes the listeners over through a
/// hand-over socket). Like the first: under a shim of its own that reaps it and its orphans
/// and reports their exits, with the target's environment and the run's `tag` (by which the
/// observer counts it in the tree, and kills it at the end), its output read into `output`
/// beside the first process's (its `ready pid=` lines count). Returns its pid.
pub fn spawn_more(
    argv: &[String],
    target: &ResolvedTarget,
    tag: &str,
    output: &Output,
    t0: Instant,
    verbose: bool,
) -> Result<u32, TargetError> {
    let launched = launch_tagged(argv, target, tag).map_err(|source| TargetError::Spawn {
        command: argv.join(" "),
        source,
    })?;
    let pid = launched.main;
    attach(launched, target, output, t0, verbose);
    Ok(pid)
}

/// Launches `argv` under a shim with the target's environment and the run's tag.
fn launch_tagged(
    argv: &[String],
    target: &ResolvedTarget,
    tag: &str,
) -> io::Result<launch::Launched> {
    let (program, _) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut env: BTreeMap<std::ffi::OsString, std::ffi::OsString> = std::env::vars_os().collect();
    for (k, v) in &target.env {
        env.insert(k.into(), v.into());
    }
    env.insert(RUN_TAG_VAR.into(), tag.into());
    let path = env.get(std::ffi::OsStr::new("PATH")).cloned();
    let exe = find_program(program, path.as_deref())?;
    launch::launch(&exe, argv, &env)
}

/// Reads a launched process's output into `output` and forwards its shim's exit reports.
fn attach(
    launched: launch::Launched,
    target: &ResolvedTarget,
    output: &Output,
    t0: Instant,
    verbose: bool,
) {
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
                    crate::errln!("  target {name}| {line}");
                }
                let mut state = for_thread.lock();
                if state.log_ready_at.is_none()
                    && log_ready.as_deref().is_some_and(|t| line.contains(t))
                {
                    state.log_ready_at = Some(at);
                }
                if let Some((pid, generation)) = parse_ready_line(line) {
                    state.ready_lines.push((pid, generation, at));
                    if let Some(ReadyHook(hook)) = state.on_next_ready.take() {
                        hook(pid, at);
                    }
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
            stop_graceful: true,
            stop_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            fail_next_file: Some("{dir}/fail".into()),
            pid_file: Some("{dir}/pid".into()),
            shape: None,
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
