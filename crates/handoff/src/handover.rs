//! Hand-over to a process that is not our child, over a unix socket, and the control socket.
//!
//! The running process offers its listeners at a unix socket
//! ([`Builder::handover_socket`](crate::Builder::handover_socket)); a new process started by
//! anyone (another container, a supervisor, a deploy tool) connects
//! ([`Builder::take_over`](crate::Builder::take_over)), receives every listener with its
//! name, kind and address in one versioned message with the descriptors (`SCM_RIGHTS`),
//! checks them, serves, and reports ready over the same connection. Only then does the old
//! process hand over and drain, exactly as after a forked upgrade; a new process that
//! disconnects or misses the ready deadline is killed and the old one keeps serving.
//!
//! The control socket ([`Builder::control_socket`](crate::Builder::control_socket)) takes
//! one line, `upgrade` or `status`, and answers once the outcome is known; [`ask`] is its
//! client.
//!
//! - `wire.rs`: the message and its validation against the descriptors.
//! - `place.rs`: where a socket lives and its protections (directory 0700, socket 0600,
//!   abstract names, the peer's uid).
//! - `client.rs`: the new process's side.
//!
//! The running process's side is in `upgrade/offer.rs` and `upgrade/control.rs`, beside the
//! upgrader whose guard and handover they share.

pub(crate) mod client;
pub(crate) mod place;
pub(crate) mod wire;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use socket2::Type;

/// The longest line either side of the control socket sends.
pub(crate) const CONTROL_LINE_MAX: usize = 4096;

/// Sends `command` (`upgrade` or `status`) to the control socket at `socket` (a path, or
/// `@name` for an abstract socket) and returns the answer, its lines joined. Waits at most
/// `timeout` for the answer, or for as long as it takes with `None`: an `upgrade` is
/// answered once the new generation is ready (and any rollback window has closed) or has
/// failed.
///
/// The answer to `upgrade` is one line, `upgraded: pid <pid> gen <generation>` or
/// `failed: <reason>`; to `status`, lines of `key: value` (`pid`, `generation`, `phase`,
/// `connections`, `upgrades`, `last-failure`, `previous`).
///
/// # Errors
/// When the socket cannot be reached (absent, refused, another uid), the answer does not
/// come in time, or the connection closes without one.
///
/// # Examples
/// ```no_run
/// let answer = handoff::ask("/run/myserver/control.sock".as_ref(), "status", None)?;
/// println!("{answer}");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn ask(socket: &Path, command: &str, timeout: Option<Duration>) -> std::io::Result<String> {
    let fd = place::connect(&place::Place::parse(socket), Type::STREAM)?;
    let mut stream = UnixStream::from(fd);
    stream.set_read_timeout(timeout)?;
    // A server that answers at once (busy, refused) may close before our command is in:
    // its answer is still there to read, so a failed write is reported only if none came.
    let wrote = stream.write_all(format!("{command}\n").as_bytes());
    let mut answer = String::new();
    let mut reader = BufReader::new(std::io::Read::take(&stream, 64 * CONTROL_LINE_MAX as u64));
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => answer.push_str(&line),
            // The server closed without reading all we sent: what it answered stands.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !answer.is_empty() => {
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer from {} within {:?}",
                        socket.display(),
                        timeout.unwrap_or_default()
                    ),
                ));
            }
            Err(e) => return Err(wrote.err().unwrap_or(e)),
        }
    }
    if answer.is_empty() {
        wrote?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "{} closed the connection without an answer",
                socket.display()
            ),
        ));
    }
    Ok(answer.trim_end().to_owned())
}
