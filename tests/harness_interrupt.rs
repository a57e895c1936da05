//! SIGINT to `handoff check` in the middle of a run: the CLI must stop the target it launched,
//! every generation of it, and exit 130, leaving no process behind.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod util;

/// Reads a child's pipe to the end on a thread, so the child never blocks on a full pipe.
fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Waits (bounded) for `check` to hold, polling every 10 ms.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if util::wait_gone(child.id(), timeout) {
        child.wait().ok()
    } else {
        None
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Live (non-zombie) processes whose command line contains `marker`.
fn processes_mentioning(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(marker) && pid != std::process::id() {
            found.push((pid, cmdline));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    // A zombie has no command line and state Z; only a running process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// A `handoff check` run in progress against `handoff-echo`, restarted once so that two
/// generations exist (the second orphaned when the first exits), long connections open.
struct Running {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    /// Every process of the target has this in its command line (the pid file's path).
    marker: String,
    generations: [u32; 2],
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    /// Whatever a failed assertion left behind is killed, so a failing test leaks nothing.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.try_wait();
        for (pid, _) in processes_mentioning(&self.marker) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn start_run() -> Running {
    let handoff = Path::new(env!("CARGO_BIN_EXE_handoff"));
    let echo = handoff.with_file_name("handoff-echo");
    assert!(
        echo.exists(),
        "`{}` is not built; run `cargo build --workspace` first (the CLI runs it as `{{bin}}/handoff-echo`)",
        echo.display()
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let marker = dir.path().to_string_lossy().into_owned();
    let pid_file = dir.path().join("echo.pid");
    let scenario = dir.path().join("interrupt.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"id = "test/interrupt"
description = "A run that is cut short."
requirement = "The harness MUST stop every process of the target when it is cut short."
duration-ms = 60000

[target]
command = ["{{bin}}/handoff-echo", "--listen", "127.0.0.1:{{port}}", "--pid-file", "{pid}", "--drain-timeout-ms", "30000"]
ready = "connect"
restart = {{ signal = "SIGHUP", to = "newest" }}
stop = {{ signal = "SIGTERM", to = "newest" }}
drain-timeout-ms = 30000

[load]
profile = "long"
protocol = "line"
clients = 4

[[events]]
at-ms = 200
action = "restart"

[expect]
pass = ["no-dropped"]
"#,
            pid = pid_file.display()
        ),
    )
    .expect("writing the scenario");

    let started = Instant::now();
    let mut child = Command::new(handoff)
        .arg("check")
        .arg(&scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting handoff check");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));

    // Ready, then restarted: the PID file names a second generation.
    wait_for(
        "the first generation's PID file",
        Duration::from_secs(20),
        || read_pid(&pid_file).is_some(),
    );
    let first = read_pid(&pid_file).expect("pid file");
    wait_for(
        "the restart to a second generation",
        Duration::from_secs(20),
        || read_pid(&pid_file).is_some_and(|p| p != first),
    );
    let second = read_pid(&pid_file).expect("pid file");
    assert!(alive(second), "the second generation {second} is running");
    assert!(
        !processes_mentioning(&marker).is_empty(),
        "the target runs while the harness does"
    );
    Running {
        child,
        stdout: Some(stdout),
        stderr: Some(stderr),
        marker,
        generations: [first, second],
        started,
        _dir: dir,
    }
}

#[test]
fn sigint_in_the_middle_of_a_run_leaves_no_process_of_the_target() {
    let mut run = start_run();
    kill(Pid::from_raw(run.child.id() as i32), Signal::SIGINT).expect("sending SIGINT to handoff");
    let status = wait_exit(&mut run.child, Duration::from_secs(20));
    if status.is_none() {
        let _ = run.child.kill();
        let _ = run.child.wait();
    }
    let joined = |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let out = joined(run.stdout.take());
    let err = joined(run.stderr.take());
    let status = status.unwrap_or_else(|| {
        panic!("handoff did not exit after SIGINT\nstdout:\n{out}\nstderr:\n{err}")
    });
    assert_eq!(status.code(), Some(130), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        run.started.elapsed() < Duration::from_secs(40),
        "the interrupt cut the 60 s run short"
    );
    // The harness reaped and killed everything before it exited: nothing is left, at once.
    let left = processes_mentioning(&run.marker);
    assert!(
        left.is_empty(),
        "processes of the target survived the interrupt: {left:?}"
    );
    for pid in run.generations {
        assert!(!alive(pid), "generation pid {pid} survived the interrupt");
    }
}

#[test]
fn sigkill_of_the_harness_still_takes_the_target_down() {
    // SIGKILL gives the harness no chance to clean up; the target's shim learns of its death
    // from the kernel (parent-death signal) and kills the target's process group.
    let mut run = start_run();
    kill(Pid::from_raw(run.child.id() as i32), Signal::SIGKILL)
        .expect("sending SIGKILL to handoff");
    let status = run.child.wait().expect("reaping handoff");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    wait_for(
        "the target's processes to be gone after the harness died",
        Duration::from_secs(10),
        || processes_mentioning(&run.marker).is_empty(),
    );
    for pid in run.generations {
        assert!(!alive(pid), "generation pid {pid} survived the harness");
    }
}
