//! Every libc call of the crate, and so every `unsafe` block, lives here. The rest of the crate
//! works with `OwnedFd` / `BorrowedFd`; a `RawFd` appears only in this module and at the
//! environment boundary, where it is validated and wrapped at once.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

mod fdpass;
pub(crate) use fdpass::{
    PeerCred, geteuid, peer_cred, recv_plain, recv_with_fds, send_packet, send_with_fds,
};

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

/// A pidfd of this process's parent, if it is `pid` and pidfds are usable: opened, then
/// checked to be our parent still (had it died in between, its pid could name another process
/// by now; a parent that is still ours cannot have died).
pub(crate) fn parent_pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = || unsafe { libc::getppid() } as u32;
    if !pidfds_usable() || parent() != pid {
        return None;
    }
    let pidfd = pidfd_open(pid).ok()?;
    (parent() == pid).then_some(pidfd)
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

/// Everything the new generation's exec needs, built before the spawn so that the child
/// allocates nothing: it shares this process's memory (see [`spawn`]) and other threads may
/// hold the allocator's locks, so it may only run async-signal-safe code on memory prepared
/// for it.
pub(crate) struct ExecPlan<'fd> {
    path: CString,
    /// The directory the child changes to before it executes, if any.
    cwd: Option<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    /// `LISTEN_PID=` followed by room for the digits, filled in by the child with its own pid:
    /// the pid is only known once the child exists, and systemd's protocol wants the child's.
    listen_pid: Vec<u8>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Descriptors that become 3, 4, ... in the child, in order; borrowed for `'fd`, so none
    /// can be closed (and its number reused) before the spawn.
    fds: Vec<RawFd>,
    /// The child-side number (among 3, 4, ...) of the descriptor an exec failure is reported on.
    report_fd: RawFd,
    /// `SIGRTMIN()` and `SIGRTMAX()`, read here: the child calls nothing it does not need to.
    sigrtmin: libc::c_int,
    sigrtmax: libc::c_int,
    _borrowed: std::marker::PhantomData<BorrowedFd<'fd>>,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for the child's pid in `LISTEN_PID=`: a pid has at most 10 digits, plus the NUL.
const LISTEN_PID_DIGITS: usize = 24;
/// The most descriptors a plan passes (the child places them with a fixed-size array).
const MAX_PASSED_FDS: usize = 72;

impl<'fd> ExecPlan<'fd> {
    /// `env` must not contain `LISTEN_PID`; the plan adds it. The child changes to `cwd`, when
    /// given, before it executes (a relative `path` is then looked up from there). An exec
    /// failure is reported on
    /// `fds[report]` as `exec-failed <errno>\n`, a failure to place the descriptors before it
    /// as `setup-failed <errno>\n`.
    pub(crate) fn new<'a>(
        path: &OsStr,
        args: impl IntoIterator<Item = &'a OsStr>,
        env: impl IntoIterator<Item = (&'a OsStr, &'a OsStr)>,
        cwd: Option<&OsStr>,
        fds: &[BorrowedFd<'fd>],
        report: usize,
    ) -> io::Result<ExecPlan<'fd>> {
        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "argument or environment contains a NUL byte",
                )
            })
        };
        if fds.len() > MAX_PASSED_FDS || report >= fds.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} descriptors to pass (at most {MAX_PASSED_FDS}), reporting on #{report}",
                    fds.len()
                ),
            ));
        }
        let path = cstr(path.as_bytes())?;
        let cwd = cwd.map(|d| cstr(d.as_bytes())).transpose()?;
        let argv = args
            .into_iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .into_iter()
            .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut listen_pid = LISTEN_PID_PREFIX.to_vec();
        listen_pid.resize(LISTEN_PID_PREFIX.len() + LISTEN_PID_DIGITS, 0);

        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_ptrs.push(listen_pid.as_ptr().cast());
        envp_ptrs.push(std::ptr::null());
        Ok(ExecPlan {
            path,
            cwd,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            listen_pid,
            envp_ptrs,
            fds: fds.iter().map(|fd| fd.as_raw_fd()).collect(),
            report_fd: 3 + report as RawFd,
            sigrtmin: libc::SIGRTMIN(),
            sigrtmax: libc::SIGRTMAX(),
            _borrowed: std::marker::PhantomData,
        })
    }
}

/// A child process this process started: its pid and, where the kernel gives one, a pidfd
/// that names it for as long as it is held. With a pidfd every signal and wait goes through
/// it, so nothing can reach another process that reused the pid, even when something else in
/// this process reaps children (`SIGCHLD` ignored, a `waitpid(-1)` loop); without one, the
/// pid is used, which is sound only while nobody else reaps this child.
#[derive(Debug)]
pub(crate) struct Process {
    pid: u32,
    pidfd: Option<OwnedFd>,
    /// Ours to wait for; a process that connected to us (a hand-over peer) is not.
    child: bool,
}

impl Process {
    /// A process that is not our child, `pid` as its socket's credentials gave it: with a
    /// pidfd where pidfds work (opened while its connection is open, so the pid is still its
    /// own), else by pid. Signals reach it; it is never waited for.
    /// Pid 0 (a peer in a PID namespace not visible from ours) gets no pidfd, and signals
    /// to it fail rather than reach our own process group.
    pub(crate) fn peer(pid: u32) -> Process {
        let pidfd = (pid != 0 && pidfds_usable())
            .then(|| pidfd_open(pid).ok())
            .flatten();
        Process {
            pid,
            pidfd,
            child: false,
        }
    }

    /// Whether this is a child of ours, which can be waited for.
    pub(crate) fn is_child(&self) -> bool {
        self.child
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// A descriptor that becomes readable once the process has ended (its pidfd).
    pub(crate) fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// `pidfd_send_signal(2)`, or `kill(2)` without a pidfd; a process that has ended (but
    /// is not reaped) is not an error.
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        let Some(pidfd) = &self.pidfd else {
            if self.pid == 0 {
                // kill(0) would signal our own process group.
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the process is not visible from this PID namespace",
                ));
            }
            return kill(self.pid, signal);
        };
        // SAFETY: a pidfd we own, a signal number, no siginfo and no flags.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match cvt(ret as libc::c_int) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other.map(drop),
        }
    }

    /// How the process ended, if it has, without reaping it (`waitid(WEXITED | WNOHANG |
    /// WNOWAIT)`): its pid stays its own until [`reap`](Process::reap). `Ok(None)` while it
    /// runs; `ECHILD` when something else in this process has reaped it.
    pub(crate) fn exit_status(&self) -> io::Result<Option<ExitStatus>> {
        waitid(self.target(), libc::WNOHANG | libc::WNOWAIT)
    }

    /// `waitid(P_PIDFD, WEXITED)` (or `P_PID` without a pidfd): blocks until the process has
    /// ended and reaps it.
    pub(crate) fn reap(&self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = waitid(self.target(), 0)? {
                return Ok(status);
            }
        }
    }

    fn target(&self) -> (libc::idtype_t, libc::id_t) {
        match &self.pidfd {
            Some(fd) => (libc::P_PIDFD, fd.as_raw_fd() as libc::id_t),
            None => (libc::P_PID, self.pid as libc::id_t),
        }
    }
}

/// `waitid(2)` for `WEXITED` plus `flags`; `None` when `WNOHANG` found nothing yet.
fn waitid(
    (idtype, id): (libc::idtype_t, libc::id_t),
    flags: libc::c_int,
) -> io::Result<Option<ExitStatus>> {
    // SAFETY: siginfo_t is plain data, for which all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid out-pointer for the whole call.
    cvt_retry(|| unsafe { libc::waitid(idtype, id, &mut info, libc::WEXITED | flags) })?;
    // SAFETY: waitid filled `info` for a child that has ended, and left it zeroed (si_pid 0)
    // otherwise; the SIGCHLD fields are the ones it fills.
    let (ended, status) = unsafe { (info.si_pid() != 0, info.si_status()) };
    if !ended {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    }))
}

/// Set once by [`disable_pidfds`]: spawn asks for no pidfd, and the upgrader watches its
/// children and its predecessor without one, as on a kernel older than 5.4.
static PIDFDS_DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process do without pidfds from now on (the `HANDOFF_NO_PIDFD` knob).
pub(crate) fn disable_pidfds() {
    PIDFDS_DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process uses pidfds: not disabled, and the kernel has all of what the
/// upgrader does with one. They came in pieces: `CLONE_PIDFD` in 5.2 (where a pidfd cannot be
/// polled: it always reads as readable), `poll` and `pidfd_open` in 5.3, `waitid(P_PIDFD)` in
/// 5.4. Probed once: `pidfd_open` of this very process, then `waitid(P_PIDFD)` on it, which
/// a 5.4 kernel refuses with `ECHILD` (we are not our own child) and an older one with
/// `EINVAL` (or has no `pidfd_open` at all: `ENOSYS`). A sandbox that refuses either call
/// makes the answer no.
pub(crate) fn pidfds_usable() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if PIDFDS_DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    *PROBED.get_or_init(|| {
        let Ok(own) = pidfd_open(getpid()) else {
            return false;
        };
        // SAFETY: siginfo_t is plain data, for which all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a pidfd we own, and a valid out-pointer for the whole call.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                own.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        ret == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
    })
}

/// `pidfd_open(2)` (Linux 5.3): a pidfd for `pid`, close-on-exec.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: no memory is passed; the kernel returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let fd = cvt(fd as libc::c_int)?;
    // SAFETY: pidfd_open succeeded: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Every signal blocked in the calling thread, as the kernel counts them: the raw system
/// call with all 64 bits set, so that the C library's own signals (glibc's thread
/// cancellation and setxid, 32 and 33, which its `sigfillset` and `pthread_sigmask` leave
/// out) are blocked too. (The kernel never blocks SIGKILL and SIGSTOP.) Returns the mask to
/// restore with [`restore_signals`].
fn block_all_signals() -> u64 {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: both are valid 8-byte sets (the kernel's sigset size on Linux) for the call.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            std::mem::size_of::<u64>(),
        )
    };
    old
}

/// Puts back the mask [`block_all_signals`] returned.
fn restore_signals(old: u64) {
    // SAFETY: a valid 8-byte set, and no old set asked for.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old as *const u64,
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        )
    };
}

/// Size of the stack the child runs on between clone and exec: it calls a handful of
/// syscall wrappers with a few hundred bytes of locals; glibc's posix_spawn gives 32 KiB.
const CHILD_STACK: usize = 64 * 1024;

/// Starts the next generation without copying this process's address space:
/// `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` with a small stack of its own, the way
/// glibc's `posix_spawn` and Go's `forkAndExecInChild` do. A `fork` would copy the page tables
/// (tens of milliseconds per GiB of touched memory, during which the memory map is locked and
/// the other threads of this process stall on any page fault), and the exec would tear the
/// copy down again; here the child borrows this process's memory until it executes, and the
/// calling thread sleeps until then (`CLONE_VFORK`), so the cost does not grow with the
/// server's size.
///
/// In the child: the plan's descriptors are placed at 3, 4, ... (their close-on-exec flag
/// cleared, and only theirs), its own pid is written into `LISTEN_PID`, every caught signal is
/// reset to its default, the mask emptied, `SIGPIPE` restored, and the program executed. If
/// the exec fails, the child writes `exec-failed <errno>\n` to the plan's report descriptor and
/// exits with 127; if placing the descriptors fails, `setup-failed <errno>\n` and 126.
///
/// `CLONE_PIDFD` is asked for only where pidfds are usable (see [`pidfds_usable`]); a kernel
/// that refuses it with `EINVAL` (a sandbox) gets the clone again without it, and this process
/// does without pidfds from then on.
pub(crate) fn spawn(mut plan: ExecPlan<'_>) -> io::Result<Process> {
    let stack = ChildStack::new(CHILD_STACK)?;
    let listen_pid = plan.listen_pid.as_mut_ptr();
    let mut arg = ChildArg {
        plan: &plan,
        listen_pid,
    };
    let mut pidfd: libc::c_int = -1;
    // The exit signal is SIGCHLD. (No exit signal would keep a host that ignores SIGCHLD, or
    // reaps with `waitpid(-1)`, from taking the child's status; but the kernel sets it back to
    // SIGCHLD at the child's exec. Such a host is handled by the upgrader instead: a child
    // that has ended without a status to read is dead all the same.)
    let base = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    let mut flags = base;
    if pidfds_usable() {
        flags |= libc::CLONE_PIDFD;
    }
    // Block every signal across the clone. The child shares our memory until it executes: a
    // handler of ours running in it (before it has reset them to default) would work on our
    // data from another process. The child inherits the mask, resets the handlers, then
    // unblocks. (glibc's posix_spawn does the same, with the same raw call.)
    let old = block_all_signals();
    // SAFETY: `child_main` gets `arg`, which points to `plan` and to this frame's `arg`; both
    // outlive the child's use of them because CLONE_VFORK suspends this thread until the
    // child has executed or exited, and nothing else touches them meanwhile (they belong to
    // this thread). The stack is ours, 16-byte aligned at its top, and unused by anyone else.
    // Without CLONE_SIGHAND the child has its own copy of the signal handler table, so its
    // resetting them leaves ours alone. The child writes only: its stack, the `LISTEN_PID`
    // digits (a buffer of the plan made for it, which this thread reads no more), and errno
    // (it shares this thread's TLS: errno is this thread's, which is asleep; we read errno
    // below only when clone itself failed, in which case no child ran).
    let mut clone = |flags| unsafe {
        libc::clone(
            child_main,
            stack.top(),
            flags,
            (&mut arg as *mut ChildArg<'_, '_>).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let mut spawned = cvt(clone(flags));
    if flags != base && matches!(&spawned, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
        // A sandbox that does not know CLONE_PIDFD: no child ran; go on without pidfds.
        disable_pidfds();
        spawned = cvt(clone(base));
    }
    restore_signals(old);
    drop(stack);
    let pid = spawned? as u32;
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor, ours alone (and
    // close-on-exec); without it `pidfd` is still -1.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok(Process {
        pid,
        pidfd,
        child: true,
    })
}

/// The kernel's `struct sigaction` for `rt_sigaction(2)` (not the C library's) asking for the
/// default action: all zeroes (`SIG_DFL` is 0, no flags, no restorer, an empty mask), which
/// is the same whatever the architecture's layout (x86-64 has a restorer field, aarch64 has
/// not), as long as the buffer is at least as large as the largest of them.
const KERNEL_SIGACTION_DEFAULT: [u64; 4] = [0; 4];

/// What `child_main` is handed.
struct ChildArg<'p, 'fd> {
    plan: &'p ExecPlan<'fd>,
    listen_pid: *mut u8,
}

/// The child's stack: an anonymous mapping with a guard page below it, so an overflow faults
/// instead of writing over someone else's memory.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new(size: usize) -> io::Result<ChildStack> {
        // SAFETY: sysconf has no memory preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = size.div_ceil(page) * page + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping we just made.
        cvt(unsafe { libc::mprotect(base, page, libc::PROT_NONE) })?;
        Ok(stack)
    }

    /// The top of the stack (it grows down), 16-byte aligned as the ABI wants.
    fn top(&self) -> *mut libc::c_void {
        let top = self.base as usize + self.len;
        (top & !15) as *mut libc::c_void
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the child that used it has executed or exited
        // (CLONE_VFORK returned), so nothing runs on it any more.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The child, from clone to exec. Runs on its own stack, in this process's memory, with every
/// signal blocked.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArg` that `spawn` passed, alive until we execute or exit.
    let arg = unsafe { &*(arg as *const ChildArg<'_, '_>) };
    // SAFETY: we are the child of `spawn`'s clone; see `child_exec`.
    unsafe { child_exec(arg.plan, arg.listen_pid) }
}

/// # Safety
/// Must only be called in the child of [`spawn`]'s clone. It shares the parent's memory:
/// it touches only its own stack, the plan (read), the `LISTEN_PID` digits (written, a buffer
/// made for it) and errno, calls only async-signal-safe functions, allocates nothing, cannot
/// panic, and never returns.
unsafe fn child_exec(plan: &ExecPlan<'_>, listen_pid: *mut u8) -> ! {
    // SAFETY: for the whole block: every call below is async-signal-safe; pointers come from `plan`,
    // whose buffers the suspended parent keeps alive until we execute or exit. Indexing is
    // within bounds by construction (a pid has at most 10 digits; `ExecPlan::new` refuses more
    // than MAX_PASSED_FDS descriptors), so no panic can start here.
    unsafe {
        // LISTEN_PID=<our pid>, written in place into the buffer the envp already points to.
        // The raw syscall: a libc that caches pids would answer with the parent's.
        let mut pid = libc::syscall(libc::SYS_getpid) as u32;
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
        // 3+i cannot clobber another that currently sits there. The copies are ours alone:
        // descriptors are not shared (no CLONE_FILES).
        let count = plan.fds.len();
        let first_free = 3 + count as RawFd;
        // A failure here is reported like a failed exec, as `setup-failed <errno>\n`, on the
        // report descriptor where it is now: its parent's number until it has moved, then its
        // high copy, which stays open (close-on-exec) until the exec.
        let report = (plan.report_fd - 3) as usize;
        let mut moved = [0 as RawFd; MAX_PASSED_FDS];
        for (i, &fd) in plan.fds.iter().enumerate() {
            let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free);
            if high == -1 {
                let errno = *libc::__errno_location();
                let on = if i > report {
                    moved[report]
                } else {
                    plan.fds[report]
                };
                report_failure(on, b"setup-failed ", errno, 126);
            }
            moved[i] = high;
        }
        for (i, &high) in moved[..count].iter().enumerate() {
            // dup2 leaves close-on-exec clear on the new descriptor: exactly these cross exec.
            if libc::dup2(high, 3 + i as RawFd) == -1 {
                let errno = *libc::__errno_location();
                report_failure(moved[report], b"setup-failed ", errno, 126);
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

        // The working directory, looked up anew: through a symlink flipped since, it is the
        // new release's.
        if let Some(dir) = &plan.cwd
            && libc::chdir(dir.as_ptr()) == -1
        {
            let errno = *libc::__errno_location();
            report_failure(plan.report_fd, b"setup-failed ", errno, 126);
        }

        // The parent's signal handlers must not run here: they would run on the parent's
        // memory. Back to default for every handled signal (our own copy of the table: no
        // CLONE_SIGHAND), still blocked. Then an empty mask, as a freshly executed program
        // expects, and SIGPIPE, which Rust ignores, back to default too.
        let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed().assume_init();
        let mut default = std::mem::MaybeUninit::<libc::sigaction>::zeroed().assume_init();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=plan.sigrtmax {
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
        // The C library keeps the signals between the standard ones and SIGRTMIN for itself
        // (glibc: thread cancellation and setxid) and will not let sigaction touch them, but
        // its handlers for them are ours too: reset them with the raw system call.
        for sig in 32..plan.sigrtmin {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                KERNEL_SIGACTION_DEFAULT.as_ptr(),
                std::ptr::null_mut::<u64>(),
                std::mem::size_of::<u64>(),
            );
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());

        libc::execve(
            plan.path.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );

        // Exec failed: tell the parent why over the report descriptor.
        let errno = *libc::__errno_location();
        report_failure(plan.report_fd, b"exec-failed ", errno, 127)
    }
}

/// Writes `<what><errno, in ten digits>\n` on `fd` and exits with `code`: how the child of
/// [`spawn`] reports a failure before its exec. Async-signal-safe and allocation-free; `what`
/// is a word and a space, at most 13 bytes.
fn report_failure(fd: RawFd, what: &[u8], errno: i32, code: i32) -> ! {
    let mut msg = [0u8; 24];
    let start = what.len().min(13);
    msg[..start].copy_from_slice(&what[..start]);
    let end = start + 10;
    msg[end] = b'\n';
    let mut e = errno as u32;
    for pos in (start..end).rev() {
        msg[pos] = b'0' + (e % 10) as u8;
        e /= 10;
    }
    // SAFETY: write and _exit are async-signal-safe; `msg` is on this stack, `end + 1` bytes
    // of it written.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), end + 1);
        libc::_exit(code)
    }
}

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`: the link between two generations.
/// Each end sees the other's last copy close (readable, then EOF), which is how each learns
/// the other has gone without a pidfd.
pub(crate) fn socketpair_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as socketpair requires.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether the other end of a link (or a pidfd's process) is gone: the descriptor is readable
/// without waiting. Only a successor writes on a link (see [`send_byte`]), so on a successor's
/// end readable means closed.
pub(crate) fn gone(fd: BorrowedFd<'_>) -> bool {
    matches!(poll_readable(&[fd], Duration::ZERO), Ok(Readable::Fd(_)))
}

/// Sends one byte on a connected socket without blocking and without `SIGPIPE` (a peer that
/// is gone, or a full buffer, is not waited for: the caller tells, it does not insist).
pub(crate) fn send_byte(fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    // SAFETY: one readable byte for the whole call.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&byte as *const u8).cast(),
            1,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    cvt(n as libc::c_int).map(drop)
}

/// `getrandom(2)`: 64 unpredictable bits (for temporary file names).
pub(crate) fn random_u64() -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the pointer and length describe the unfilled rest of `buf`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(u64::from_ne_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's blocked signals, as the kernel reports them.
    fn blocked() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
        u64::from_str_radix(line["SigBlk:".len()..].trim(), 16).unwrap()
    }

    #[test]
    fn blocking_every_signal_blocks_the_c_librarys_own_too() {
        let before = blocked();
        let old = block_all_signals();
        let during = blocked();
        restore_signals(old);
        assert_eq!(old, before);
        assert_eq!(blocked(), before, "restored");
        let bit = |sig: i32| 1u64 << (sig - 1);
        // Everything but SIGKILL and SIGSTOP, which the kernel never blocks: glibc's 32
        // (thread cancellation) and 33 (setxid) included.
        assert_eq!(
            during,
            !(bit(libc::SIGKILL) | bit(libc::SIGSTOP)),
            "blocked {during:x}"
        );
    }

    #[test]
    fn pidfds_are_used_where_the_kernel_has_them_all() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']);
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        assert_eq!(
            pidfds_usable(),
            (major, minor) >= (5, 4),
            "pidfds usable on Linux {release}"
        );
    }
}
