//! What a server does with what it inherits: garbage in the activation variables and
//! descriptors of the wrong kind are clear errors (exit 2, a message naming the variable or
//! descriptor), never a panic and never a silently adopted wrong socket.

use std::os::fd::{AsRawFd, RawFd};
use std::process::{Command, Output};

use handoff_support::place_fds;

const ECHO: &str = env!("CARGO_BIN_EXE_handoff-echo");

/// Runs the echo server through `sh`, so that `LISTEN_PID` can be set to the pid the server
/// will have (`exec` keeps the shell's pid), with `prelude` run first in that shell.
fn run_activated(
    prelude: &str,
    fds: &str,
    names: Option<&str>,
    place: &[(RawFd, RawFd)],
) -> Output {
    let script =
        format!(r#"{prelude} LISTEN_PID=$$ LISTEN_FDS={fds} exec "$0" --listen 127.0.0.1:0"#);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).arg(ECHO);
    if let Some(names) = names {
        cmd.env("LISTEN_FDNAMES", names);
    }
    place_fds(&mut cmd, place);
    let out = cmd.output().expect("running sh");
    assert!(!out.status.success(), "must refuse to start: {out:?}");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn malformed_variables_are_named_in_the_error() {
    let out = Command::new(ECHO)
        .args(["--listen", "127.0.0.1:0"])
        .env("LISTEN_PID", "abc")
        .env("LISTEN_FDS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains(r#"LISTEN_PID="abc" is not a process id"#),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_promised_descriptor_that_is_not_open_is_an_error() {
    let out = run_activated("exec 3>&-;", "1", None, &[]);
    assert!(
        stderr(&out).contains("promises descriptor 3 (unknown) but it is not open"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_promised_descriptor_that_is_not_a_socket_is_an_error() {
    let out = run_activated("exec 3</dev/null;", "1", None, &[]);
    assert!(
        stderr(&out).contains("inherited descriptor 3 (unknown) is not a socket"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_named_socket_of_the_wrong_kind_is_not_adopted() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let raw = udp.as_raw_fd();
    // The datagram socket at descriptor 3 of the server (without close-on-exec).
    let out = run_activated("", "1", Some("main"), &[(raw, 3)]);
    assert!(
        stderr(&out)
            .contains("inherited descriptor `main` is a IPv4 datagram socket, not a TCP listener"),
        "{}",
        stderr(&out)
    );
    drop(udp);
}
