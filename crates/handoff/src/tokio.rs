//! The async face of the upgrader, for servers on the tokio runtime.

use tokio::signal::unix::{SignalKind, signal};

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Phase;
use crate::upgrade::{Child, Upgrader};

impl Upgrader {
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
    /// upgrader.drain_async().await;
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn done(&self) -> Phase {
        let mut rx = self.phase_rx();
        match rx.wait_for(|p| p.is_done()).await {
            Ok(p) => *p,
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
    pub async fn drain_async(&self) -> usize {
        let drain = self.begin_drain();
        let origin = tokio::time::Instant::from_std(self.origin());
        let left = self.tracker().drained(drain, origin).await;
        let this = self.clone();
        // Removing the PID file is a quick filesystem call; keep it off the async threads anyway.
        let _ = tokio::task::spawn_blocking(move || this.drain_finish()).await;
        left
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
