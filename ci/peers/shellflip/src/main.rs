//! An HTTP/1.1 server on the `shellflip` crate that names its pid in every reply.
//!
//! SIGUSR1 restarts (shellflip's default trigger): the process spawns its successor, and once
//! that reports it started, stops accepting, finishes the connections it holds (shellflip's
//! `ShutdownCoordinator`, up to `--drain-timeout-ms`) and exits. SIGTERM stops the same way.
//! shellflip hands over state, not sockets; how the listener crosses is this server's choice:
//! - `--listener inherit` (default): the listening socket itself crosses the exec (close-on-exec
//!   cleared, its number sent over shellflip's handover pipe): nothing queued is lost;
//! - `--listener reuseport`: each generation binds its own socket with SO_REUSEPORT, and the old
//!   one closes its socket after the handover, which resets the connects queued on it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

use shellflip::lifecycle::{receive_from_old_process, LifecycleHandler, PipeWriter};
use shellflip::{RestartConfig, ShutdownCoordinator, ShutdownHandle, ShutdownSignal};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// The handover message when no listener crosses.
const NO_FD: u32 = u32::MAX;

struct Options {
    listen: SocketAddr,
    delay: Duration,
    drain: Duration,
    reuseport: bool,
    pid_form: String,
}

fn options() -> Options {
    let mut o = Options {
        listen: "127.0.0.1:8080".parse().unwrap(),
        delay: Duration::ZERO,
        drain: Duration::from_secs(5),
        reuseport: false,
        pid_form: "handoff".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&flag));
        let ms = |v: &str| Duration::from_millis(v.parse().unwrap_or_else(|_| usage(&flag)));
        match flag.as_str() {
            "--listen" => o.listen = value.parse().unwrap_or_else(|_| usage(&flag)),
            "--delay-ms" => o.delay = ms(&value),
            "--drain-timeout-ms" => o.drain = ms(&value),
            "--listener" => o.reuseport = value == "reuseport",
            "--pid-form" => o.pid_form = value,
            _ => usage(&flag),
        }
    }
    o
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "shellflip-http: bad or incomplete `{flag}`; flags: --listen ADDR --delay-ms N \
         --drain-timeout-ms N --listener inherit|reuseport --pid-form handoff|x-pid|colon"
    );
    std::process::exit(2)
}

/// Passes the listener to the next generation: its close-on-exec flag cleared before the spawn,
/// its descriptor number sent over shellflip's handover pipe.
struct Handover {
    listener: Option<Socket>,
}

#[async_trait::async_trait]
impl LifecycleHandler for Handover {
    /// Called before the spawn: the descriptor must be inheritable by then.
    async fn pre_new_process(&mut self) {
        if let Some(s) = &self.listener {
            if let Err(e) = s.set_cloexec(false) {
                eprintln!("cannot pass the listener on: {e}");
            }
        }
    }

    async fn send_to_new_process(&mut self, mut pipe: PipeWriter) -> io::Result<()> {
        let fd = self
            .listener
            .as_ref()
            .map_or(NO_FD, |s| s.as_raw_fd() as u32);
        pipe.write_u32(fd).await
    }
}

/// The listener: inherited from the old generation, or bound anew.
async fn listener(o: &Options) -> io::Result<Socket> {
    if let Some(mut pipe) = receive_from_old_process() {
        let fd = pipe.read_u32().await?;
        if fd != NO_FD {
            // SAFETY: the old generation named a listening socket it left open across our exec.
            let s = unsafe { Socket::from_raw_fd(fd as i32) };
            s.set_cloexec(true)?;
            return Ok(s);
        }
    }
    let s = Socket::new(Domain::for_address(o.listen), Type::STREAM, None)?;
    s.set_cloexec(true)?;
    s.set_reuse_address(true)?;
    if o.reuseport {
        s.set_reuse_port(true)?;
    }
    s.bind(&o.listen.into())?;
    s.listen(1024)?;
    Ok(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let o = Arc::new(options());
    let socket = listener(&o).await?;
    socket.set_nonblocking(true)?;
    let handover = socket.try_clone()?;
    let listener = TcpListener::from_std(std::net::TcpListener::from(socket))?;
    let config = RestartConfig {
        enabled: false,
        lifecycle_handler: Box::new(Handover {
            listener: (!o.reuseport).then_some(handover),
        }),
        ..Default::default()
    };
    let restart = config
        .try_into_restart_task()
        .map_err(|e| io::Error::other(format!("restart task: {e}")))?;
    tokio::pin!(restart);
    let mut term = signal(SignalKind::terminate())?;
    let coordinator = ShutdownCoordinator::new();
    eprintln!("shellflip-http ready pid={}", std::process::id());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => { tokio::spawn(serve(conn, o.clone(), coordinator.handle())); }
                Err(e) => eprintln!("accept: {e}"),
            },
            r = &mut restart => {
                match r {
                    Ok(child) => eprintln!("handed over to pid {}; draining", child.id()),
                    Err(e) => eprintln!("restart task ended: {e}; stopping"),
                }
                break;
            }
            _ = term.recv() => { eprintln!("SIGTERM; draining"); break; }
        }
    }
    drop(listener);
    if tokio::time::timeout(o.drain, coordinator.shutdown())
        .await
        .is_err()
    {
        eprintln!("drain deadline passed; cutting what is left");
    }
    eprintln!("exiting");
    Ok(())
}

/// Serves HTTP/1.1 requests on one connection until the client closes it, or until shutdown
/// (then after the request in flight).
async fn serve(mut conn: TcpStream, o: Arc<Options>, handle: Arc<ShutdownHandle>) {
    let mut stop = ShutdownSignal::from(&*handle);
    let mut buf = Vec::with_capacity(1024);
    let pid = std::process::id();
    // A connection counts as idle only between requests: one accepted but whose first request
    // has not arrived yet is waited for, not closed.
    let mut served = 0u64;
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::select! {
                n = conn.read(&mut chunk) => n,
                // Idle between requests: close.
                _ = stop.on_shutdown(), if buf.is_empty() && served > 0 => return,
            };
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..head_end);
        tokio::time::sleep(o.delay).await;
        let (header, body) = match o.pid_form.as_str() {
            "x-pid" => (format!("X-PID: {pid}\r\n"), "ok\n".to_string()),
            "colon" => (String::new(), format!("pid:{pid}\n")),
            _ => (String::new(), format!("pid={pid}\n")),
        };
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{header}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        served += 1;
    }
}
