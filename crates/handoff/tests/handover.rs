//! The new process's side of a hand-over, in-process, against a fake running process (a
//! thread of this test) that sends what each case needs: a valid offer is taken and its
//! listener adopted; a truncated, oversized, wrong-version or mismatched one, or a refusal,
//! is refused with a clear error and leaves no descriptor of what came with it in this
//! process. One upgrader per process, so the tests take turns.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use handoff::{Builder, ErrorKind};
use socket2::{Domain, SockAddr, Socket, Type};

static TURN: Mutex<()> = Mutex::new(());

/// A hand-over message, written here byte by byte from the documented layout.
fn message(version: u16, generation: u32, entries: &[(u8, &str, &str)]) -> Vec<u8> {
    let mut out = b"HOFF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&std::process::id().to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (kind, name, addr) in entries {
        out.push(*kind);
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
        out.extend_from_slice(addr.as_bytes());
    }
    out
}

/// `sendmsg` with `SCM_RIGHTS`.
fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let data_len = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: all zeroes is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header with `raw.len()` ints.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast(), raw.len());
        }
    }
    // SAFETY: `msg` points to live buffers for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(
        n as usize,
        bytes.len(),
        "{}",
        std::io::Error::last_os_error()
    );
}

/// A fake running process at `path`: accepts one connection, sends `bytes` with `fds`, then
/// answers a `ready` with `ok`. Returns what it read after the offer.
fn fake_server(path: &Path, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> JoinHandle<Vec<u8>> {
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    sock.bind(&SockAddr::unix(path).unwrap()).unwrap();
    sock.listen(1).unwrap();
    std::thread::spawn(move || {
        let (conn, _) = sock.accept().unwrap();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        send_with_fds(conn.as_fd(), &bytes, &borrowed);
        drop(borrowed);
        drop(fds);
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = conn.recv(unsafe_uninit(&mut buf)).unwrap_or(0);
        if n > 0 {
            conn.send(b"ok\n").unwrap();
        }
        buf[..n].to_vec()
    })
}

/// socket2 reads into `MaybeUninit` bytes; ours are initialised already.
fn unsafe_uninit(buf: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: initialised bytes are valid `MaybeUninit<u8>`, and recv writes only bytes.
    unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) }
}

/// The inode of a socket, as `/proc/self/fd` links name it (`socket:[N]`).
fn inode(fd: BorrowedFd<'_>) -> u64 {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::metadata(path).unwrap().ino()
}

/// Descriptors of this process that are the socket `ino`.
fn holders(ino: u64) -> Vec<String> {
    let want = format!("socket:[{ino}]");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs one refused case: the fake server sends `bytes` with one TCP listener; the take-over
/// must fail with `ErrorKind::Handover` and a message containing `expect`, and no descriptor
/// of that listener may be left in this process.
fn refused(
    bytes: impl FnOnce(&str) -> Vec<u8>,
    fds: impl FnOnce(TcpListener) -> Vec<OwnedFd>,
    expect: &str,
) {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handover.sock");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ino = inode(listener.as_fd());
    let server = fake_server(&path, bytes(&addr), fds(listener));
    let err = Builder::new()
        .take_over(&path)
        .ready_timeout(Duration::from_secs(10))
        .build()
        .err()
        .expect("a malformed offer must be refused");
    server.join().unwrap();
    assert_eq!(err.kind(), &ErrorKind::Handover, "{}", err.chain());
    let shown = err.chain().to_string();
    assert!(shown.contains(expect), "expected {expect:?} in: {shown}");
    assert_eq!(
        holders(ino),
        Vec::<String>::new(),
        "descriptors left of the refused listener"
    );
}

fn one(l: TcpListener) -> Vec<OwnedFd> {
    vec![l.into()]
}

#[test]
fn a_valid_offer_is_taken_and_its_listener_adopted() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handover.sock");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let ino = inode(listener.as_fd());
    let bytes = message(1, 4, &[(1, "main", &addr.to_string())]);
    let server = fake_server(&path, bytes, one(listener));
    let up = Builder::new()
        .take_over(&path)
        .ready_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_eq!(up.generation(), 5);
    assert!(up.has_parent());
    let adopted = up
        .tcp_listener("main", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    assert_eq!(inode(adopted.as_fd()), ino, "the very socket sent");
    // The check the refused cases rely on sees descriptors when there are some: the
    // application's and the upgrader's own copy (and the fake server's, until its thread
    // drops it).
    assert!(holders(ino).len() >= 2, "{:?}", holders(ino));
    up.ready().unwrap();
    assert_eq!(server.join().unwrap(), b"ready\n");
}

#[test]
fn a_truncated_offer_is_refused() {
    refused(
        |addr| {
            let mut m = message(1, 1, &[(1, "main", addr)]);
            m.truncate(m.len() - 3);
            m
        },
        one,
        "truncated",
    );
}

#[test]
fn an_oversized_offer_is_refused() {
    refused(
        |addr| {
            let mut m = message(1, 1, &[(1, "main", addr)]);
            m.resize(70 * 1024, 0);
            m
        },
        one,
        "oversized",
    );
}

#[test]
fn an_offer_of_another_version_is_refused() {
    refused(|addr| message(2, 1, &[(1, "main", addr)]), one, "version 2");
}

#[test]
fn an_offer_naming_more_listeners_than_descriptors_is_refused() {
    refused(
        |addr| message(1, 1, &[(1, "main", addr), (1, "admin", addr)]),
        one,
        "names 2 listeners but 1 descriptors",
    );
}

#[test]
fn an_offer_whose_kind_does_not_match_the_descriptor_is_refused() {
    refused(
        |addr| message(1, 1, &[(2, "main", addr)]),
        one,
        "said to be a UDP socket, but its descriptor is a IPv4 listening stream socket",
    );
}

#[test]
fn an_offer_whose_address_does_not_match_the_descriptor_is_refused() {
    refused(
        |_| message(1, 1, &[(1, "main", "127.0.0.1:1")]),
        one,
        "said to be bound to `127.0.0.1:1`",
    );
}

#[test]
fn a_udp_socket_sent_as_a_tcp_listener_is_refused() {
    refused(
        |addr| message(1, 1, &[(1, "main", addr)]),
        |l| {
            drop(l);
            vec![UdpSocket::bind("127.0.0.1:0").unwrap().into()]
        },
        "is a IPv4 datagram socket",
    );
}

#[test]
fn a_refusal_is_reported_with_its_reason() {
    refused(
        |_| b"refused: peer pid 7 runs as uid 65534\n".to_vec(),
        one,
        "refused the hand-over: peer pid 7 runs as uid 65534",
    );
}

#[test]
fn a_missing_socket_is_a_clear_error() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let err = Builder::new().take_over(&path).build().err().unwrap();
    assert_eq!(err.kind(), &ErrorKind::Handover);
    assert!(
        err.chain()
            .to_string()
            .contains("connecting to the hand-over socket"),
        "{}",
        err.chain()
    );
}
