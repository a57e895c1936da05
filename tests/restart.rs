//! Restart behaviour of the reference servers, as real processes on real sockets with real
//! signals: every test forks and execs the built binaries, binds port 0, and waits on the
//! servers' own event lines or on pidfds, under a bound.

mod util;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use util::*;

fn restarts_under_load(bin: &str, proto: Proto, per_conn: usize) {
    let mut server = Server::start(bin, &["--drain-timeout-ms", "5000"]);
    let load = Load::start(server.addr(), proto, 4, per_conn);
    load.wait_progress(50);
    let mut pids = vec![server.pid_file()];
    for generation in 2..=4 {
        let (old, new) = restart(&mut server, generation);
        assert_ne!(old, new, "the pid must change on each restart");
        assert_eq!(
            server.pid_file(),
            new,
            "the PID file names the new generation"
        );
        let drained = server.wait_line(|l| l.starts_with(&format!("exit pid={old} ")));
        assert_eq!(
            field(&drained, "remaining"),
            "0",
            "the old generation drained before exiting"
        );
        pids.push(new);
        load.wait_progress(50);
    }
    let report = load.finish();
    report.assert_clean(201);
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "four distinct generations: {pids:?}");
    let served: BTreeSet<u32> = report.pids.intersection(&distinct).copied().collect();
    assert_eq!(served, distinct, "every generation served replies");
    server.stop();
}

#[test]
fn echo_restarts_three_times_under_short_connections_without_loss() {
    restarts_under_load(ECHO, Proto::Echo, 1);
}

#[test]
fn http_restarts_three_times_under_keepalive_load_without_loss() {
    restarts_under_load(HTTP, Proto::Http, 20);
}

#[test]
fn the_listening_socket_is_the_same_socket_across_generations() {
    let mut server = Server::start(ECHO, &[]);
    let Addr::Tcp(addr) = server.addr() else {
        unreachable!()
    };
    let listening = listening_inodes(addr.port());
    assert_eq!(
        listening.len(),
        1,
        "one listening socket on port {}: {listening:?}",
        addr.port()
    );
    let first = server.pid_file();
    let held_by_first: BTreeSet<u64> = socket_inodes(first)
        .intersection(&listening)
        .copied()
        .collect();
    assert_eq!(held_by_first, listening);
    for generation in 2..=3 {
        let (_, pid) = restart(&mut server, generation);
        let held: BTreeSet<u64> = socket_inodes(pid)
            .intersection(&listening_inodes(addr.port()))
            .copied()
            .collect();
        assert_eq!(
            held, listening,
            "generation {generation} (pid {pid}) holds the very socket generation 1 bound"
        );
    }
    server.stop();
}

#[test]
fn two_sighups_a_millisecond_apart_start_exactly_one_child() {
    let mut server = Server::start(ECHO, &["--drain-timeout-ms", "2000"]);
    let load = Load::start(server.addr(), Proto::Echo, 2, 1);
    load.wait_progress(20);
    let old = server.pid_file();
    signal(old, libc::SIGHUP);
    let sent = Instant::now();
    while sent.elapsed() < Duration::from_millis(1) {
        std::hint::spin_loop();
    }
    signal(old, libc::SIGHUP);
    server.wait_ready(2);
    server.wait_line(|l| l.starts_with(&format!("exit pid={old} ")));
    assert!(wait_gone(old, PATIENCE));
    let started: Vec<&String> = server
        .seen
        .iter()
        .filter(|l| l.starts_with(&format!("upgrade started pid={old} ")))
        .collect();
    assert_eq!(started.len(), 1, "exactly one child: {:#?}", server.seen);
    // The second signal either coalesced with the first or was refused; it never forked.
    let refused = server
        .seen
        .iter()
        .filter(|l| l.starts_with("upgrade refused"))
        .count();
    assert!(refused <= 1, "{:#?}", server.seen);
    load.wait_progress(20);
    let report = load.finish();
    assert!(
        report.refused.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    server.stop();
}

fn rollback(mode: &str) {
    let mut server = Server::start(
        ECHO,
        &[
            "--fail-next-file",
            "{dir}/fail",
            "--ready-timeout-ms",
            "700",
        ],
    );
    let load = Load::start(server.addr(), Proto::Echo, 3, 1);
    load.wait_progress(30);
    let old = server.pid_file();
    let pid_file_before = std::fs::read(server.path("pid")).unwrap();
    std::fs::write(server.path("fail"), mode).unwrap();
    signal(old, libc::SIGHUP);
    let failed = server.wait_line(|l| l.starts_with(&format!("upgrade failed pid={old} ")));
    let child: u32 = field(&failed, "child").parse().unwrap();
    assert!(
        !alive(child),
        "the failed child {child} was killed and reaped: {failed}"
    );
    assert!(
        children(old).is_empty(),
        "no child left behind: {:?}",
        children(old)
    );
    let expected = match mode {
        "crash" => "killed by signal 6",
        "exit" => "exited 1",
        "hang" => "not ready within 700 ms",
        _ => unreachable!(),
    };
    assert!(
        failed.contains(expected),
        "{failed:?} should say {expected:?}"
    );
    assert_eq!(
        std::fs::read(server.path("pid")).unwrap(),
        pid_file_before,
        "PID file unchanged"
    );
    assert!(alive(old), "the old generation keeps serving");
    load.wait_progress(30);
    let report = load.finish();
    assert!(report.refused.is_empty(), "refused: {:?}", report.refused);
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    assert_eq!(
        report.pids,
        BTreeSet::from([old]),
        "only the old generation served"
    );
    assert!(
        !server
            .seen
            .iter()
            .any(|l| l.starts_with("ready ") && l.contains(" gen=2 ")),
        "{:#?}",
        server.seen
    );
    // And the next upgrade, with nothing sabotaged, goes through.
    let (_, new) = restart(&mut server, 2);
    assert_eq!(server.pid_file(), new);
    server.stop();
}

#[test]
fn crash_before_ready_rolls_back() {
    rollback("crash");
}

#[test]
fn exit_before_ready_rolls_back() {
    rollback("exit");
}

#[test]
fn hang_past_the_ready_deadline_rolls_back() {
    rollback("hang");
}

#[test]
fn a_request_in_flight_at_the_restart_is_answered_by_the_old_generation() {
    let mut server = Server::start(ECHO, &["--delay-ms", "500", "--drain-timeout-ms", "5000"]);
    let old = server.pid_file();
    let mut conn = server.addr().connect().unwrap();
    // A first exchange proves the old generation has accepted this connection.
    assert_eq!(echo_request(&mut *conn, "warm-up").unwrap(), (old, true));
    conn.write_all(b"slow-one\n").unwrap();
    // The reply takes 500 ms; the upgrade lands in the middle of it.
    signal(old, libc::SIGHUP);
    let new = server.wait_ready(2);
    let reply = read_reply_line(&mut *conn).expect("the in-flight request got its full reply");
    assert_eq!(
        reply,
        format!("pid={old} gen=1 conn=close slow-one"),
        "served whole by the generation that accepted it"
    );
    server.wait_line(|l| l.starts_with(&format!("exit pid={old} ")));
    let mut conn = server.addr().connect().unwrap();
    assert_eq!(echo_request(&mut *conn, "after").unwrap().0, new);
    drop(conn); // else the final stop rightly waits out its drain deadline for it
    server.stop();
}

#[test]
fn idle_long_lived_connections_are_cut_at_the_drain_deadline_not_before() {
    let drain = Duration::from_millis(1000);
    let mut server = Server::start(ECHO, &["--drain-timeout-ms", "1000"]);
    let old = server.pid_file();
    let mut idle: Vec<_> = (0..3)
        .map(|i| {
            let mut c = server.addr().connect().unwrap();
            assert_eq!(echo_request(&mut *c, &format!("hold-{i}")).unwrap().0, old);
            c
        })
        .collect();
    signal(old, libc::SIGHUP);
    let _new = server.wait_ready(2);
    let handed_over = Instant::now();
    let draining = server.wait_line(|l| l.starts_with(&format!("draining pid={old} ")));
    assert_eq!(field(&draining, "connections"), "3");
    assert!(wait_gone(old, drain + PATIENCE));
    let took = handed_over.elapsed();
    // Exits at the deadline: not before it (the connections were still open), and not long
    // after (the bound is loose because this machine is shared; the point is "not forever").
    assert!(
        took >= drain - Duration::from_millis(50),
        "exited after {took:?}, before the {drain:?} deadline"
    );
    assert!(
        took < drain + Duration::from_secs(5),
        "exited {took:?} after handover, long past {drain:?}"
    );
    let exit = server.wait_line(|l| l.starts_with(&format!("exit pid={old} ")));
    assert_eq!(field(&exit, "remaining"), "3");
    for c in &mut idle {
        let mut buf = [0u8; 16];
        assert!(
            matches!(c.read(&mut buf), Ok(0) | Err(_)),
            "the cut connection is closed"
        );
    }
    server.stop();
}

#[test]
fn twenty_restarts_leak_no_descriptor() {
    let mut server = Server::start(ECHO, &[]);
    let (_, second) = restart(&mut server, 2);
    let baseline = fd_count(second);
    let mut last = second;
    for generation in 3..=22 {
        last = restart(&mut server, generation).1;
    }
    assert_eq!(
        fd_count(last),
        baseline,
        "generation 22 holds as many descriptors as generation 2"
    );
    let mut conn = server.addr().connect().unwrap();
    assert_eq!(echo_request(&mut *conn, "still").unwrap().0, last);
    drop(conn);
    server.stop();
}

#[test]
fn a_unix_listener_survives_a_restart_and_its_path_stays() {
    let mut server = Server::start_cmd(
        std::process::Command::new(ECHO),
        &[],
        Some("unix:{dir}/echo.sock"),
    );
    let path = server.path("echo.sock");
    let load = Load::start(server.addr(), Proto::Echo, 2, 1);
    load.wait_progress(20);
    let (old, new) = restart(&mut server, 2);
    assert!(
        path_exists(&path),
        "the socket path was unlinked by the handover"
    );
    load.wait_progress(20);
    let report = load.finish();
    assert!(
        report.refused.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert!(
        report.pids.contains(&old) && report.pids.contains(&new),
        "{report:?}"
    );
    server.stop();
}

#[test]
fn started_by_systemd_socket_activate_it_adopts_the_socket_and_restarts_cleanly() {
    let activate = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(activate).exists(),
        "{activate} is missing: install Debian's `systemd` package (.ci/run does)"
    );
    // systemd-socket-activate binds the address itself, so it needs a concrete port: take a
    // free one from the kernel and release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(activate);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=main")
        .arg(ECHO);
    cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
    let mut server = Server::spawn(cmd, &[], None);
    server.wait_line(|l| l.starts_with("stderr: Listening on"));
    // It waits for the first connection before it executes the server; that connection is
    // then the server's to answer.
    let addr = Addr::Tcp(format!("127.0.0.1:{port}").parse().unwrap());
    let first_client = std::thread::spawn(move || {
        let mut conn = addr.connect().unwrap();
        echo_request(&mut *conn, "wake-up")
    });
    server.wait_first_ready();
    assert!(
        first_client.join().unwrap().is_ok(),
        "the connection that triggered activation was served"
    );
    let first = server.pid_file();
    assert_eq!(
        first,
        server.child.id(),
        "systemd-socket-activate execs the server in place"
    );
    // The server adopted the socket systemd-socket-activate bound, not one of its own.
    assert_eq!(listening_inodes(port).len(), 1);
    let load = Load::start(server.addr(), Proto::Echo, 2, 1);
    load.wait_progress(20);
    let (_, new) = restart(&mut server, 2);
    load.wait_progress(20);
    let report = load.finish();
    assert!(
        report.refused.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert!(report.pids.contains(&new));
    server.stop();
}

#[test]
fn the_service_manager_hears_ready_reloading_the_new_mainpid_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let manager = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    manager.set_read_timeout(Some(PATIENCE)).unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = manager
            .recv(&mut buf)
            .expect("a notification within the patience bound");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut cmd = std::process::Command::new(ECHO);
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let mut server = Server::start_cmd(cmd, &[], Some("127.0.0.1:0"));
    let first = server.pid_file();
    assert_eq!(recv(), format!("READY=1\nMAINPID={first}"));
    signal(first, libc::SIGHUP);
    let reloading = recv();
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    let second = server.wait_ready(2);
    assert_eq!(recv(), format!("MAINPID={second}\nREADY=1"));
    signal(second, libc::SIGTERM);
    assert_eq!(recv(), "STOPPING=1");
    assert!(wait_gone(second, PATIENCE));
    assert!(
        !server.path("pid").exists(),
        "the final stop removes the PID file"
    );
}

#[test]
fn a_restart_while_the_previous_generation_drains_is_refused() {
    // At most two generations alive: a new generation does not start a third while its
    // predecessor still drains (here, held by an idle connection until its 1 s deadline).
    let mut server = Server::start(ECHO, &["--drain-timeout-ms", "1000"]);
    let old = server.pid_file();
    let mut idle = server.addr().connect().unwrap();
    assert_eq!(echo_request(&mut *idle, "hold").unwrap().0, old);
    signal(old, libc::SIGHUP);
    let new = server.wait_ready(2);
    server.wait_line(|l| l.starts_with(&format!("draining pid={old} ")));
    signal(new, libc::SIGHUP);
    let refused = server.wait_line(|l| l.starts_with(&format!("upgrade refused pid={new} ")));
    assert!(refused.contains("still draining"), "{refused}");
    assert!(
        alive(old),
        "the predecessor was still draining when the restart was refused"
    );
    // Once it is gone, the next restart goes through.
    assert!(wait_gone(old, PATIENCE));
    drop(idle);
    let (_, third) = restart(&mut server, 3);
    assert_eq!(server.pid_file(), third);
    server.stop();
}
