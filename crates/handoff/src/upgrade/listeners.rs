//! The listeners the application asks for (inherited, taken over or bound), and its ready.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::activation;
use crate::error::{Error, ErrorKind, Result};
use crate::handover::client::{self, Answer};
use crate::listen::{Want, bind, pick, validate_name};
use crate::machine::Phase;
use crate::{pidfile, sys};

use super::Upgrader;

impl Upgrader {
    /// A TCP listener named `name`: an inherited one if there is one, else a new one bound to
    /// `addr` (close-on-exec, configured by
    /// [`Builder::listen_options`](crate::Builder::listen_options)).
    ///
    /// Which inherited socket is adopted: one passed under `name` (by the previous
    /// generation, or by systemd's `FileDescriptorName=`, which several sockets may share) and
    /// bound to `addr`; else a listening TCP socket bound to exactly `addr`, whatever it was
    /// named (systemd names a socket unit's descriptors `<unit>.socket` by default,
    /// `systemd-socket-activate` leaves them `unknown`, and a new configuration may have
    /// swapped two listeners' addresses), so inherited sockets of one kind are told apart by
    /// address, never by order; else, when `addr` has port 0 (any port), the first unclaimed
    /// listening TCP socket that carries no name of ours (`unknown`, empty, or a systemd
    /// default `*.socket`).
    ///
    /// A dual-stack IPv6 wildcard (`[::]:8080` with `IPV6_V6ONLY` off, what systemd's
    /// `ListenStream=8080` makes) counts as bound to `0.0.0.0:8080` too. An inherited listener
    /// under `name` bound to another address than `addr` (the configuration changed), and no
    /// other bound there, is not adopted: a new one is bound, and the old one closed at
    /// [`ready`](Upgrader::ready). Port 0 in `addr` matches any port.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidName`] when `name` cannot travel in `LISTEN_FDNAMES` (empty, over
    /// 255 bytes, or other than printable ASCII without `:`);
    /// [`ErrorKind::BadInheritedFd`] when the inherited descriptor of that name is not a
    /// listening TCP socket (it is left alone); [`ErrorKind::Listen`] when binding fails;
    /// [`ErrorKind::Usage`] after [`ready`](Upgrader::ready) or for a name already used.
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

    /// A new descriptor for this generation's listener `name` (a duplicate of the copy the upgrader
    /// keeps to pass on). After [`Drained::Resume`](crate::Drained::Resume) this is how the
    /// application takes its listeners back: `TcpListener::from(upgrader.kept_listener("http")?)`.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`] when no listener of that name was made, or this generation no
    /// longer holds its listeners (it has handed over for good, or is stopping);
    /// [`ErrorKind::Listen`] when the descriptor cannot be duplicated.
    pub fn kept_listener(&self, name: &str) -> Result<OwnedFd> {
        let st = self.state();
        let (_, fd) = st
            .listeners
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Usage,
                    format!(
                        "no listener `{name}` is kept: none was made under that name, or this \
                     generation has let go of its listeners"
                    ),
                )
            })?;
        fd.try_clone().map_err(|e| {
            Error::io(
                ErrorKind::Listen,
                format!("duplicating listener `{name}`"),
                e,
            )
        })
    }

    fn listener(&self, name: &str, want: Want<'_>) -> Result<OwnedFd> {
        validate_name(name)?;
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
        let candidates: Vec<(&str, &activation::SocketInfo)> = st
            .inherited
            .iter()
            .map(|i| (i.name.as_str(), &i.info))
            .collect();
        let fd = match pick(name, want, &candidates)? {
            Some(i) => {
                tracing::debug!(name, inherited = %st.inherited[i].name, "adopting inherited listener");
                st.inherited.remove(i).fd
            }
            None => {
                if st.inherited.iter().any(|i| i.name == name) {
                    tracing::info!(
                        name,
                        "inherited listener is bound elsewhere; binding {}",
                        want.describe()
                    );
                }
                bind(want, name, &self.inner.listen_options).map_err(|e| {
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
        let takeover = self.state().takeover.take();
        if let Some(conn) = takeover {
            match client::report_ready(&conn, self.inner.ready_timeout)? {
                Answer::HandedOver => {
                    self.state().predecessor = Some(conn);
                    return self.open_sockets();
                }
                Answer::Gone => tracing::warn!(
                    "the process we took over from is gone; serving on as the only generation"
                ),
            }
        }
        if let Some(pipe) = pipe {
            match sys::write_all(pipe.as_fd(), b"ready\n") {
                Ok(()) => return self.open_sockets(),
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
        self.open_sockets()
    }
}
