//! Connecting to the target (TCP or unix socket), and telling the server's answers (refused,
//! reset, timed out) from the harness's own limits.

use std::io;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use crate::model::Outcome;
use crate::target::ConnectAddr;

pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub(super) enum ConnectError {
    /// The server's answer: refused, timed out, reset.
    Outcome(Outcome, String),
    /// The harness's own limits (ports, descriptors): not the server's doing.
    Harness(String),
}

pub(super) async fn connect(addr: &ConnectAddr, timeout: Duration) -> Result<Stream, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let attempt = match addr {
            ConnectAddr::Tcp(a) => tokio::time::timeout_at(deadline, TcpStream::connect(a))
                .await
                .map(|r| r.map(Stream::Tcp)),
            ConnectAddr::Unix(p) => tokio::time::timeout_at(deadline, UnixStream::connect(p))
                .await
                .map(|r| r.map(Stream::Unix)),
        };
        match attempt {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                // A unix listener whose backlog is full answers a non-blocking connect with
                // EAGAIN; a blocking client would wait, so wait (bounded) and retry.
                if tokio::time::Instant::now() >= deadline {
                    return Err(ConnectError::Outcome(
                        Outcome::Timeout,
                        format!("connect: backlog full for {timeout:?}: {e}"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(Err(e)) => return Err(classify_connect_error(&e)),
            Err(_) => {
                return Err(ConnectError::Outcome(
                    Outcome::Timeout,
                    format!("connect: no answer within {timeout:?}"),
                ));
            }
        }
    }
}

pub(super) fn classify_connect_error(e: &io::Error) -> ConnectError {
    let detail = format!("connect: {e}");
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => {
            ConnectError::Outcome(Outcome::Refused, detail)
        }
        Some(libc::ECONNRESET) | Some(libc::ECONNABORTED) | Some(libc::EPIPE) => {
            ConnectError::Outcome(Outcome::Reset, detail)
        }
        Some(libc::ETIMEDOUT) => ConnectError::Outcome(Outcome::Timeout, detail),
        // EADDRNOTAVAIL (no local port), EMFILE/ENFILE (no descriptor), ENOBUFS, ...: limits
        // of the harness's side, which say nothing about the server.
        _ => ConnectError::Harness(detail),
    }
}

pub(super) fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

pub(super) fn io_outcome(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::TimedOut => Outcome::Timeout,
        io::ErrorKind::UnexpectedEof => Outcome::Short,
        _ => Outcome::Reset,
    }
}
