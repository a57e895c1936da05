//! The running process's side of a hand-over to an unrelated process: the socket it offers
//! its listeners at, the checks at each connection, and the hand-over itself, driven by the
//! same machine (and so the same single-upgrade guard) as a forked upgrade.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::Type;

use super::spawn::spawn_error;
use super::{Child, Event, Upgrader};
use crate::error::{Error, ErrorKind, Result};
use crate::handover::place::{self, Bound, Place};
use crate::handover::wire::{self, Offer};
use crate::machine::{Failure, Observed, Phase, Rollback, Step};
use crate::sys;

impl Upgrader {
    /// Binds the configured hand-over and control sockets (in place of a predecessor's) and
    /// serves each on a thread of its own. Called once this process serves.
    pub(super) fn open_sockets(&self) -> Result<()> {
        self.open_places(|_| true)
    }

    /// Binds the sockets again in place of a successor's, after a resume: the old ones at a
    /// path are retired (their accept loops end) and new ones bound and served there. An
    /// abstract name stayed ours (a successor cannot bind it while we hold it): kept as it is.
    pub(super) fn rebind_sockets(&self) {
        let retired: Vec<_> = {
            let mut bound = self.inner.bound.lock().unwrap_or_else(|p| p.into_inner());
            let (paths, kept) = std::mem::take(&mut *bound)
                .into_iter()
                .partition(|b| matches!(b.place, Place::Path(_)));
            *bound = kept;
            paths
        };
        for bound in &retired {
            bound.retire();
        }
        if let Err(error) = self.open_places(|p| matches!(p, Place::Path(_))) {
            tracing::error!(error = %error.chain(), "serving again, but the hand-over or control socket could not be bound again");
        }
    }

    /// Opens the configured sockets whose place `which` picks.
    fn open_places(&self, which: fn(&Place) -> bool) -> Result<()> {
        let places = [
            (&self.inner.handover_place, Role::Handover),
            (&self.inner.control_place, Role::Control),
        ];
        for (at, role) in places {
            if let Some(at) = at.as_ref().filter(|p| which(p)) {
                self.open_socket(at, role)?;
            }
        }
        Ok(())
    }

    /// Binds `at` and serves it. An abstract name the previous generation still holds (it is
    /// freed only when that process closes it, at its exit, where a path is simply replaced)
    /// is taken on a thread of its own once that process has exited.
    fn open_socket(&self, at: &Place, role: Role) -> Result<()> {
        let error = match place::bind(at, role.ty()) {
            Ok(bound) => return self.serve_socket(bound, role),
            Err(error) => error,
        };
        if !matches!(at, Place::Abstract(_)) || !place::in_use(&error) {
            return Err(error);
        }
        let exit = {
            let st = self.state();
            let fd = st.predecessor_pidfd.as_ref().or(st.predecessor.as_ref());
            fd.map(OwnedFd::try_clone).transpose()
        };
        let Some(exit) =
            exit.map_err(|e| Error::io(ErrorKind::Io, "duplicating a descriptor", e))?
        else {
            return Err(error);
        };
        let this = self.clone();
        let place = at.clone();
        std::thread::Builder::new()
            .name("handoff-await-name".into())
            .spawn(move || this.open_after_exit(&place, role, &exit))
            .map_err(|e| Error::io(ErrorKind::Io, "starting a thread", e))?;
        tracing::info!(socket = %at.describe(), "the previous generation still holds this name; taking it once it has exited");
        Ok(())
    }

    /// Waits until `exit` (the previous generation's pidfd, else its end of the link) tells
    /// that process has exited, then binds `at` and serves it, unless this process no longer
    /// serves by then.
    fn open_after_exit(&self, at: &Place, role: Role, exit: &OwnedFd) {
        while !sys::gone(exit.as_fd()) {
            if sys::poll_readable(&[exit.as_fd()], Duration::from_secs(3600)).is_err() {
                break;
            }
        }
        if matches!(self.phase(), Phase::HandedOver | Phase::Stopping) {
            return;
        }
        if let Err(error) = place::bind(at, role.ty()).and_then(|b| self.serve_socket(b, role)) {
            tracing::error!(error = %error.chain(), socket = %at.describe(), "the previous generation has exited, but its socket name could not be taken");
        }
    }

    /// Serves a bound socket on a thread of its own.
    fn serve_socket(&self, bound: Bound, role: Role) -> Result<()> {
        let bound = Arc::new(bound);
        self.keep_bound(&bound);
        let this = self.clone();
        let serving = Arc::clone(&bound);
        std::thread::Builder::new()
            .name(role.thread().into())
            .spawn(move || match role {
                Role::Handover => this.serve_handover(&serving),
                Role::Control => this.serve_control(&serving),
            })
            .map_err(|e| {
                Error::io(
                    ErrorKind::Io,
                    format!("starting the {} thread", role.thread()),
                    e,
                )
            })?;
        match role {
            Role::Handover => {
                tracing::info!(socket = %bound.place.describe(), "offering the listeners for hand-over")
            }
            Role::Control => {
                tracing::info!(socket = %bound.place.describe(), "taking commands on the control socket")
            }
        }
        Ok(())
    }

    fn keep_bound(&self, bound: &Arc<Bound>) {
        self.inner
            .bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(bound));
    }

    /// Accepts hand-over connections one at a time for the life of the process: a second
    /// one waits in the socket's queue, and is refused by the guard if the first handed over.
    fn serve_handover(&self, bound: &Bound) {
        while let Some(conn) = bound.accept("hand-over") {
            if bound.retired() {
                return;
            }
            let peer = match admit(bound, &conn, &self.inner.allowed_uids) {
                Ok(peer) => peer,
                Err(why) => {
                    tracing::warn!(socket = %bound.place.describe(), "hand-over refused: {why}");
                    refuse(&conn, &why);
                    continue;
                }
            };
            let _ = self.hand_over_to(conn, peer);
        }
    }

    /// Hands over to the process at the other end of `conn`, as [`upgrade`](Upgrader::upgrade)
    /// does to a child: through the guard, then the offer, the wait for its ready, and the
    /// handover or the rollback (which kills it: it holds our listeners).
    fn hand_over_to(&self, conn: OwnedFd, peer: sys::PeerCred) -> Result<Child> {
        if let Err((error, _)) = self.begin_upgrade() {
            tracing::warn!(error = %error.chain(), peer = peer.pid, "hand-over refused");
            refuse(&conn, &error.chain().to_string());
            self.emit(&Event::UpgradeRefused { error: &error });
            return Err(error);
        }
        self.sd_notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            sys::monotonic_usec()
        ));
        match self.offer_and_wait(&conn, peer.pid) {
            Ok((child, process)) => {
                let window = self.hand_over(child, &process);
                let _ = sys::send_packet(conn.as_fd(), b"ok\n");
                match window {
                    None => {
                        self.keep_successor_link(conn);
                        Ok(child)
                    }
                    Some(closes) => self.watch_window(child, process, conn, closes),
                }
            }
            Err(error) => {
                let _ = sys::send_packet(
                    conn.as_fd(),
                    format!("rolled-back: {}\n", error.chain()).as_bytes(),
                );
                if self.phase() != Phase::Stopping {
                    self.sd_notify("READY=1");
                }
                tracing::warn!(error = %error.chain(), "hand-over failed; still serving");
                self.emit(&Event::UpgradeFailed { error: &error });
                Err(error)
            }
        }
    }

    /// Sends the offer with the listeners, then waits until the machine decides: hand over
    /// (the peer and its handle are returned), or roll back (carried out here: the peer is
    /// killed, and the error returned).
    fn offer_and_wait(&self, conn: &OwnedFd, pid: u32) -> Result<(Child, Arc<sys::Process>)> {
        let prepared = {
            let mut st = self.state();
            match st.machine.before_fork() {
                Err(rollback) => Err((
                    rollback,
                    Error::new(
                        ErrorKind::NotServing,
                        "stop requested before the listeners were offered; sent nothing",
                    ),
                )),
                Ok(()) => st
                    .listeners
                    .iter()
                    .map(|(name, fd)| Ok((wire::describe(name, fd)?, fd.try_clone()?)))
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|e| {
                        let error = spawn_error("describing the listeners to offer", e);
                        (st.machine.spawn_failed(), error)
                    }),
            }
        };
        let listeners = match prepared {
            Ok(listeners) => listeners,
            Err((rollback, error)) => {
                self.roll_back_peer(rollback, None);
                return Err(error);
            }
        };
        // The peer's pidfd, opened while its connection is open (see `Process::peer`).
        let process = Arc::new(sys::Process::peer(pid));
        let offer = Offer {
            generation: self.inner.generation,
            pid: sys::getpid(),
            entries: listeners.iter().map(|(e, _)| e.clone()).collect(),
        };
        let fds: Vec<_> = listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
        let sent = sys::send_with_fds(conn.as_fd(), &wire::encode(&offer), &fds);
        drop(fds);
        drop(listeners);
        {
            let mut st = self.state();
            if let Err(e) = sent {
                let rollback = st.machine.spawn_failed();
                drop(st);
                self.roll_back_peer(rollback, None);
                return Err(Error::io(
                    ErrorKind::Handover,
                    format!("sending the listeners to process {pid}"),
                    e,
                ));
            }
            st.machine.spawned(pid);
            if st.machine.phase() == Phase::Stopping {
                let _ = process.signal(libc::SIGKILL);
            }
            st.in_flight = Some(Arc::clone(&process));
        }
        tracing::info!(
            peer = pid,
            "offered the listeners; waiting for the new process to be ready"
        );
        self.emit(&Event::UpgradeStarted { child: pid });
        let mut seen = Observed::Nothing;
        let mut wait_error = None;
        loop {
            let now = self.now();
            let step = self.state().machine.observe(now, seen);
            let deadline = match step {
                Step::WaitUntil(deadline) => deadline,
                Step::HandOver(_) => return Ok((Child { pid }, process)),
                Step::RollBack(rollback) => {
                    self.roll_back_peer(rollback, Some(&process));
                    return Err(self.peer_error(pid, rollback.failure, wait_error));
                }
            };
            seen = self
                .watch_peer(conn, &process, now.until(deadline))
                .unwrap_or_else(|error| {
                    wait_error = Some(error);
                    Observed::WaitFailed
                });
        }
    }

    /// Waits up to `timeout` for the peer's ready, its end, or a stop.
    fn watch_peer(
        &self,
        conn: &OwnedFd,
        process: &sys::Process,
        timeout: Duration,
    ) -> Result<Observed> {
        let mut fds = vec![conn.as_fd(), self.inner.wake_r.as_fd()];
        fds.extend(process.exit_fd());
        let ready = sys::poll_readable(&fds, timeout)
            .map_err(|e| Error::io(ErrorKind::Io, "waiting for the new process", e))?;
        match ready {
            sys::Readable::TimedOut => Ok(Observed::Nothing),
            // Its connection first: a peer that said ready and then ended is judged by what
            // it said.
            sys::Readable::Fd(0) => {
                let mut buf = [0u8; 64];
                match sys::recv_plain(conn.as_fd(), &mut buf) {
                    Ok(6) if &buf[..6] == b"ready\n" => Ok(Observed::Ready),
                    Ok(0) | Err(_) => Ok(Observed::Vanished),
                    Ok(n) => Err(Error::new(
                        ErrorKind::Handover,
                        format!(
                            "process {} sent {:?} instead of `ready`",
                            process.pid(),
                            String::from_utf8_lossy(&buf[..n.min(buf.len())])
                        ),
                    )),
                }
            }
            sys::Readable::Fd(1) => {
                let mut buf = [0u8; 64];
                while matches!(sys::read(self.inner.wake_r.as_fd(), &mut buf), Ok(n) if n > 0) {}
                Ok(Observed::Nothing)
            }
            sys::Readable::Fd(_) => Ok(Observed::Vanished),
        }
    }

    /// Carries out a rollback of a hand-over: kills the peer, if the listeners were sent to
    /// it (it is not ours to reap), and tells the machine.
    fn roll_back_peer(&self, rollback: Rollback, process: Option<&sys::Process>) {
        debug_assert_eq!(rollback.child, process.map(|p| p.pid()));
        self.state().in_flight = None;
        if let Some(process) = process
            && let Err(e) = process.signal(libc::SIGKILL)
        {
            tracing::warn!(error = %e, peer = process.pid(), "could not kill the new process that failed; it may still hold the listeners");
        }
        let mut st = self.state();
        st.machine.rolled_back();
        self.publish(&st);
    }

    /// The error for a hand-over whose peer `pid` failed.
    fn peer_error(&self, pid: u32, failure: Failure, wait_error: Option<Error>) -> Error {
        match failure {
            Failure::Vanished => Error::new(
                ErrorKind::PeerLeft { pid },
                format!(
                    "process {pid} closed the hand-over connection or ended before it reported \
                     ready"
                ),
            ),
            Failure::ReadyTimeout => {
                let timeout = self.inner.ready_timeout;
                Error::new(
                    ErrorKind::ReadyTimeout { pid, timeout },
                    format!(
                        "process {pid} took the listeners but was not ready within {} ms; \
                         killed it",
                        timeout.as_millis()
                    ),
                )
            }
            Failure::Stopped => Error::new(
                ErrorKind::Stopped { pid },
                format!("stop requested while process {pid} was taking over; killed it"),
            ),
            _ => wait_error.unwrap_or_else(|| {
                Error::new(ErrorKind::Io, format!("watching process {pid} failed"))
            }),
        }
    }
}

/// Whether a connection may be served: the socket still as protected as it was made, and a
/// peer of our uid or an allowed one.
pub(super) fn admit(
    bound: &Bound,
    conn: &OwnedFd,
    allowed: &[u32],
) -> Result<sys::PeerCred, String> {
    bound.check()?;
    place::check_peer(conn, allowed)
}

/// Which of the two sockets.
#[derive(Clone, Copy, Debug)]
enum Role {
    Handover,
    Control,
}

impl Role {
    fn ty(self) -> Type {
        match self {
            Role::Handover => Type::SEQPACKET,
            Role::Control => Type::STREAM,
        }
    }

    fn thread(self) -> &'static str {
        match self {
            Role::Handover => "handoff-handover",
            Role::Control => "handoff-control",
        }
    }
}

/// Tells a peer why it is refused, without waiting on it.
fn refuse(conn: &OwnedFd, why: &str) {
    let _ = sys::send_packet(conn.as_fd(), format!("refused: {why}\n").as_bytes());
}
