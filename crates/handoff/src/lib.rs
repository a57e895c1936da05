//! Graceful restarts for Linux servers.
//!
//! A server built on this crate can replace its own binary, or reload its configuration,
//! without refusing a connect or dropping an accepted connection. The listening sockets never
//! close: on an upgrade the running process (generation N) starts generation N+1,
//! which inherits the very same sockets through the systemd socket-activation protocol
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, descriptors from 3) and reports "ready" over a
//! pipe. Only then does generation N stop accepting, drain the connections it holds (up to a
//! deadline) and exit. If N+1 exits, crashes or misses its deadline before it is ready, N kills
//! and reaps it and goes on serving; the caller gets an [`Error`] saying which.
//!
//! # Examples
//! ```no_run
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), handoff::Error> {
//! let upgrader = handoff::Builder::new()
//!     .ready_timeout(Duration::from_secs(5))
//!     .drain_timeout(Duration::from_secs(30))
//!     .build()?;
//! let listener = upgrader.tcp_listener("http", "127.0.0.1:8080".parse().unwrap())?;
//! upgrader.spawn_signal_thread()?; // SIGHUP upgrades, SIGTERM/SIGINT stop
//! upgrader.ready()?;
//! // ... accept on `listener` in other threads, holding `upgrader.conn_guard()` per
//! // connection, until:
//! upgrader.wait_done();
//! drop(listener);
//! let _ = upgrader.drain(); // `Drained::Exit` unless a rollback window is configured
//! # Ok(()) }
//! ```
//!
//! A process started by systemd (or `systemd-socket-activate`) adopts the descriptors it is
//! given the same way on its first start. Every inherited descriptor is checked (a socket, of
//! the family and type asked for) before it is used.
//!
//! # Hand-over to a process that is not our child
//! Where the new version cannot be forked from the old one (it starts in another container,
//! under another supervisor, from a deploy tool), the running process offers its listeners at
//! a unix socket ([`Builder::handover_socket`]) and the new process takes them over
//! ([`Builder::take_over`]): one versioned message with every listener's name, kind and
//! address beside the descriptors, checked against them, then `ready` over the same
//! connection, and only then does the old process drain, as after a forked upgrade. A new
//! process that disconnects or misses the ready deadline is killed and the old one serves on.
//! The socket sits in a directory only its owner can enter (0700, the socket 0600) or in the
//! abstract namespace, and a peer of another uid is refused unless [`Builder::allow_uid`]
//! names it. A control socket ([`Builder::control_socket`], client [`ask`]) takes `upgrade`
//! (answered with the outcome) and `status`.
//!
//! ```no_run
//! # fn main() -> Result<(), handoff::Error> {
//! // The new process, started by a deploy tool while the old one runs with
//! // `.handover_socket("/run/app/handover.sock")`:
//! let upgrader = handoff::Builder::new()
//!     .take_over("/run/app/handover.sock")
//!     .handover_socket("/run/app/handover.sock") // offer them on in turn
//!     .build()?;
//! let listener = upgrader.tcp_listener("http", "127.0.0.1:8080".parse().unwrap())?;
//! upgrader.ready()?; // returns once the old process has handed over
//! # drop(listener);
//! # Ok(()) }
//! ```
//!
//! # Platform
//! Linux only (5.4 or later for pidfds, probed once at the first spawn; older kernels, and
//! sandboxes that refuse them, fall back to pids and the link between generations): the crate
//! relies on `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, `pidfd_open`,
//! `pidfd_send_signal`, `waitid(P_PIDFD)`, `close_range` and `/proc`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "handoff supports Linux only: it spawns generations with clone(2) and watches them through pidfds"
);

mod activation;
mod conn;
mod error;
mod handover;
mod listen;
mod machine;
mod notify;
mod pidfile;
mod sys;
#[cfg(feature = "tokio")]
mod tokio;
mod upgrade;

pub use conn::{ConnGuard, ConnTracker};
pub use error::{Error, ErrorKind, Result};
pub use handover::ask;
pub use listen::ListenOptions;
pub use machine::Phase;
pub use upgrade::{Builder, Child, Drained, Event, Upgrader};
