//! The socket probes the load needs beyond tokio's API: whether the peer has closed an idle
//! connection, and whether a request that met an EOF was answered with a reset.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};

/// Whether the peer has closed (EOF) or reset the connection, without blocking and without
/// consuming data (`recv(MSG_PEEK | MSG_DONTWAIT)`).
pub(super) fn peer_closed(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    match recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => true,
        Ok(_) => false,
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// `TCP_CLOSE` in `tcp_info.tcpi_state`.
const TCP_CLOSE: u8 = 7;

/// After an EOF on a connection where a request was just sent: whether the kernel reports
/// the connection reset within `wait` (the server had closed before it read the request,
/// so its kernel answered the request with a reset). Polls `getsockopt(TCP_INFO)`.
pub(super) async fn reset_follows(fd: RawFd, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match crate::sys::tcp_state(fd) {
            Some(TCP_CLOSE) => return true,
            None => return false,
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
