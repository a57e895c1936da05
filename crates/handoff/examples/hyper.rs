//! A hyper 1.x server that restarts without refusing a connect or dropping a request, with
//! its own accept loop.
//!
//! ```sh
//! cargo run --example hyper -- --listen 127.0.0.1:8080 --pid-file /tmp/hyper.pid
//! kill -HUP "$(cat /tmp/hyper.pid)"    # the next generation takes over the same socket
//! kill -TERM "$(cat /tmp/hyper.pid)"   # drain and exit
//! ```
//!
//! What it shows, in the loop a hand-written server has anyway:
//! - accept until the upgrader says `done()` (the next generation is ready, or a stop was
//!   requested), then drop the listener: the next generation accepts on the very same socket;
//! - each connection holds a [`handoff::ConnGuard`]; at `done()`, one that has answered a
//!   request is told to shut down gracefully (hyper finishes the request in flight, then
//!   closes; an idle keep-alive connection closes at once), and one that has not yet is left
//!   to answer its first request (its client sent it to us), with `Connection: close`. Calling
//!   `graceful_shutdown` on that one too would close it unanswered: the harness's
//!   `burst-at-restart` scenario catches exactly that;
//! - the drain waits for the guards, at most until the drain deadline; with
//!   `--rollback-window-ms`, a generation whose successor dies right after it reported ready
//!   takes its listener back and serves again.
//!
//! Every reply names who served it (`X-Handoff-Pid`, `X-Handoff-Gen`, body `pid=.. gen=..`),
//! like `handoff-http`, and each step is printed on stdout (`ready pid=.. gen=.. listen=..`,
//! `draining ...`, `exit ...`), so the conformance harness can run it as a target.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use handoff::{Drained, Upgrader};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, header};
use hyper_util::rt::TokioIo;

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

fn reply(upgrader: &Upgrader, pid: u32, generation: u32) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .header("x-handoff-pid", pid)
        .header("x-handoff-gen", generation);
    if upgrader.phase().is_done() {
        // Draining: say so, so that a client tells this close from a drop.
        response = response.header(header::CONNECTION, "close");
    }
    response
        .body(Full::new(Bytes::from(format!(
            "pid={pid} gen={generation}\n"
        ))))
        .expect("a response of valid parts")
}

/// Accepts on `listener` until this generation should stop accepting; every connection is
/// served on a task of its own, guarded, and shut down gracefully at `done()`.
async fn serve(upgrader: &Upgrader, listener: tokio::net::TcpListener) {
    let pid = std::process::id();
    let generation = upgrader.generation();
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = upgrader.done() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: keep serving what we have rather than spin or die.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let guard = upgrader.conn_guard();
        let upgrader = upgrader.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let answered = Arc::new(AtomicBool::new(false));
            let service = service_fn({
                let (upgrader, answered) = (upgrader.clone(), Arc::clone(&answered));
                move |_: Request<Incoming>| {
                    let response = reply(&upgrader, pid, generation);
                    answered.store(true, Ordering::Relaxed);
                    async move { Ok::<_, Infallible>(response) }
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = upgrader.done() => {}
            }
            if answered.load(Ordering::Relaxed) {
                conn.as_mut().graceful_shutdown();
            }
            let _ = conn.await;
        });
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
    let mut listener = upgrader.tokio_tcp_listener("http", args.listen)?;
    let listen = listener.local_addr()?;
    upgrader.spawn_signal_task()?;
    upgrader.ready()?;
    println!("ready pid={pid} gen={generation} listen={listen}");
    loop {
        serve(&upgrader, listener).await; // the listener is closed when it returns
        println!(
            "draining pid={pid} gen={generation} connections={}",
            upgrader.tracker().active()
        );
        match upgrader.drain_async().await {
            Drained::Resume => {
                listener = upgrader.kept_tokio_tcp_listener("http")?;
                println!("resumed pid={pid} gen={generation} listen={listen}");
            }
            Drained::Exit { remaining } => {
                println!("exit pid={pid} gen={generation} remaining={remaining}");
                return Ok(());
            }
            other => {
                println!("exit pid={pid} gen={generation} drained={other:?}");
                return Ok(());
            }
        }
    }
}
