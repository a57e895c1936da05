//! The upgrade state machine in-process, against real children: `/bin/sh` scripts stand in
//! for the next generation, so each outcome (ready, exit, crash, hang, exec failure) can be
//! produced on purpose. Forking is process-global, so the tests take turns.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use handoff::{Builder, ErrorKind, Phase, Upgrader};

static FORK: Mutex<()> = Mutex::new(());

const PATIENCE: Duration = Duration::from_secs(20);

fn upgrader(script: &str, arg: &Path, ready_timeout: Duration) -> Upgrader {
    let up = Builder::new()
        .ready_timeout(ready_timeout)
        .program("/bin/sh", ["sh", "-c", script, arg.to_str().unwrap()])
        .build()
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let _listener = up.tcp_listener("main", addr).unwrap();
    up.ready().unwrap();
    up
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// Children of this process, over all its threads.
fn children() -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(text.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

/// Kills and reaps a child that reported ready (the upgrader hands it over and never waits
/// for it: in a real server the old generation exits first).
fn kill(pid: u32) {
    // SAFETY: kill and waitpid have no memory preconditions beyond the valid status pointer.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid as i32, &mut status, 0);
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn the_child_gets_its_sockets_from_3_its_own_pid_and_nothing_else() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    // The descriptors are listed by a grandchild looking at the child shell from outside: a
    // shell's own redirections make it park stdout on descriptors of its own meanwhile.
    let script = r#"sh -c 'ls /proc/$PPID/fd > "$1"' - "$0.fds"; readlink /proc/$$/fd/3 > "$0.tcp"; readlink /proc/$$/fd/4 > "$0.udp"; readlink /proc/$$/fd/6 > "$0.link"; echo "$$ $LISTEN_PID $LISTEN_FDS $LISTEN_FDNAMES $HANDOFF_READY_FD $HANDOFF_LINK_FD $HANDOFF_GEN" > "$0"; printf 'ready\n' >&"$HANDOFF_READY_FD"; exec sleep 30"#;
    let up = Builder::new()
        .ready_timeout(PATIENCE)
        .program("/bin/sh", ["sh", "-c", script, report.to_str().unwrap()])
        .build()
        .unwrap();
    let tcp = up
        .tcp_listener("main", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    let udp = up
        .udp_socket("dns", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    up.ready().unwrap();
    let child = up.upgrade().expect("the child reported ready");
    assert_eq!(up.phase(), Phase::HandedOver);
    let text = std::fs::read_to_string(&report).unwrap();
    let vars: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(vars[0], child.pid().to_string(), "{text}");
    assert_eq!(
        vars[1], vars[0],
        "LISTEN_PID is the child's own pid: {text}"
    );
    assert_eq!(&vars[2..], ["2", "main:dns", "5", "6", "2"], "{text}");
    let link = std::fs::read_to_string(report.with_extension("link")).unwrap();
    assert!(
        link.starts_with("socket:["),
        "the link to the previous generation is a socket: {link}"
    );
    for (ext, socket) in [("tcp", socket_inode(&tcp)), ("udp", socket_inode(&udp))] {
        let link = std::fs::read_to_string(report.with_extension(ext)).unwrap();
        assert_eq!(
            link.trim(),
            format!("socket:[{socket}]"),
            "the very same {ext} socket, in order"
        );
    }
    let mut fds: Vec<u32> = std::fs::read_to_string(report.with_extension("fds"))
        .unwrap()
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(
        fds,
        [0, 1, 2, 3, 4, 5, 6],
        "only stdio, the sockets, the readiness pipe and the link cross exec"
    );
    // Handed over: this generation does not upgrade again.
    let err = up.upgrade().unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::NotServing);
    kill(child.pid());
}

fn socket_inode(fd: &impl std::os::fd::AsRawFd) -> String {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    let link = link.to_str().unwrap();
    link.strip_prefix("socket:[")
        .and_then(|l| l.strip_suffix(']'))
        .unwrap()
        .to_string()
}

#[test]
fn a_second_upgrade_while_one_is_in_flight_is_refused_and_forks_nothing() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    mkfifo(&gate);
    let script = r#"read line < "$0"; printf 'ready\n' >&"$HANDOFF_READY_FD"; exec sleep 30"#;
    let up = upgrader(script, &gate, PATIENCE);
    let first = std::thread::spawn({
        let up = up.clone();
        move || up.upgrade()
    });
    wait_for("the first upgrade to start", || {
        up.phase() == Phase::Upgrading && !children().is_empty()
    });
    let before = children();
    let err = up.upgrade().unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::UpgradeInProgress, "{err}");
    assert_eq!(children(), before, "the refused request forked nothing");
    assert_eq!(before.len(), 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&gate)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let child = first.join().unwrap().expect("the first upgrade completes");
    assert_eq!(before, [child.pid()]);
    kill(child.pid());
}

fn failed_upgrade(script: &str, ready_timeout: Duration) -> handoff::Error {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let up = upgrader(script, dir.path(), ready_timeout);
    let err = up.upgrade().unwrap_err();
    assert_eq!(
        up.phase(),
        Phase::Serving,
        "rolled back: still serving after {err}"
    );
    if let Some(pid) = err.child_pid() {
        assert!(!alive(pid), "the failed child {pid} is gone and reaped");
    }
    assert!(children().is_empty(), "no child left: {:?}", children());
    err
}

#[test]
fn a_child_that_exits_before_ready_is_reported_with_its_code() {
    let err = failed_upgrade("exit 3", PATIENCE);
    assert!(
        matches!(err.kind(), ErrorKind::ChildExited { code: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("exited 3 before ready"), "{err}");
}

#[test]
fn a_child_that_crashes_before_ready_is_reported_with_its_signal() {
    let err = failed_upgrade("kill -SEGV $$", PATIENCE);
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ChildCrashed {
                signal: libc::SIGSEGV,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_child_that_misses_the_deadline_is_killed() {
    let err = failed_upgrade("exec sleep 30", Duration::from_millis(200));
    assert!(
        matches!(err.kind(), ErrorKind::ReadyTimeout { .. }),
        "{err:?}"
    );
}

#[test]
fn a_child_that_closes_the_pipe_without_ready_still_gets_the_deadline() {
    let err = failed_upgrade(r#"exec 4>&-; exec sleep 30"#, Duration::from_millis(300));
    assert!(
        matches!(err.kind(), ErrorKind::ReadyTimeout { .. }),
        "{err:?}"
    );
}

#[test]
fn an_executable_that_cannot_run_is_a_spawn_error() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let up = Builder::new()
        .program("/nonexistent/server", ["server"])
        .build()
        .unwrap();
    let _l = up
        .tcp_listener("main", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    up.ready().unwrap();
    let err = up.upgrade().unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::Spawn, "{err:?}");
    assert!(err.to_string().contains("/nonexistent/server"), "{err}");
    // The cause is the error's source, not part of its message: a chain of causes prints it
    // once.
    assert!(!err.to_string().contains("No such file"), "{err}");
    let chain = err.chain().to_string();
    assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    assert_eq!(up.phase(), Phase::Serving);
}

#[test]
fn a_stop_during_an_upgrade_abandons_it() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let up = upgrader("exec sleep 30", dir.path(), PATIENCE);
    let upgrade = std::thread::spawn({
        let up = up.clone();
        move || up.upgrade()
    });
    wait_for("the upgrade to start", || {
        up.phase() == Phase::Upgrading && !children().is_empty()
    });
    up.stop();
    let err = upgrade.join().unwrap().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Stopped { .. }), "{err:?}");
    assert_eq!(up.phase(), Phase::Stopping);
    assert!(children().is_empty());
}

#[test]
fn listeners_are_only_handed_out_before_ready() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let up = Builder::new().build().unwrap();
    let _a = up
        .tcp_listener("a", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    let err = up
        .tcp_listener("a", "127.0.0.1:0".parse().unwrap())
        .unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::Usage);
    let err = up.upgrade().unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::Usage, "upgrade before ready: {err}");
    up.ready().unwrap();
    let err = up
        .udp_socket("b", "127.0.0.1:0".parse().unwrap())
        .unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::Usage);
}

#[test]
fn a_child_that_closes_the_pipe_and_then_exits_is_reported_with_its_code_before_the_deadline() {
    let started = Instant::now();
    let err = failed_upgrade(r#"exec 4>&-; sleep 1; exit 5"#, PATIENCE);
    assert!(
        matches!(err.kind(), ErrorKind::ChildExited { code: 5, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < PATIENCE / 2,
        "seen when it exited, not at the deadline"
    );
}

#[test]
fn a_second_upgrader_while_one_lives_is_an_error() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let first = Builder::new().build().unwrap();
    let err = Builder::new().build().err().expect("a second build fails");
    assert_eq!(*err.kind(), ErrorKind::Usage, "{err}");
    assert!(err.to_string().contains("alive"), "{err}");
    // A clone is the same upgrader; once every clone is gone, another may be built (this
    // process inherited nothing, so nothing is lost).
    let clone = first.clone();
    drop(first);
    assert!(Builder::new().build().is_err(), "the clone keeps it alive");
    drop(clone);
    Builder::new()
        .build()
        .expect("a build after the first is gone");
}

#[test]
fn listener_names_must_fit_listen_fdnames() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let up = Builder::new().build().unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let long = "x".repeat(256);
    for bad in ["a:b", "", "caf\u{e9}", "tab\tname", long.as_str()] {
        let err = up.tcp_listener(bad, addr).unwrap_err();
        assert_eq!(*err.kind(), ErrorKind::InvalidName, "{bad:?}: {err}");
    }
    let err = up.tcp_listener("a:b", addr).unwrap_err();
    assert!(err.to_string().contains("`:`"), "{err}");
    // What systemd itself passes is fine: a socket unit's default name, 255 characters.
    let _a = up.tcp_listener("echo.socket", addr).unwrap();
    let _b = up.tcp_listener(&"y".repeat(255), addr).unwrap();
}

#[test]
fn listen_options_configure_fresh_listeners() {
    use std::os::fd::AsRawFd;
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let hooked = std::sync::Arc::new(Mutex::new(Vec::new()));
    let options = handoff::ListenOptions::new()
        .backlog(7)
        .reuse_address(false)
        .only_v6(false)
        .configure({
            let hooked = hooked.clone();
            move |name, fd| {
                hooked.lock().unwrap().push(name.to_string());
                let size: libc::c_int = 65536;
                // SAFETY: a live socket and a pointer to an int of the size given.
                let rc = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        (&size as *const libc::c_int).cast(),
                        4,
                    )
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
        });
    let up = Builder::new().listen_options(options).build().unwrap();
    // The wildcard: binding a specific IPv6 address makes the kernel set IPV6_V6ONLY anyway.
    let v6 = up.tcp_listener("v6", "[::]:0".parse().unwrap()).unwrap();
    let get = |fd: &std::net::TcpListener, level, opt| {
        let mut value: libc::c_int = -1;
        let mut len = 4 as libc::socklen_t;
        // SAFETY: a live socket, an int-sized out-buffer and its length.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value
    };
    assert_eq!(
        get(&v6, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        0,
        "only_v6(false)"
    );
    assert_eq!(
        get(&v6, libc::SOL_SOCKET, libc::SO_REUSEADDR),
        0,
        "reuse_address(false)"
    );
    assert!(
        get(&v6, libc::SOL_SOCKET, libc::SO_RCVBUF) >= 65536,
        "the hook ran before bind"
    );
    assert_eq!(*hooked.lock().unwrap(), ["v6"]);
    // A failing hook fails the listener call.
    drop(up);
    let failing = handoff::ListenOptions::new()
        .configure(|_, _| Err(std::io::Error::other("refused by the hook")));
    let up = Builder::new().listen_options(failing).build().unwrap();
    let err = up
        .tcp_listener("x", "127.0.0.1:0".parse().unwrap())
        .unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::Listen);
    assert!(
        err.chain().to_string().contains("refused by the hook"),
        "{}",
        err.chain()
    );
}

fn windowed(script: &str, arg: &Path, window: Duration) -> (Upgrader, std::net::TcpListener) {
    let up = Builder::new()
        .ready_timeout(PATIENCE)
        .rollback_window(window)
        .program("/bin/sh", ["sh", "-c", script, arg.to_str().unwrap()])
        .build()
        .unwrap();
    let listener = up
        .tcp_listener("main", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    up.ready().unwrap();
    (up, listener)
}

#[test]
fn a_new_generation_that_dies_in_the_rollback_window_gives_the_service_back() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Ready, then dead a moment later (once told to, through a fifo, so that the test sees the
    // handover first).
    let fifo = dir.path().join("go");
    mkfifo(&fifo);
    let (up, listener) = windowed(
        r#"printf 'ready\n' >&"$HANDOFF_READY_FD"; read x < "$0/go"; exit 3"#,
        dir.path(),
        PATIENCE,
    );
    let upgrade = std::thread::spawn({
        let up = up.clone();
        move || up.upgrade()
    });
    wait_for("the handover", || up.phase() == Phase::HandedOver);
    drop(listener); // as an application does once handed over
    let kept = up.kept_listener("main").expect("kept through the window");
    // The application drains, as after any handover; the drain lasts as long as the window.
    let drain = std::thread::spawn({
        let up = up.clone();
        move || up.drain()
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let err = upgrade.join().unwrap().unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::DiedAfterReady {
                code: Some(3),
                signal: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(up.phase(), Phase::Serving, "serving again");
    assert!(children().is_empty(), "the dead generation was reaped");
    assert_eq!(
        drain.join().unwrap(),
        handoff::Drained::Resume,
        "the drain says to serve again"
    );
    // The kept listener is the one this generation bound: connects reach it.
    let addr = std::net::TcpListener::from(kept).local_addr().unwrap();
    std::net::TcpStream::connect(addr).expect("the listener still listens");
    // The upgrader still holds its copy, to pass on at the next upgrade.
    assert!(up.kept_listener("main").is_ok());
}

#[test]
fn a_rollback_window_that_closes_lets_go_of_the_listeners() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (up, listener) = windowed(
        r#"printf 'ready\n' >&"$HANDOFF_READY_FD"; exec sleep 30"#,
        dir.path(),
        Duration::from_millis(300),
    );
    drop(listener);
    let started = Instant::now();
    let child = up
        .upgrade()
        .expect("the window closes with the child alive");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "returned at the window's close"
    );
    assert_eq!(up.phase(), Phase::HandedOver);
    assert_eq!(
        *up.kept_listener("main").unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(up.drain(), handoff::Drained::Exit { remaining: 0 });
    assert!(alive(child.pid()), "the new generation is the service now");
    kill(child.pid());
}

/// Opens the fifo `go` for writing, which lets the child blocked reading it go on.
fn release(fifo: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
}

#[test]
fn a_handover_undone_after_the_application_stopped_accepting_is_answered_resume() {
    // The application sees the handover and stops accepting; the new generation dies and this
    // one resumes before the application gets to its drain. The drain must still say to serve
    // again: nobody else serves.
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    mkfifo(&fifo);
    let (up, listener) = windowed(
        r#"printf 'ready\n' >&"$HANDOFF_READY_FD"; read x < "$0/go"; exit 3"#,
        dir.path(),
        PATIENCE,
    );
    let upgrade = std::thread::spawn({
        let up = up.clone();
        move || up.upgrade()
    });
    assert_eq!(up.wait_done(), Phase::HandedOver);
    drop(listener);
    release(&fifo);
    let err = upgrade.join().unwrap().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::DiedAfterReady { code: Some(3), .. }),
        "{err:?}"
    );
    assert_eq!(up.phase(), Phase::Serving, "serving again");
    assert_eq!(up.drain(), handoff::Drained::Resume);
    let kept = std::net::TcpListener::from(up.kept_listener("main").unwrap());
    std::net::TcpStream::connect(kept.local_addr().unwrap()).expect("serving again");
    // The resume is answered once: the next drain (say, of a stop) exits.
    up.stop();
    assert_eq!(up.drain(), handoff::Drained::Exit { remaining: 0 });
}

#[test]
fn a_handover_undone_before_the_application_looked_is_still_reported() {
    // The new generation dies right after it reported ready: the upgrade is over before the
    // application looks. It must still be told of the handover (and stop its accept loop),
    // then be told to serve again, rather than be left with a parked accept loop or exit.
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (up, _listener) = windowed(
        r#"printf 'ready\n' >&"$HANDOFF_READY_FD"; exit 4"#,
        dir.path(),
        PATIENCE,
    );
    let err = up.upgrade().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::DiedAfterReady { code: Some(4), .. }),
        "{err:?}"
    );
    assert_eq!(up.phase(), Phase::Serving);
    assert_eq!(
        up.wait_done(),
        Phase::HandedOver,
        "the handover is reported although already undone"
    );
    assert_eq!(up.drain(), handoff::Drained::Resume, "at once");
    assert!(up.kept_listener("main").is_ok());
    // Answered: the application serves, and the next look waits for the next handover.
    let upgrade = std::thread::spawn({
        let up = up.clone();
        move || up.upgrade()
    });
    assert_eq!(up.wait_done(), Phase::HandedOver);
    let _ = upgrade.join().unwrap();
}

#[test]
fn a_new_generation_that_says_it_stops_closes_the_rollback_window() {
    // What a new generation's `stop` does while its predecessor may be in its window: one byte
    // on the link. Its exit that follows is a stop, not a crash: the old generation lets go
    // and exits, rather than take the service back.
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("go");
    mkfifo(&fifo);
    let (up, listener) = windowed(
        r#"printf 'ready\n' >&"$HANDOFF_READY_FD"; read x < "$0/go"; printf s >&"$HANDOFF_LINK_FD"; exit 0"#,
        dir.path(),
        PATIENCE,
    );
    let upgrade = std::thread::spawn({
        let up = up.clone();
        move || up.upgrade()
    });
    assert_eq!(up.wait_done(), Phase::HandedOver);
    drop(listener);
    let started = Instant::now();
    release(&fifo);
    let child = upgrade
        .join()
        .unwrap()
        .expect("the window closes on the stop");
    assert!(
        started.elapsed() < PATIENCE,
        "closed on the stop, not at the window's end"
    );
    assert_eq!(up.phase(), Phase::HandedOver);
    assert_eq!(up.drain(), handoff::Drained::Exit { remaining: 0 });
    kill(child.pid());
}

#[test]
fn the_child_starts_with_no_blocked_signal_no_handler_of_ours_and_no_stray_descriptor() {
    // What a server's process may look like when it upgrades: the upgrading thread blocks
    // SIGTERM (signal-handling threads do), a handler is installed, and a descriptor was
    // opened without close-on-exec. None of it may reach the next generation.
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // The child is looked at from here once it reported ready, as it was started: the shell
    // execs `cat` at once (a shell that forks, waits or redirects for a builtin blocks signals
    // or parks descriptors of its own meanwhile), which copies what this test writes in the
    // fifo (`ready`) to the readiness pipe, and waits for more while the test holds it open.
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let script = r#"exec cat "$0/fifo" >&"$HANDOFF_READY_FD""#;
    let up = upgrader(script, dir.path(), PATIENCE);
    extern "C" fn on_usr1(_: libc::c_int) {}
    const STRAY: libc::c_int = 100;
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: a handler that does nothing, put back to default below; a copy of a descriptor
    // this test owns at a number nobody uses, without close-on-exec, closed below.
    unsafe {
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
        assert_eq!(
            libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&null), libc::F_DUPFD, STRAY),
            STRAY
        );
    }
    let upgrade = std::thread::spawn({
        let up = up.clone();
        move || {
            // SAFETY: a mask change in this thread alone, which ends with it.
            unsafe {
                let mut term: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut term);
                libc::sigaddset(&mut term, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &term, std::ptr::null_mut());
            }
            up.upgrade()
        }
    });
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(b"ready\n").unwrap();
    let child = upgrade.join().unwrap();
    // SAFETY: SIGUSR1 back to its default; the stray copy closed.
    unsafe {
        libc::signal(libc::SIGUSR1, libc::SIG_DFL);
        libc::close(STRAY);
    }
    let child = child.expect("the child reported ready");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
    let mask = |key: &str| {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        u64::from_str_radix(line[key.len()..].trim(), 16).unwrap()
    };
    let bit = |sig: i32| 1u64 << (sig - 1);
    assert_eq!(mask("SigBlk:"), 0, "nothing blocked:\n{status}");
    assert_eq!(
        mask("SigIgn:") & (bit(libc::SIGPIPE) | bit(libc::SIGUSR1) | bit(libc::SIGTERM)),
        0,
        "SIGPIPE (ignored by Rust) back to default, and nothing of ours ignored:\n{status}"
    );
    assert_eq!(
        mask("SigCgt:") & bit(libc::SIGUSR1),
        0,
        "our handler did not cross:\n{status}"
    );
    let fd_dir = format!("/proc/{}/fd", child.pid());
    let mut fds: Vec<u32> = std::fs::read_dir(&fd_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(
        fds,
        [0, 1, 2, 3, 4, 5, 6],
        "stdio, the listener, the readiness pipe, the link and cat's fifo; not fd {STRAY}"
    );
    let six = std::fs::read_link(format!("{fd_dir}/6")).unwrap();
    assert_eq!(six, fifo, "fd 6 is what cat opened");
    kill(child.pid());
    drop(writer);
}
