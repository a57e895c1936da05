//! The target's launch: the shim the harness forks (a subreaper that starts the target and
//! reports every exit it reaps, see [`crate::target::spawn`]). Everything between `fork` and
//! `execve` lives here, in async-signal-safe libc calls only (the harness is multi-threaded,
//! so the forked child may not allocate or lock).

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

/// A record from the shim: kind, pid, raw wait status, CLOCK_MONOTONIC nanoseconds.
const RECORD: usize = 24;
const KIND_STARTED: u32 = 1;
const KIND_EXITED: u32 = 2;

pub(crate) struct Launched {
    pub shim: u32,
    pub main: u32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub status: OwnedFd,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the command or environment",
        )
    })
}

fn errno_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Forks the shim, which forks and execs the target. Returns once the target's `execve`
/// succeeded (or with its error).
pub(crate) fn launch(
    exe: &Path,
    argv: &[String],
    env: &BTreeMap<OsString, OsString>,
) -> io::Result<Launched> {
    // Everything the children need is prepared here, before the fork.
    let path = cstring(exe.as_os_str().as_bytes())?;
    let argv: Vec<CString> = argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let devnull = c"/dev/null";

    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (exec_r, exec_w) = pipe2(OFlag::O_CLOEXEC)?;
    // The target waits for EOF on this before its execve, so that the shim has reported
    // its pid before the target can do anything (such as kill the shim).
    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC)?;
    let fds = ChildFds {
        out_w: out_w.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        status_w: status_w.as_raw_fd(),
        exec_w: exec_w.as_raw_fd(),
        go_r: go_r.as_raw_fd(),
        go_w: go_w.as_raw_fd(),
        reads: [
            out_r.as_raw_fd(),
            err_r.as_raw_fd(),
            status_r.as_raw_fd(),
            exec_r.as_raw_fd(),
        ],
    };

    // SAFETY: getpid and SIGRTMAX (a libc constant lookup) have no preconditions.
    let (harness, gone_signal) = unsafe { (libc::getpid(), libc::SIGRTMAX()) };
    // SAFETY: the child runs only `shim`, which makes async-signal-safe calls on memory
    // prepared above (no allocation, no locks), and never returns.
    let shim = unsafe { libc::fork() };
    if shim < 0 {
        return Err(errno_err("fork"));
    }
    if shim == 0 {
        // SAFETY: in the forked child; see `shim`.
        unsafe {
            self::shim(
                &fds,
                harness,
                gone_signal,
                path.as_ptr(),
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
                devnull.as_ptr(),
            )
        }
    }
    drop((out_w, err_w, status_w, exec_w, go_r, go_w));

    // The exec pipe closes on a successful execve; an errno arrives if it failed.
    let mut exec_r = std::fs::File::from(exec_r);
    let mut errno = Vec::new();
    exec_r.read_to_end(&mut errno)?;
    if let Ok(bytes) = <[u8; 4]>::try_from(errno.as_slice()) {
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(bytes)));
    }
    let mut status = std::fs::File::from(status_r);
    let mut first = [0u8; RECORD];
    status
        .read_exact(&mut first)
        .map_err(|e| io::Error::new(e.kind(), format!("the shim reported no start: {e}")))?;
    let (kind, pid, _, _) = decode(&first);
    if kind != KIND_STARTED {
        return Err(io::Error::other("the shim's first report is not the start"));
    }
    Ok(Launched {
        shim: shim as u32,
        main: pid as u32,
        stdout: out_r,
        stderr: err_r,
        status: status.into(),
    })
}

struct ChildFds {
    out_w: libc::c_int,
    err_w: libc::c_int,
    status_w: libc::c_int,
    exec_w: libc::c_int,
    go_r: libc::c_int,
    go_w: libc::c_int,
    reads: [libc::c_int; 4],
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; clock_gettime is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

fn encode(kind: u32, pid: i32, status: i32, ns: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0..4].copy_from_slice(&kind.to_ne_bytes());
    r[4..8].copy_from_slice(&pid.to_ne_bytes());
    r[8..12].copy_from_slice(&status.to_ne_bytes());
    r[16..24].copy_from_slice(&ns.to_ne_bytes());
    r
}

fn decode(r: &[u8; RECORD]) -> (u32, i32, i32, u64) {
    let word = |a: usize| [r[a], r[a + 1], r[a + 2], r[a + 3]];
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&r[16..24]);
    (
        u32::from_ne_bytes(word(0)),
        i32::from_ne_bytes(word(4)),
        i32::from_ne_bytes(word(8)),
        u64::from_ne_bytes(ns),
    )
}

/// Writes all of `buf` to `fd`, retrying on EINTR (async-signal-safe).
///
/// # Safety
/// `fd` must be an open descriptor this code owns (writing to another's would corrupt it).
unsafe fn write_all(fd: libc::c_int, buf: &[u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the rest of `buf`.
        let n = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if n > 0 {
            done += n as usize;
        } else if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return;
        }
    }
}

/// Sets every catchable signal's disposition to `handler` (SIG_IGN or SIG_DFL), except
/// SIGCHLD, whose default the shim needs to be able to wait for its children.
///
/// # Safety
/// Changes process-wide signal dispositions: only in the forked shim or target, where no
/// other code relies on them.
unsafe fn set_all_signals(handler: libc::sighandler_t) {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == libc::SIGCHLD {
            continue;
        }
        // SAFETY: a zeroed sigaction with a plain handler is valid; errors (signals the C
        // library reserves) are ignored.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Closes every descriptor above the standard streams except `keep` (async-signal-safe:
/// `close_range`, or `close` in a loop on kernels older than 5.9).
///
/// # Safety
/// Only in a forked child that owns no descriptor it still needs besides `keep` and 0-2.
unsafe fn close_all_but(keep: &[libc::c_int; 6]) {
    let mut keep = *keep;
    keep.sort_unstable();
    let mut from: libc::c_int = 3;
    // The gaps between the kept descriptors, then everything above the last one.
    for next in keep.iter().copied().chain([libc::c_int::MAX]) {
        if next > from {
            let last = if next == libc::c_int::MAX {
                libc::c_uint::MAX
            } else {
                (next - 1) as libc::c_uint
            };
            // SAFETY: close_range only closes descriptors; see the function's contract.
            let rc =
                unsafe { libc::syscall(libc::SYS_close_range, from as libc::c_uint, last, 0u32) };
            if rc != 0 {
                // SAFETY: as above; getrlimit writes only into `lim`.
                unsafe {
                    let mut lim: libc::rlimit = std::mem::zeroed();
                    let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                        lim.rlim_cur.min(1 << 20) as libc::c_int
                    } else {
                        1024
                    };
                    for fd in from..next.min(top) {
                        libc::close(fd);
                    }
                }
            }
        }
        from = from.max(next.saturating_add(1));
    }
}

/// The target's process group, for [`on_harness_gone`] (in the shim only).
static TARGET_GROUP: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The shim's parent-death signal handler: the harness is gone, so nobody will stop the
/// target; kill its process group (async-signal-safe: an atomic load and `kill`).
extern "C" fn on_harness_gone(_: libc::c_int) {
    let group = TARGET_GROUP.load(std::sync::atomic::Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

/// The shim's whole life, in the forked child.
///
/// # Safety
/// Only in the child of `fork`, with every pointer valid (they point into the parent's
/// memory, which the child has a copy of).
unsafe fn shim(
    fds: &ChildFds,
    harness: libc::pid_t,
    gone_signal: libc::c_int,
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    devnull: *const libc::c_char,
) -> ! {
    // SAFETY: for the whole body: async-signal-safe calls on valid fds and pointers.
    unsafe {
        for fd in fds.reads {
            libc::close(fd);
        }
        // A fork copies every descriptor of the harness, and the shim never execs, so
        // without this it would hold, for the whole run, whatever the harness had open at
        // that moment: in a process running several scenarios at once (the test suite),
        // another run's client connections, whose close would then never reach their
        // server (a draining generation would wait for them until its deadline).
        close_all_but(&[
            fds.out_w,
            fds.err_w,
            fds.status_w,
            fds.exec_w,
            fds.go_r,
            fds.go_w,
        ]);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        // Its command line is the harness's (a fork without exec); the name tells it apart
        // in `ps -o comm` and in /proc/PID/stat.
        libc::prctl(libc::PR_SET_NAME, c"handoff-shim".as_ptr(), 0, 0, 0);
        set_all_signals(libc::SIG_IGN);
        // If the harness dies (SIGKILL, a crash, a CI timeout) the tree must not outlive
        // it: the kernel then sends `gone_signal`, whose handler kills the target's group.
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_harness_gone as *const () as libc::sighandler_t;
        libc::sigaction(gone_signal, &sa, std::ptr::null_mut());
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            gone_signal as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != harness {
            // It died before the prctl took effect.
            libc::_exit(1);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        let main = libc::fork();
        if main == 0 {
            // The target: default dispositions, its own process group, the pipes as its
            // standard streams, then the program.
            set_all_signals(libc::SIG_DFL);
            libc::setpgid(0, 0);
            libc::close(fds.go_w);
            let mut byte = 0u8;
            while libc::read(fds.go_r, (&mut byte as *mut u8).cast(), 1) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            let null = libc::open(devnull, libc::O_RDONLY);
            if null >= 0 {
                libc::dup2(null, 0);
            }
            libc::dup2(fds.out_w, 1);
            libc::dup2(fds.err_w, 2);
            libc::execve(path, argv, envp);
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOEXEC);
            write_all(fds.exec_w, &errno.to_ne_bytes());
            libc::_exit(127);
        }
        if main < 0 {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN);
            write_all(fds.exec_w, &errno.to_ne_bytes());
            libc::_exit(127);
        }
        // Also set in the parent, so that the harness never sees the target in the
        // shim's group, whichever of the two runs first.
        libc::setpgid(main, main);
        TARGET_GROUP.store(main, std::sync::atomic::Ordering::SeqCst);
        libc::close(fds.out_w);
        libc::close(fds.err_w);
        libc::close(fds.exec_w);
        write_all(fds.status_w, &encode(KIND_STARTED, main, 0, monotonic_ns()));
        libc::close(fds.go_r);
        libc::close(fds.go_w);
        loop {
            let mut status: libc::c_int = 0;
            let pid = libc::waitpid(-1, &mut status, libc::__WALL);
            if pid > 0 {
                write_all(
                    fds.status_w,
                    &encode(KIND_EXITED, pid, status, monotonic_ns()),
                );
            } else if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // ECHILD: the tree is gone; nothing can be orphaned to the shim any more.
                libc::_exit(0);
            }
        }
    }
}

/// Reads the shim's exit reports until it ends, and hands them to the observer.
pub(crate) fn forward_exits(mut status: std::fs::File) {
    let mut record = [0u8; RECORD];
    while status.read_exact(&mut record).is_ok() {
        let (kind, pid, raw, ns) = decode(&record);
        if kind != KIND_EXITED {
            continue;
        }
        let ago = Duration::from_nanos(monotonic_ns().saturating_sub(ns));
        let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        if let Some(text) = crate::observer::status_text(raw) {
            crate::observer::record_exit(pid as u32, at, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = encode(KIND_EXITED, 4242, 9, 123_456_789_012);
        assert_eq!(decode(&r), (KIND_EXITED, 4242, 9, 123_456_789_012));
    }
}
