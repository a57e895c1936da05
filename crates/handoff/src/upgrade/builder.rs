//! Configuring an upgrader and building it: where its listeners come from, what runs next.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::activation::{self, Activation};
use crate::conn::ConnTracker;
use crate::error::{Error, ErrorKind, Result};
use crate::handover::client;
use crate::handover::place::{self, Place};
use crate::listen::ListenOptions;
use crate::machine::{Machine, Phase};
use crate::notify::Notifier;
use crate::sys;

use super::publish::phase_to;
use super::{Event, EventFn, Inner, State, Upgrader};

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
    rollback_window: Duration,
    pid_file: Option<PathBuf>,
    upgrade_signal: i32,
    program: Option<(OsString, Vec<OsString>)>,
    on_event: Option<Arc<EventFn>>,
    listen_options: ListenOptions,
    handover_socket: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    allowed_uids: Vec<u32>,
    take_over: Option<PathBuf>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Defaults: ready timeout 10 s, drain timeout 30 s, no rollback window, no PID file,
    /// SIGHUP, [`ListenOptions::new`], and the new generation runs the program this process
    /// was started as, with the same arguments (see [`build`](Builder::build)).
    pub fn new() -> Builder {
        Builder {
            ready_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            rollback_window: Duration::ZERO,
            pid_file: None,
            upgrade_signal: libc::SIGHUP,
            program: None,
            on_event: None,
            listen_options: ListenOptions::new(),
            handover_socket: None,
            control_socket: None,
            allowed_uids: Vec::new(),
            take_over: None,
        }
    }

    /// Offer the listeners at this unix socket to a new process that is not our child: it
    /// connects with [`Builder::take_over`], receives them, and reports ready; then this
    /// process hands over and drains as after [`Upgrader::upgrade`], or, if the new process
    /// disconnects or misses the [ready timeout](Builder::ready_timeout), kills it and keeps
    /// serving. One upgrade at a time, whichever way it comes: a hand-over while a forked
    /// upgrade is in flight is refused, and the reverse.
    ///
    /// The socket is bound when this process reports [ready](Upgrader::ready) (a new process
    /// binds its own in place of its predecessor's once that one has handed over). A path
    /// puts it in a directory only this user can enter: created mode 0700 if missing, else it
    /// must be a directory (not a symlink) owned by this process's uid with no access for
    /// group or others; the socket file is made 0600. `@name` is an abstract socket instead,
    /// which has no file and no mode: there the peer's uid alone protects it. An abstract name
    /// cannot be taken from a process that holds it: a new generation takes it once the
    /// previous one has exited (until then the previous one answers there, and refuses
    /// hand-overs, as it has handed over).
    ///
    /// At each connection the directory and the socket are checked again (a `chmod 777` by
    /// hand, or a replaced file, is refused and logged), and the peer's uid (`SO_PEERCRED`)
    /// must be this process's or one given to [`allow_uid`](Builder::allow_uid). A refused
    /// peer gets `refused: <why>` and no descriptor.
    pub fn handover_socket(mut self, path: impl Into<PathBuf>) -> Builder {
        self.handover_socket = Some(path.into());
        self
    }

    /// A control socket, with the same protections as the
    /// [hand-over socket](Builder::handover_socket), that takes one command per connection:
    /// `upgrade` (answered once the outcome is known: `upgraded: pid N gen G` or `failed:
    /// <reason>`) and `status` (pid, generation, phase, connections in flight, upgrades so
    /// far, the last failure, and the previous generation while it drains). [`ask`](crate::ask)
    /// is its client; so is the `handoff-ctl` command.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Builder {
        self.control_socket = Some(path.into());
        self
    }

    /// Also serve peers running as `uid` on the hand-over and control sockets (this process's
    /// own effective uid always is). A path socket's directory must still let them in, which
    /// a 0700 directory does not: give them an abstract socket (`@name`). With
    /// [`take_over`](Builder::take_over), it is also a uid the running process may run as.
    pub fn allow_uid(mut self, uid: u32) -> Builder {
        self.allowed_uids.push(uid);
        self
    }

    /// Start as the new process of a hand-over: at [`build`](Builder::build), connect to the
    /// running process's [hand-over socket](Builder::handover_socket) at `path` (`@name` for
    /// an abstract one) and take its listeners, instead of inheriting them. The `*_listener`
    /// calls then adopt them by name; [`ready`](Upgrader::ready) reports over the connection
    /// and returns once the old process has handed over. The generation is one more than the
    /// old process's. The process listening at `path` must run as this process's effective
    /// uid or one given to [`allow_uid`](Builder::allow_uid): listeners offered by anyone
    /// else (who bound the abstract name first, say) are refused, unread. A generation
    /// started by a forked [upgrade](Upgrader::upgrade) of such a process runs the same command
    /// line, and inherits from its parent instead: there, `take_over` is ignored.
    pub fn take_over(mut self, path: impl Into<PathBuf>) -> Builder {
        self.take_over = Some(path.into());
        self
    }

    /// For how long after a handover the new generation may still die and give the service
    /// back (default zero: no window).
    ///
    /// Within the window this generation keeps its copies of the listeners without accepting and
    /// watches the new generation. If that one dies (exits or is killed) before the window closes,
    /// this generation reaps it, rewrites the PID file with its own pid, tells the service manager
    /// `MAINPID=<own pid>` and `READY=1`, reports [`Event::Resumed`], and goes back to
    /// [`Phase::Serving`]: its drain answers [`Drained::Resume`](crate::Drained::Resume), and the
    /// application takes its listeners back with [`kept_listener`](Upgrader::kept_listener) and
    /// accepts again. Connects that arrived meanwhile wait in the listeners' queues (the sockets
    /// never closed); connections the dead generation had accepted are lost with it.
    ///
    /// Every handover is seen by the application, even one undone before it looked: a new
    /// generation that dies within moments of its handover may be gone, and the phase
    /// [`Phase::Serving`] again, by then, and still [`done`](Upgrader::done) and
    /// [`wait_done`](Upgrader::wait_done) return [`Phase::HandedOver`] once for it, and the drain
    /// that follows answers [`Drained::Resume`](crate::Drained::Resume) at once. So the
    /// application's loop is always the same: accept until done, stop accepting, drain, and exit or
    /// serve again as the drain says.
    ///
    /// A new generation that stops on purpose within the window (a final stop, e.g.
    /// `kill -TERM $(cat pidfile)` after a reload) says so to this generation, which then
    /// closes the window and exits rather than take the service back.
    ///
    /// # Caveats
    /// Under systemd, the new generation's `MAINPID=` makes it the main process; the old
    /// generation's `MAINPID=<own pid>` and `READY=1` when it resumes are accepted only from a
    /// process other than the main one with `NotifyAccess=all` in the unit (the default,
    /// `main`, drops them, and systemd may act on the death of the main process first). A
    /// rollback window under systemd needs `NotifyAccess=all`, and even then is not proven
    /// against every way systemd reacts to its main process dying.
    ///
    /// A generation lives until its window has closed even when it has drained sooner, and
    /// the new generation cannot upgrade until then (its predecessor is still alive). Keep
    /// the window shorter than the drain timeout.
    pub fn rollback_window(mut self, window: Duration) -> Builder {
        self.rollback_window = window;
        self
    }

    /// How listeners bound fresh are configured (backlog, `SO_REUSEADDR`, `IPV6_V6ONLY`, and
    /// a hook for anything else). Inherited listeners are used as they are.
    pub fn listen_options(mut self, options: ListenOptions) -> Builder {
        self.listen_options = options;
        self
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
    /// instead of the program this process was started as. `path` is executed as it is (a
    /// path without a slash is not looked up in `PATH`).
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
    /// upgraded generation, the readiness pipe and the link to its predecessor) and returns
    /// the upgrader. One per process: clone it to share it.
    ///
    /// The program the next generation runs is captured now: the path this process was
    /// started as, i.e. its `argv[0]` resolved against the working directory (looked up in
    /// `PATH` when it has no slash), so that a release behind a symlink (`current/bin/server`
    /// with `current` flipped to a new release) or a binary replaced in place by a rename is
    /// the one that runs next. That path must name the running image now (the same file as
    /// `/proc/self/exe`): when it does not (`exec -a` set `argv[0]` to something else, or a
    /// bare name finds another program first in `PATH`), or names no executable file, the
    /// running image itself runs next. [`Builder::program`] overrides it.
    ///
    /// The working directory is the one the shell named: `$PWD` when it is absolute and is
    /// this very directory (same device and inode as `.`, as `pwd -L` checks), else the
    /// resolved one. The next generation starts in it, looked up anew: a server started as
    /// `cd /srv/app/current && ./bin/server` runs the release `current` points to at each
    /// upgrade, in that release's directory (so relative paths in its configuration read the
    /// new release too). Call `build` before changing directory.
    ///
    /// Setting `HANDOFF_NO_PIDFD=1` in the environment makes this process (and the
    /// generations after it, which inherit the variable) do without pidfds, as on a kernel
    /// older than 5.4: children are signalled and waited for by pid, and the link between
    /// generations alone tells each when the other is gone. It exists to test that path.
    ///
    /// With [`take_over`](Builder::take_over), the listeners come from the running process's
    /// hand-over socket, waiting for its offer at most the [ready
    /// timeout](Builder::ready_timeout).
    ///
    /// # Errors
    /// [`ErrorKind::Handover`] when a take-over fails (the socket cannot be reached, the
    /// running process refuses, or its message or descriptors are malformed: none is kept),
    /// [`ErrorKind::BadEnvironment`] when the protocol variables are malformed,
    /// [`ErrorKind::BadInheritedFd`] when an inherited descriptor is not an open socket (or
    /// the readiness descriptor not a pipe), [`ErrorKind::Usage`] when an upgrader built
    /// earlier in this process is alive or took this process's inherited descriptors,
    /// [`ErrorKind::Io`] when no executable can be found for the next generation.
    pub fn build(self) -> Result<Upgrader> {
        let env: HashMap<OsString, OsString> = std::env::vars_os().collect();
        if env
            .get(OsStr::new(VAR_NO_PIDFD))
            .is_some_and(|v| !v.is_empty() && v != "0")
        {
            sys::disable_pidfds();
        }
        let mut activation = activation::take(&env)?;
        // The previous generation itself, where pidfds work: it is gone when it has exited,
        // even if a child it forked (without exec) still holds its end of the link.
        let mut predecessor_pidfd = activation.parent.and_then(sys::parent_pidfd);
        let mut takeover = None;
        if let Some((pidfd, conn)) = self.take_over_into(&mut activation)? {
            predecessor_pidfd = pidfd;
            takeover = Some(conn);
        }
        if let Some(parent) = activation.parent {
            tracing::debug!(
                parent,
                generation = activation.generation,
                "started by the previous generation"
            );
        }
        // A misplaced hand-over or control socket is found now, not after a handover.
        let handover_place = self.handover_socket.as_deref().map(Place::parse);
        let control_place = self.control_socket.as_deref().map(Place::parse);
        for place in handover_place.iter().chain(&control_place) {
            place::prepare(place)?;
        }
        let cwd = working_dir(&env);
        let (exe, args) = match self.program {
            Some(p) => p,
            None => {
                let args: Vec<OsString> = std::env::args_os().collect();
                let argv0 = args.first().map(OsString::as_os_str);
                let exe = program_path(argv0, &env, cwd.as_deref())?;
                (exe.into_os_string(), args)
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
        if sys::getpid() == 1 {
            tracing::warn!(
                "this process is PID 1 of its PID namespace: its exit would kill every process \
                 in the namespace, the next generation included, so it will refuse to upgrade; \
                 run it under an init that outlives it"
            );
        }
        Ok(Upgrader {
            inner: Arc::new(Inner {
                ready_timeout: self.ready_timeout,
                drain_timeout: self.drain_timeout,
                pid_file: self.pid_file,
                upgrade_signal: self.upgrade_signal,
                exe,
                args,
                cwd,
                child_env,
                generation: activation.generation,
                previous: activation.parent,
                notifier,
                on_event: self.on_event,
                listen_options: self.listen_options,
                handover_place,
                control_place,
                allowed_uids: self.allowed_uids,
                bound: Mutex::new(Vec::new()),
                upgrades: AtomicU64::new(0),
                last_failure: Mutex::new(None),
                origin: Instant::now(),
                state: Mutex::new(State {
                    machine: Machine::new(
                        self.ready_timeout,
                        self.drain_timeout,
                        self.rollback_window,
                    ),
                    inherited: activation.listeners,
                    listeners: Vec::new(),
                    predecessor: activation.link,
                    predecessor_pidfd,
                    ready_pipe: activation.ready_pipe,
                    successor_link: None,
                    in_flight: None,
                    takeover,
                }),
                phase: AtomicU8::new(phase_to(Phase::Starting)),
                changed: Condvar::new(),
                wake_r,
                wake_w,
                tracker: ConnTracker::new(),
                #[cfg(feature = "tokio")]
                phase_tx: tokio::sync::watch::Sender::new(None),
                #[cfg(feature = "tokio")]
                window_settled: tokio::sync::Notify::new(),
                _claim: activation.claim,
            }),
        })
    }

    /// Takes the listeners over from the running process into `activation`, with
    /// [`take_over`](Builder::take_over): returns that process's pidfd (where pidfds work) and
    /// the connection to report ready on. `None` without `take_over`, or in a generation with
    /// a parent of its own.
    fn take_over_into(
        &self,
        activation: &mut Activation,
    ) -> Result<Option<(Option<OwnedFd>, OwnedFd)>> {
        // A generation forked by an upgrade of a process that took over runs the same
        // command line, `take_over` included: it inherits from its parent instead.
        let take_over = self
            .take_over
            .as_ref()
            .filter(|_| activation.ready_pipe.is_none());
        let Some(path) = take_over else {
            return Ok(None);
        };
        if !activation.listeners.is_empty() {
            return Err(Error::new(
                ErrorKind::Usage,
                "Builder::take_over in a process that inherited listeners from its service \
                 manager: a process takes its listeners one way",
            ));
        }
        let taken = client::take_over(&Place::parse(path), self.ready_timeout, &self.allowed_uids)?;
        tracing::info!(
            from = taken.pid,
            listeners = taken.listeners.len(),
            "took the listeners over from the running process"
        );
        activation.listeners = taken.listeners;
        activation.generation = taken.generation.saturating_add(1);
        activation.parent = Some(taken.pid);
        Ok(Some((taken.pidfd, taken.conn)))
    }
}

/// The environment variable that makes a process do without pidfds (see [`Builder::build`]).
const VAR_NO_PIDFD: &str = "HANDOFF_NO_PIDFD";

/// The working directory as the shell that started this process named it: `$PWD` when it
/// is absolute, has no `.` or `..` in it, and is this very directory (the same device and
/// inode as `.`), as `pwd -L` decides; else the resolved path (`getcwd`, which has every
/// symlink resolved). `None` when neither can be had.
fn working_dir(env: &HashMap<OsString, OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;
    let here = std::fs::metadata(".").ok();
    let logical = env
        .get(OsStr::new("PWD"))
        .map(PathBuf::from)
        .filter(|pwd| {
            pwd.is_absolute()
                && !pwd
                    .components()
                    .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        })
        .filter(|pwd| {
            let there = std::fs::metadata(pwd).ok();
            matches!((&here, there), (Some(h), Some(t)) if h.dev() == t.dev() && h.ino() == t.ino())
        });
    logical.or_else(|| std::env::current_dir().ok())
}

/// The program this process was started as: `argv[0]` resolved against the working directory
/// `cwd` when it has a slash, looked up in `PATH` when it has none; the running image when
/// neither names an executable file that is the running image now (a launcher may set
/// `argv[0]` to anything).
fn program_path(
    argv0: Option<&OsStr>,
    env: &HashMap<OsString, OsString>,
    cwd: Option<&Path>,
) -> Result<PathBuf> {
    let from_argv0 = argv0.filter(|a| !a.is_empty()).and_then(|argv0| {
        let path = Path::new(argv0);
        if argv0.as_bytes().contains(&b'/') {
            Some(cwd?.join(path)).filter(|p| is_executable(p))
        } else {
            let search = env.get(OsStr::new("PATH"))?;
            std::env::split_paths(search)
                .filter(|dir| dir.is_absolute())
                .map(|dir| dir.join(path))
                .find(|p| is_executable(p))
        }
    });
    match from_argv0.filter(|p| is_running_image(p)) {
        Some(path) => Ok(path),
        None => std::env::current_exe()
            .map_err(|e| Error::io(ErrorKind::Io, "finding this program's executable", e)),
    }
}

/// Whether `path` is the file this process runs (the same device and inode as
/// `/proc/self/exe`). Without `/proc` it cannot be told, and is taken to be.
fn is_running_image(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(running) = std::fs::metadata("/proc/self/exe") else {
        return true;
    };
    std::fs::metadata(path).is_ok_and(|m| m.dev() == running.dev() && m.ino() == running.ino())
}

/// A regular file with an execute bit (what `execve` would run, short of trying).
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
