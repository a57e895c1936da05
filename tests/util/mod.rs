//! Helpers for the restart tests: start a reference server as a real process, read its event
//! lines, drive client load at it, and watch processes through `/proc` and pidfds.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ECHO: &str = env!("CARGO_BIN_EXE_handoff-echo");
pub const HTTP: &str = env!("CARGO_BIN_EXE_handoff-http");

/// Generous bound for anything that should take milliseconds; only reached on failure.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A reference server under test, with every generation's stdout lines.
pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub listen: String,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    /// Every pid that announced itself, to be killed if the test fails half-way.
    pids: BTreeSet<u32>,
}

impl Server {
    /// Starts `bin` listening on a free loopback port (or `listen`, if given) with a PID file
    /// in a fresh temp dir, and waits for its `ready ... gen=1` line.
    pub fn start(bin: &str, args: &[&str]) -> Server {
        Server::start_cmd(Command::new(bin), args, Some("127.0.0.1:0"))
    }

    pub fn start_cmd(cmd: Command, args: &[&str], listen: Option<&str>) -> Server {
        let mut server = Server::spawn(cmd, args, listen);
        server.wait_first_ready();
        server
    }

    /// Spawns without waiting for readiness.
    pub fn spawn(mut cmd: Command, args: &[&str], listen: Option<&str>) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(listen) = listen {
            let listen = listen.replace("{dir}", &dir.path().display().to_string());
            cmd.arg("--listen").arg(listen);
        }
        cmd.arg("--pid-file").arg(dir.path().join("pid"));
        cmd.args(
            args.iter()
                .map(|a| a.replace("{dir}", &dir.path().display().to_string())),
        );
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("HANDOFF_LOG", "warn");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let err_tx = tx.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Keep stderr flowing (a full pipe would block the server), visible on failure, and
        // readable by `wait_line` as `stderr: ...`.
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server stderr] {line}");
                let _ = err_tx.send(format!("stderr: {line}"));
            }
        });
        Server {
            child,
            dir,
            listen: String::new(),
            lines,
            seen: Vec::new(),
            pids: BTreeSet::new(),
        }
    }

    /// Waits for generation 1's ready line and notes where it listens.
    pub fn wait_first_ready(&mut self) {
        let ready = self.wait_line(|l| l.starts_with("ready ") && l.contains(" gen=1 "));
        self.listen = field(&ready, "listen").to_string();
    }

    /// Waits (bounded) for a line matching `pred`, returning it; lines before it are kept in
    /// `seen`. Panics with everything seen on timeout.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(pid) = line
                        .strip_prefix("ready pid=")
                        .and_then(|r| r.split(' ').next())
                    {
                        self.pids.insert(pid.parse().unwrap());
                    }
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no matching line within {PATIENCE:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("server output ended; saw:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Waits for generation `gen`'s ready line and returns its pid.
    pub fn wait_ready(&mut self, generation: u32) -> u32 {
        let line = self
            .wait_line(|l| l.starts_with("ready ") && l.contains(&format!(" gen={generation} ")));
        field(&line, "pid").parse().unwrap()
    }

    /// The pid in the PID file.
    pub fn pid_file(&self) -> u32 {
        let text =
            std::fs::read_to_string(self.dir.path().join("pid")).expect("reading the PID file");
        text.trim().parse().expect("PID file holds a pid")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn addr(&self) -> Addr {
        match self.listen.strip_prefix("unix:") {
            Some(p) => Addr::Unix(p.into()),
            None => Addr::Tcp(self.listen.parse().unwrap()),
        }
    }

    /// Stops the current generation with SIGTERM and waits for every generation to be gone.
    pub fn stop(mut self) {
        let pid = self.pid_file();
        signal(pid, libc::SIGTERM);
        for pid in self.pids.clone() {
            assert!(
                wait_gone(pid, PATIENCE),
                "pid {pid} still alive {PATIENCE:?} after SIGTERM"
            );
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // On success every generation is gone already; on a failed assertion, leave nothing.
        for &pid in &self.pids {
            signal(pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` out of an event line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    line.split(' ')
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; a gone pid just fails with ESRCH.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Waits up to `timeout` for process `pid` (not necessarily our child) to exit, with a pidfd.
pub use handoff_support::wait_gone;

/// Whether `pid` is running (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Open descriptor count of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/PID/fd")
        .count()
}

/// Socket inodes held by `pid`.
pub fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/PID/fd")
        .flatten()
    {
        if let Ok(link) = std::fs::read_link(entry.path())
            && let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
        {
            out.insert(inode.parse().unwrap());
        }
    }
    out
}

/// Inodes of TCP sockets listening on `port` (IPv4 and IPv6), from /proc/net.
pub fn listening_inodes(port: u16) -> BTreeSet<u64> {
    tcp_inodes(port, "0A")
}

fn tcp_inodes(port: u16, state: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && cols[3] == state {
                out.insert(cols[9].parse().unwrap());
            }
        }
    }
    out
}

/// Children of `pid`, from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[derive(Clone, Debug)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

pub trait Conn: Read + Write {}
impl Conn for TcpStream {}
impl Conn for UnixStream {}

impl Addr {
    pub fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        let timeout = Some(Duration::from_secs(5));
        Ok(match self {
            Addr::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, Duration::from_secs(5))?;
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
                Box::new(s)
            }
            Addr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
                Box::new(s)
            }
        })
    }
}

/// One line-protocol exchange on `conn`: returns the serving pid and whether the server keeps
/// the connection open (`conn=keep`).
pub fn echo_request(conn: &mut dyn Conn, token: &str) -> Result<(u32, bool), String> {
    conn.write_all(format!("{token}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let reply = read_reply_line(conn)?;
    if !reply.ends_with(&format!(" {token}")) {
        return Err(format!("bad reply {reply:?} to {token:?}"));
    }
    let pid = field(&reply, "pid")
        .parse()
        .map_err(|e| format!("bad pid in {reply:?}: {e}"))?;
    Ok((pid, field(&reply, "conn") == "keep"))
}

/// Reads one reply line (without its newline); EOF before the newline is an error.
pub fn read_reply_line(conn: &mut dyn Conn) -> Result<String, String> {
    let mut reply = Vec::new();
    let mut byte = [0u8];
    loop {
        match conn.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "short: EOF after {:?}",
                    String::from_utf8_lossy(&reply)
                ));
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => reply.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// One HTTP/1.1 GET on `conn`: returns the serving pid and whether the server keeps the
/// connection open.
pub fn http_request(conn: &mut dyn Conn) -> Result<(u32, bool), String> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return Err(format!("short: EOF after {} bytes", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("bad status: {head:?}"));
    }
    let len: usize = header("content-length")
        .ok_or("no content-length")?
        .parse()
        .map_err(|_| "bad content-length")?;
    while buf.len() < head_end + len {
        match conn.read(&mut chunk) {
            Ok(0) => return Err("short: EOF in body".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let pid = header("x-handoff-pid")
        .ok_or("no X-Handoff-Pid")?
        .parse()
        .map_err(|_| "bad pid")?;
    Ok((pid, header("connection").as_deref() != Some("close")))
}

/// Everything about a finished command, for failure messages.
pub fn show(out: &std::process::Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub refused: Vec<String>,
    pub failed: Vec<String>,
    pub pids: BTreeSet<u32>,
}

impl LoadReport {
    /// Nothing refused, nothing failed, and at least `min_ok` requests answered.
    pub fn assert_clean(&self, min_ok: u64) {
        assert!(
            self.refused.is_empty(),
            "refused connects: {:?}",
            self.refused
        );
        assert!(self.failed.is_empty(), "failed requests: {:?}", self.failed);
        assert!(
            self.ok >= min_ok,
            "too little load to mean anything (fewer than {min_ok} answered): {self:?}"
        );
    }
}

/// Restarts `server` with SIGHUP to the pid in its PID file, under whatever load is running,
/// and waits until generation `next` is ready and the old one has exited. Returns
/// (old pid, new pid).
pub fn restart(server: &mut Server, next: u32) -> (u32, u32) {
    let old = server.pid_file();
    signal(old, libc::SIGHUP);
    let new = server.wait_ready(next);
    server.wait_line(|l| l.starts_with(&format!("exit pid={old} ")));
    assert!(
        wait_gone(old, PATIENCE),
        "generation {} (pid {old}) did not exit",
        next - 1
    );
    (old, new)
}

/// Client load: `clients` threads, each making connections with `per_conn` requests until
/// stopped, bounded by `max_per_client` connections and `PATIENCE`.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    report: Arc<Mutex<LoadReport>>,
}

#[derive(Clone, Copy)]
pub enum Proto {
    Echo,
    Http,
}

impl Load {
    pub fn start(addr: Addr, proto: Proto, clients: usize, per_conn: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, report, addr) = (Arc::clone(&stop), Arc::clone(&report), addr.clone());
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < PATIENCE
                        && seq < 1_000_000
                    {
                        let mut conn = match addr.connect() {
                            Ok(c) => c,
                            Err(e) => {
                                let mut r = report.lock().unwrap();
                                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                                    r.refused.push(format!("client {c}: connect refused"));
                                } else {
                                    r.failed.push(format!("client {c}: connect: {e}"));
                                }
                                continue;
                            }
                        };
                        for _ in 0..per_conn {
                            seq += 1;
                            let result = match proto {
                                Proto::Echo => echo_request(&mut *conn, &format!("c{c}-{seq}")),
                                Proto::Http => http_request(&mut *conn),
                            };
                            let mut r = report.lock().unwrap();
                            match result {
                                Ok((pid, keep)) => {
                                    r.ok += 1;
                                    r.pids.insert(pid);
                                    if !keep {
                                        break;
                                    }
                                }
                                Err(e) => {
                                    r.failed.push(format!("client {c} request {seq}: {e}"));
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            report,
        }
    }

    /// Requests made so far that succeeded.
    pub fn ok(&self) -> u64 {
        self.report.lock().unwrap().ok
    }

    /// Waits until at least `n` more requests have succeeded (bounded).
    pub fn wait_progress(&self, n: u64) {
        let target = self.ok() + n;
        let deadline = Instant::now() + PATIENCE;
        while self.ok() < target {
            assert!(
                Instant::now() < deadline,
                "load made no progress: {:?}",
                self.report.lock().unwrap()
            );
            std::thread::yield_now();
        }
    }

    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.report).unwrap().into_inner().unwrap()
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Panics, listing every violation, unless `report` (a `handoff check --json` report) matches
/// `docs/report-schema.json`.
pub fn assert_matches_report_schema(report: &serde_json::Value) {
    let errors = report_schema_errors(report);
    assert!(
        errors.is_empty(),
        "the report does not match docs/report-schema.json:\n{}",
        errors.join("\n")
    );
}

/// Every way `report` does not match `docs/report-schema.json`.
pub fn report_schema_errors(report: &serde_json::Value) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report-schema.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()));
    validator
        .iter_errors(report)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect()
}
