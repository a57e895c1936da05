//! The new process's side of a hand-over: connect, receive the offer and its descriptors,
//! check them, and later report ready and learn whether the old process handed over.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use socket2::Type;

use super::place::{self, Place};
use super::wire;
use crate::activation::Inherited;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// What a new process took over.
#[derive(Debug)]
pub(crate) struct TakenOver {
    pub(crate) listeners: Vec<Inherited>,
    /// The sender's generation.
    pub(crate) generation: u32,
    /// The sender's pid.
    pub(crate) pid: u32,
    /// The sender's pidfd, where pidfds work.
    pub(crate) pidfd: Option<OwnedFd>,
    /// The connection, on which ready is reported, and which stays the link to the old
    /// process afterwards.
    pub(crate) conn: OwnedFd,
}

fn handover_error(m: String) -> Error {
    Error::new(ErrorKind::Handover, m)
}

/// Connects to the running process at `place` and takes its listeners, waiting at most
/// `timeout` for the offer. The process listening there must run as this process's
/// effective uid or one of `allowed`: anyone can bind an abstract name (or a path in a
/// directory others may write) first, and listeners from an impostor would hand it our
/// traffic. Every descriptor of a refused offer is closed before this returns.
pub(crate) fn take_over(place: &Place, timeout: Duration, allowed: &[u32]) -> Result<TakenOver> {
    let at = place.describe();
    let conn = place::connect(place, Type::SEQPACKET).map_err(|e| {
        Error::io(
            ErrorKind::Handover,
            format!("connecting to the hand-over socket {at}"),
            e,
        )
    })?;
    let server = sys::peer_cred(conn.as_fd()).map_err(|e| {
        Error::io(
            ErrorKind::Handover,
            format!("reading who listens at {at}"),
            e,
        )
    })?;
    let euid = sys::geteuid();
    if server.uid != euid && !allowed.contains(&server.uid) {
        return Err(handover_error(format!(
            "refusing the hand-over from {at}: the process listening there (pid {}) runs as \
             uid {}, which is neither this process's uid {euid} nor an allowed one (allow_uid)",
            server.pid, server.uid
        )));
    }
    match sys::poll_readable(&[conn.as_fd()], timeout) {
        Ok(sys::Readable::Fd(_)) => {}
        Ok(sys::Readable::TimedOut) => {
            return Err(handover_error(format!(
                "no offer from the running process at {at} within {} ms",
                timeout.as_millis()
            )));
        }
        Err(e) => {
            return Err(Error::io(
                ErrorKind::Handover,
                format!("waiting on {at}"),
                e,
            ));
        }
    }
    let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
    let got = sys::recv_with_fds(conn.as_fd(), &mut buf).map_err(|e| {
        Error::io(
            ErrorKind::Handover,
            format!("receiving the offer from {at}"),
            e,
        )
    })?;
    // From here on every received descriptor is owned by `got.fds`: any early return closes
    // them all.
    if got.truncated || got.len > wire::MAX_MESSAGE {
        return Err(handover_error(format!(
            "refusing the hand-over from {at}: the offer is oversized (more than {} bytes)",
            wire::MAX_MESSAGE
        )));
    }
    if got.fds_truncated {
        return Err(handover_error(format!(
            "refusing the hand-over from {at}: more descriptors came than one message may carry"
        )));
    }
    let bytes = &buf[..got.len];
    if got.len == 0 {
        return Err(handover_error(format!(
            "the running process at {at} closed the connection without an offer"
        )));
    }
    if let Some(why) = bytes.strip_prefix(b"refused: ") {
        return Err(handover_error(format!(
            "the running process at {at} refused the hand-over: {}",
            String::from_utf8_lossy(why).trim_end()
        )));
    }
    let offer = wire::decode(bytes)
        .map_err(|m| handover_error(format!("refusing the hand-over from {at}: {m}")))?;
    let listeners = wire::adopt(&offer, got.fds)?;
    // The sender as this process sees it: the kernel's record of who listens, in our PID
    // namespace (the offer's pid is the sender's own view, which differs across containers;
    // 0 when the sender's namespace is not visible from ours: then only the connection tells
    // when it is gone). Opened while the connection is open, so the pid is still the
    // sender's.
    let pid = if server.pid != 0 {
        server.pid
    } else {
        offer.pid
    };
    let pidfd = (server.pid != 0 && sys::pidfds_usable())
        .then(|| sys::pidfd_open(server.pid).ok())
        .flatten();
    Ok(TakenOver {
        listeners,
        generation: offer.generation,
        pid,
        pidfd,
        conn,
    })
}

/// How the old process answered our ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It handed over: we are the service, it drains.
    HandedOver,
    /// It is gone without an answer: we hold the listeners, and nobody else serves them.
    Gone,
}

/// Reports ready on `conn` and waits at most `timeout` for the answer.
///
/// # Errors
/// [`ErrorKind::Handover`] when the old process rolled the hand-over back (it was too late,
/// or a stop came first) or answered something else, or the answer did not come in time.
pub(crate) fn report_ready(conn: &OwnedFd, timeout: Duration) -> Result<Answer> {
    match sys::send_packet(conn.as_fd(), b"ready\n") {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
            return Ok(Answer::Gone);
        }
        Err(e) => {
            return Err(Error::io(
                ErrorKind::Handover,
                "reporting ready to the old process",
                e,
            ));
        }
    }
    match sys::poll_readable(&[conn.as_fd()], timeout) {
        Ok(sys::Readable::Fd(_)) => {}
        Ok(sys::Readable::TimedOut) => {
            return Err(handover_error(format!(
                "the old process did not answer our ready within {} ms",
                timeout.as_millis()
            )));
        }
        Err(e) => {
            return Err(Error::io(
                ErrorKind::Handover,
                "waiting for the old process",
                e,
            ));
        }
    }
    let mut buf = [0u8; 512];
    let n = match sys::recv_plain(conn.as_fd(), &mut buf) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(Answer::Gone),
        Err(e) => {
            return Err(Error::io(
                ErrorKind::Handover,
                "reading the old process's answer",
                e,
            ));
        }
    };
    let answer = &buf[..n.min(buf.len())];
    if n == 0 {
        return Ok(Answer::Gone);
    }
    if answer == b"ok\n" {
        return Ok(Answer::HandedOver);
    }
    let text = String::from_utf8_lossy(answer);
    Err(handover_error(match text.strip_prefix("rolled-back: ") {
        Some(why) => format!(
            "the old process rolled the hand-over back: {}",
            why.trim_end()
        ),
        None => format!(
            "the old process answered {:?} to our ready",
            text.trim_end()
        ),
    }))
}
