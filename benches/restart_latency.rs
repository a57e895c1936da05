//! Restart latency of the reference servers, as real processes on loopback, beside the floor
//! every restart pays: fork + exec + one readiness byte of a trivial program.
//!
//! Each restart is timed from the SIGHUP to three milestones: (a) the new generation's
//! `ready ... gen=N` line, (b) the first reply served by the new pid, seen by a probe that
//! keeps opening fresh connections, and (c) the old generation's exit, seen on a pidfd. Every
//! restart runs the same way (probe, lines, pidfd); the three benchmarks of a group differ only
//! in the milestone they report. One long-running server serves every restart of a group
//! (generation N -> N+1), idle or under a light load of the harness's `short` profile (connect,
//! one request, close): two clients, each starting a fresh connection every 2 ms.
//!
//! Size: the same restarts of `handoff-echo` (idle) holding 0, 1 and 4 GiB of touched private
//! memory (`--ballast-mb`), so the cost of spawning the next generation from a large process
//! shows. During each of those restarts a hammer client sends tiny requests back to back on a
//! connection the old generation accepted before the SIGHUP, until that generation closes it
//! at the handover: the longest of its replies is the pause the old generation's own clients
//! see while it starts its successor (a fork stalls the parent while it copies the page
//! tables). Beside it, the same client against an idle server with no restart.
//!
//! Besides criterion's report, the end of the run prints, for every figure, the median over
//! the individual restarts and its ratio to the floor's median.
//!
//! ```sh
//! cargo bench --bench restart_latency -- --quick
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use handoff_support::{Pidfd, pipe, place_fds, wait_readable};

const ECHO: &str = env!("CARGO_BIN_EXE_handoff-echo");
const HTTP: &str = env!("CARGO_BIN_EXE_handoff-http");
const FLOOR: &str = env!("CARGO_BIN_EXE_handoff-floor");

/// Bound for anything that should take milliseconds; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);
/// The most probe requests one restart may make before the bench gives up on it.
const MAX_PROBES: u32 = 1_000_000;
/// Bounds of a load client: its lifetime, its request count, and its pace.
const LOAD_LIFETIME: Duration = Duration::from_secs(300);
const LOAD_MAX_REQUESTS: u64 = 150_000;
const LOAD_INTERVAL: Duration = Duration::from_millis(2);
const LOAD_CLIENTS: usize = 2;
/// Kept small so that a superseded generation never lingers on a slow client.
const DRAIN_TIMEOUT_MS: &str = "250";
/// The sizes of the size groups, in MiB of touched private memory.
const BALLAST_MB: [usize; 3] = [0, 1024, 4096];
/// Requests the hammer makes before the SIGHUP, so that it is in full swing when the upgrade
/// starts; and without a restart, for the baseline.
const HAMMER_WARM_UP: u32 = 50;
const HAMMER_BASELINE: u32 = 2_000;

#[derive(Clone, Copy)]
enum Proto {
    Echo,
    Http,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Echo => "echo",
            Proto::Http => "http",
        }
    }

    fn bin(self) -> &'static str {
        match self {
            Proto::Echo => ECHO,
            Proto::Http => HTTP,
        }
    }

    /// One request on a fresh connection; returns the pid that served it.
    fn request(self, addr: SocketAddr) -> Result<u32, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("configuring a client socket: {e}"))?;
        let request: &[u8] = match self {
            Proto::Echo => b"probe\n",
            Proto::Http => b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
        };
        (&stream)
            .write_all(request)
            .map_err(|e| format!("write: {e}"))?;
        let mut reader = BufReader::new(&stream);
        match self {
            Proto::Echo => {
                let mut line = String::new();
                reader
                    .read_line(&mut line)
                    .map_err(|e| format!("read: {e}"))?;
                if !line.ends_with(" probe\n") {
                    return Err(format!("bad echo reply {line:?}"));
                }
                parse_field(&line, "pid")
            }
            Proto::Http => {
                // `Connection: close`: the response ends at EOF.
                let mut response = String::new();
                reader
                    .read_to_string(&mut response)
                    .map_err(|e| format!("read: {e}"))?;
                if !response.starts_with("HTTP/1.1 200 ") {
                    return Err(format!("bad HTTP response {response:?}"));
                }
                response
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("x-handoff-pid"))
                    })
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .ok_or_else(|| format!("no X-Handoff-Pid in {response:?}"))
            }
        }
    }
}

/// `key=value` out of an event line or an echo reply.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn parse_field(line: &str, key: &str) -> Result<u32, String> {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no numeric {key}= in {line:?}"))
}

/// One timed restart.
#[derive(Clone)]
struct Restart {
    ready: Duration,
    first_reply: Duration,
    old_exit: Duration,
    /// The hammer's reply latencies on the old generation, from the SIGHUP to the handover
    /// (empty without a hammer).
    old_replies: Vec<Duration>,
}

#[derive(Clone, Copy)]
enum Milestone {
    Ready,
    FirstReply,
    OldExit,
}

impl Milestone {
    const ALL: [Milestone; 3] = [Milestone::Ready, Milestone::FirstReply, Milestone::OldExit];

    fn name(self) -> &'static str {
        match self {
            Milestone::Ready => "ready",
            Milestone::FirstReply => "first_reply",
            Milestone::OldExit => "old_exit",
        }
    }

    fn of(self, r: &Restart) -> Duration {
        match self {
            Milestone::Ready => r.ready,
            Milestone::FirstReply => r.first_reply,
            Milestone::OldExit => r.old_exit,
        }
    }
}

/// A reference server and every generation it has had. Dropping it SIGKILLs every process it
/// ever announced (through pidfds, so a reused pid is never hit), also when a bench panics.
struct Server {
    proto: Proto,
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    lines: Receiver<(Instant, String)>,
    /// The last lines read, for error messages.
    recent: Vec<String>,
    generation: u32,
    pid: u32,
    pidfd: Pidfd,
    /// Every process announced on stdout (`ready pid=`, `upgrade started ... child=`) and not
    /// yet seen to exit.
    seen: Arc<Mutex<Vec<Pidfd>>>,
    /// MiB of ballast every generation holds; each restart waits until the new generation
    /// has touched all of it, so the next one is timed on a process of full size.
    ballast_mb: usize,
}

impl Server {
    fn start(proto: Proto, ballast_mb: usize) -> Server {
        let dir = tempfile::tempdir().expect("creating a temp dir for the PID file");
        let mut cmd = Command::new(proto.bin());
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--drain-timeout-ms",
            DRAIN_TIMEOUT_MS,
        ])
        .args(["--ready-timeout-ms", "10000", "--pid-file"])
        .arg(dir.path().join("pid"))
        .arg("--ballast-mb")
        .arg(ballast_mb.to_string())
        .env("HANDOFF_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let reader_seen = Arc::clone(&seen);
        // Every generation shares this stdout. The reader stamps each line when it arrives, so
        // the milestones do not depend on when the bench thread gets round to them, and it
        // takes a pidfd on each announced process at once, while that process surely lives.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = Instant::now();
                let announced = if line.starts_with("ready ") {
                    field(&line, "pid")
                } else if line.starts_with("upgrade started ") {
                    field(&line, "child")
                } else {
                    None
                };
                if let Some(pidfd) = announced.and_then(|p| p.parse().ok()).and_then(Pidfd::open) {
                    let mut seen = reader_seen.lock().unwrap();
                    // Let go of the exited ones, so a long run does not pile up descriptors.
                    seen.retain(|fd: &Pidfd| !fd.has_exited());
                    seen.push(pidfd);
                }
                if tx.send((at, line)).is_err() {
                    break;
                }
            }
        });
        let pidfd = Pidfd::open(child.id()).expect("pidfd of the server just spawned");
        let mut server = Server {
            proto,
            child,
            _dir: dir,
            addr: "127.0.0.1:0".parse().unwrap(),
            lines,
            recent: Vec::new(),
            generation: 1,
            pid: 0,
            pidfd,
            seen,
            ballast_mb,
        };
        let (_, ready) =
            server.wait_line(|l| l.starts_with("ready ") && field(l, "gen") == Some("1"));
        server.pid = parse_field(&ready, "pid").unwrap();
        assert_eq!(
            server.pid,
            server.child.id(),
            "generation 1 is the process spawned"
        );
        let listen = field(&ready, "listen").expect("listen= in the ready line");
        server.addr = listen
            .parse()
            .unwrap_or_else(|e| panic!("ready line {ready:?}: bad listen address: {e}"));
        server.wait_ballast(server.pid);
        server
    }

    /// Waits until generation `pid` has touched all its ballast (at once without one).
    fn wait_ballast(&mut self, pid: u32) {
        if self.ballast_mb > 0 {
            let want = pid.to_string();
            self.wait_line(|l| l.starts_with("ballast ") && field(l, "pid") == Some(&want));
        }
    }

    /// Waits (bounded) for a stdout line matching `pred`; returns when it arrived, and it.
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> (Instant, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    if self.recent.len() >= 20 {
                        self.recent.remove(0);
                    }
                    self.recent.push(line.clone());
                    if pred(&line) {
                        return (at, line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no expected line within {PATIENCE:?}; last lines:\n{}",
                    self.proto.name(),
                    self.recent.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: server output ended; last lines:\n{}",
                    self.proto.name(),
                    self.recent.join("\n")
                ),
            }
        }
    }

    /// Restarts generation N into N+1 and times the three milestones from the SIGHUP; with
    /// `hammer`, also the old generation's reply latencies meanwhile.
    fn restart(&mut self, hammer: bool) -> Restart {
        let old = self.pid;
        let next = self.generation + 1;
        let hammer = hammer.then(|| Hammer::start(self.addr, old));
        let (t0, first_reply, exited) = std::thread::scope(|scope| {
            let pidfd = &self.pidfd;
            let exit_watch = scope.spawn(move || pidfd.wait_exit(PATIENCE));
            let t0 = Instant::now();
            let _ = self.pidfd.signal(libc::SIGHUP);
            let first_reply = self.probe_until_not(old, t0 + PATIENCE);
            (t0, first_reply, exit_watch.join().expect("exit watcher"))
        });
        let old_replies = hammer.map_or_else(Vec::new, |h| h.finish(t0));
        let (first_reply, new) = first_reply.unwrap_or_else(|e| {
            panic!(
                "{}: generation {next} never replied: {e}; last lines:\n{}",
                self.proto.name(),
                self.recent.join("\n")
            )
        });
        let want = next.to_string();
        let (ready_at, ready) =
            self.wait_line(|l| l.starts_with("ready ") && field(l, "gen") == Some(&want));
        let pid = parse_field(&ready, "pid").unwrap();
        assert_eq!(pid, new, "the first new reply came from generation {next}");
        let exited = exited.unwrap_or_else(|| {
            panic!(
                "{}: generation {} (pid {old}) still alive {PATIENCE:?} after SIGHUP",
                self.proto.name(),
                self.generation
            )
        });
        // Generation 1 is this process's child: reap it. Later ones are orphans of their
        // exited parents, reaped by init.
        if old == self.child.id() {
            let _ = self.child.wait();
        }
        self.pidfd = Pidfd::open(pid).expect("pidfd of the new generation");
        self.pid = pid;
        self.generation = next;
        self.wait_ballast(pid);
        Restart {
            ready: ready_at - t0,
            first_reply: first_reply - t0,
            old_exit: exited - t0,
            old_replies,
        }
    }

    /// Fresh connections, one request each, until one is served by a pid other than `old`:
    /// when that reply arrived, and the pid.
    fn probe_until_not(&self, old: u32, deadline: Instant) -> Result<(Instant, u32), String> {
        let mut last_error = String::from("none");
        for _ in 0..MAX_PROBES {
            if Instant::now() > deadline {
                break;
            }
            match self.proto.request(self.addr) {
                Ok(pid) if pid != old => return Ok((Instant::now(), pid)),
                Ok(_) => {}
                Err(e) => last_error = e,
            }
        }
        Err(format!("probe gave up; last error: {last_error}"))
    }

    /// SIGTERM to the current generation, and a bounded wait for it to drain and exit.
    fn stop(mut self) {
        let _ = self.pidfd.signal(libc::SIGTERM);
        if self.pidfd.wait_exit(PATIENCE).is_none() {
            eprintln!(
                "{}: generation {} (pid {}) ignored SIGTERM for {PATIENCE:?}; killing it",
                self.proto.name(),
                self.generation,
                self.pid
            );
        }
        if self.generation == 1 {
            let _ = self.child.wait();
        }
        // Dropping `self` kills whatever is left.
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for pidfd in self.seen.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = pidfd.signal(libc::SIGKILL);
        }
        let _ = self.pidfd.signal(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Light client load: `LOAD_CLIENTS` threads, each making one request on a fresh connection
/// every `LOAD_INTERVAL`, bounded by `LOAD_LIFETIME` and `LOAD_MAX_REQUESTS`. Stopped and
/// joined on drop.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(proto: Proto, addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..LOAD_CLIENTS)
            .map(|_| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut next = started;
                    for _ in 0..LOAD_MAX_REQUESTS {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_LIFETIME {
                            break;
                        }
                        match proto.request(addr) {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failed.lock().unwrap().push(e),
                        }
                        // Pacing, not synchronisation: this is what keeps the load light.
                        next += LOAD_INTERVAL;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Waits (bounded) until the clients have made `n` requests, so the load is running
    /// before the first timed restart.
    fn wait_started(&self, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        while self.ok.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "load made no progress: {:?}",
                self.failed.lock().unwrap()
            );
            std::thread::yield_now();
        }
    }

    /// Stops the clients; the requests that succeeded and the failures.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop_and_join();
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), failed)
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A client on one echo connection accepted by the generation `old`, sending tiny requests
/// back to back and timing each reply, until that generation closes the connection at its
/// handover (`conn=close`). It is in full swing before the restart signal: `start` returns
/// after `HAMMER_WARM_UP` replies.
struct Hammer {
    thread: JoinHandle<Result<Vec<(Instant, Duration)>, String>>,
}

impl Hammer {
    fn start(addr: SocketAddr, old: u32) -> Hammer {
        let (warm_tx, warm_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("hammer: connect {addr}: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .and_then(|()| stream.set_nodelay(true))
                .map_err(|e| format!("hammer: configuring the socket: {e}"))?;
            let mut reader = BufReader::new(&stream);
            let mut replies = Vec::new();
            let mut line = String::new();
            for n in 0..MAX_PROBES {
                let sent = Instant::now();
                (&stream)
                    .write_all(b"h\n")
                    .map_err(|e| format!("hammer: write: {e}"))?;
                line.clear();
                reader
                    .read_line(&mut line)
                    .map_err(|e| format!("hammer: read: {e}"))?;
                let took = sent.elapsed();
                if parse_field(&line, "pid")? != old {
                    return Err(format!("hammer: served by another pid: {line:?}"));
                }
                replies.push((sent, took));
                if n + 1 == HAMMER_WARM_UP {
                    let _ = warm_tx.send(());
                }
                if field(&line, "conn") == Some("close") || sent.elapsed() > PATIENCE {
                    break;
                }
            }
            Ok(replies)
        });
        // Bounded: a hammer that cannot connect or read ends, and the channel with it.
        let _ = warm_rx.recv_timeout(PATIENCE);
        Hammer { thread }
    }

    /// The latencies of the requests answered from `since` on.
    fn finish(self, since: Instant) -> Vec<Duration> {
        let replies = self
            .thread
            .join()
            .expect("hammer thread")
            .unwrap_or_else(|e| panic!("{e}"));
        replies
            .into_iter()
            .filter(|(sent, took)| *sent + *took >= since)
            .map(|(_, took)| took)
            .collect()
    }

    /// Reply latencies of `count` requests on a server that is not restarting.
    fn baseline(addr: SocketAddr, count: u32) -> Vec<Duration> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .and_then(|()| stream.set_nodelay(true))
            .expect("configuring the socket");
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        (0..count)
            .map(|_| {
                let sent = Instant::now();
                (&stream).write_all(b"h\n").expect("hammer write");
                line.clear();
                reader.read_line(&mut line).expect("hammer read");
                sent.elapsed()
            })
            .collect()
    }
}

/// The floor: spawn `handoff-floor` the way a next generation is spawned (fork + exec with a
/// listening socket at fd 3 and a readiness pipe at fd 4) and time spawn -> byte received.
struct Floor {
    listener: TcpListener,
    /// Keeps fds 3 and 4 busy in this process, so that no descriptor `Command` creates for
    /// itself (its exec-status pipe) can sit where the child's `dup2` lands.
    _low_fds: Vec<std::fs::File>,
}

impl Floor {
    fn new() -> Floor {
        let mut low_fds = Vec::new();
        for _ in 0..5 {
            let f = std::fs::File::open("/dev/null").expect("opening /dev/null");
            if f.as_raw_fd() > 4 {
                break;
            }
            low_fds.push(f);
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the floor's listener");
        assert!(listener.as_raw_fd() > 4, "fds 0..=4 are taken");
        Floor {
            listener,
            _low_fds: low_fds,
        }
    }

    fn once(&self) -> Duration {
        let (read_end, write_end) = pipe().expect("pipe2");
        assert!(write_end.as_raw_fd() > 4, "fds 0..=4 are taken");
        let (listen_fd, ready_fd) = (self.listener.as_raw_fd(), write_end.as_raw_fd());
        let mut cmd = Command::new(FLOOR);
        cmd.env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "main")
            .env("HANDOFF_READY_FD", "4")
            .stdin(Stdio::null());
        // Exactly fds 3 and 4 cross the exec.
        place_fds(&mut cmd, &[(listen_fd, 3), (ready_fd, 4)]);
        let t0 = Instant::now();
        let mut child = cmd.spawn().expect("spawning handoff-floor");
        drop(write_end);
        let got = wait_readable(&read_end, PATIENCE).map(|_| {
            let mut byte = [0u8];
            std::fs::File::from(read_end).read(&mut byte)
        });
        let elapsed = t0.elapsed();
        let status = child.wait().expect("reaping handoff-floor");
        match got {
            Some(Ok(1)) => elapsed,
            other => panic!("handoff-floor sent no readiness byte ({other:?}), exited {status}"),
        }
    }
}

/// Every figure's individual samples (one per restart or spawn), for the medians printed at
/// the end.
#[derive(Default)]
struct Figures {
    samples: BTreeMap<String, Vec<Duration>>,
    /// Per size group: the old generation's reply latencies, pooled over every restart, the
    /// longest one of each restart, and the baseline without a restart.
    pauses: BTreeMap<String, Pauses>,
}

#[derive(Default)]
struct Pauses {
    pooled: Vec<Duration>,
    per_restart_max: Vec<Duration>,
    baseline: Vec<Duration>,
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Figures {
    fn add(&mut self, id: &str, d: Duration) {
        self.samples.entry(id.to_string()).or_default().push(d);
    }

    fn add_pause(&mut self, group: &str, replies: &[Duration]) {
        let pauses = self.pauses.entry(group.to_string()).or_default();
        pauses.pooled.extend_from_slice(replies);
        if let Some(max) = replies.iter().max() {
            pauses.per_restart_max.push(*max);
        }
    }

    fn median(&self, id: &str) -> Option<Duration> {
        let mut v = self.samples.get(id)?.clone();
        v.sort();
        v.get(v.len() / 2).copied()
    }

    fn report(&self) {
        let floor = self.median("floor/spawn_to_ready_byte");
        eprintln!("\nmedians over individual samples (ratio = median / floor median):");
        for (id, samples) in &self.samples {
            let median = self.median(id).unwrap();
            let ratio = floor.map_or_else(
                || "no floor measured".to_string(),
                |f| format!("{:.1}x floor", median.as_secs_f64() / f.as_secs_f64()),
            );
            eprintln!(
                "  {id:<40} n={:<5} median={:>9.3} ms  {ratio}",
                samples.len(),
                median.as_secs_f64() * 1e3
            );
        }
        if self.pauses.is_empty() {
            return;
        }
        eprintln!(
            "\nthe old generation's replies to a client hammering it, from the SIGHUP to the \
             handover (baseline: the same client, no restart):"
        );
        for (group, p) in &self.pauses {
            eprintln!(
                "  {group:<16} restarts={:<4} replies={:<6} p50={:>7.3} p99={:>7.3} max={:>8.3} \
                 median-of-restart-max={:>8.3} ms | baseline p99={:>6.3} max={:>6.3} ms",
                p.per_restart_max.len(),
                p.pooled.len(),
                ms(percentile(&p.pooled, 0.5)),
                ms(percentile(&p.pooled, 0.99)),
                ms(p.pooled.iter().max().copied().unwrap_or_default()),
                ms(percentile(&p.per_restart_max, 0.5)),
                ms(percentile(&p.baseline, 0.99)),
                ms(p.baseline.iter().max().copied().unwrap_or_default()),
            );
        }
    }
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    // Each iteration is a whole process (a restart or a spawn): few, flat samples.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

fn bench_floor(c: &mut Criterion, figures: &mut Figures) {
    let floor = Floor::new();
    let mut group = c.benchmark_group("floor");
    configure(&mut group);
    group.bench_function("spawn_to_ready_byte", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = floor.once();
                figures.add("floor/spawn_to_ready_byte", d);
                total += d;
            }
            total
        })
    });
    group.finish();
}

fn bench_restarts(c: &mut Criterion, figures: &mut Figures, proto: Proto, loaded: bool) {
    let mut server = Server::start(proto, 0);
    let load = loaded.then(|| {
        let load = Load::start(proto, server.addr);
        load.wait_started(20);
        load
    });
    let group_name = format!("{}_{}", proto.name(), if loaded { "load" } else { "idle" });
    let mut group = c.benchmark_group(&group_name);
    configure(&mut group);
    for milestone in Milestone::ALL {
        let id = format!("{group_name}/{}", milestone.name());
        group.bench_function(milestone.name(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let d = milestone.of(&server.restart(false));
                    figures.add(&id, d);
                    total += d;
                }
                total
            })
        });
    }
    group.finish();
    let generations = server.generation;
    if let Some(load) = load {
        let (ok, failed) = load.finish();
        eprintln!(
            "{group_name}: load clients made {ok} requests over {} restarts, {} failed{}",
            generations - 1,
            failed.len(),
            failed
                .first()
                .map_or_else(String::new, |f| format!(" (first: {f})"))
        );
    }
    server.stop();
}

/// Restarts per size: timed one by one rather than through criterion, which would plan
/// hundreds of fast restarts and wait for every new generation to touch its ballast.
const SIZE_RESTARTS: usize = 21;
const SIZE_RESTARTS_QUICK: usize = 7;

/// Restarts of an idle `handoff-echo` holding `mb` MiB of touched memory, with the hammer on
/// the old generation during each.
fn bench_size(figures: &mut Figures, mb: usize, restarts: usize) {
    let mut server = Server::start(Proto::Echo, mb);
    let group = format!("echo_{}gib", mb / 1024);
    let baseline = Hammer::baseline(server.addr, HAMMER_BASELINE);
    figures.pauses.entry(group.clone()).or_default().baseline = baseline;
    for _ in 0..restarts {
        let restart = server.restart(true);
        figures.add_pause(&group, &restart.old_replies);
        for milestone in Milestone::ALL {
            figures.add(
                &format!("{group}/{}", milestone.name()),
                milestone.of(&restart),
            );
        }
    }
    eprintln!("{group}: {restarts} restarts");
    server.stop();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut figures = Figures::default();
    // The floor first, while this process has no other children or threads of its own.
    bench_floor(&mut c, &mut figures);
    for proto in [Proto::Echo, Proto::Http] {
        for loaded in [false, true] {
            bench_restarts(&mut c, &mut figures, proto, loaded);
        }
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let restarts = if quick {
        SIZE_RESTARTS_QUICK
    } else {
        SIZE_RESTARTS
    };
    for mb in BALLAST_MB {
        bench_size(&mut figures, mb, restarts);
    }
    c.final_summary();
    figures.report();
}
