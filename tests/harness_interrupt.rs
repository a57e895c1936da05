//! SIGINT to `handoff check` in the middle of a run: the CLI must stop the target it launched,
//! every generation of it, and exit 130, leaving no process behind.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
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

#[test]
fn sigint_in_the_middle_of_a_run_leaves_no_process_of_the_target() {
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
    // A long run with one restart early on, so that two generations (the second orphaned
    // when the first exits) exist when the interrupt comes; long connections stay open.
    std::fs::write(
        &scenario,
        format!(
            r#"id = "test/interrupt"
description = "A run interrupted by SIGINT."
requirement = "The harness MUST stop every process of the target when it is interrupted."
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

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("sending SIGINT to handoff");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("handoff did not exit after SIGINT\nstdout:\n{out}\nstderr:\n{err}")
    });
    assert_eq!(status.code(), Some(130), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the interrupt cut the 60 s run short"
    );

    let left = processes_mentioning(&marker);
    assert!(
        left.is_empty(),
        "processes of the target survived the interrupt: {left:?}"
    );
    for pid in [first, second] {
        assert!(!alive(pid), "generation pid {pid} survived the interrupt");
    }
}
