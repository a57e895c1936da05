//! The async face of the upgrader, for servers on the tokio runtime.

use tokio::signal::unix::{SignalKind, signal};

use std::net::SocketAddr;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Phase;
use crate::upgrade::{Child, Drained, Upgrader};

/// Registers a std socket with the runtime, non-blocking.
fn register<S, T>(
    std: S,
    what: &str,
    name: &str,
    into: impl FnOnce(S) -> std::io::Result<T>,
) -> Result<T>
where
    S: AsNonBlocking,
{
    std.set_nonblocking_mode().map_err(|e| {
        Error::io(
            ErrorKind::Listen,
            format!("making {what} `{name}` non-blocking"),
            e,
        )
    })?;
    into(std).map_err(|e| {
        Error::io(
            ErrorKind::Listen,
            format!("registering {what} `{name}` with the tokio runtime"),
            e,
        )
    })
}

trait AsNonBlocking {
    fn set_nonblocking_mode(&self) -> std::io::Result<()>;
}

impl AsNonBlocking for std::net::TcpListener {
    fn set_nonblocking_mode(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
}

impl AsNonBlocking for std::net::UdpSocket {
    fn set_nonblocking_mode(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
}

impl AsNonBlocking for std::os::unix::net::UnixListener {
    fn set_nonblocking_mode(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
}

impl Upgrader {
    /// [`tcp_listener`](Upgrader::tcp_listener), non-blocking and registered with the current
    /// tokio runtime.
    ///
    /// # Errors
    /// As [`tcp_listener`](Upgrader::tcp_listener), and [`ErrorKind::Listen`] when the
    /// listener cannot be registered.
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled.
    pub fn tokio_tcp_listener(
        &self,
        name: &str,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpListener> {
        let std = self.tcp_listener(name, addr)?;
        register(std, "TCP listener", name, tokio::net::TcpListener::from_std)
    }

    /// [`udp_socket`](Upgrader::udp_socket), non-blocking and registered with the current
    /// tokio runtime.
    ///
    /// # Errors
    /// As [`tokio_tcp_listener`](Upgrader::tokio_tcp_listener).
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled.
    pub fn tokio_udp_socket(&self, name: &str, addr: SocketAddr) -> Result<tokio::net::UdpSocket> {
        let std = self.udp_socket(name, addr)?;
        register(std, "UDP socket", name, tokio::net::UdpSocket::from_std)
    }

    /// [`unix_listener`](Upgrader::unix_listener), non-blocking and registered with the
    /// current tokio runtime.
    ///
    /// # Errors
    /// As [`tokio_tcp_listener`](Upgrader::tokio_tcp_listener).
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled.
    pub fn tokio_unix_listener(
        &self,
        name: &str,
        path: impl AsRef<Path>,
    ) -> Result<tokio::net::UnixListener> {
        let std = self.unix_listener(name, path)?;
        register(
            std,
            "unix listener",
            name,
            tokio::net::UnixListener::from_std,
        )
    }

    /// [`kept_listener`](Upgrader::kept_listener) as a tokio TCP listener: how an application
    /// takes a TCP listener back after [`Drained::Resume`].
    ///
    /// # Errors
    /// As [`kept_listener`](Upgrader::kept_listener), and [`ErrorKind::Listen`] when the
    /// listener cannot be registered.
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled.
    pub fn kept_tokio_tcp_listener(&self, name: &str) -> Result<tokio::net::TcpListener> {
        let std = std::net::TcpListener::from(self.kept_listener(name)?);
        register(std, "TCP listener", name, tokio::net::TcpListener::from_std)
    }

    /// [`kept_listener`](Upgrader::kept_listener) as a tokio unix listener.
    ///
    /// # Errors
    /// As [`kept_tokio_tcp_listener`](Upgrader::kept_tokio_tcp_listener).
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled.
    pub fn kept_tokio_unix_listener(&self, name: &str) -> Result<tokio::net::UnixListener> {
        let std = std::os::unix::net::UnixListener::from(self.kept_listener(name)?);
        register(
            std,
            "unix listener",
            name,
            tokio::net::UnixListener::from_std,
        )
    }

    /// Resolves when this process should stop accepting: the next generation is ready
    /// ([`Phase::HandedOver`]) or a final stop was requested ([`Phase::Stopping`]).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn serve(upgrader: handoff::Upgrader, listener: tokio::net::TcpListener) {
    /// loop {
    ///     tokio::select! {
    ///         _ = upgrader.done() => break,
    ///         Ok((stream, _)) = listener.accept() => {
    ///             let guard = upgrader.conn_guard();
    ///             tokio::spawn(async move { let _guard = guard; drop(stream) });
    ///         }
    ///     }
    /// }
    /// drop(listener); // stop accepting: the next generation holds the socket
    /// let _ = upgrader.drain_async().await; // with a rollback window: see `Drained::Resume`
    /// # }
    /// ```
    ///
    /// Every handover is reported, even one undone before this was polled (see
    /// [`wait_done`](Upgrader::wait_done)): it then resolves to [`Phase::HandedOver`] and
    /// [`drain_async`](Upgrader::drain_async) answers [`Drained::Resume`] at once. End the
    /// accept loop here and decide from the drain.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn done(&self) -> Phase {
        let mut rx = self.phase_rx();
        match rx.wait_for(Option::is_some).await {
            Ok(p) => p.unwrap_or(Phase::HandedOver),
            // The sender lives as long as the upgrader, which `self` keeps alive.
            Err(_) => self.phase(),
        }
    }

    /// [`upgrade`](Upgrader::upgrade) on a blocking thread.
    ///
    /// # Errors
    /// As [`upgrade`](Upgrader::upgrade).
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the upgrade, which completes (or rolls back) on
    /// its thread.
    pub async fn upgrade_async(&self) -> Result<Child> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.upgrade())
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("the upgrade thread failed: {e}")))?
    }

    /// [`drain`](Upgrader::drain) without blocking the runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: the drain deadline is set by the first call, and a call made after a
    /// cancelled one keeps it.
    pub async fn drain_async(&self) -> Drained {
        let drain = self.begin_drain();
        let origin = tokio::time::Instant::from_std(self.origin());
        let left = self
            .tracker()
            .drained(drain, origin, || self.resume_due())
            .await;
        loop {
            let settled = self.window_settled_notify().notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if !self.window_open() {
                break;
            }
            settled.await;
        }
        let end = self.end_drain();
        let this = self.clone();
        // Removing the PID file is a quick filesystem call; keep it off the async threads anyway.
        tokio::task::spawn_blocking(move || this.drained(end, left))
            .await
            .unwrap_or(Drained::Exit { remaining: left })
    }

    /// Spawns a task that turns signals into actions, like
    /// [`spawn_signal_thread`](Upgrader::spawn_signal_thread): the upgrade signal runs an
    /// upgrade on a blocking thread (a second one while it is in flight is refused at once),
    /// SIGTERM and SIGINT request the final stop. The handlers are installed before this
    /// returns.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] when a handler cannot be installed.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn_signal_task(&self) -> Result<tokio::task::JoinHandle<()>> {
        let install = |kind| {
            signal(kind).map_err(|e| Error::io(ErrorKind::Io, "installing signal handlers", e))
        };
        let mut upgrade = install(SignalKind::from_raw(self.upgrade_signal()))?;
        let mut term = install(SignalKind::terminate())?;
        let mut int = install(SignalKind::interrupt())?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = upgrade.recv() => {
                        let this = this.clone();
                        tokio::task::spawn_blocking(move || this.upgrade());
                    }
                    Some(()) = term.recv() => this.stop(),
                    Some(()) = int.recv() => this.stop(),
                    else => break,
                }
            }
        }))
    }
}
