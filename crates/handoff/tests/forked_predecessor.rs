//! A predecessor that forked a child (without exec) after its handover: the child holds the
//! predecessor's end of the link between generations. Once the predecessor itself has
//! exited, its successor must be free to upgrade; watching the link alone, it would refuse
//! every upgrade as "still draining" for as long as that child lives.
//!
//! One program plays three parts, chosen by `HANDOFF_TEST_ROLE`: the test (no role), the old
//! generation it starts (`old`), and the new generation that one upgrades to (`new`), which
//! is this program again. Hence no libtest harness (`harness = false`): a role is a process.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use handoff::{Builder, ErrorKind};

const PATIENCE: Duration = Duration::from_secs(20);
const ROLE: &str = "HANDOFF_TEST_ROLE";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("old") => old(),
        Ok("new") => new(),
        _ => test(),
    }
}

/// Starts the old generation and reads what the processes report: the forked child's pid,
/// then how the new generation's upgrade request was answered.
fn test() {
    let mut old = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "old")
        .env("HANDOFF_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = old.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |prefix: &str| loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("no `{prefix}` line within {PATIENCE:?}: {e}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.to_owned();
        }
    };
    let forked: i32 = next("forked ").parse().unwrap();
    let answer = next("upgrade ");
    // SAFETY: SIGKILL to the forked child, which waits to be killed.
    unsafe { libc::kill(forked, libc::SIGKILL) };
    assert!(old.wait().unwrap().success());
    assert_eq!(
        answer, "accepted",
        "the new generation's upgrade once its predecessor has exited, while the child that \
         predecessor forked still holds the link"
    );
    println!(
        "forked_predecessor: a predecessor's forked child does not hold its successor back: ok"
    );
}

/// Generation 1: upgrades to this program (as `new`), then forks a child that keeps its end
/// of the link, reports the child, and exits.
fn old() {
    let exe = std::env::current_exe().unwrap();
    // SAFETY: single-threaded still; the next generation inherits the environment captured at
    // `build`, and must play `new`.
    unsafe { std::env::set_var(ROLE, "new") };
    let up = Builder::new()
        .ready_timeout(PATIENCE)
        .program(&exe, [&exe])
        .build()
        .unwrap();
    let _listener = up.tcp_listener("main", "127.0.0.1:0".parse().unwrap());
    up.ready().unwrap();
    up.upgrade().expect("the new generation reported ready");
    // SAFETY: the child calls only pause(2) (async-signal-safe) until it is killed.
    let child = unsafe { libc::fork() };
    if child == 0 {
        loop {
            // SAFETY: see above.
            unsafe { libc::pause() };
        }
    }
    assert!(child > 0, "fork: {}", std::io::Error::last_os_error());
    println!("forked {child}");
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}

/// Generation 2: once ready, waits for its parent (generation 1) to exit, then asks to
/// upgrade (to a program that exits at once: what matters is whether it is started).
fn new() {
    let up = Builder::new()
        .program("/bin/sh", ["sh", "-c", "exit 3"])
        .build()
        .unwrap();
    let _listener = up.tcp_listener("main", "127.0.0.1:0".parse().unwrap());
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    // SAFETY: no memory is passed.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, parent, 0) } as libc::c_int;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    up.ready().unwrap();
    let mut poll = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    let n = unsafe { libc::poll(&mut poll, 1, PATIENCE.as_millis() as libc::c_int) };
    assert_eq!(n, 1, "generation 1 exited");
    let answer = match up.upgrade() {
        Err(e) if *e.kind() == ErrorKind::UpgradeInProgress => format!("refused: {e}"),
        _ => "accepted".to_owned(),
    };
    println!("upgrade {answer}");
    std::io::stdout().flush().unwrap();
}
