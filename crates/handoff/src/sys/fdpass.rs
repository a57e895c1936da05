//! Descriptors across a unix socket (`SCM_RIGHTS`) and the credentials of its peer
//! (`SO_PEERCRED`): the hand-over's system calls.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cvt_retry;

/// The most descriptors one message carries (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// Who is at the other end of a connected unix socket, as the kernel recorded it at
/// `connect(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerCred {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `getsockopt(SO_PEERCRED)`.
pub(crate) fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of the sizes given for the whole call.
    cvt_retry(|| unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(PeerCred {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `geteuid(2)`.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Room for `count` descriptors in a control buffer, aligned as `cmsghdr` needs.
fn cmsg_space(count: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((count * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// `sendmsg(2)` of `bytes` with `fds` attached (`SCM_RIGHTS`), without `SIGPIPE`. On a
/// `SOCK_SEQPACKET` socket the bytes and the descriptors arrive as one packet or not at all.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message, the kernel takes at most {MAX_FDS}",
                fds.len()
            ),
        ));
    }
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut control = vec![0u64; cmsg_space(fds.len()).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data, for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: the control buffer holds CMSG_SPACE(len) bytes, so the first header and its
        // data (written below, `fds.len()` ints) lie within it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len =
                libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: `msg` points to the iovec and control buffer above, alive for the whole call;
    // the descriptors are borrowed, so open, for the call.
    let n = cvt_retry(|| unsafe {
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) as libc::c_int
    })?;
    if n as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {n} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// One received packet: its bytes, and the descriptors that came with it, already owned (so
/// closed when dropped, whatever becomes of the message).
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) fds: Vec<OwnedFd>,
    /// The packet was longer than the buffer: its tail is lost (`MSG_TRUNC`).
    pub(crate) truncated: bool,
    /// More descriptors came than there was room for: the kernel closed the rest
    /// (`MSG_CTRUNC`).
    pub(crate) fds_truncated: bool,
}

/// `recvmsg(2)` of one packet into `buf`, with room for up to [`MAX_FDS`] descriptors,
/// received close-on-exec (`MSG_CMSG_CLOEXEC`) so that none can leak into a child spawned
/// meanwhile. Every descriptor received is owned at once.
pub(crate) fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let space = cmsg_space(MAX_FDS);
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data, for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points to `buf` (through the iovec) and to the control buffer, both
    // writable and alive for the whole call, with their true lengths.
    let n = cvt_retry(|| unsafe {
        libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) as libc::c_int
    })?;
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled the control buffer up to `msg_controllen`; the CMSG macros walk
    // it within that length, and each SCM_RIGHTS header's data holds the descriptors the
    // kernel installed in this process for us (new numbers nobody else owns).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len: n as usize,
        fds,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// `recv(2)` of one packet with no room for descriptors: any that a peer attached are closed
/// by the kernel, never installed here. `MSG_TRUNC` asks for the packet's true length, so an
/// oversized one is told from one that fits.
pub(crate) fn recv_plain(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid writable memory of `len` bytes for the whole call.
    let n = cvt_retry(|| unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
        ) as libc::c_int
    })?;
    Ok(n as usize)
}

/// `send(2)` of one packet (or stream write), without `SIGPIPE`.
pub(crate) fn send_packet(sock: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    send_with_fds(sock, bytes, &[])
}
