//! Reading `/proc`: a process's state, parent, group and start time, its command line and
//! environment, the socket inodes behind its descriptors, and the listening sockets of the
//! machine (from [`super::sock_diag`] or `/proc/net`). The parsers are pure functions.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::fcntl::readlinkat;
use nix::time::{ClockId, clock_gettime};

use crate::target::ConnectAddr;

/// The fields of `/proc/PID/stat` the observer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    /// Start time in clock ticks since boot: tells a reused pid from the process it replaced.
    pub starttime: u64,
    /// Threads in the process (`num_threads`), the thread-group leader included.
    pub threads: u32,
}

impl Stat {
    /// Whether the process has exited: dead or a zombie, and no thread left but the leader.
    ///
    /// The state is the thread-group leader's, and the leader can be a zombie while other
    /// threads still run: when a multi-threaded process exits (`exit_group`), the thread that
    /// called it may finish first and the others only once they are scheduled to die, which on
    /// a loaded machine takes milliseconds. Until then the process still holds every
    /// descriptor (its threads share the table), its pidfd does not report an exit, and its
    /// parent cannot reap it: it is alive for every purpose but this one letter.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X') && self.threads <= 1
    }
}

/// Parses `/proc/PID/stat`. The command name may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        // Fields 20 and 22 of the whole line; the list starts at field 3.
        threads: f.get(17)?.parse().ok()?,
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub port: u16,
    pub state: u8,
    /// For a listener: connections waiting in its accept queue.
    pub rx_queue: u64,
    pub inode: u64,
}

/// Parses one row of `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn parse_proc_net_tcp_line(line: &str) -> Option<TcpRow> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let local = f.get(1)?;
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let rx_queue = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
    let inode = f.get(9)?.parse().ok()?;
    Some(TcpRow {
        port,
        state,
        rx_queue,
        inode,
    })
}

/// Every listening TCP socket: from sock_diag (see [`super::sock_diag`]), whose cost does not depend
/// on how many connections exist, or from `/proc/net/tcp` where netlink is not available.
pub(super) fn tcp_listeners() -> Vec<TcpRow> {
    static NO_SOCK_DIAG: AtomicBool = AtomicBool::new(false);
    if !NO_SOCK_DIAG.load(Ordering::Relaxed) {
        match super::sock_diag::tcp_listeners() {
            Ok(rows) => return rows,
            // Not there, or not allowed: for good. Anything else: /proc this once.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EAFNOSUPPORT
                            | libc::EPROTONOSUPPORT
                            | libc::EPERM
                            | libc::EACCES
                            | libc::EINVAL
                            | libc::ENOENT
                    )
                ) =>
            {
                NO_SOCK_DIAG.store(true, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    proc_tcp_listeners()
}

/// The listening rows of `/proc/net/tcp` and `tcp6`, read only up to the end of their
/// listening section: the kernel lists listeners first and generates the file lazily, so the
/// rows behind them are not formatted. (Each read still walks the kernel's established hash
/// table to find where the listeners end, which is why [`super::sock_diag`] is preferred.)
fn proc_tcp_listeners() -> Vec<TcpRow> {
    let mut rows = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(file) = fs::File::open(table) else {
            continue;
        };
        for line in BufReader::new(file).lines().skip(1) {
            let Ok(line) = line else { break };
            let Some(row) = parse_proc_net_tcp_line(&line) else {
                continue;
            };
            if row.state != TCP_LISTEN {
                break;
            }
            rows.push(row);
        }
    }
    rows
}

/// `TCP_LISTEN` in `/proc/net/tcp`'s `st` column.
pub(super) const TCP_LISTEN: u8 = 0x0A;
/// `__SO_ACCEPTCON` in `/proc/net/unix`'s `Flags` column: the socket is listening.
const SO_ACCEPTCON: u32 = 0x0001_0000;

/// One row of `/proc/net/unix`: `(inode, listening, path)`.
pub fn parse_proc_net_unix_line(line: &str) -> Option<(u64, bool, Option<&str>)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
    let inode = f.get(6)?.parse().ok()?;
    Some((inode, flags & SO_ACCEPTCON != 0, f.get(7).copied()))
}

/// The inode of a `socket:[N]` descriptor link.
pub fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Reads the inodes of every listening socket for `addr` (see [`tcp_listeners`] for the cost).
pub(super) fn listening_inodes(addr: &ConnectAddr) -> HashSet<u64> {
    let mut found = HashSet::new();
    match addr {
        ConnectAddr::Tcp(sa) => {
            found.extend(
                tcp_listeners()
                    .into_iter()
                    .filter(|r| r.port == sa.port())
                    .map(|r| r.inode),
            );
        }
        ConnectAddr::Unix(path) => {
            let Ok(file) = fs::File::open("/proc/net/unix") else {
                return found;
            };
            let want = path.to_string_lossy();
            for line in BufReader::new(file).lines().skip(1) {
                let Ok(line) = line else { break };
                if let Some((inode, true, Some(p))) = parse_proc_net_unix_line(&line)
                    && p == want
                {
                    found.insert(inode);
                }
            }
        }
    }
    found
}

/// Whether `pid` is running: it exists and has not exited (a zombie still "exists" for
/// `kill(pid, 0)`; see [`Stat::exited`]).
pub fn running(pid: u32) -> bool {
    read_stat(pid).is_some_and(|s| !s.exited())
}

pub(super) fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub(super) fn read_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut s = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ");
    if s.len() > 512 {
        let mut cut = 512;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    Some(s)
}

/// Whether `var` is set at all in the environment of `pid`.
pub(super) fn environ_var(pid: u32, var: &str) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let prefix = format!("{var}=");
    raw.split(|&b| b == 0)
        .any(|kv| kv.starts_with(prefix.as_bytes()))
}

pub(super) fn environ_has(pid: u32, var: &str, value: &str) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{var}={value}");
    raw.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
}

/// Socket inodes behind a process's descriptors, and how many descriptors it has.
///
/// One `readlinkat` per descriptor, relative to the open `/proc/PID/fd` directory (no path
/// walk per descriptor). The cost is still linear in the size of the table (tens of
/// milliseconds for 10,000 connections on a busy machine), which is why the observer re-reads
/// large tables less often (see [`super::scan::FULL_SCAN_COST_FACTOR`]).
pub(super) fn scan_fds(pid: u32) -> Option<(Vec<(i32, u64)>, u32)> {
    let path = PathBuf::from(format!("/proc/{pid}/fd"));
    let dir = FdDir::open(&path)?;
    let mut sockets = Vec::new();
    let mut count = 0u32;
    for entry in fs::read_dir(&path).ok()? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A descriptor closed since the directory was listed (a connection ending) is not
        // counted: counted, it would pass for one that is not a socket.
        if let Some(socket) = dir.link(fd) {
            count += 1;
            if let Some(inode) = socket {
                sockets.push((fd, inode));
            }
        }
    }
    Some((sockets, count))
}

/// The CPU time the calling thread has used (not wall time: a scan preempted on a busy
/// machine did not cost the observer more).
pub(super) fn thread_cpu_time() -> Duration {
    match clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID) {
        Ok(ts) => Duration::new(
            ts.tv_sec().max(0) as u64,
            ts.tv_nsec().clamp(0, 999_999_999) as u32,
        ),
        Err(_) => Duration::ZERO,
    }
}

/// An open `/proc/PID/fd` directory, to read descriptor links relative to it.
pub(super) struct FdDir(fs::File);

impl FdDir {
    pub(super) fn open(path: &Path) -> Option<FdDir> {
        fs::File::open(path).ok().map(FdDir)
    }

    /// The socket inode behind descriptor `fd`, if it is a socket.
    pub(super) fn socket_inode(&self, fd: i32) -> Option<u64> {
        self.link(fd).flatten()
    }

    /// Whether descriptor `fd` is open (`Some`) and, if it is a socket, its inode.
    fn link(&self, fd: i32) -> Option<Option<u64>> {
        // `readlinkat(2)` relative to the open directory: no path walk per descriptor.
        let link = readlinkat(&self.0, fd.to_string().as_str()).ok()?;
        Some(link.to_str().and_then(parse_socket_link))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let line =
            "4242 (a) b (c) S 100 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                ppid: 100,
                pgid: 4242,
                starttime: 987654,
                threads: 1,
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        // A zombie leader whose other thread still runs (main thread gone first), as read from
        // the kernel, is alive; the same process once its last thread is gone has exited.
        let leader = "27440 (lead) Z 27000 27440 26000 0 -1 4194564 0 0 0 0 0 0 0 0 20 0 2 0 \
                      3120000 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stat = parse_stat(leader).expect("parses");
        assert_eq!((stat.state, stat.threads), ('Z', 2));
        assert!(!stat.exited(), "{stat:?}");
        assert!(
            parse_stat(&leader.replace(" 20 0 2 0 ", " 20 0 1 0 "))
                .expect("parses")
                .exited()
        );
        assert!(!parse_stat(line).expect("parses").exited());
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_proc_net_tcp_rows() {
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 31337 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_proc_net_tcp_line(listen),
            Some(TcpRow {
                port: 8080,
                state: 0x0A,
                rx_queue: 0,
                inode: 31337
            })
        );
        let v6 = "   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 20 4 1 10 -1";
        assert_eq!(
            parse_proc_net_tcp_line(v6),
            Some(TcpRow {
                port: 8080,
                state: 0x01,
                rx_queue: 0,
                inode: 99
            })
        );
        let queued = "   0: 0100007F:1F90 00000000:0000 0A 00000080:0000000C 00:00000000 00000000     0        0 7 1";
        assert_eq!(
            parse_proc_net_tcp_line(queued).map(|r| r.rx_queue),
            Some(12)
        );
        assert_eq!(
            parse_proc_net_tcp_line("  sl  local_address rem_address   st tx_queue"),
            None
        );
    }

    #[test]
    fn parses_proc_net_unix_rows() {
        let listening = "0000000034a314eb: 00000002 00000000 00010000 0001 01 4711 /tmp/x/sock";
        assert_eq!(
            parse_proc_net_unix_line(listening),
            Some((4711, true, Some("/tmp/x/sock")))
        );
        let connected = "0000000034a314eb: 00000003 00000000 00000000 0001 03  1649";
        assert_eq!(
            parse_proc_net_unix_line(connected),
            Some((1649, false, None))
        );
    }

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn finds_its_own_listener_in_proc_net_tcp() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let inodes = listening_inodes(&ConnectAddr::Tcp(addr));
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        let (sockets, _) = scan_fds(std::process::id()).expect("own fds");
        assert!(sockets.iter().any(|(_, i)| inodes.contains(i)));
    }

    #[test]
    fn finds_its_own_listener_in_proc_net_unix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let inodes = listening_inodes(&ConnectAddr::Unix(path));
        assert_eq!(inodes.len(), 1, "{inodes:?}");
    }
}
