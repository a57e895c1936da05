//! An axum server that restarts without refusing a connect or dropping a request.
//!
//! ```sh
//! cargo run --example axum -- --listen 127.0.0.1:8080 --pid-file /tmp/axum.pid
//! kill -HUP "$(cat /tmp/axum.pid)"    # the next generation takes over the same socket
//! kill -TERM "$(cat /tmp/axum.pid)"   # drain and exit
//! ```
//!
//! What it shows:
//! - the listener comes from the upgrader (inherited from the previous generation, or from
//!   systemd, or bound fresh), already registered with tokio;
//! - a wrapper around axum's listener stops accepting when the upgrader says `done()` (the
//!   next generation is ready, or a stop was requested): it drops this generation's copy of
//!   the listener (the next generation accepts on the very same socket) and waits. What to do
//!   next is decided by the drain alone: exit, or (a handover undone in the rollback window,
//!   even one undone before `done()` was polled) hand the wrapper the kept listener and serve
//!   again. The wrapper attaches a [`handoff::ConnGuard`] to every connection it accepted, so
//!   the drain waits for exactly these. axum's server itself is never dropped while the
//!   drain runs: dropping it tells every connection to shut down gracefully, which closes the
//!   ones whose first request has not arrived yet (see below);
//! - once done, every reply says `Connection: close`, so each connection ends after the
//!   request it is on, or its next one. Not axum's `with_graceful_shutdown`: it closes every
//!   connection that has no request in progress, including one accepted a moment before whose
//!   first request is still on its way, and that client's request is lost (the harness's
//!   `burst-at-restart` scenario catches it);
//! - the drain is bounded by the drain deadline (an idle keep-alive client that never sends
//!   again is cut there); with `--rollback-window-ms`, a generation whose successor dies right
//!   after it reported ready takes its listener back and serves again.
//!
//! Every reply names who served it (`X-Handoff-Pid`, `X-Handoff-Gen`, body `pid=.. gen=..`),
//! like `handoff-http`, and each step is printed on stdout (`ready pid=.. gen=.. listen=..`,
//! `draining ...`, `exit ...`), so the conformance harness can run it as a target.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use clap::Parser;
use handoff::{ConnGuard, Drained, Upgrader};

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Keep a PID file here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// How long a superseded generation waits for its connections.
    #[arg(long, default_value_t = 5000)]
    drain_timeout_ms: u64,
    /// How long a new generation has to report ready.
    #[arg(long, default_value_t = 5000)]
    ready_timeout_ms: u64,
    /// For how long after a handover to take the service back if the new generation dies.
    #[arg(long, default_value_t = 0)]
    rollback_window_ms: u64,
}

#[derive(Clone)]
struct Who {
    pid: u32,
    generation: u32,
    upgrader: Upgrader,
}

async fn reply(State(who): State<Who>) -> (HeaderMap, String) {
    let mut headers = HeaderMap::new();
    headers.insert("x-handoff-pid", HeaderValue::from(who.pid));
    headers.insert("x-handoff-gen", HeaderValue::from(who.generation));
    if who.upgrader.phase().is_done() {
        // Draining: say so, so that a client tells this close from a drop.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    (headers, format!("pid={} gen={}\n", who.pid, who.generation))
}

/// axum's listener with a connection guard attached to every accepted stream. It accepts
/// until `done()`, then lets go of its listener and waits for the one a resume hands it.
struct Tracked {
    listener: Option<tokio::net::TcpListener>,
    upgrader: Upgrader,
    resumed: tokio::sync::mpsc::UnboundedReceiver<tokio::net::TcpListener>,
}

/// A stream that counts as one open connection until it is dropped.
struct Guarded {
    stream: tokio::net::TcpStream,
    _guard: ConnGuard,
}

impl axum::serve::Listener for Tracked {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let Some(listener) = &mut self.listener else {
                // Not accepting: wait for a resume (forever once the process exits).
                match self.resumed.recv().await {
                    Some(listener) => self.listener = Some(listener),
                    None => std::future::pending().await,
                }
                continue;
            };
            tokio::select! {
                _ = self.upgrader.done() => self.listener = None,
                // A handover undone before this loop saw it: take the kept copy all the same.
                Some(listener) = self.resumed.recv() => self.listener = Some(listener),
                (stream, addr) = axum::serve::Listener::accept(listener) => {
                    let _guard = self.upgrader.conn_guard();
                    return (Guarded { stream, _guard }, addr);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.listener {
            Some(listener) => listener.local_addr(),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl tokio::io::AsyncRead for Guarded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Guarded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let pid = std::process::id();
    let mut builder = handoff::Builder::new()
        .ready_timeout(Duration::from_millis(args.ready_timeout_ms))
        .drain_timeout(Duration::from_millis(args.drain_timeout_ms))
        .rollback_window(Duration::from_millis(args.rollback_window_ms));
    if let Some(path) = &args.pid_file {
        builder = builder.pid_file(path);
    }
    let upgrader = builder.build()?;
    let generation = upgrader.generation();
    let listener = upgrader.tokio_tcp_listener("http", args.listen)?;
    let listen = listener.local_addr()?;
    upgrader.spawn_signal_task()?;
    upgrader.ready()?;
    println!("ready pid={pid} gen={generation} listen={listen}");
    let app = Router::new().fallback(reply).with_state(Who {
        pid,
        generation,
        upgrader: upgrader.clone(),
    });
    let (resume, resumed) = tokio::sync::mpsc::unbounded_channel();
    let tracked = Tracked {
        listener: Some(listener),
        upgrader: upgrader.clone(),
        resumed,
    };
    // The connections it accepts are tasks of their own; the server lives until the exit.
    let server = tokio::spawn(axum::serve(tracked, app).into_future());
    loop {
        upgrader.done().await;
        println!(
            "draining pid={pid} gen={generation} connections={}",
            upgrader.tracker().active()
        );
        match upgrader.drain_async().await {
            Drained::Resume => {
                // The successor died in the rollback window: serve again on the kept listener.
                resume.send(upgrader.kept_tokio_tcp_listener("http")?)?;
                println!("resumed pid={pid} gen={generation} listen={listen}");
            }
            Drained::Exit { remaining } => {
                println!("exit pid={pid} gen={generation} remaining={remaining}");
                break;
            }
            other => {
                println!("exit pid={pid} gen={generation} drained={other:?}");
                break;
            }
        }
    }
    // Connections still open past the drain deadline are cut here.
    server.abort();
    Ok(())
}
