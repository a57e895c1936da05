//! Hand-over to an unrelated process through a unix socket, and the control socket, with the
//! reference servers as real processes: the new process is started by the test, not by the
//! running server. Refused peers (another uid, a socket made world-accessible) are shown to
//! hold no descriptor with `handoff-test-peer`, which reports what it was left.

mod util;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use util::*;

const CTL: &str = env!("CARGO_BIN_EXE_handoff-ctl");
const PEER: &str = env!("CARGO_BIN_EXE_handoff-test-peer");

/// Starts the echo server with a hand-over socket and a control socket in `{dir}/run`, and
/// `extra` flags.
fn old(extra: &[&str]) -> Server {
    let mut args = vec![
        "--handoff-socket",
        "{dir}/run/handover.sock",
        "--control-socket",
        "{dir}/run/control.sock",
        "--fail-next-file",
        "{dir}/fail",
    ];
    args.extend_from_slice(extra);
    Server::start(ECHO, &args)
}

/// Starts a new process that takes over from `old` (listening where it does, and offering
/// the listeners at the same socket in turn), with `extra` flags; not waited for.
fn taker(old: &Server, extra: &[&str]) -> Server {
    let socket = old.path("run/handover.sock").display().to_string();
    let fail = old.path("fail").display().to_string();
    let mut args = vec![
        "--take-over",
        socket.as_str(),
        "--handoff-socket",
        socket.as_str(),
        "--fail-next-file",
        fail.as_str(),
    ];
    args.extend_from_slice(extra);
    Server::spawn(Command::new(ECHO), &args, Some(&old.listen))
}

/// Which pid answers a request now.
fn served_by(server: &Server) -> u32 {
    let mut conn = server.addr().connect().expect("connect");
    echo_request(&mut *conn, "who").expect("request").0
}

/// Stops a process that took over (its PID file is its predecessor's) and waits until it
/// is gone.
fn stop(server: Server, pid: u32) {
    signal(pid, libc::SIGTERM);
    assert!(
        wait_gone(pid, PATIENCE),
        "pid {pid} still alive after SIGTERM"
    );
    drop(server);
}

fn ctl(socket: &str, command: &str) -> Output {
    Command::new(CTL)
        .args(["--socket", socket, "--timeout-ms", "20000", command])
        .output()
        .expect("running handoff-ctl")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Runs `handoff-test-peer` against `socket` with `extra` arguments, through `wrap` (e.g.
/// `setpriv ...`) if given.
fn peer(wrap: &[&str], socket: &str, extra: &[&str]) -> String {
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(PEER);
            c
        }
        None => Command::new(PEER),
    };
    let out = cmd
        .arg(socket)
        .args(extra)
        .output()
        .expect("running handoff-test-peer");
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!("[peer] {shown}");
    shown
}

fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{why} needs root; CI runs as root");
}

#[test]
fn an_unrelated_process_takes_over_under_load_and_the_old_one_drains() {
    let mut a = old(&[]);
    let first = a.wait_ready(1);
    let port: u16 = a.listen.rsplit(':').next().unwrap().parse().unwrap();
    let inodes = listening_inodes(port);
    let load = Load::start(a.addr(), Proto::Echo, 4, 3);
    load.wait_progress(50);
    let mut b = taker(&a, &[]);
    let second = b.wait_ready(2);
    a.wait_line(|l| l.starts_with("upgrade ok ") && l.contains(&format!("child={second}")));
    a.wait_line(|l| l.starts_with("exit "));
    assert!(
        wait_gone(first, PATIENCE),
        "the old process exits after its drain"
    );
    let seen = load.ok();
    load.wait_progress(seen + 50);
    let report = load.finish();
    assert!(
        report.refused.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert!(
        report.pids.contains(&second),
        "the new process served: {report:?}"
    );
    assert_eq!(listening_inodes(port), inodes, "the very listening socket");
    assert_eq!(a.pid_file(), second, "the old process wrote the new pid");
    assert_eq!(served_by(&a), second, "at the same address");
    // The new process offers the listeners in turn, at the same place.
    let mut c = taker(&a, &[]);
    let third = c.wait_ready(3);
    b.wait_line(|l| l.starts_with("exit "));
    assert_eq!(served_by(&a), third);
    drop(b);
    stop(c, third);
}

#[test]
fn a_peer_of_another_uid_is_refused_and_left_no_descriptor() {
    require_root("running a peer as uid 65534 (setpriv)");
    // An abstract socket: no directory to keep the other uid out, so its uid alone decides.
    let name = format!("@handoff-test-{}", std::process::id());
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let mut a = Server::start(ECHO, &["--handoff-socket", &name]);
    let first = a.wait_ready(1);
    // The peer trusts us (root) to offer: the refusal below is the running process's.
    let shown = peer(&setpriv, &name, &["--allow-uid", "0"]);
    assert!(shown.contains("refused: "), "{shown}");
    assert!(shown.contains("runs as uid 65534"), "{shown}");
    assert!(shown.contains("sockets: 0"), "{shown}");
    a.wait_line(|l| l.contains("hand-over refused") && l.contains("uid 65534"));
    assert_eq!(served_by(&a), first, "still serving");
    drop(a);
    // The same peer, allowed: it takes the listener (so the refusal above was the uid's).
    let mut a = Server::start(ECHO, &["--handoff-socket", &name, "--allow-uid", "65534"]);
    let first = a.wait_ready(1);
    let shown = peer(&setpriv, &name, &["--allow-uid", "0"]);
    assert!(shown.contains("took main=true"), "{shown}");
    // It never reports ready and exits: the old process rolls back and serves on.
    a.wait_line(|l| l.starts_with("upgrade failed "));
    assert_eq!(served_by(&a), first);
    a.stop();
}

/// A hand-over message as its documented layout writes it, offering one TCP listener
/// `main` bound to `address`.
fn offer_of_one(address: &str) -> Vec<u8> {
    let mut out = b"HOFF".to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&std::process::id().to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.push(1);
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(b"main");
    out.extend_from_slice(&(address.len() as u16).to_le_bytes());
    out.extend_from_slice(address.as_bytes());
    out
}

#[test]
fn listeners_offered_by_a_process_of_another_uid_are_not_taken() {
    use nix::sys::socket::{
        AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, accept,
        bind, listen, sendmsg, socket,
    };
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    require_root("running the new process as uid 65534 (setpriv)");
    // An impostor bound the abstract name first (here this test, as root): it offers a
    // well-formed message with a real listener, which a taker that checks only the message
    // would serve on, and the impostor could accept from.
    let name = format!("handoff-impostor-{}", std::process::id());
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        sock.as_raw_fd(),
        &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
    )
    .unwrap();
    listen(&sock, Backlog::new(1).unwrap()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let offer = offer_of_one(&listener.local_addr().unwrap().to_string());
    let impostor = std::thread::spawn(move || {
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(accept(sock.as_raw_fd()).unwrap()) };
        let fds = [listener.as_raw_fd()];
        let _ = sendmsg::<()>(
            conn.as_raw_fd(),
            &[std::io::IoSlice::new(&offer)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        conn
    });
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let shown = peer(&setpriv, &format!("@{name}"), &[]);
    if !impostor.is_finished() {
        // The taker never connected: release the impostor's accept.
        let wake = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let _ = nix::sys::socket::connect(
            wake.as_raw_fd(),
            &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
        );
    }
    drop(impostor.join().unwrap());
    assert!(shown.contains("refused: "), "{shown}");
    assert!(shown.contains("runs as uid 0"), "{shown}");
    assert!(shown.contains("sockets: 0"), "{shown}");
}

#[test]
fn a_socket_directory_or_socket_made_world_accessible_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut a = old(&[]);
    let first = a.wait_ready(1);
    let dir = a.path("run");
    let socket = a.path("run/handover.sock");
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let at = socket.display().to_string();
    mode(&dir, 0o777);
    let shown = peer(&[], &at, &[]);
    assert!(
        shown.contains("is mode 777") && shown.contains("sockets: 0"),
        "{shown}"
    );
    mode(&dir, 0o700);
    mode(&socket, 0o666);
    let shown = peer(&[], &at, &[]);
    assert!(
        shown.contains("is mode 666") && shown.contains("sockets: 0"),
        "{shown}"
    );
    a.wait_line(|l| l.contains("hand-over refused") && l.contains("mode 666"));
    mode(&socket, 0o600);
    let shown = peer(&[], &at, &[]);
    assert!(
        shown.contains("took main=true"),
        "restored protections: {shown}"
    );
    a.wait_line(|l| l.starts_with("upgrade failed "));
    assert_eq!(served_by(&a), first, "still serving");
    a.stop();
}

#[test]
fn a_new_process_that_dies_before_ready_leaves_the_old_one_serving() {
    let mut a = old(&[]);
    let first = a.wait_ready(1);
    std::fs::write(a.path("fail"), "crash").unwrap();
    let mut b = taker(&a, &[]);
    let failed = a.wait_line(|l| l.starts_with("upgrade failed "));
    assert!(
        failed.contains("ended before it reported ready"),
        "{failed}"
    );
    let _ = b.child.wait();
    assert_eq!(served_by(&a), first, "still serving");
    // The guard is free again: the next hand-over goes through.
    let mut c = taker(&a, &[]);
    let second = c.wait_ready(2);
    a.wait_line(|l| l.starts_with("exit "));
    assert_eq!(served_by(&a), second, "at the same address");
    drop(b);
    stop(c, second);
}

#[test]
fn a_new_process_that_hangs_is_killed_at_the_deadline() {
    let mut a = old(&["--ready-timeout-ms", "500"]);
    let first = a.wait_ready(1);
    std::fs::write(a.path("fail"), "hang").unwrap();
    let b = taker(&a, &[]);
    let failed = a.wait_line(|l| l.starts_with("upgrade failed "));
    assert!(failed.contains("not ready within 500 ms"), "{failed}");
    assert!(
        wait_gone(b.child.id(), PATIENCE),
        "the hung process is killed"
    );
    assert_eq!(served_by(&a), first, "still serving");
    drop(b);
    a.stop();
}

#[test]
fn one_guard_for_forked_upgrades_and_hand_overs() {
    let mut a = old(&["--ready-timeout-ms", "20000"]);
    let first = a.wait_ready(1);
    // A forked upgrade in flight (its child hangs): a hand-over is refused.
    std::fs::write(a.path("fail"), "hang").unwrap();
    signal(first, libc::SIGHUP);
    a.wait_line(|l| l.starts_with("upgrade started "));
    let at = a.path("run/handover.sock").display().to_string();
    let shown = peer(&[], &at, &[]);
    assert!(
        shown.contains("already in flight") && shown.contains("sockets: 0"),
        "{shown}"
    );
    signal(first, libc::SIGTERM);
    a.wait_line(|l| l.starts_with("exit "));
    drop(a);
    // A hand-over in flight (the peer holds the listeners without ready): a fork is refused.
    let mut a = old(&["--ready-timeout-ms", "20000"]);
    let first = a.wait_ready(1);
    let mut holder = Command::new(PEER)
        .args([&a.path("run/handover.sock").display().to_string(), "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    a.wait_line(|l| l.starts_with("upgrade started "));
    signal(first, libc::SIGHUP);
    let refused = a.wait_line(|l| l.starts_with("upgrade refused "));
    assert!(refused.contains("already in flight"), "{refused}");
    drop(holder.stdin.take());
    let _ = holder.wait();
    a.wait_line(|l| l.starts_with("upgrade failed "));
    assert_eq!(served_by(&a), first);
    a.stop();
}

#[test]
fn a_stop_during_a_hand_over_kills_the_taker_and_stops() {
    let mut a = old(&["--ready-timeout-ms", "20000"]);
    let first = a.wait_ready(1);
    // The taker holds the listeners and never reports ready.
    let mut holder = Command::new(PEER)
        .args([&a.path("run/handover.sock").display().to_string(), "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    a.wait_line(|l| l.starts_with("upgrade started "));
    signal(first, libc::SIGTERM);
    let failed = a.wait_line(|l| l.starts_with("upgrade failed "));
    assert!(failed.contains("stop requested"), "{failed}");
    assert!(
        wait_gone(holder.id(), PATIENCE),
        "the taker, which holds our listeners, is killed"
    );
    let _ = holder.wait();
    a.wait_line(|l| l.starts_with("exit "));
    assert!(wait_gone(first, PATIENCE));
}

#[test]
fn handoff_ctl_upgrade_exits_0_with_the_new_pid_and_1_with_the_reason() {
    let mut a = old(&["--ready-timeout-ms", "1000"]);
    a.wait_ready(1);
    let control = a.path("run/control.sock").display().to_string();
    for (mode, reason) in [
        ("exit", "exited 1 before ready"),
        ("crash", "killed by signal 6 before ready"),
        ("hang", "not ready within 1000 ms"),
    ] {
        std::fs::write(a.path("fail"), mode).unwrap();
        let out = ctl(&control, "upgrade");
        assert_eq!(out.status.code(), Some(1), "{mode}: {out:?}");
        assert!(
            text(&out.stderr).contains(reason),
            "{mode}: {}",
            text(&out.stderr)
        );
    }
    let status = ctl(&control, "status");
    assert!(
        text(&status.stdout).contains("last-failure: child"),
        "{status:?}"
    );
    let out = ctl(&control, "upgrade");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let second = a.wait_ready(2);
    assert_eq!(
        text(&out.stdout).trim(),
        format!("upgraded: pid {second} gen 2")
    );
    let missing = a.path("run/absent.sock").display().to_string();
    let out = ctl(&missing, "status");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    a.wait_line(|l| l.starts_with("exit "));
    a.stop();
}

#[test]
fn silent_peers_of_another_uid_cannot_take_the_control_sockets_places() {
    use std::io::BufRead;
    require_root("running silent clients as uid 65534 (setpriv)");
    // An abstract control socket: anyone can connect, the uid alone refuses.
    let name = format!("@handoff-control-{}", std::process::id());
    let mut a = Server::start(ECHO, &["--control-socket", &name]);
    a.wait_ready(1);
    // More silent connections than there are places for commands, from a refused uid.
    let mut squatter = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", PEER])
        .args(["--silent", "12", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running handoff-test-peer under setpriv");
    let mut line = String::new();
    std::io::BufReader::new(squatter.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held 12", "{line}");
    // Accepted (in order) before ours: the deploy tool's command is still answered.
    let out = ctl(&name, "status");
    drop(squatter.stdin.take());
    let _ = squatter.wait();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("generation: 1"), "{out:?}");
    a.stop();
}

#[test]
fn a_busy_control_socket_is_reported_as_such_with_exit_2() {
    let mut a = old(&[]);
    a.wait_ready(1);
    let control = a.path("run/control.sock").display().to_string();
    // As many silent clients of our own uid as there are places for commands.
    let held: Vec<_> = (0..8)
        .map(|_| std::os::unix::net::UnixStream::connect(&control).unwrap())
        .collect();
    let out = ctl(&control, "upgrade");
    drop(held);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "not tried, so not failed: {out:?}"
    );
    assert!(
        stderr.contains("busy: 8 commands are in progress") && stderr.contains("nothing was tried"),
        "{stderr}"
    );
    a.stop();
}

#[test]
fn abstract_sockets_pass_to_the_next_generation_when_the_previous_one_exits() {
    let handover = format!("@handoff-abstract-handover-{}", std::process::id());
    let control = format!("@handoff-abstract-control-{}", std::process::id());
    // Info logs, to see when each generation takes its sockets.
    let mut cmd = Command::new("env");
    cmd.args(["HANDOFF_LOG=info", ECHO]);
    let mut a = Server::spawn(
        cmd,
        &["--handoff-socket", &handover, "--control-socket", &control],
        Some("127.0.0.1:0"),
    );
    a.wait_first_ready();
    let first = a.wait_ready(1);
    // Its own sockets' lines (stderr, which may trail its ready on stdout), before they are
    // forgotten: the same lines after this are the next generation's.
    a.wait_line(|l| l.contains("taking commands on the control socket"));
    a.wait_line(|l| l.contains("offering the listeners for hand-over"));
    a.seen.clear();
    // A forked upgrade: the new generation cannot bind the names while the old one holds
    // them, and must serve on all the same.
    let out = ctl(&control, "upgrade");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let second = a.wait_ready(2);
    assert!(wait_gone(first, PATIENCE), "the old generation exits");
    a.wait_line(|l| l.contains("taking commands on the control socket"));
    a.wait_line(|l| l.contains("offering the listeners for hand-over"));
    let out = ctl(&control, "status");
    assert!(
        text(&out.stdout).starts_with(&format!("pid: {second}\ngeneration: 2\n")),
        "{out:?}"
    );
    // The hand-over name is the new generation's: a new process takes over through it.
    let mut c = Server::spawn(
        Command::new(ECHO),
        &["--take-over", &handover, "--handoff-socket", &handover],
        Some(&a.listen),
    );
    let third = c.wait_ready(3);
    assert!(
        wait_gone(second, PATIENCE),
        "generation 2 hands over and exits"
    );
    assert_eq!(served_by(&a), third);
    stop(c, third);
    drop(a);
}

#[test]
fn a_generation_that_resumes_keeps_its_abstract_sockets() {
    let control = format!("@handoff-abstract-resume-{}", std::process::id());
    let mut a = Server::start(
        ECHO,
        &[
            "--control-socket",
            &control,
            "--rollback-window-ms",
            "5000",
            "--drain-timeout-ms",
            "8000",
        ],
    );
    let first = a.wait_ready(1);
    signal(first, libc::SIGHUP);
    let second = a.wait_ready(2);
    a.wait_line(|l| l.starts_with("upgrade ok "));
    signal(second, libc::SIGKILL);
    a.wait_line(|l| l.starts_with("resumed "));
    let out = ctl(&control, "status");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).starts_with(&format!("pid: {first}\n")),
        "{out:?}"
    );
    a.stop();
}

#[test]
fn status_during_a_drain_shows_both_generations() {
    let mut a = old(&["--delay-ms", "3000"]);
    let first = a.wait_ready(1);
    // A request in flight across the hand-over keeps the old process draining.
    let mut conn = a.addr().connect().unwrap();
    conn.write_all(b"slow\n").unwrap();
    let mut b = taker(
        &a,
        &[
            "--delay-ms",
            "3000",
            "--control-socket",
            "{dir}/run/control.sock",
        ],
    );
    let control = b.path("run/control.sock").display().to_string();
    let second = b.wait_ready(2);
    a.wait_line(|l| l.starts_with("draining ") && l.contains("connections=1"));
    let out = ctl(&control, "status");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!("pid: {second}\ngeneration: 2\nphase: serving")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("previous: pid {first} gen 1 draining")),
        "{shown}"
    );
    let reply = read_reply_line(&mut *conn).expect("the slow request completes");
    assert!(reply.contains(&format!("pid={first}")), "{reply}");
    assert!(wait_gone(first, PATIENCE));
    let out = ctl(&control, "status");
    assert!(
        text(&out.stdout).contains(&format!("previous: pid {first} gen 1 exited")),
        "{out:?}"
    );
    drop(a);
    stop(b, second);
}

#[test]
fn a_generation_that_resumes_in_its_rollback_window_takes_its_sockets_back() {
    let mut a = old(&["--rollback-window-ms", "5000", "--drain-timeout-ms", "8000"]);
    let first = a.wait_ready(1);
    let control = a.path("run/control.sock").display().to_string();
    let mut b = taker(&a, &["--control-socket", &control]);
    let second = b.wait_ready(2);
    a.wait_line(|l| l.starts_with("upgrade ok "));
    let status = ctl(&control, "status");
    assert!(
        text(&status.stdout).starts_with(&format!("pid: {second}\n")),
        "{status:?}"
    );
    signal(second, libc::SIGKILL);
    a.wait_line(|l| l.starts_with("resumed "));
    let status = ctl(&control, "status");
    assert!(
        text(&status.stdout).starts_with(&format!("pid: {first}\n")),
        "{status:?}"
    );
    // And the hand-over socket is its own again: a new process takes over from it.
    let mut c = taker(&a, &[]);
    let third = c.wait_ready(2);
    assert_eq!(served_by(&a), third);
    drop(b);
    stop(c, third);
}
