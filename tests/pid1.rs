//! A generation that is PID 1 of its PID namespace (a container's main process): when PID 1
//! exits, the kernel kills every other process of the namespace, so a handover from PID 1
//! would kill the new generation with the old. The library refuses to upgrade there (the
//! server keeps serving and says why), and under an init that outlives the generations,
//! restarts work as anywhere else.
//!
//! Each test runs the server in a fresh PID namespace (`unshare --pid --fork --mount-proc`,
//! which needs root, as CI has). Pids printed by the server are the namespace's; signals go
//! to the host's pids, found through `/proc/PID/status` (`NSpid`), never to a namespace pid.
//! Dropping a namespace SIGKILLs its PID 1, which takes every process in it down.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use util::*;

/// An init that stays until every process of its namespace is gone (`src/bin/handoff-test-init.rs`).
const INIT: &str = env!("CARGO_BIN_EXE_handoff-test-init");

/// A process tree in a new PID namespace, with its stdout lines.
struct Namespace {
    unshare: Child,
    /// The host pid of the namespace's PID 1.
    init: u32,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Namespace {
    fn start(program: &str, args: &[&str], env: &[(&str, String)]) -> Namespace {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "a new PID namespace needs root (`unshare --pid`); CI runs as root"
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", program])
            .args(args)
            .env("HANDOFF_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut unshare = cmd.spawn().expect("running unshare (util-linux)");
        let (tx, lines) = mpsc::channel();
        let err_tx = tx.clone();
        let stdout = unshare.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = unshare.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[namespace stderr] {line}");
                let _ = err_tx.send(format!("stderr: {line}"));
            }
        });
        let mut ns = Namespace {
            unshare,
            init: 0,
            lines,
            seen: Vec::new(),
        };
        // A first line out of the namespace (on stdout or stderr) means its PID 1 runs: it is
        // unshare's child.
        ns.wait_line(|_| true);
        ns.init = children(ns.unshare.id())
            .first()
            .copied()
            .expect("unshare's child is the namespace's PID 1");
        ns
    }

    fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no matching line within {PATIENCE:?}; saw:\n{}",
                        self.seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("output ended; saw:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Generation `generation`'s ready line: (its pid in the namespace, where it listens).
    fn wait_ready(&mut self, generation: u32) -> (u32, Addr) {
        let line = self
            .wait_line(|l| l.starts_with("ready ") && l.contains(&format!(" gen={generation} ")));
        let addr = Addr::Tcp(field(&line, "listen").parse().unwrap());
        (field(&line, "pid").parse().unwrap(), addr)
    }

    /// The host pid of the process that is `ns_pid` in this namespace.
    fn host_pid(&self, ns_pid: u32) -> u32 {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.init)).unwrap();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != Some(ns.clone()) {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let last = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|p| p.parse::<u32>().ok());
            if last == Some(ns_pid) {
                return pid;
            }
        }
        panic!(
            "no process is pid {ns_pid} in the namespace of {}",
            self.init
        )
    }

    /// Waits for the namespace to empty (its PID 1 gone, unshare exited) and returns
    /// unshare's status.
    fn wait_empty(mut self) -> std::process::ExitStatus {
        assert!(
            wait_gone(self.init, PATIENCE),
            "the namespace's PID 1 is still alive"
        );
        self.unshare.wait().unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // PID 1's death takes the whole namespace with it. (0 while it was not found yet: not
        // a pid to signal.)
        if self.init != 0 {
            signal(self.init, libc::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

#[test]
fn as_pid_1_the_server_refuses_to_upgrade_and_keeps_serving() {
    let mut ns = Namespace::start(ECHO, &["--listen", "127.0.0.1:0"], &[]);
    let (pid, addr) = ns.wait_ready(1);
    assert_eq!(pid, 1, "the server is the namespace's PID 1");
    let load = Load::start(addr.clone(), Proto::Echo, 3, 1);
    load.wait_progress(30);
    signal(ns.init, libc::SIGHUP);
    let refused = ns.wait_line(|l| l.starts_with("upgrade refused pid=1 "));
    assert!(refused.contains("PID 1 of its PID namespace"), "{refused}");
    assert!(
        children(ns.init).is_empty(),
        "nothing was started: {:?}",
        children(ns.init)
    );
    load.wait_progress(30);
    let report = load.finish();
    assert!(
        report.refused.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.pids, [1].into(), "PID 1 served throughout");
    signal(ns.init, libc::SIGTERM);
    ns.wait_line(|l| l.starts_with("exit pid=1 "));
    assert!(ns.wait_empty().success());
}

#[test]
fn under_a_minimal_init_restarts_work_in_a_pid_namespace() {
    let mut ns = Namespace::start(INIT, &[ECHO, "--listen", "127.0.0.1:0"], &[]);
    let (first, addr) = ns.wait_ready(1);
    assert_ne!(first, 1, "the server is not PID 1: the init is");
    let load = Load::start(addr.clone(), Proto::Echo, 3, 1);
    load.wait_progress(30);
    let mut current = first;
    for generation in 2..=3 {
        signal(ns.host_pid(current), libc::SIGHUP);
        let (next, _) = ns.wait_ready(generation);
        ns.wait_line(|l| l.starts_with(&format!("exit pid={current} ")));
        current = next;
        load.wait_progress(30);
    }
    let report = load.finish();
    assert!(
        report.refused.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert!(
        report.pids.contains(&current),
        "generation 3 serves: {report:?}"
    );
    signal(ns.host_pid(current), libc::SIGTERM);
    ns.wait_line(|l| l.starts_with(&format!("exit pid={current} ")));
    assert!(
        ns.wait_empty().success(),
        "the init exits once the last generation is gone"
    );
}
