//! The library on the deploys people run, with the reference server as real processes:
//! started by `systemd-socket-activate` with systemd's own socket names and with two unnamed
//! sockets, releases behind a `current` symlink, a binary replaced in place, no pidfds, and a
//! new generation that dies right after it reported ready.

mod util;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use handoff_support::place_fds;
use util::*;

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// A listening TCP socket on a free loopback port, as a socket unit would hold it.
fn unit_socket() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// What systemd's `ListenStream=PORT` makes: `[::]:PORT`, taking IPv4 too (`IPV6_V6ONLY`
/// off, whatever the system's default), here on a free port.
fn dual_stack_socket() -> TcpListener {
    // SAFETY: plain socket calls on a descriptor this function owns; `addr` and `off` are
    // valid for the calls that read them.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let listener = TcpListener::from_raw_fd(fd);
        let off: libc::c_int = 0;
        let set = libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(set, 0, "IPV6_V6ONLY: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
        addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        let bound = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        );
        assert_eq!(bound, 0, "bind [::]:0: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd, 128), 0);
        listener
    }
}

/// `systemd-socket-activate` handed `sockets` (bound by the test on free ports, as a socket
/// unit holds them, each with an optional `--fdname`), executing the echo server told to
/// `--listen` on `listen`. The first connection, to the socket `first`, makes it execute
/// the server. The test keeps no copy of the sockets.
fn socket_activated(
    sockets: Vec<(TcpListener, Option<&str>)>,
    first: usize,
    listen: &str,
) -> Server {
    assert!(
        Path::new(ACTIVATE).exists(),
        "{ACTIVATE} is missing: install Debian's `systemd` package (ci/install-test-deps does)"
    );
    // It takes descriptors from its own environment (LISTEN_FDS, with LISTEN_PID its own pid:
    // the shell's, which execs it) and passes them on with the names given.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$@""#)
        .arg("sh")
        .arg(ACTIVATE);
    for (_, name) in &sockets {
        if let Some(name) = name {
            cmd.arg(format!("--fdname={name}"));
        }
    }
    cmd.arg(ECHO)
        .env("LISTEN_FDS", sockets.len().to_string())
        .env_remove("LISTEN_FDNAMES");
    let places: Vec<(RawFd, RawFd)> = sockets
        .iter()
        .enumerate()
        .map(|(i, (socket, _))| (socket.as_raw_fd(), 3 + i as RawFd))
        .collect();
    place_fds(&mut cmd, &places);
    let target = sockets[first].0.local_addr().unwrap();
    let mut server = Server::spawn(cmd, &[], Some(listen));
    drop(sockets);
    // The activator names each socket it waits on: wait for the one the client will use.
    let port = format!(":{} ", target.port());
    server.wait_line(|l| l.starts_with("stderr: Listening on") && l.contains(&port));
    let addr = Addr::Tcp(match target {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v6.port()))
        }
        other => other,
    });
    let first_client = std::thread::spawn(move || {
        let mut conn = addr.connect().unwrap();
        echo_request(&mut *conn, "wake-up")
    });
    server.wait_first_ready();
    assert!(
        first_client.join().unwrap().is_ok(),
        "the connection that triggered activation was served"
    );
    assert_eq!(
        server.pid_file(),
        server.child.id(),
        "systemd-socket-activate execs the server in place"
    );
    server
}

/// The server listens on exactly the socket the activator bound on `port`: one listening
/// socket there, held by `pid`.
fn serves_the_inherited_socket(port: u16, pid: u32) {
    let listening = listening_inodes(port);
    assert_eq!(
        listening.len(),
        1,
        "one listening socket on {port}: {listening:?}"
    );
    assert!(
        listening.is_subset(&socket_inodes(pid)),
        "pid {pid} holds the socket bound on {port}"
    );
}

#[test]
fn a_socket_unit_default_name_is_adopted_and_restarts_under_load() {
    // A socket unit passes `LISTEN_FDNAMES=<unit>.socket` unless `FileDescriptorName=` is set;
    // the server asks for its listener as `main` on the same address.
    let socket = unit_socket();
    let port = socket.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = socket_activated(vec![(socket, Some("echo.socket"))], 0, &listen);
    serves_the_inherited_socket(port, server.pid_file());
    let load = Load::start(server.addr(), Proto::Echo, 3, 1);
    load.wait_progress(30);
    for generation in 2..=3 {
        let (_, new) = restart(&mut server, generation);
        serves_the_inherited_socket(port, new);
        load.wait_progress(30);
    }
    let report = load.finish();
    report.assert_clean(1);
    server.stop();
}

#[test]
fn two_unnamed_sockets_are_told_apart_by_address_not_order() {
    // Two unnamed TCP sockets; the server wants the second. Matched in order it would take
    // the first, find it bound elsewhere and fail to bind the second, which the activator
    // already holds.
    let sockets = [unit_socket(), unit_socket()];
    let [first, second] = sockets.each_ref().map(|s| s.local_addr().unwrap().port());
    let listen = format!("127.0.0.1:{second}");
    let sockets = sockets.map(|s| (s, None)).into();
    let mut server = socket_activated(sockets, 1, &listen);
    let pid = server.pid_file();
    serves_the_inherited_socket(second, pid);
    assert!(
        listening_inodes(first).is_empty(),
        "the socket no listener asked for was closed at ready"
    );
    let load = Load::start(server.addr(), Proto::Echo, 3, 1);
    load.wait_progress(30);
    let (_, new) = restart(&mut server, 2);
    serves_the_inherited_socket(second, new);
    load.wait_progress(30);
    load.finish().assert_clean(1);
    server.stop();
}

#[test]
fn a_socket_unit_default_name_serves_a_listener_asking_for_any_port() {
    // The server is configured for port 0 (any port) and its unit passes one socket under
    // the default `<unit>.socket` name: no exact address to match, only the rule that a
    // port-0 request adopts a socket that carries no name of ours.
    let socket = unit_socket();
    let port = socket.local_addr().unwrap().port();
    let mut server = socket_activated(vec![(socket, Some("echo.socket"))], 0, "127.0.0.1:0");
    assert_eq!(server.listen, format!("127.0.0.1:{port}"));
    serves_the_inherited_socket(port, server.pid_file());
    let (_, new) = restart(&mut server, 2);
    serves_the_inherited_socket(port, new);
    server.stop();
}

#[test]
fn a_dual_stack_socket_serves_a_server_configured_for_the_ipv4_wildcard() {
    // `ListenStream=PORT` passes `[::]:PORT` taking IPv4 too; the server is configured for
    // `0.0.0.0:PORT`. Not adopting it, the server would bind `0.0.0.0:PORT` and find it taken.
    let socket = dual_stack_socket();
    let port = socket.local_addr().unwrap().port();
    let listen = format!("0.0.0.0:{port}");
    let mut server = socket_activated(vec![(socket, None)], 0, &listen);
    serves_the_inherited_socket(port, server.pid_file());
    let (_, new) = restart(&mut server, 2);
    serves_the_inherited_socket(port, new);
    server.stop();
}

/// A copy of the echo server at `dir/rel`, executable.
fn install_copy(dir: &Path, rel: &str) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(ECHO, &path).unwrap();
    path
}

/// Points `link` at `target` atomically (a new symlink renamed over the old), as deploy tools
/// do.
fn flip(link: &Path, target: &str) {
    let tmp = link.with_extension("flip");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// The file `pid` runs, as the kernel has it.
fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// Two releases, each its own copy of the server, behind `current`; the server started
/// through `current` by `start`. Each SIGHUP must run the release `current` points to then;
/// with `in_release`, also in that release's directory.
fn releases_behind_a_symlink(in_release: bool, start: impl FnOnce(&Path) -> Command) {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let v1 = install_copy(&root, "releases/v1/bin/handoff-echo");
    let v2 = install_copy(&root, "releases/v2/bin/handoff-echo");
    let current = root.join("current");
    flip(&current, "releases/v1");
    let mut server = Server::start_cmd(start(&root), &[], Some("127.0.0.1:0"));
    let first = server.pid_file();
    assert_eq!(exe(first), v1);
    let cwd = |pid: u32| std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    if in_release {
        assert_eq!(cwd(first), root.join("releases/v1"));
    }
    let load = Load::start(server.addr(), Proto::Echo, 3, 1);
    load.wait_progress(30);
    let mut ran = vec![(first, exe(first))];
    for (generation, release, path) in [(2, "releases/v2", &v2), (3, "releases/v1", &v1)] {
        flip(&current, release);
        let (_, new) = restart(&mut server, generation);
        assert_eq!(
            &exe(new),
            path,
            "generation {generation} runs the release `current` points to"
        );
        if in_release {
            assert_eq!(
                cwd(new),
                root.join(release),
                "generation {generation} starts in the release `current` points to"
            );
        }
        ran.push((new, exe(new)));
        load.wait_progress(30);
    }
    let report = load.finish();
    report.assert_clean(1);
    let served: BTreeSet<u32> = ran.iter().map(|(pid, _)| *pid).collect();
    assert!(
        served.is_subset(&report.pids),
        "every release served: {ran:?} {report:?}"
    );
    server.stop();
}

#[test]
fn a_release_behind_a_current_symlink_is_the_one_restarted() {
    releases_behind_a_symlink(false, |root| {
        Command::new(root.join("current/bin/handoff-echo"))
    });
}

#[test]
fn a_server_started_from_inside_the_current_release_follows_the_symlink() {
    // `cd /srv/app/current && ./bin/server`: the shell's PWD names the symlink; the resolved
    // working directory (getcwd) names the release it pointed to at the start, forever.
    releases_behind_a_symlink(true, |root| {
        let mut cmd = Command::new("./bin/handoff-echo");
        let current = root.join("current");
        cmd.current_dir(&current).env("PWD", &current);
        cmd
    });
}

#[test]
fn a_program_found_through_path_is_looked_up_again_at_each_restart() {
    releases_behind_a_symlink(false, |root| {
        let mut cmd = Command::new("handoff-echo");
        let path = format!("{}:/usr/bin:/bin", root.join("current/bin").display());
        cmd.env("PATH", path);
        cmd
    });
}

#[test]
fn a_binary_replaced_in_place_by_rename_is_the_one_restarted() {
    let root = tempfile::tempdir().unwrap();
    let bin = install_copy(root.path(), "bin/server");
    let mut server = Server::start_cmd(Command::new(&bin), &[], Some("127.0.0.1:0"));
    let old = server.pid_file();
    let load = Load::start(server.addr(), Proto::Echo, 3, 1);
    load.wait_progress(30);
    // A deploy writes the new build beside the old and renames it over: the running image is
    // now an unlinked file, and /proc/self/exe says so.
    let staged = install_copy(root.path(), "bin/server.new");
    std::fs::rename(&staged, &bin).unwrap();
    let replaced = std::fs::metadata(&bin).unwrap().ino();
    assert!(exe(old).to_string_lossy().ends_with(" (deleted)"));
    let (_, new) = restart(&mut server, 2);
    let running = std::fs::metadata(format!("/proc/{new}/exe")).unwrap().ino();
    assert_eq!(
        running,
        replaced,
        "the new generation runs the file now at {}",
        bin.display()
    );
    load.wait_progress(30);
    load.finish().assert_clean(1);
    server.stop();
}

/// Descriptors of `pid` that are pidfds.
fn pidfds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("pidfd"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// An upgrade whose child hangs before ready: while it is in flight, how many pidfds the
/// serving generation holds; then the rollback, under load.
fn pidfds_during_an_upgrade(no_pidfd: bool) -> usize {
    let mut cmd = Command::new(ECHO);
    if no_pidfd {
        cmd.env("HANDOFF_NO_PIDFD", "1");
    }
    let mut server = Server::start_cmd(
        cmd,
        &[
            "--fail-next-file",
            "{dir}/fail",
            "--ready-timeout-ms",
            "1000",
        ],
        Some("127.0.0.1:0"),
    );
    let load = Load::start(server.addr(), Proto::Echo, 2, 1);
    load.wait_progress(20);
    let old = server.pid_file();
    std::fs::write(server.path("fail"), "hang").unwrap();
    signal(old, libc::SIGHUP);
    server.wait_line(|l| l.starts_with(&format!("upgrade started pid={old} ")));
    let held = pidfds(old);
    let failed = server.wait_line(|l| l.starts_with(&format!("upgrade failed pid={old} ")));
    let child: u32 = field(&failed, "child").parse().unwrap();
    assert!(
        !alive(child) && children(old).is_empty(),
        "killed and reaped: {failed}"
    );
    load.wait_progress(20);
    load.finish().assert_clean(1);
    // The guard against a third generation: the predecessor is seen through the link between
    // generations, pidfds or not.
    let (_, new) = restart(&mut server, 2);
    let mut idle = server.addr().connect().unwrap();
    assert_eq!(echo_request(&mut *idle, "hold").unwrap().0, new);
    signal(new, libc::SIGHUP);
    let third = server.wait_ready(3);
    server.wait_line(|l| l.starts_with(&format!("draining pid={new} ")));
    signal(third, libc::SIGHUP);
    let refused = server.wait_line(|l| l.starts_with(&format!("upgrade refused pid={third} ")));
    assert!(refused.contains("still draining"), "{refused}");
    assert!(
        alive(new),
        "the predecessor drains (held by an idle connection)"
    );
    drop(idle);
    assert!(wait_gone(new, PATIENCE));
    server.stop();
    held
}

#[test]
fn children_are_held_through_pidfds() {
    assert!(
        pidfds_during_an_upgrade(false) >= 1,
        "the serving generation holds a pidfd of the child it waits for"
    );
}

#[test]
fn without_pidfds_rollback_and_the_two_generation_guard_still_hold() {
    assert_eq!(
        pidfds_during_an_upgrade(true),
        0,
        "HANDOFF_NO_PIDFD=1 makes the upgrader do without pidfds"
    );
}

/// A new generation killed right after it reports ready (or, `once_draining`, once the old
/// generation has stopped accepting and drains), under load, with a rollback window: the old
/// generation takes the service back and nothing is refused.
fn killed_right_after_ready(no_pidfd: bool, once_draining: bool) {
    let mut cmd = Command::new(ECHO);
    if no_pidfd {
        cmd.env("HANDOFF_NO_PIDFD", "1");
    }
    let mut server = Server::start_cmd(
        cmd,
        &["--rollback-window-ms", "3000", "--drain-timeout-ms", "5000"],
        Some("127.0.0.1:0"),
    );
    let old = server.pid_file();
    let load = Load::start(server.addr(), Proto::Echo, 4, 1);
    load.wait_progress(50);
    signal(old, libc::SIGHUP);
    let doomed = server.wait_ready(2);
    if once_draining {
        server.wait_line(|l| l.starts_with(&format!("draining pid={old} ")));
    }
    signal(doomed, libc::SIGKILL);
    let resumed = server.wait_line(|l| l.starts_with(&format!("upgrade resumed pid={old} ")));
    assert_eq!(field(&resumed, "child"), doomed.to_string());
    assert!(resumed.contains("killed by signal 9"), "{resumed}");
    // Every handover reaches the server, even one undone before it noticed: it stops
    // accepting, drains, is told to resume, and takes its kept listener back.
    server.wait_line(|l| l.starts_with(&format!("resumed pid={old} ")));
    assert_eq!(
        server.pid_file(),
        old,
        "the PID file names the old generation again"
    );
    assert!(
        !alive(doomed) && children(old).is_empty(),
        "the dead generation was reaped"
    );
    let before = load.ok();
    load.wait_progress(50);
    let report = load.finish();
    assert!(
        report.refused.is_empty(),
        "no connect refused through the crash: {:?}",
        report.refused
    );
    // Connections the killed generation had accepted die with it; everything after is served
    // by the old generation again.
    assert!(report.ok >= before + 50, "{report:?}");
    eprintln!(
        "killed right after ready: {} requests ok, {} lost with the killed generation",
        report.ok,
        report.failed.len()
    );
    // And it can still upgrade: a new child (generation 2 again) takes over for good.
    let next = {
        signal(old, libc::SIGHUP);
        let line = server.wait_line(|l| {
            l.starts_with("ready ")
                && l.contains(" gen=2 ")
                && !l.contains(&format!("pid={doomed} "))
        });
        field(&line, "pid").parse::<u32>().unwrap()
    };
    server.wait_line(|l| l.starts_with(&format!("exit pid={old} ")));
    assert_eq!(server.pid_file(), next);
    let mut conn = server.addr().connect().unwrap();
    assert_eq!(echo_request(&mut *conn, "after").unwrap().0, next);
    drop(conn);
    server.stop();
}

#[test]
fn a_new_generation_killed_right_after_ready_gives_the_service_back() {
    killed_right_after_ready(false, false);
}

#[test]
fn a_new_generation_killed_while_the_old_one_drains_gives_the_service_back() {
    killed_right_after_ready(false, true);
}

#[test]
fn without_pidfds_a_death_in_the_rollback_window_is_seen_on_the_link() {
    killed_right_after_ready(true, false);
}

/// A reload, then a final stop of the new generation within the old one's rollback window
/// (`kill -TERM $(cat pidfile)`): a stop, not a crash. The old generation must let go and
/// exit, not take the service back and serve the old binary on.
fn stopped_on_purpose_in_the_window(no_pidfd: bool) {
    let mut cmd = Command::new(ECHO);
    if no_pidfd {
        cmd.env("HANDOFF_NO_PIDFD", "1");
    }
    let mut server = Server::start_cmd(
        cmd,
        &[
            "--rollback-window-ms",
            "15000",
            "--drain-timeout-ms",
            "15000",
        ],
        Some("127.0.0.1:0"),
    );
    let old = server.pid_file();
    signal(old, libc::SIGHUP);
    let new = server.wait_ready(2);
    server.wait_line(|l| l.starts_with(&format!("draining pid={old} ")));
    assert_eq!(server.pid_file(), new);
    signal(new, libc::SIGTERM);
    server.wait_line(|l| l.starts_with(&format!("exit pid={new} ")));
    server.wait_line(|l| l.starts_with(&format!("exit pid={old} ")));
    assert!(wait_gone(old, PATIENCE) && wait_gone(new, PATIENCE));
    assert!(
        !server
            .seen
            .iter()
            .any(|l| l.starts_with(&format!("upgrade resumed pid={old} "))),
        "the stop was undone: {:#?}",
        server.seen
    );
    assert!(
        server.addr().connect().is_err(),
        "nobody serves after the stop"
    );
}

#[test]
fn a_new_generation_stopped_on_purpose_in_the_window_is_not_undone() {
    stopped_on_purpose_in_the_window(false);
}

#[test]
fn without_pidfds_a_stop_in_the_window_is_still_told_apart_from_a_crash() {
    stopped_on_purpose_in_the_window(true);
}

/// A service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    socket: std::os::unix::net::UnixDatagram,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        Manager {
            socket,
            _dir: dir,
            path,
        }
    }

    fn recv(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notification within the patience bound");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The next notification, which must start a reload stamped no earlier than `since` (a
    /// CLOCK_MONOTONIC reading in microseconds, as `MONOTONIC_USEC` is), and the one after it.
    fn reload_answered(&self, since: u64) -> String {
        self.reloading(since);
        self.recv()
    }

    /// The next notification, which must start a reload stamped no earlier than `since`.
    fn reloading(&self, since: u64) {
        let reloading = self.recv();
        let stamp: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("not a reload start: {reloading:?}"));
        assert!(
            stamp >= since,
            "MONOTONIC_USEC={stamp} is before the signal that started the reload ({since})"
        );
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock of sd_notify's `MONOTONIC_USEC`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

impl Manager {}

#[test]
fn a_refused_or_failed_upgrade_answers_the_service_managers_reload() {
    // `systemctl reload` of a Type=notify-reload service waits for RELOADING=1 then READY=1:
    // an upgrade that is refused or rolled back must still send both, or it hangs until its
    // timeout.
    let manager = Manager::new();
    let mut cmd = Command::new(ECHO);
    cmd.env("NOTIFY_SOCKET", &manager.path);
    let mut server = Server::start_cmd(
        cmd,
        &[
            "--fail-next-file",
            "{dir}/fail",
            "--ready-timeout-ms",
            "500",
            "--drain-timeout-ms",
            "2000",
        ],
        Some("127.0.0.1:0"),
    );
    let first = server.pid_file();
    assert_eq!(manager.recv(), format!("READY=1\nMAINPID={first}"));

    // Rolled back: the child exits before ready.
    std::fs::write(server.path("fail"), "exit").unwrap();
    let before = monotonic_usec();
    signal(first, libc::SIGHUP);
    assert_eq!(manager.reload_answered(before), "READY=1");
    server.wait_line(|l| l.starts_with(&format!("upgrade failed pid={first} ")));

    // Refused: the previous generation still drains (held by an idle connection).
    let mut idle = server.addr().connect().unwrap();
    assert_eq!(echo_request(&mut *idle, "hold").unwrap().0, first);
    let before = monotonic_usec();
    signal(first, libc::SIGHUP);
    manager.reloading(before);
    let second = server.wait_ready(2);
    assert_eq!(manager.recv(), format!("MAINPID={second}\nREADY=1"));
    server.wait_line(|l| l.starts_with(&format!("draining pid={first} ")));
    let before = monotonic_usec();
    signal(second, libc::SIGHUP);
    server.wait_line(|l| l.starts_with(&format!("upgrade refused pid={second} ")));
    assert_eq!(manager.reload_answered(before), "READY=1");
    drop(idle);
    assert!(wait_gone(first, PATIENCE));
    server.stop();
}

#[test]
fn an_argv0_naming_another_program_does_not_restart_that_program() {
    // `exec -a true handoff-echo ...`: `argv[0]` is a bare name that PATH resolves to another
    // program. The next generation must run the server, not `true`.
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(ECHO);
    cmd.arg0("true").env("PATH", "/usr/bin:/bin");
    let mut server = Server::start_cmd(cmd, &[], Some("127.0.0.1:0"));
    let image = exe(server.pid_file());
    let (_, new) = restart(&mut server, 2);
    assert_eq!(exe(new), image, "the server's own image runs next");
    server.stop();
}
