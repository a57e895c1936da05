//! Every libc call and every `unsafe` block of the harness: the target's launch, from `fork`
//! to `execve` ([`launch`]), and the one socket option no safe wrapper offers
//! (`getsockopt(TCP_INFO)`). The rest of the crate goes through nix and signal-hook.

use std::os::fd::RawFd;

pub(crate) mod launch;

/// `getsockopt(fd, IPPROTO_TCP, TCP_INFO)`, first byte: the TCP state (`None` when the call
/// fails, as on a descriptor that is not a TCP socket).
pub(crate) fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: tcp_info is plain old data, so all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a valid, writable tcp_info of `len` bytes that outlives the call;
    // an invalid fd only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0 && len >= 1).then_some(info.tcpi_state)
}
