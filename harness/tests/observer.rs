//! The observer against real processes whose shape a unit test cannot fake.
//!
//! The helper is looked up beside this test's own target directory (`target/debug/`), where
//! `cargo build --workspace` (or `cargo test --workspace`) puts it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handoff_harness::observer::{Observer, parse_stat, running};
use handoff_harness::target::ConnectAddr;

fn helper(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/debug/deps/observer-HASH -> target/debug
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("the test runs from target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "`{}` is not built; run `cargo build --workspace` (with the same target dir) first",
        path.display()
    );
    path
}

/// `(state, threads)` of `pid` from `/proc/PID/stat`.
fn state(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|s| (s.state, s.threads))
}

#[test]
// The observer's reaper collects the child's status, not a `wait` here.
#[allow(clippy::zombie_processes)]
fn a_zombie_leader_whose_other_thread_runs_is_not_an_exit() {
    // A server's exit (exit_group) can leave its main thread a zombie for milliseconds while
    // its other threads die: the process still holds its descriptors and its successor still
    // sees it, so the harness must not call it exited then (it would, for instance, send an
    // after-drain restart that the successor rightly refuses, and judge that a failed
    // takeover). The helper holds that state for 1.5 s.
    let mut child = Command::new(helper("leader-exits-first"))
        .env("LINGER_MS", "1500")
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn leader-exits-first");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("its line");
    assert_eq!(line.trim(), format!("leader-exiting pid={pid}"));
    let deadline = Instant::now() + Duration::from_secs(1);
    while state(pid) != Some(('Z', 2)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        state(pid),
        Some(('Z', 2)),
        "a zombie leader, one more thread"
    );
    let observer = Observer::start(
        pid,
        None,
        "test-tag-leader",
        ConnectAddr::Tcp("127.0.0.1:9".parse().expect("addr")),
        Instant::now(),
    )
    .expect("observer");
    observer.scan();
    assert_eq!(
        state(pid),
        Some(('Z', 2)),
        "still in that state after the scan"
    );
    assert!(running(pid), "pid {pid} is running");
    assert_eq!(observer.live_pids(), vec![pid], "alive while a thread runs");
    let (procs, _) = observer.records();
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert_eq!(procs[0].exited, None, "{procs:?}");
    // Once its last thread is gone it has exited, with the status it exited with.
    assert!(observer.wait_gone(Duration::from_secs(10), || false));
    let (procs, _) = observer.records();
    assert!(procs[0].exited.is_some(), "{procs:?}");
    assert!(!running(pid));
}
