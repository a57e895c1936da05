//! The upgrader: owns the listeners, starts the next generation, waits for it to be ready,
//! rolls back when it is not, and tells the application when to stop accepting.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::activation::{self, Inherited, SocketInfo};
use crate::conn::{ConnGuard, ConnTracker};
use crate::error::{Error, ErrorKind, Result};
use crate::machine::{
    Drain, Failure, Handover, Machine, Observed, Phase, Refusal, Rollback, Step, Tick,
};
use crate::notify::Notifier;
use crate::{pidfile, sys};

/// What happened to an upgrade, reported to the callback set with [`Builder::on_event`] as it
/// happens (whichever way the upgrade was triggered).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The new generation was forked and executed; it is not ready yet.
    UpgradeStarted {
        /// Its pid.
        child: u32,
    },
    /// The new generation reported ready and now owns the listeners.
    UpgradeSucceeded {
        /// Its pid.
        child: u32,
    },
    /// The new generation failed before it was ready; this process keeps serving.
    UpgradeFailed {
        /// What happened to it.
        error: &'a Error,
    },
    /// The request was refused (another upgrade in flight, or this process no longer serves);
    /// nothing was started.
    UpgradeRefused {
        /// Why.
        error: &'a Error,
    },
    /// A final stop was requested.
    Stopping,
}

type EventFn = dyn Fn(&Event<'_>) + Send + Sync;

/// A new generation that reported ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    pid: u32,
}

impl Child {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Configures an [`Upgrader`].
///
/// # Examples
/// ```no_run
/// use std::time::Duration;
/// let upgrader = handoff::Builder::new()
///     .ready_timeout(Duration::from_secs(5))
///     .drain_timeout(Duration::from_secs(30))
///     .pid_file("/run/myserver.pid")
///     .build()?;
/// let listener = upgrader.tcp_listener("http", "127.0.0.1:8080".parse().unwrap())?;
/// upgrader.ready()?;
/// # drop(listener);
/// # Ok::<(), handoff::Error>(())
/// ```
pub struct Builder {
    ready_timeout: Duration,
    drain_timeout: Duration,
    pid_file: Option<PathBuf>,
    upgrade_signal: i32,
    program: Option<(OsString, Vec<OsString>)>,
    on_event: Option<Arc<EventFn>>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Defaults: ready timeout 10 s, drain timeout 30 s, no PID file, SIGHUP, and the new
    /// generation runs the same executable path with the same arguments.
    pub fn new() -> Builder {
        Builder {
            ready_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            pid_file: None,
            upgrade_signal: libc::SIGHUP,
            program: None,
            on_event: None,
        }
    }

    /// How long the new generation has to report ready before it is killed and the upgrade
    /// rolled back.
    pub fn ready_timeout(mut self, timeout: Duration) -> Builder {
        self.ready_timeout = timeout;
        self
    }

    /// How long a superseded (or stopping) generation waits for its connections before it
    /// exits anyway.
    pub fn drain_timeout(mut self, timeout: Duration) -> Builder {
        self.drain_timeout = timeout;
        self
    }

    /// Maintain a PID file: written (atomically) by the first generation when ready, replaced
    /// by the old generation with the new pid once the new one is ready, never touched by a
    /// failed upgrade, removed on the final stop.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Builder {
        self.pid_file = Some(path.into());
        self
    }

    /// The signal that triggers an upgrade in the signal helpers (default `SIGHUP`).
    pub fn upgrade_signal(mut self, signal: i32) -> Builder {
        self.upgrade_signal = signal;
        self
    }

    /// Run this program with these arguments (`args[0]` included) as the next generation,
    /// instead of re-executing the current one.
    pub fn program(
        mut self,
        path: impl Into<OsString>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Builder {
        self.program = Some((path.into(), args.into_iter().map(Into::into).collect()));
        self
    }

    /// A callback for upgrade events, called on the thread where they happen.
    pub fn on_event(mut self, f: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Builder {
        self.on_event = Some(Arc::new(f));
        self
    }

    /// Reads what this process inherited (the socket-activation variables and, for an
    /// upgraded generation, the readiness pipe) and returns the upgrader.
    ///
    /// The executable path and arguments are captured now, so a binary replaced on disk later
    /// is the one the next generation runs.
    ///
    /// # Errors
    /// [`ErrorKind::BadEnvironment`] when the protocol variables are malformed,
    /// [`ErrorKind::BadInheritedFd`] when an inherited descriptor is not an open socket (or
    /// the readiness descriptor not a pipe), [`ErrorKind::Io`] when the executable's path
    /// cannot be found.
    pub fn build(self) -> Result<Upgrader> {
        let env: HashMap<OsString, OsString> = std::env::vars_os().collect();
        let activation = activation::take(&env)?;
        let (exe, args) = match self.program {
            Some(p) => p,
            None => {
                let exe = std::env::current_exe().map_err(|e| {
                    Error::io(ErrorKind::Io, "finding this program's executable", e)
                })?;
                (exe.into_os_string(), std::env::args_os().collect())
            }
        };
        let mut child_env: Vec<(OsString, OsString)> = env
            .into_iter()
            .filter(|(k, _)| !activation::PROTOCOL_VARS.iter().any(|v| k == OsStr::new(v)))
            .collect();
        child_env.sort();
        let notifier = Notifier::from_var(
            child_env
                .iter()
                .find(|(k, _)| k == "NOTIFY_SOCKET")
                .map(|(_, v)| v.as_os_str()),
        );
        let (wake_r, wake_w) = sys::pipe_cloexec()
            .map_err(|e| Error::io(ErrorKind::Io, "creating the wake-up pipe", e))?;
        sys::set_nonblocking(wake_r.as_fd())
            .map_err(|e| Error::io(ErrorKind::Io, "configuring the wake-up pipe", e))?;
        sys::set_nonblocking(wake_w.as_fd())
            .map_err(|e| Error::io(ErrorKind::Io, "configuring the wake-up pipe", e))?;
        Ok(Upgrader {
            inner: Arc::new(Inner {
                ready_timeout: self.ready_timeout,
                drain_timeout: self.drain_timeout,
                pid_file: self.pid_file,
                upgrade_signal: self.upgrade_signal,
                exe,
                args,
                child_env,
                generation: activation.generation,
                notifier,
                on_event: self.on_event,
                origin: Instant::now(),
                state: Mutex::new(State {
                    machine: Machine::new(self.ready_timeout, self.drain_timeout),
                    inherited: activation.listeners,
                    listeners: Vec::new(),
                    predecessor: sys::parent_pidfd(activation.parent),
                    ready_pipe: activation.ready_pipe,
                }),
                changed: Condvar::new(),
                wake_r,
                wake_w,
                tracker: ConnTracker::new(),
                #[cfg(feature = "tokio")]
                phase_tx: tokio::sync::watch::Sender::new(Phase::Starting),
            }),
        })
    }
}

/// Owns this generation's listeners and runs upgrades. Cloning is cheap; clones share state.
///
/// The life of a process: [`Builder::build`], then one `*_listener` call per listener (each
/// inherited from the previous generation when it passed one under that name, bound fresh
/// otherwise), then [`ready`](Upgrader::ready). While serving, [`upgrade`](Upgrader::upgrade)
/// (or the configured signal) starts the next generation; once that one is ready, this one's
/// [`phase`](Upgrader::phase) becomes [`Phase::HandedOver`]: the application stops accepting
/// (drops its listeners), calls [`drain`](Upgrader::drain) and exits.
///
/// # Caveats
/// A listener and its inherited copies are one socket, so its file status flags are shared
/// across generations: `O_NONBLOCK` set by one generation is seen by the other. Use the same
/// mode in every generation (tokio always sets non-blocking).
#[derive(Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

struct Inner {
    ready_timeout: Duration,
    drain_timeout: Duration,
    pid_file: Option<PathBuf>,
    upgrade_signal: i32,
    exe: OsString,
    args: Vec<OsString>,
    child_env: Vec<(OsString, OsString)>,
    generation: u32,
    notifier: Option<Notifier>,
    on_event: Option<Arc<EventFn>>,
    /// Where this upgrader's clock starts: the machine is told the time as a [`Tick`] since.
    origin: Instant,
    state: Mutex<State>,
    changed: Condvar,
    /// Written by `stop` to interrupt an upgrade that is waiting for its child.
    wake_r: OwnedFd,
    wake_w: OwnedFd,
    tracker: ConnTracker,
    #[cfg(feature = "tokio")]
    phase_tx: tokio::sync::watch::Sender<Phase>,
}

struct State {
    /// The phase and every decision of the protocol; this module carries them out.
    machine: Machine,
    /// Inherited descriptors not yet claimed by a `*_listener` call.
    inherited: Vec<Inherited>,
    /// Our copy of each listener, in the order they are passed on.
    listeners: Vec<(String, OwnedFd)>,
    /// Our parent's readiness pipe, until we report ready.
    ready_pipe: Option<OwnedFd>,
    /// A pidfd of the previous generation while it may still be draining: no upgrade starts
    /// before it is gone, so at most two generations are ever alive.
    predecessor: Option<OwnedFd>,
}

/// What kind of socket a listener call wants, to match against inherited ones.
#[derive(Clone, Copy)]
enum Want<'a> {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(&'a Path),
}

impl Want<'_> {
    fn matches(&self, info: &SocketInfo) -> bool {
        match self {
            Want::Tcp(_) => {
                matches!(info.domain, Domain::IPV4 | Domain::IPV6)
                    && info.ty == Type::STREAM
                    && info.listening
            }
            Want::Udp(_) => {
                matches!(info.domain, Domain::IPV4 | Domain::IPV6) && info.ty == Type::DGRAM
            }
            Want::Unix(_) => {
                info.domain == Domain::UNIX && info.ty == Type::STREAM && info.listening
            }
        }
    }

    /// Whether an inherited socket of the right kind is bound where the configuration now asks.
    /// A changed address (configuration reload) means: bind the new one, let the old one go.
    fn same_address(&self, info: &SocketInfo) -> bool {
        let local = info.local.as_ref();
        match self {
            Want::Tcp(addr) | Want::Udp(addr) => {
                addr.port() == 0
                    || local
                        .and_then(SockAddr::as_socket)
                        .is_some_and(|l| l == *addr)
            }
            Want::Unix(path) => local
                .and_then(SockAddr::as_pathname)
                .is_some_and(|p| p == *path),
        }
    }

    fn describe(&self) -> String {
        match self {
            Want::Tcp(a) => format!("TCP listener on {a}"),
            Want::Udp(a) => format!("UDP socket on {a}"),
            Want::Unix(p) => format!("unix listener at {}", p.display()),
        }
    }
}

impl Upgrader {
    /// This process's generation: 1 for a first start, one more than its parent's after an
    /// upgrade.
    pub fn generation(&self) -> u32 {
        self.inner.generation
    }

    /// Where this process is in its life.
    pub fn phase(&self) -> Phase {
        self.state().machine.phase()
    }

    /// Whether this process was started by an upgrade (it has a parent waiting for it).
    pub fn has_parent(&self) -> bool {
        self.state().ready_pipe.is_some()
    }

    /// The drain timeout this upgrader was built with.
    pub fn drain_timeout(&self) -> Duration {
        self.inner.drain_timeout
    }

    /// A TCP listener named `name`: the inherited one of that name if there is one (or, for
    /// systemd's unnamed descriptors, the first unclaimed listening TCP socket), else a new
    /// one bound to `addr` (`SO_REUSEADDR`, close-on-exec, backlog 1024).
    ///
    /// An inherited listener bound to another address than `addr` (the configuration
    /// changed) is not adopted: a new one is bound, and the old one closed at
    /// [`ready`](Upgrader::ready). Port 0 in `addr` matches any port.
    ///
    /// # Errors
    /// [`ErrorKind::BadInheritedFd`] when the inherited descriptor of that name is not a
    /// listening TCP socket (it is left alone); [`ErrorKind::Listen`] when binding fails;
    /// [`ErrorKind::Usage`] after [`ready`](Upgrader::ready).
    pub fn tcp_listener(&self, name: &str, addr: SocketAddr) -> Result<TcpListener> {
        Ok(self.listener(name, Want::Tcp(addr))?.into())
    }

    /// A UDP socket named `name`, inherited or bound like [`tcp_listener`](Upgrader::tcp_listener).
    ///
    /// # Errors
    /// As for [`tcp_listener`](Upgrader::tcp_listener).
    pub fn udp_socket(&self, name: &str, addr: SocketAddr) -> Result<UdpSocket> {
        Ok(self.listener(name, Want::Udp(addr))?.into())
    }

    /// A unix-domain stream listener named `name`, inherited or bound at `path`. A stale
    /// socket file at `path` (nobody accepts on it) is replaced; a live one is an error. No
    /// generation unlinks the path of a listener it hands over.
    ///
    /// # Errors
    /// As for [`tcp_listener`](Upgrader::tcp_listener), and [`ErrorKind::Listen`] when
    /// `path` is in use by a live server.
    pub fn unix_listener(&self, name: &str, path: impl AsRef<Path>) -> Result<UnixListener> {
        Ok(self.listener(name, Want::Unix(path.as_ref()))?.into())
    }

    fn listener(&self, name: &str, want: Want<'_>) -> Result<OwnedFd> {
        let mut st = self.state();
        if st.machine.phase() != Phase::Starting {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("listener `{name}` requested after ready()"),
            ));
        }
        if st.listeners.iter().any(|(n, _)| n == name) {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("listener `{name}` requested twice"),
            ));
        }
        let by_name = st.inherited.iter().position(|i| i.name == name);
        if let Some(i) = by_name
            && !want.matches(&st.inherited[i].info)
        {
            return Err(Error::new(
                ErrorKind::BadInheritedFd,
                format!(
                    "inherited descriptor `{name}` is a {}, not a {}",
                    st.inherited[i].info.describe(),
                    want.describe()
                ),
            ));
        }
        let found = by_name.or_else(|| {
            st.inherited
                .iter()
                .position(|i| (i.name == "unknown" || i.name.is_empty()) && want.matches(&i.info))
        });
        let fd = match found {
            Some(i) if want.same_address(&st.inherited[i].info) => {
                tracing::debug!(name, "adopting inherited listener");
                st.inherited.remove(i).fd
            }
            _ => {
                if found.is_some() {
                    tracing::info!(
                        name,
                        "inherited listener is bound elsewhere; binding {}",
                        want.describe()
                    );
                }
                bind(want).map_err(|e| {
                    Error::io(
                        ErrorKind::Listen,
                        format!("binding {} `{name}`", want.describe()),
                        e,
                    )
                })?
            }
        };
        let app = fd.try_clone().map_err(|e| {
            Error::io(
                ErrorKind::Listen,
                format!("duplicating listener `{name}`"),
                e,
            )
        })?;
        st.listeners.push((name.to_owned(), fd));
        Ok(app)
    }

    /// Reports that this generation serves on its listeners. For an upgraded generation this
    /// tells the parent, which then hands over and drains; for a first start it writes the
    /// PID file and sends `READY=1` to the service manager. Inherited descriptors that no
    /// listener call claimed are closed.
    ///
    /// Install your signal handling (e.g. [`spawn_signal_thread`](Upgrader::spawn_signal_thread))
    /// before calling this: from now on a supervisor may send the upgrade signal, whose
    /// default action would kill the process.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`] when called twice; [`ErrorKind::PidFile`] when the PID file cannot
    /// be written; [`ErrorKind::Io`] when the parent's readiness pipe cannot be written. A
    /// parent that died meanwhile is not an error: this process then serves on as if it were
    /// a first start (PID file, `READY=1`).
    pub fn ready(&self) -> Result<()> {
        let (pipe, unclaimed) = {
            let mut st = self.state();
            if let Err(phase) = st.machine.ready() {
                let message = match phase {
                    Phase::Stopping => "ready() called after stop()",
                    _ => "ready() called twice",
                };
                return Err(Error::new(ErrorKind::Usage, message));
            }
            self.publish(&st);
            (st.ready_pipe.take(), std::mem::take(&mut st.inherited))
        };
        for i in unclaimed {
            tracing::info!(name = %i.name, "closing an inherited descriptor no listener claimed");
        }
        let pid = sys::getpid();
        if let Some(pipe) = pipe {
            match sys::write_all(pipe.as_fd(), b"ready\n") {
                Ok(()) => return Ok(()),
                // The previous generation died while we started: we hold the listeners and
                // nobody else serves them, so carry on as a first start rather than exit.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    tracing::warn!(
                        "the previous generation is gone; serving on as the only generation"
                    );
                }
                Err(e) => {
                    return Err(Error::io(
                        ErrorKind::Io,
                        "reporting ready to the previous generation",
                        e,
                    ));
                }
            }
        }
        if let Some(path) = &self.inner.pid_file {
            pidfile::write(path, pid)?;
        }
        self.sd_notify(&format!("READY=1\nMAINPID={pid}"));
        Ok(())
    }

    /// Starts the next generation and waits (blocking) until it reports ready, then hands
    /// over: this process's listener copies are closed, the PID file names the new pid, the
    /// service manager is told the new `MAINPID`, and [`phase`](Upgrader::phase) becomes
    /// [`Phase::HandedOver`]. At most one upgrade is in flight at a time.
    ///
    /// If the new generation exits, crashes or misses the ready deadline, it is killed (if
    /// still alive) and reaped, this process goes on serving as before, and the error says
    /// what happened.
    ///
    /// # Errors
    /// [`ErrorKind::UpgradeInProgress`] while another upgrade is in flight and
    /// [`ErrorKind::NotServing`] after a handover or stop (nothing is started in either case);
    /// [`ErrorKind::Usage`] before [`ready`](Upgrader::ready); [`ErrorKind::Spawn`],
    /// [`ErrorKind::ChildExited`], [`ErrorKind::ChildCrashed`], [`ErrorKind::ReadyTimeout`]
    /// and [`ErrorKind::Stopped`] for a failed upgrade (rolled back).
    pub fn upgrade(&self) -> Result<Child> {
        if let Err(error) = self.begin_upgrade() {
            tracing::warn!(%error, "upgrade refused");
            self.emit(&Event::UpgradeRefused { error: &error });
            return Err(error);
        }
        self.sd_notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            sys::monotonic_usec()
        ));
        match self.start_and_wait() {
            Ok(child) => {
                self.hand_over(child);
                Ok(child)
            }
            Err(error) => {
                if self.phase() != Phase::Stopping {
                    self.sd_notify("READY=1");
                }
                tracing::warn!(%error, "upgrade failed; still serving");
                self.emit(&Event::UpgradeFailed { error: &error });
                Err(error)
            }
        }
    }

    /// The single-upgrade guard. The machine refuses while another upgrade is in flight, while
    /// the previous generation may still be draining, and outside [`Phase::Serving`].
    fn begin_upgrade(&self) -> Result<()> {
        let mut st = self.state();
        let predecessor_exited = st
            .predecessor
            .as_ref()
            .is_none_or(|pidfd| sys::pidfd_exited(pidfd.as_fd()));
        if predecessor_exited {
            // Gone for good: no need to ask again.
            st.predecessor = None;
        }
        let accepted = st.machine.request_upgrade(self.now(), predecessor_exited);
        self.publish(&st);
        let refusal = match accepted {
            Ok(_deadline) => return Ok(()),
            Err(refusal) => refusal,
        };
        let (kind, message) = match refusal {
            Refusal::BeforeReady => (ErrorKind::Usage, "upgrade requested before ready()"),
            Refusal::InFlight => (
                ErrorKind::UpgradeInProgress,
                "an upgrade is already in flight",
            ),
            Refusal::PredecessorDraining => (
                ErrorKind::UpgradeInProgress,
                "the previous generation is still draining",
            ),
            Refusal::HandedOver => (
                ErrorKind::NotServing,
                "this generation has already handed over",
            ),
            Refusal::Stopping => (ErrorKind::NotServing, "this generation is stopping"),
        };
        Err(Error::new(kind, message))
    }

    /// Forks the next generation and waits until the machine decides: hand over (the child is
    /// returned), or roll back (carried out here, and the error returned).
    fn start_and_wait(&self) -> Result<Child> {
        let (ready_r, ready_w) = match sys::pipe_cloexec() {
            Ok(pipe) => pipe,
            Err(e) => {
                let rollback = self.state().machine.spawn_failed();
                self.roll_back(rollback);
                return Err(spawn_error("creating the readiness pipe", e));
            }
        };
        let forked = {
            // Hold the state lock across the fork, so that no listener copy is closed under it
            // and a stop either comes first (and nothing is forked) or finds the child.
            let mut st = self.state();
            match st.machine.before_fork() {
                Err(rollback) => Err((
                    rollback,
                    Error::new(
                        ErrorKind::NotServing,
                        "stop requested before the next generation was started; started nothing",
                    ),
                )),
                Ok(()) => match self.fork(&st.listeners, &ready_w) {
                    Ok(pid) => {
                        st.machine.spawned(pid);
                        Ok(pid)
                    }
                    Err(error) => Err((st.machine.spawn_failed(), error)),
                },
            }
        };
        let pid = match forked {
            Ok(pid) => pid,
            Err((rollback, error)) => {
                self.roll_back(rollback);
                return Err(error);
            }
        };
        drop(ready_w);
        tracing::info!(
            child = pid,
            "started the next generation; waiting for it to be ready"
        );
        self.emit(&Event::UpgradeStarted { child: pid });
        match self.wait_ready(pid, &ready_r) {
            Ok(()) => Ok(Child { pid }),
            Err((rollback, wait_error)) => {
                self.roll_back(rollback);
                Err(self.failure_error(pid, rollback.failure, wait_error))
            }
        }
    }

    /// Forks and executes the next generation with `listeners` and the write end of the
    /// readiness pipe, and returns its pid.
    fn fork(&self, listeners: &[(String, OwnedFd)], ready_w: &OwnedFd) -> Result<u32> {
        let names: Vec<&str> = listeners.iter().map(|(n, _)| n.as_str()).collect();
        let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
        fds.push(ready_w.as_fd());
        let count = names.len().to_string();
        let fdnames = names.join(":");
        let ready_fd = (activation::LISTEN_FDS_START as usize + names.len()).to_string();
        let generation = (self.inner.generation + 1).to_string();
        let parent = sys::getpid().to_string();
        let ours = [
            (activation::VAR_PARENT, parent.as_str()),
            (activation::VAR_LISTEN_FDS, count.as_str()),
            (activation::VAR_LISTEN_FDNAMES, fdnames.as_str()),
            (activation::VAR_READY_FD, ready_fd.as_str()),
            (activation::VAR_GEN, generation.as_str()),
        ];
        let env = self
            .inner
            .child_env
            .iter()
            .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
            .chain(ours.iter().map(|(k, v)| (OsStr::new(*k), OsStr::new(*v))));
        let plan = sys::ExecPlan::new(
            &self.inner.exe,
            self.inner.args.iter().map(OsString::as_os_str),
            env,
            &fds,
        )
        .map_err(|e| spawn_error("preparing the command line", e))?;
        sys::spawn(plan).map_err(|e| spawn_error("fork", e))
    }

    /// Tells the machine what the readiness wait sees of the child, until it decides: hand
    /// over, or roll back (with the error behind a failed wait, if that is why). Neither kills
    /// nor reaps the child: [`roll_back`](Upgrader::roll_back) does.
    fn wait_ready(&self, pid: u32, ready_r: &OwnedFd) -> Result<(), (Rollback, Option<Error>)> {
        let mut watch = Watch {
            pid,
            ready_r,
            pipe_open: true,
            report: Vec::with_capacity(REPORT_MAX),
            exit: sys::pidfd_open(pid),
        };
        let mut seen = Observed::Nothing;
        let mut wait_error = None;
        loop {
            let now = self.now();
            let step = self.state().machine.observe(now, seen);
            let deadline = match step {
                Step::WaitUntil(deadline) => deadline,
                Step::HandOver(_) => return Ok(()),
                Step::RollBack(rollback) => return Err((rollback, wait_error)),
            };
            seen = self
                .watch(&mut watch, now.until(deadline))
                .unwrap_or_else(|error| {
                    wait_error = Some(error);
                    Observed::WaitFailed
                });
        }
    }

    /// Waits up to `timeout` for news of the child (or for a stop) and says what it was.
    fn watch(&self, w: &mut Watch<'_>, timeout: Duration) -> Result<Observed> {
        #[derive(Clone, Copy)]
        enum Source {
            Pipe,
            Wake,
            Exit,
        }
        let mut fds = Vec::with_capacity(3);
        let mut sources = Vec::with_capacity(3);
        // The pipe comes first: a child that wrote and then exited is judged by what it wrote.
        if w.pipe_open {
            fds.push(w.ready_r.as_fd());
            sources.push(Source::Pipe);
        }
        fds.push(self.inner.wake_r.as_fd());
        sources.push(Source::Wake);
        if let Some(exit) = &w.exit {
            fds.push(exit.as_fd());
            sources.push(Source::Exit);
        }
        let ready = sys::poll_readable(&fds, timeout)
            .map_err(|e| Error::io(ErrorKind::Io, "waiting for the next generation", e))?;
        let sys::Readable::Fd(i) = ready else {
            return Ok(Observed::Nothing);
        };
        match sources[i] {
            Source::Wake => {
                // A stop, which the machine already knows of. Empty the pipe so that the next
                // wait does not wake at once.
                let mut buf = [0u8; 64];
                while matches!(sys::read(self.inner.wake_r.as_fd(), &mut buf), Ok(n) if n > 0) {}
                Ok(Observed::Nothing)
            }
            Source::Exit => match sys::exit_status(w.pid) {
                Some(status) => Ok(Observed::Exited(status)),
                None => Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "child {} has ended but its status cannot be read (reaped elsewhere?)",
                        w.pid
                    ),
                )),
            },
            Source::Pipe => {
                let mut buf = [0u8; REPORT_MAX];
                let n = sys::read(w.ready_r.as_fd(), &mut buf)
                    .map_err(|e| Error::io(ErrorKind::Io, "reading the readiness pipe", e))?;
                let room = REPORT_MAX - w.report.len();
                w.report.extend_from_slice(&buf[..n.min(room)]);
                if w.report.windows(6).any(|x| x == b"ready\n") {
                    return Ok(Observed::Ready);
                }
                if let Some(errno) = parse_exec_failed(&w.report) {
                    return Ok(Observed::ExecFailed(errno));
                }
                if n > 0 {
                    return Ok(Observed::Nothing);
                }
                // Every copy of the write end is closed: the child has exited, or closed it
                // without reporting ready (and then has until the deadline; its exit, if it
                // comes, is seen on its pidfd).
                w.pipe_open = false;
                Ok(sys::exit_status(w.pid).map_or(Observed::PipeClosed, Observed::Exited))
            }
        }
    }

    /// Carries out a rollback the machine decided: kills and reaps the child, if one was
    /// forked, and tells the machine, which goes back to serving (unless stopping).
    fn roll_back(&self, rollback: Rollback) {
        if let Some(pid) = rollback.child {
            // It is unreaped, so its pid cannot have been reused: kill it if it still lives
            // (a no-op on a zombie), then reap it.
            let _ = sys::kill(pid, libc::SIGKILL);
            if let Err(error) = sys::wait_child(pid) {
                tracing::error!(%error, child = pid, "reaping the failed next generation");
            }
        }
        let mut st = self.state();
        st.machine.rolled_back();
        self.publish(&st);
    }

    /// The error for an upgrade whose child `pid` failed.
    fn failure_error(&self, pid: u32, failure: Failure, wait_error: Option<Error>) -> Error {
        match failure {
            Failure::Stopped => Error::new(
                ErrorKind::Stopped { pid },
                format!("stop requested while child {pid} was starting; killed it"),
            ),
            Failure::Exited(code) => Error::new(
                ErrorKind::ChildExited { pid, code },
                format!("child {pid} exited {code} before ready"),
            ),
            Failure::Crashed(signal) => Error::new(
                ErrorKind::ChildCrashed { pid, signal },
                format!("child {pid} was killed by signal {signal} before ready"),
            ),
            Failure::ReadyTimeout => {
                let timeout = self.inner.ready_timeout;
                Error::new(
                    ErrorKind::ReadyTimeout { pid, timeout },
                    format!(
                        "child {pid} was not ready within {} ms; killed it",
                        timeout.as_millis()
                    ),
                )
            }
            Failure::Exec(errno) => Error::io(
                ErrorKind::Spawn,
                format!(
                    "executing {} for the next generation",
                    Path::new(&self.inner.exe).display()
                ),
                std::io::Error::from_raw_os_error(errno),
            ),
            Failure::Spawn | Failure::WaitFailed => wait_error.unwrap_or_else(|| {
                Error::new(ErrorKind::Io, format!("watching child {pid} failed"))
            }),
        }
    }

    fn hand_over(&self, child: Child) {
        let pid = child.pid;
        // Everything the outside world reads about the handover happens before the phase is
        // published: once it is, the application drains and may exit at once.
        if let Some(path) = &self.inner.pid_file
            && let Err(error) = pidfile::write(path, pid)
        {
            tracing::error!(%error, "upgrade succeeded but the PID file could not be updated");
        }
        self.sd_notify(&format!("MAINPID={pid}\nREADY=1"));
        tracing::info!(child = pid, "next generation is ready; handed over");
        self.emit(&Event::UpgradeSucceeded { child: pid });
        let (handover, listeners) = {
            let mut st = self.state();
            let handover = st.machine.handed_over();
            self.publish(&st);
            (handover, std::mem::take(&mut st.listeners))
        };
        drop(listeners);
        if let Handover::PassStopOn(pid) = handover {
            // A stop that came after the child was ready: the new generation is the service
            // now and may hold connections, so the stop is passed on to it, gracefully.
            let _ = sys::kill(pid, libc::SIGTERM);
        }
    }

    /// Requests the final stop: [`phase`](Upgrader::phase) becomes [`Phase::Stopping`], an
    /// upgrade in flight is abandoned (its child killed at once), and the service manager is
    /// told `STOPPING=1`. Stop accepting, then [`drain`](Upgrader::drain) and exit.
    pub fn stop(&self) {
        {
            let mut st = self.state();
            let Some(stop) = st.machine.stop() else {
                return;
            };
            if let Some(child) = stop.kill {
                // The machine names a child only until the upgrade lets go of it to reap it,
                // which happens under this lock: this pid is still that child.
                let _ = sys::kill(child, libc::SIGKILL);
            }
            self.publish(&st);
        }
        let _ = sys::write_all(self.inner.wake_w.as_fd(), b"s");
        self.sd_notify("STOPPING=1");
        tracing::info!("stopping");
        self.emit(&Event::Stopping);
    }

    /// Blocks until this process should stop accepting (handed over, or stopping) and
    /// returns that phase.
    pub fn wait_done(&self) -> Phase {
        let mut st = self.state();
        while !st.machine.phase().is_done() {
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        st.machine.phase()
    }

    /// Counts one open connection until the guard is dropped; [`drain`](Upgrader::drain)
    /// waits for them.
    pub fn conn_guard(&self) -> ConnGuard {
        self.inner.tracker.guard()
    }

    /// The connection tracker behind [`conn_guard`](Upgrader::conn_guard).
    pub fn tracker(&self) -> &ConnTracker {
        &self.inner.tracker
    }

    /// Blocks until every guarded connection is done or the drain timeout has passed, and
    /// returns how many were still open. On a final stop, also removes the PID file if it
    /// still names this process.
    ///
    /// The drain timeout counts from the first call (of this or of `drain_async`): calling
    /// again does not extend it.
    pub fn drain(&self) -> usize {
        let drain = self.begin_drain();
        let left = self.inner.tracker.wait_drained(drain, self.inner.origin);
        self.drain_finish();
        left
    }

    /// The drain, as the machine has it: started now unless it already has.
    pub(crate) fn begin_drain(&self) -> Drain {
        self.state().machine.drain(self.now())
    }

    /// Where the clock of [`begin_drain`](Upgrader::begin_drain)'s deadline starts.
    #[cfg(feature = "tokio")]
    pub(crate) fn origin(&self) -> Instant {
        self.inner.origin
    }

    pub(crate) fn drain_finish(&self) {
        if self.phase() == Phase::Stopping
            && let Some(path) = &self.inner.pid_file
        {
            pidfile::remove_if_ours(path, sys::getpid());
        }
    }

    /// Starts a thread that turns signals into actions: the upgrade signal (SIGHUP unless
    /// configured) runs [`upgrade`](Upgrader::upgrade) on a thread of its own, so that a
    /// second signal during the upgrade is refused at once rather than queued; SIGTERM and
    /// SIGINT call [`stop`](Upgrader::stop).
    ///
    /// # Caveats
    /// Signal handlers are process-wide and stay installed for the life of the process.
    /// Deliveries of one signal coalesce: two SIGHUPs sent a microsecond apart may arrive as
    /// one, which is one upgrade either way.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] when the handlers cannot be installed.
    pub fn spawn_signal_thread(&self) -> Result<std::thread::JoinHandle<()>> {
        let upgrade_signal = self.inner.upgrade_signal;
        let mut signals =
            signal_hook::iterator::Signals::new([upgrade_signal, libc::SIGTERM, libc::SIGINT])
                .map_err(|e| Error::io(ErrorKind::Io, "installing signal handlers", e))?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("handoff-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if signal == upgrade_signal {
                        let this = this.clone();
                        std::thread::spawn(move || this.upgrade());
                    } else {
                        this.stop();
                    }
                }
            })
            .map_err(|e| Error::io(ErrorKind::Io, "starting the signal thread", e))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the machine's phase after a call that may have changed it. It takes the
    /// locked state so that it runs under the lock: changes are published in the order they
    /// were made, and no waiter sees a stale phase.
    #[cfg_attr(not(feature = "tokio"), expect(unused_variables))]
    fn publish(&self, st: &State) {
        self.inner.changed.notify_all();
        #[cfg(feature = "tokio")]
        self.inner.phase_tx.send_if_modified(|published| {
            let phase = st.machine.phase();
            let changed = *published != phase;
            *published = phase;
            changed
        });
    }

    /// The time, for the machine.
    fn now(&self) -> Tick {
        Tick::after_origin(self.inner.origin.elapsed())
    }

    fn emit(&self, event: &Event<'_>) {
        if let Some(f) = &self.inner.on_event {
            f(event);
        }
    }

    fn sd_notify(&self, message: &str) {
        if let Some(n) = &self.inner.notifier {
            n.send(message);
        }
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn phase_rx(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.inner.phase_tx.subscribe()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn upgrade_signal(&self) -> i32 {
        self.inner.upgrade_signal
    }
}

/// The most of the readiness pipe that is kept: enough for `ready\n` or an exec failure
/// report. A child writing more is not reporting anything we understand, and must not make us
/// buffer without bound.
const REPORT_MAX: usize = 64;

/// What the readiness wait watches: the pipe the child reports on, and its exit.
struct Watch<'a> {
    pid: u32,
    ready_r: &'a OwnedFd,
    pipe_open: bool,
    /// What the child wrote so far, at most [`REPORT_MAX`] bytes.
    report: Vec<u8>,
    /// A pidfd of the child, readable once it has ended; `None` on a kernel without pidfds.
    exit: Option<OwnedFd>,
}

fn spawn_error(what: &str, e: std::io::Error) -> Error {
    Error::io(
        ErrorKind::Spawn,
        format!("starting the next generation: {what}"),
        e,
    )
}

fn parse_exec_failed(got: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(got).ok()?;
    let rest = text.strip_prefix("exec-failed ")?;
    rest.strip_suffix('\n')?.parse().ok()
}

/// Creates a fresh listener of the wanted kind (socket2 sets `SOCK_CLOEXEC` at creation).
fn bind(want: Want<'_>) -> std::io::Result<OwnedFd> {
    let socket = match want {
        Want::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&addr.into())?;
            s.listen(1024)?;
            s
        }
        Want::Udp(addr) => {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&addr.into())?;
            s
        }
        Want::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&SockAddr::unix(path)?)?;
            s.listen(1024)?;
            s
        }
    };
    Ok(socket.into())
}

/// A socket file nobody accepts on is left over from a crash; a live one belongs to someone.
fn remove_stale_unix_socket(path: &Path) -> std::io::Result<()> {
    match UnixStream::connect(path) {
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use by a live server", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failure_report_is_parsed() {
        assert_eq!(parse_exec_failed(b"exec-failed 0000000002\n"), Some(2));
        assert_eq!(parse_exec_failed(b"exec-failed 00000"), None);
        assert_eq!(parse_exec_failed(b"ready\n"), None);
    }
}
