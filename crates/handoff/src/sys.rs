//! Every libc call of the crate, and so every `unsafe` block, lives here. The rest of the crate
//! works with `OwnedFd` / `BorrowedFd`; a `RawFd` appears only in this module and at the
//! environment boundary, where it is validated and wrapped at once.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// Maps a `-1` return to the thread's `errno`, like nix's `Errno::result`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Retries a call interrupted by a signal.
fn cvt_retry(mut f: impl FnMut() -> libc::c_int) -> io::Result<libc::c_int> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `pipe2(O_CLOEXEC)`: both ends are close-on-exec from birth, so a concurrent fork+exec in
/// another thread cannot leak them. Returns `(read, write)`.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as pipe2 requires.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fcntl(F_SETFL, O_NONBLOCK)` on a descriptor this process alone uses (a pipe end).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a live descriptor borrowed for the duration of the call.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// `fcntl(F_SETFD, FD_CLOEXEC)`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD on a live descriptor borrowed for the duration of the call.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Takes ownership of a descriptor number handed to this process by its parent (socket
/// activation or our own readiness pipe), after checking that it is open. It is made
/// close-on-exec at once so it cannot leak into an unrelated child.
///
/// Returns `Ok(None)` when the number is not an open descriptor.
pub(crate) fn claim_inherited(fd: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: F_GETFD only reads the descriptor flags; on a closed number it fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::EBADF) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    // SAFETY: the descriptor is open, and the activation protocol hands it to this process.
    // The caller (`activation::take`) claims each inherited number once per process: it runs
    // behind a process-wide once-flag, so no second `OwnedFd` for the same number can exist.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd())?;
    Ok(Some(owned))
}

/// What `fstat` says a descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Socket,
    Fifo,
    Other,
}

/// `fstat(2)` of a descriptor, reduced to what validation needs.
pub(crate) fn file_kind(fd: BorrowedFd<'_>) -> io::Result<FileKind> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the right size; fstat fills it on success.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat returned 0, so the struct is initialised.
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    Ok(match mode {
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFIFO => FileKind::Fifo,
        _ => FileKind::Other,
    })
}

/// `getpid(2)`.
pub(crate) fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// `kill(2)`; a process that is already gone (`ESRCH`) is not an error.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory preconditions.
    match cvt(unsafe { libc::kill(pid as libc::pid_t, signal) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// `waitpid(pid, 0)`: blocks until that child of ours has ended and reaps it.
pub(crate) fn wait_child(pid: u32) -> io::Result<ExitStatus> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid out-pointer; waitpid only reaps the named child.
    cvt_retry(|| unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) })?;
    Ok(if libc::WIFSIGNALED(status) {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        ExitStatus::Exited(libc::WEXITSTATUS(status))
    })
}

/// Outcome of [`poll_readable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readable {
    /// The descriptor at this index is readable (or hung up).
    Fd(usize),
    TimedOut,
}

/// `poll(2)` for readability on a few descriptors, retrying on `EINTR` with the time left.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Readable> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Round up so that a wait never returns a hair before its deadline.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `pollfds` is a valid array of `len` pollfd structs for the whole call.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms) };
        match cvt(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(0) if left.is_zero() => return Ok(Readable::TimedOut),
            Ok(0) => continue,
            Ok(_) => {
                let hit = pollfds.iter().position(|p| p.revents != 0);
                return Ok(hit.map_or(Readable::TimedOut, Readable::Fd));
            }
        }
    }
}

/// `read(2)`, retrying on `EINTR`.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid writable memory of `len` bytes for the whole call.
    let n = cvt_retry(|| unsafe {
        libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) as libc::c_int
    })?;
    Ok(n as usize)
}

/// `write(2)` of the whole buffer, retrying on `EINTR` and short writes.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid readable memory of `len` bytes for the whole call.
        let n = cvt_retry(|| unsafe {
            libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) as libc::c_int
        })?;
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `clock_gettime(CLOCK_MONOTONIC)` in microseconds, the clock sd_notify's `MONOTONIC_USEC` uses.
pub(crate) fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Everything the new generation's exec needs, built before `fork` so that the child side of
/// the fork allocates nothing (after `fork` in a threaded process only async-signal-safe calls
/// are allowed, and `malloc` is not one of them).
pub(crate) struct ExecPlan<'fd> {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    /// `LISTEN_PID=` followed by room for the digits, filled in by the child with its own pid:
    /// the pid is only known after fork, and systemd's protocol wants the child's.
    listen_pid: Vec<u8>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Descriptors that become 3, 4, ... in the child, in order; borrowed for `'fd`, so none
    /// can be closed (and its number reused) before the fork.
    fds: Vec<RawFd>,
    _borrowed: std::marker::PhantomData<BorrowedFd<'fd>>,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

impl<'fd> ExecPlan<'fd> {
    /// `env` must not contain `LISTEN_PID`; the plan adds it.
    pub(crate) fn new<'a>(
        path: &OsStr,
        args: impl IntoIterator<Item = &'a OsStr>,
        env: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
        fds: &[BorrowedFd<'fd>],
    ) -> io::Result<ExecPlan<'fd>> {
        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "argument or environment contains a NUL byte",
                )
            })
        };
        let path = cstr(path.as_bytes())?;
        let argv = args
            .into_iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .into_iter()
            .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut listen_pid = LISTEN_PID_PREFIX.to_vec();
        listen_pid.resize(LISTEN_PID_PREFIX.len() + 24, 0);

        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_ptrs.push(listen_pid.as_ptr().cast());
        envp_ptrs.push(std::ptr::null());
        Ok(ExecPlan {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            listen_pid,
            envp_ptrs,
            fds: fds.iter().map(|fd| fd.as_raw_fd()).collect(),
            _borrowed: std::marker::PhantomData,
        })
    }
}

/// Forks and, in the child, places the plan's descriptors at 3, 4, ... (clearing their
/// close-on-exec flag, and only theirs), writes its own pid into `LISTEN_PID`, resets the
/// signal mask and `SIGPIPE`, and executes the program. Returns the child's pid.
///
/// If the exec fails, the child writes `exec-failed <errno>\n` to the last descriptor of the
/// plan (the readiness pipe) and exits with 127.
pub(crate) fn spawn(mut plan: ExecPlan<'_>) -> io::Result<u32> {
    let envp_listen_pid = plan.listen_pid.as_mut_ptr();
    // Block every signal across the fork, so that none is handled in the child by a handler of
    // the parent's (whose self-pipe it shares) before the child has reset them to default.
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: both sets are valid out-pointers; sigfillset initialises `all`, and
    // pthread_sigmask initialises `old` with the thread's current mask.
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
    }
    // SAFETY: fork has no memory preconditions. The child branch below runs only
    // async-signal-safe functions (getpid, fcntl, dup2, syscall, sigaction, sigprocmask,
    // signal, execve, write, _exit) on memory prepared before the fork, and never returns.
    let forked = cvt(unsafe { libc::fork() });
    if matches!(forked, Ok(0)) {
        // SAFETY: we are the child of a fork; see `child_after_fork`.
        unsafe { child_after_fork(&plan, envp_listen_pid) }
    }
    // SAFETY: `old` was initialised by the pthread_sigmask call above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut()) };
    Ok(forked? as u32)
}

/// # Safety
/// Must only be called in the child right after `fork`. Touches only memory owned by `plan`
/// (copied into this address space by the fork) and calls only async-signal-safe functions.
unsafe fn child_after_fork(plan: &ExecPlan<'_>, listen_pid: *mut u8) -> ! {
    // SAFETY: for the whole block: every call below is async-signal-safe; pointers come from `plan`,
    // whose buffers are alive in this copy of the address space until exec or _exit.
    unsafe {
        // LISTEN_PID=<our pid>, written in place into the buffer the envp already points to.
        let mut pid = libc::getpid() as u32;
        let mut digits = [0u8; 10];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let at = listen_pid.add(LISTEN_PID_PREFIX.len());
        for i in 0..n {
            *at.add(i) = digits[n - 1 - i];
        }
        *at.add(n) = 0;

        // Move every passed descriptor above the target range first, so that placing one at
        // 3+i cannot clobber another that currently sits there.
        let count = plan.fds.len() as RawFd;
        let first_free = 3 + count;
        let mut moved = [0 as RawFd; 64];
        if plan.fds.len() > moved.len() {
            libc::_exit(126);
        }
        for (i, &fd) in plan.fds.iter().enumerate() {
            let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free);
            if high == -1 {
                libc::_exit(126);
            }
            moved[i] = high;
        }
        for (i, &high) in moved[..plan.fds.len()].iter().enumerate() {
            // dup2 leaves close-on-exec clear on the new descriptor: exactly these cross exec.
            if libc::dup2(high, 3 + i as RawFd) == -1 {
                libc::_exit(126);
            }
        }
        // Belt and braces against descriptors some library opened without O_CLOEXEC: mark
        // everything above our range close-on-exec (Linux 5.11+; older kernels just say no).
        libc::syscall(
            libc::SYS_close_range,
            first_free as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );

        // The parent's signal handlers must not run here (they would write to the parent's
        // self-pipes): back to default for every handled signal, still blocked. Then an empty
        // mask, as a freshly executed program expects, and SIGPIPE, which Rust ignores, back
        // to default too.
        let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed().assume_init();
        let mut default = std::mem::MaybeUninit::<libc::sigaction>::zeroed().assume_init();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction != libc::SIG_DFL
                && current.sa_sigaction != libc::SIG_IGN
            {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        libc::execve(
            plan.path.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );

        // Exec failed: tell the parent why over the readiness pipe (the last descriptor).
        let errno = *libc::__errno_location();
        let mut msg = *b"exec-failed 0000000000\n";
        let mut e = errno as u32;
        let mut pos = 21;
        loop {
            msg[pos] = b'0' + (e % 10) as u8;
            e /= 10;
            if e == 0 || pos == 12 {
                break;
            }
            pos -= 1;
        }
        let ready_fd = 3 + count - 1;
        libc::write(ready_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits (close-on-exec, set
/// by the kernel). `None` when the process is gone or the kernel has no pidfds.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: on success the descriptor is new and ours alone.
    (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// How our child `pid` ended, if it has, without reaping it (`waitid(WEXITED | WNOHANG |
/// WNOWAIT)`): its pid stays its own until [`wait_child`].
pub(crate) fn exit_status(pid: u32) -> Option<ExitStatus> {
    // SAFETY: siginfo_t is plain data, for which all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid out-pointer for the whole call.
    let ret = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` for a child that has ended, and left it zeroed (si_pid 0)
    // otherwise; the SIGCHLD fields are the ones it fills.
    let (ended, status) = unsafe { (info.si_pid() != 0, info.si_status()) };
    if ret != 0 || !ended {
        return None;
    }
    Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    })
}

/// A pidfd of our parent, if it is still `expected` (it may already have exited, and then
/// `getppid` names whoever adopted us).
pub(crate) fn parent_pidfd(expected: Option<u32>) -> Option<OwnedFd> {
    let expected = expected?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != expected {
        return None;
    }
    pidfd_open(expected)
}

/// Whether the process behind a pidfd has exited (its pidfd is readable), without waiting.
pub(crate) fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    matches!(poll_readable(&[pidfd], Duration::ZERO), Ok(Readable::Fd(_)))
}
