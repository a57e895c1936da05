//! The control socket: one command per connection, `upgrade` (answered with its outcome) or
//! `status`, each connection on a thread of its own so that `status` answers while an upgrade
//! is in flight (and a second `upgrade` is refused by the guard at once).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Upgrader;
use super::offer::admit;
use crate::handover::CONTROL_LINE_MAX;
use crate::handover::place::Bound;
use crate::sys;

/// Connections served at once; more are answered `failed: busy` at once.
const MAX_CLIENTS: usize = 8;
/// Refused peers answered at once; more are closed unanswered.
const MAX_REFUSED: usize = 4;
/// How long a client has to send its command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused peer's command is waited for, only so that the refusal reaches it
/// rather than a reset.
const REFUSED_TIMEOUT: Duration = Duration::from_secs(1);

/// One of a bounded number of places, given back when dropped (also when the thread that
/// was to hold it could not start).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if count.fetch_add(1, Ordering::SeqCst) >= max {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Upgrader {
    /// Accepts control connections for the life of the process. Admitted peers and refused
    /// ones are counted apart, so that peers of another uid (who can reach an abstract
    /// socket) cannot fill the places of the deploy tool's commands by staying silent.
    pub(super) fn serve_control(&self, bound: &Bound) {
        let clients = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        while let Some(conn) = bound.accept("control") {
            let admitted = admit(bound, &conn, &self.inner.allowed_uids);
            let mut stream = UnixStream::from(conn);
            let (count, max) = match admitted {
                Ok(_) => (&clients, MAX_CLIENTS),
                Err(_) => (&refused, MAX_REFUSED),
            };
            let Some(slot) = Slot::take(count, max) else {
                if admitted.is_ok() {
                    let _ = writeln!(
                        stream,
                        "failed: busy: {MAX_CLIENTS} commands are in progress"
                    );
                }
                continue;
            };
            let this = self.clone();
            let spawned = std::thread::Builder::new()
                .name("handoff-command".into())
                .spawn(move || {
                    this.command(stream, admitted);
                    drop(slot);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a thread for a control command");
            }
        }
    }

    /// Reads one command and answers it, or the refusal when the peer was not admitted (read
    /// first, so that the refusal reaches it rather than a reset).
    fn command(&self, mut stream: UnixStream, admitted: Result<sys::PeerCred, String>) {
        let timeout = match admitted {
            Ok(_) => COMMAND_TIMEOUT,
            Err(_) => REFUSED_TIMEOUT,
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let mut line = String::new();
        let read = BufReader::new((&stream).take(CONTROL_LINE_MAX as u64)).read_line(&mut line);
        let answer = match (admitted, read) {
            (Err(why), _) => {
                tracing::warn!("control connection refused: {why}");
                format!("failed: refused: {}\n", one_line(&why))
            }
            (_, Err(e)) => format!("failed: reading the command: {e}\n"),
            (Ok(_), Ok(_)) => match line.trim() {
                "upgrade" => match self.upgrade() {
                    Ok(child) => format!(
                        "upgraded: pid {} gen {}\n",
                        child.pid(),
                        self.inner.generation + 1
                    ),
                    Err(e) => format!("failed: {}\n", one_line(&e.chain().to_string())),
                },
                "status" => self.status_text(),
                other => format!(
                    "failed: unknown command {:?}: expected `upgrade` or `status`\n",
                    one_line(other)
                ),
            },
        };
        let _ = stream.write_all(answer.as_bytes());
    }

    /// The answer to `status`: one `key: value` per line.
    fn status_text(&self) -> String {
        let previous = {
            let st = self.state();
            let alive = st
                .predecessor_pidfd
                .as_ref()
                .map(|fd| !sys::gone(std::os::fd::AsFd::as_fd(fd)))
                .or_else(|| {
                    st.predecessor
                        .as_ref()
                        .map(|l| !sys::gone(std::os::fd::AsFd::as_fd(l)))
                });
            match (self.inner.previous, alive) {
                (Some(pid), Some(true)) => {
                    format!("pid {pid} gen {} draining", self.inner.generation - 1)
                }
                (Some(pid), _) => format!("pid {pid} gen {} exited", self.inner.generation - 1),
                (None, _) => "none".to_owned(),
            }
        };
        let last_failure = self
            .inner
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map_or_else(|| "none".to_owned(), |f| one_line(&f));
        format!(
            "pid: {}\ngeneration: {}\nphase: {}\nconnections: {}\nupgrades: {}\nlast-failure: {}\nprevious: {}\n",
            sys::getpid(),
            self.inner.generation,
            format!("{:?}", self.phase()).to_lowercase(),
            self.inner.tracker.active(),
            self.inner.upgrades.load(Ordering::Relaxed),
            last_failure,
            previous,
        )
    }
}

/// A text on one line, so that it cannot forge a second line of an answer.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
