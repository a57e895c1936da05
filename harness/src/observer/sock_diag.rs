//! TCP listeners from the kernel's socket-diagnostics netlink interface (`NETLINK_SOCK_DIAG`,
//! what `ss -lt` uses).
//!
//! Why not only `/proc/net/tcp`: every read of that file makes the kernel walk its whole
//! established-connection hash table (hundreds of thousands of buckets, plus the connections
//! themselves) to fill the buffer past the listeners, so re-reading it on every poll costs
//! more the more connections the machine holds. Asked for listeners only, sock_diag walks the
//! listening hash and nothing else. When it is not available (a kernel without it, a sandbox
//! that forbids netlink) the caller falls back to `/proc/net/tcp`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::procfs::{TCP_LISTEN, TcpRow};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_V2: usize = 56;
/// `sizeof(struct inet_diag_msg)`.
const DIAG_MSG: usize = 72;

/// Every listening TCP socket (IPv4 and IPv6) of this network namespace.
///
/// # Errors
/// The netlink socket could not be used, or the kernel answered with an error.
pub(super) fn tcp_listeners() -> io::Result<Vec<TcpRow>> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // Never let a silent kernel stall the observer.
    let _ = setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(1, 0));
    let mut rows = Vec::new();
    for (seq, family) in [(1u32, libc::AF_INET), (2, libc::AF_INET6)] {
        send_request(&sock, seq, family as u8)?;
        receive_dump(&sock, seq, &mut rows)?;
    }
    Ok(rows)
}

/// The dump request: TCP sockets of `family` in state LISTEN, no extensions.
fn request(seq: u32, family: u8) -> [u8; NLMSG_HDR + REQ_V2] {
    let mut msg = [0u8; NLMSG_HDR + REQ_V2];
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    msg[0..4].copy_from_slice(&((NLMSG_HDR + REQ_V2) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid.
    msg[NLMSG_HDR] = family;
    msg[NLMSG_HDR + 1] = libc::IPPROTO_TCP as u8;
    msg[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    msg
}

fn send_request(sock: &OwnedFd, seq: u32, family: u8) -> io::Result<()> {
    // To the kernel: port 0, no multicast groups.
    let kernel = NetlinkAddr::new(0, 0);
    sendto(
        sock.as_raw_fd(),
        &request(seq, family),
        &kernel,
        MsgFlags::empty(),
    )?;
    Ok(())
}

fn receive_dump(sock: &OwnedFd, seq: u32, rows: &mut Vec<TcpRow>) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if parse_messages(&buf[..n], seq, rows)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of netlink messages into `rows`; true when the dump is complete.
fn parse_messages(mut data: &[u8], seq: u32, rows: &mut Vec<TcpRow>) -> io::Result<bool> {
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    while data.len() >= NLMSG_HDR {
        let len = u32_at(data, 0) as usize;
        if len < NLMSG_HDR || len > data.len() {
            return Err(io::Error::other("sock_diag: truncated netlink message"));
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let msg_seq = u32_at(data, 8);
        let payload = &data[NLMSG_HDR..len];
        if msg_seq == seq {
            match i32::from(kind) {
                libc::NLMSG_DONE => return Ok(true),
                libc::NLMSG_ERROR => {
                    let code = if payload.len() >= 4 {
                        u32_at(payload, 0) as i32
                    } else {
                        -libc::EPROTO
                    };
                    return Err(io::Error::from_raw_os_error(-code));
                }
                _ if kind == SOCK_DIAG_BY_FAMILY && payload.len() >= DIAG_MSG => {
                    rows.push(TcpRow {
                        // idiag_sport is big-endian, at the start of the sockid (offset 4).
                        port: u16::from_be_bytes([payload[4], payload[5]]),
                        state: payload[1],
                        rx_queue: u64::from(u32_at(payload, 56)),
                        inode: u64::from(u32_at(payload, 68)),
                    });
                }
                _ => {}
            }
        }
        // NLMSG_ALIGN: messages are padded to 4 bytes.
        let step = (len + 3) & !3;
        data = data.get(step..).unwrap_or(&[]);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_listeners_of_one_family() {
        let r = request(7, libc::AF_INET6 as u8);
        assert_eq!(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]), 72);
        assert_eq!(u32::from_ne_bytes([r[8], r[9], r[10], r[11]]), 7);
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(u32::from_ne_bytes([r[20], r[21], r[22], r[23]]), 1 << 10);
    }

    #[test]
    fn parses_a_listener_then_the_end_of_the_dump() {
        let mut msg = vec![0u8; NLMSG_HDR + DIAG_MSG];
        msg[0..4].copy_from_slice(&((NLMSG_HDR + DIAG_MSG) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[8..12].copy_from_slice(&3u32.to_ne_bytes());
        let p = NLMSG_HDR;
        msg[p] = libc::AF_INET as u8;
        msg[p + 1] = TCP_LISTEN;
        msg[p + 4..p + 6].copy_from_slice(&8080u16.to_be_bytes());
        msg[p + 56..p + 60].copy_from_slice(&5u32.to_ne_bytes());
        msg[p + 68..p + 72].copy_from_slice(&424242u32.to_ne_bytes());
        let mut done = vec![0u8; NLMSG_HDR + 4];
        done[0..4].copy_from_slice(&((NLMSG_HDR + 4) as u32).to_ne_bytes());
        done[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        done[8..12].copy_from_slice(&3u32.to_ne_bytes());

        let mut rows = Vec::new();
        assert!(!parse_messages(&msg, 3, &mut rows).expect("valid"));
        assert_eq!(
            rows,
            vec![TcpRow {
                port: 8080,
                state: TCP_LISTEN,
                rx_queue: 5,
                inode: 424242,
            }]
        );
        let both = [msg.clone(), done.clone()].concat();
        let mut rows = Vec::new();
        assert!(parse_messages(&both, 3, &mut rows).expect("valid"));
        assert_eq!(rows.len(), 1);
        // Another request's messages are not ours.
        let mut rows = Vec::new();
        assert!(!parse_messages(&both, 4, &mut rows).expect("valid"));
        assert!(rows.is_empty());
    }

    #[test]
    fn a_kernel_error_is_an_error() {
        let mut err = vec![0u8; NLMSG_HDR + 4];
        err[0..4].copy_from_slice(&((NLMSG_HDR + 4) as u32).to_ne_bytes());
        err[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        err[8..12].copy_from_slice(&1u32.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        let e = parse_messages(&err, 1, &mut Vec::new()).expect_err("EPERM");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(parse_messages(&err[..10], 1, &mut Vec::new()).is_ok_and(|done| !done));
        let mut bad = err.clone();
        bad[0..4].copy_from_slice(&999u32.to_ne_bytes());
        assert!(parse_messages(&bad, 1, &mut Vec::new()).is_err());
    }

    #[test]
    fn sees_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let rows = match tcp_listeners() {
            Ok(rows) => rows,
            // A sandbox without netlink: the observer falls back to /proc/net/tcp there.
            Err(e) => {
                eprintln!("sock_diag unavailable here ({e}); nothing to check");
                return;
            }
        };
        let ours: Vec<&TcpRow> = rows.iter().filter(|r| r.port == port).collect();
        assert_eq!(ours.len(), 1, "{rows:?}");
        assert_eq!(ours[0].state, TCP_LISTEN);
        assert!(ours[0].inode > 0);
    }
}
