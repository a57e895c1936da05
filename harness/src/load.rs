//! The client load: `clients` concurrent tokio tasks running a [`Profile`] over a
//! [`Protocol`] against the target, journaling every connection.
//!
//! Everything is bounded: each client stops at the final stop (finishing the request it has in
//! flight, which is itself bounded by `reply_timeout`) or at a hard deadline the runner gives,
//! whichever comes first; a burst is a fixed number of one-request connections.
//!
//! # Judging connections honestly
//! A server may close an idle keep-alive connection at any time (the reference servers do it
//! while draining, right after a reply). That is a normal end, not a drop, as long as no request
//! was outstanding. So before reusing a connection the client peeks (non-blocking) for an EOF or
//! reset, and when a request on a *reused* connection meets a closed peer before any reply byte
//! arrived, the client checks whether the server had closed first:
//! - the write fails with `EPIPE`/`ECONNRESET`: the peer was already gone;
//! - EOF, and the kernel then answers our request with a reset (the TCP state becomes `CLOSE`):
//!   the server's close crossed our request, which it never read.
//!
//! In both cases the connection ends `ok` and the request is retried on a new connection. A
//! request that the server did read and then answered with EOF is `short`; a reset after the
//! server had our request is `reset`. With the line protocol, which cannot announce a close, a
//! client also waits [`LINE_SETTLE`] after a reply before reusing the connection, so that a
//! close the server issues right after its reply is seen by the peek rather than crossed.

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Notify;

use crate::journal::Journal;
use crate::model::{ConnRecord, LoadSpec, Outcome, Profile, Protocol};
use crate::target::ConnectAddr;

mod probe;
mod reply;

use reply::partial_pid;
pub use reply::{Reply, parse_http_reply, parse_line_reply, pid_in_text};

/// Pause after a line-protocol reply before the connection is reused (see the module docs).
pub const LINE_SETTLE: Duration = Duration::from_millis(2);
/// A read into the reply buffer offers at least this much room ...
const READ_MIN: usize = 128;
/// ... reserving this much more when there is less.
const READ_RESERVE: usize = 256;
/// How long the client waits for the kernel to answer a crossed request with a reset.
const CROSSED_CLOSE_WAIT: Duration = Duration::from_millis(20);

/// Shared state between the runner and the load.
#[derive(Debug)]
pub struct LoadControl {
    t0: Instant,
    stopped: AtomicBool,
    stop_at: OnceLock<Instant>,
    stop_notify: Notify,
    next_conn: Arc<AtomicU64>,
    journal: Arc<Mutex<Journal>>,
}

impl LoadControl {
    /// Control for a load whose times are offsets from `t0`, journaling into `journal`.
    pub fn new(t0: Instant, journal: Arc<Mutex<Journal>>) -> Arc<LoadControl> {
        Arc::new(LoadControl {
            t0,
            stopped: AtomicBool::new(false),
            stop_at: OnceLock::new(),
            stop_notify: Notify::new(),
            next_conn: Arc::new(AtomicU64::new(0)),
            journal,
        })
    }

    /// A fresh control for a load that takes over from this one (a profile switch): same
    /// clock, same journal, connection ids continuing where this one's are.
    pub fn successor(&self) -> Arc<LoadControl> {
        Arc::new(LoadControl {
            t0: self.t0,
            stopped: AtomicBool::new(false),
            stop_at: OnceLock::new(),
            stop_notify: Notify::new(),
            next_conn: Arc::clone(&self.next_conn),
            journal: Arc::clone(&self.journal),
        })
    }

    /// The final stop was triggered: clients finish the request they have in flight and end.
    /// Connections that start from now on are journaled as after-stop.
    pub fn stop(&self) {
        // The stop instant is taken under the journal's lock, so a reply counts as after the
        // stop exactly when it completed after it (its time is taken before it is journaled).
        let mut journal = self.journal();
        let now = Instant::now();
        if self.stop_at.set(now).is_ok() {
            journal.record_load_stopped(self.since_t0(now));
        }
        drop(journal);
        self.retire();
    }

    /// This load's clients finish the request they have in flight and end, because another
    /// load takes over from them ([`LoadControl::successor`]): not the final stop.
    pub fn retire(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop_notify.notify_waiters();
    }

    /// Whether [`LoadControl::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn stopped(&self) {
        loop {
            let notified = self.stop_notify.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps `d`, or less if the stop comes first; returns whether it slept the whole time.
    async fn pause(&self, d: Duration) -> bool {
        if d.is_zero() {
            return !self.is_stopped();
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.is_stopped(),
            _ = self.stopped() => false,
        }
    }

    fn since_t0(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.t0)
    }
}

/// The settings one run of the load needs.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub spec: LoadSpec,
    pub addr: ConnectAddr,
    /// No client starts anything after this, whatever happens.
    pub hard_deadline: Instant,
}

/// Runs `plan.spec.clients` clients until the stop or the hard deadline.
pub async fn run(plan: Arc<LoadPlan>, ctl: Arc<LoadControl>) {
    ctl.journal()
        .record_load_started(ctl.since_t0(Instant::now()));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..plan.spec.clients {
        let plan = Arc::clone(&plan);
        let ctl = Arc::clone(&ctl);
        tasks.spawn(async move { client_loop(client, &plan, &ctl).await });
    }
    while tasks.join_next().await.is_some() {}
}

/// Fires `plan.spec.burst_size` simultaneous one-request connections (the `burst` profile's
/// spike at a restart). Client numbers start after the steady clients'.
pub async fn burst(plan: Arc<LoadPlan>, ctl: Arc<LoadControl>) {
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..plan.spec.burst_size {
        let plan = Arc::clone(&plan);
        let ctl = Arc::clone(&ctl);
        let client = plan.spec.clients.saturating_add(k);
        tasks.spawn(async move {
            let mut seq = 0;
            one_connection(client, &mut seq, 1, &plan, &ctl).await
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn client_loop(client: u32, plan: &LoadPlan, ctl: &LoadControl) {
    let spec = &plan.spec;
    let per_conn = match spec.profile {
        Profile::Short | Profile::Burst => 1,
        Profile::Keepalive | Profile::Slow => spec.requests_per_conn.max(1),
        Profile::Long => u32::MAX,
    };
    // The ramp: client k of n starts k/n of the way through it.
    let start = spec
        .ramp
        .checked_mul(client)
        .map_or(spec.ramp, |d| d / spec.clients.max(1));
    if !start.is_zero() && !ctl.pause(start).await {
        return;
    }
    let mut seq: u64 = 0;
    let mut first = true;
    while !ctl.is_stopped() && Instant::now() < plan.hard_deadline {
        if !first && !ctl.pause(spec.interval).await {
            break;
        }
        first = false;
        let end = one_connection(client, &mut seq, per_conn, plan, ctl).await;
        let backoff = match end {
            // Out of ports or descriptors: back off instead of spinning on the error.
            ConnEnd::HarnessError => Duration::from_millis(50),
            // While nothing accepts, a client with no pause of its own would spin on refused
            // connects and starve the very server that is trying to start on this machine.
            ConnEnd::NotConnected if spec.interval.is_zero() => Duration::from_millis(1),
            _ => Duration::ZERO,
        };
        if !backoff.is_zero() && !ctl.pause(backoff).await {
            break;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnEnd {
    Done,
    /// The connect failed (refused, timed out).
    NotConnected,
    HarnessError,
}

/// One connection: connect, then up to `requests` requests. Journals it.
async fn one_connection(
    client: u32,
    seq: &mut u64,
    requests: u32,
    plan: &LoadPlan,
    ctl: &LoadControl,
) -> ConnEnd {
    let spec = &plan.spec;
    let id = ctl.next_conn.fetch_add(1, Ordering::Relaxed);
    let started_at = Instant::now();
    let after_stop = ctl.stop_at.get().is_some();
    let mut rec = ConnRecord {
        id,
        client,
        started: ctl.since_t0(started_at),
        connected: None,
        first_byte: None,
        done: Duration::ZERO,
        outcome: Outcome::Ok,
        replies: 0,
        pid: None,
        detail: String::new(),
    };
    let connected = connect(&plan.addr, spec.connect_timeout).await;
    let finish = |mut rec: ConnRecord, outcome: Outcome, detail: String| {
        rec.done = ctl.since_t0(Instant::now());
        rec.outcome = outcome;
        rec.detail = detail;
        ctl.journal().record_conn(rec, after_stop);
    };
    let result = match connected {
        Err(ConnectError::Harness(detail)) => {
            ctl.journal().record_harness_error(detail);
            return ConnEnd::HarnessError;
        }
        Err(ConnectError::Outcome(outcome, detail)) => {
            finish(rec, outcome, detail);
            return ConnEnd::NotConnected;
        }
        Ok(stream) => {
            let now = Instant::now();
            rec.connected = Some(ctl.since_t0(now));
            ctl.journal().record_connect(now - started_at);
            match stream {
                Stream::Tcp(s) => drive(s, true, client, seq, requests, plan, ctl, &mut rec).await,
                Stream::Unix(s) => {
                    drive(s, false, client, seq, requests, plan, ctl, &mut rec).await
                }
            }
        }
    };
    match result {
        Ok(()) => finish(rec, Outcome::Ok, String::new()),
        Err((outcome, detail)) => finish(rec, outcome, detail),
    }
    ConnEnd::Done
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

enum ConnectError {
    /// The server's answer: refused, timed out, reset.
    Outcome(Outcome, String),
    /// The harness's own limits (ports, descriptors): not the server's doing.
    Harness(String),
}

async fn connect(addr: &ConnectAddr, timeout: Duration) -> Result<Stream, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let attempt = match addr {
            ConnectAddr::Tcp(a) => tokio::time::timeout_at(deadline, TcpStream::connect(a))
                .await
                .map(|r| r.map(Stream::Tcp)),
            ConnectAddr::Unix(p) => tokio::time::timeout_at(deadline, UnixStream::connect(p))
                .await
                .map(|r| r.map(Stream::Unix)),
        };
        match attempt {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                // A unix listener whose backlog is full answers a non-blocking connect with
                // EAGAIN; a blocking client would wait, so wait (bounded) and retry.
                if tokio::time::Instant::now() >= deadline {
                    return Err(ConnectError::Outcome(
                        Outcome::Timeout,
                        format!("connect: backlog full for {timeout:?}: {e}"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(Err(e)) => return Err(classify_connect_error(&e)),
            Err(_) => {
                return Err(ConnectError::Outcome(
                    Outcome::Timeout,
                    format!("connect: no answer within {timeout:?}"),
                ));
            }
        }
    }
}

fn classify_connect_error(e: &io::Error) -> ConnectError {
    let detail = format!("connect: {e}");
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => {
            ConnectError::Outcome(Outcome::Refused, detail)
        }
        Some(libc::ECONNRESET) | Some(libc::ECONNABORTED) | Some(libc::EPIPE) => {
            ConnectError::Outcome(Outcome::Reset, detail)
        }
        Some(libc::ETIMEDOUT) => ConnectError::Outcome(Outcome::Timeout, detail),
        // EADDRNOTAVAIL (no local port), EMFILE/ENFILE (no descriptor), ENOBUFS, ...: limits
        // of the harness's side, which say nothing about the server.
        _ => ConnectError::Harness(detail),
    }
}

type Failure = (Outcome, String);

/// Runs up to `requests` requests on an established connection. `Ok` when it ended normally
/// (all requests answered, the stop, or the server closing it while idle).
#[allow(clippy::too_many_arguments)]
async fn drive<S>(
    mut stream: S,
    tcp: bool,
    client: u32,
    seq: &mut u64,
    requests: u32,
    plan: &LoadPlan,
    ctl: &LoadControl,
    rec: &mut ConnRecord,
) -> Result<(), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + AsRawFd,
{
    let spec = &plan.spec;
    // Grown on the first read; a line reply fits in the first reservation.
    let mut buf: Vec<u8> = Vec::new();
    let mut last_reply: Option<Instant> = None;
    // Built once per connection, reused by every request on it.
    let host = match spec.protocol {
        Protocol::Line => String::new(),
        Protocol::Http1 => host_header(&plan.addr),
    };
    let mut token = String::with_capacity(24);
    let mut request = String::with_capacity(96 + host.len());
    for n in 0..requests {
        let reused = n > 0;
        if reused && !may_reuse(stream.as_raw_fd(), last_reply, plan, ctl).await {
            return Ok(());
        }
        *seq += 1;
        token.clear();
        let _ = write!(token, "c{client}-{seq}");
        request.clear();
        let _ = match spec.protocol {
            Protocol::Line => writeln!(request, "{token}"),
            Protocol::Http1 => write!(
                request,
                "GET /?{token} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: handoff-harness\r\n\r\n"
            ),
        };
        let sent = Instant::now();
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            if reused && is_reset(&e) {
                // The peer was gone before our request: closed while idle.
                return Ok(());
            }
            return Err((io_outcome(&e), format!("sending request {}: {e}", n + 1)));
        }
        let reply = tokio::time::timeout(
            spec.reply_timeout,
            read_reply(&mut stream, &mut buf, spec.protocol, &token, rec, ctl),
        )
        .await;
        let reply = match reply {
            Err(_) => {
                rec.pid = rec.pid.or_else(|| partial_pid(&buf));
                return Err((
                    Outcome::Timeout,
                    format!(
                        "request {}: no complete reply within {:?} ({} bytes received)",
                        n + 1,
                        spec.reply_timeout,
                        buf.len()
                    ),
                ));
            }
            Ok(r) => r,
        };
        match reply {
            Ok(reply) => {
                let now = Instant::now();
                last_reply = Some(now);
                rec.replies += 1;
                rec.pid = reply.pid;
                ctl.journal()
                    .record_reply(ctl.since_t0(now), now - sent, reply.pid);
                if reply.close {
                    return Ok(());
                }
            }
            Err(failure) => {
                let tcp = tcp.then(|| stream.as_raw_fd());
                return failed(failure, reused, tcp, n, &buf, rec).await;
            }
        }
        if ctl.is_stopped() {
            return Ok(());
        }
    }
    Ok(())
}

/// Before a request on a connection already used: waits the pause between requests (and,
/// with the line protocol, lets a close the server issued right after its reply arrive), then
/// peeks whether the server has closed it. False when the connection is not to be reused:
/// the stop or the deadline came, or the server closed it while idle.
async fn may_reuse(
    fd: RawFd,
    last_reply: Option<Instant>,
    plan: &LoadPlan,
    ctl: &LoadControl,
) -> bool {
    let spec = &plan.spec;
    if !ctl.pause(spec.interval).await || Instant::now() >= plan.hard_deadline {
        return false;
    }
    if spec.protocol == Protocol::Line
        && let Some(at) = last_reply
    {
        let settle = LINE_SETTLE.saturating_sub(at.elapsed());
        if !settle.is_zero() && !ctl.pause(settle).await {
            return false;
        }
    }
    !probe::peer_closed(fd)
}

/// What a failed read of request `n`'s reply means, with `buf` the bytes received. An EOF
/// before any byte of a request on a `reused` connection is a normal end on TCP (`tcp` is
/// then its descriptor) when the kernel then reports a reset: the server had closed before
/// our request reached it.
async fn failed(
    failure: ReadFailure,
    reused: bool,
    tcp: Option<RawFd>,
    n: u32,
    buf: &[u8],
    rec: &mut ConnRecord,
) -> Result<(), Failure> {
    match failure {
        ReadFailure::Eof if buf.is_empty() && reused => {
            if let Some(fd) = tcp
                && probe::reset_follows(fd, CROSSED_CLOSE_WAIT).await
            {
                // The server had closed before our request reached it (it answered the
                // request with a reset): closed while idle.
                return Ok(());
            }
            Err((
                Outcome::Short,
                format!("request {}: EOF before any reply byte", n + 1),
            ))
        }
        ReadFailure::Eof => {
            rec.pid = partial_pid(buf);
            Err((
                Outcome::Short,
                format!(
                    "request {}: EOF after {} bytes of the reply",
                    n + 1,
                    buf.len()
                ),
            ))
        }
        ReadFailure::Io(e) => {
            rec.pid = partial_pid(buf);
            Err((
                io_outcome(&e),
                format!(
                    "request {}: {e} after {} bytes of the reply",
                    n + 1,
                    buf.len()
                ),
            ))
        }
        ReadFailure::Bad(detail) => {
            rec.pid = partial_pid(buf);
            Err((Outcome::BadReply, format!("request {}: {detail}", n + 1)))
        }
    }
}

fn host_header(addr: &ConnectAddr) -> String {
    match addr {
        ConnectAddr::Tcp(a) => a.to_string(),
        ConnectAddr::Unix(_) => "localhost".to_string(),
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

fn io_outcome(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::TimedOut => Outcome::Timeout,
        io::ErrorKind::UnexpectedEof => Outcome::Short,
        _ => Outcome::Reset,
    }
}

enum ReadFailure {
    Eof,
    Io(io::Error),
    Bad(String),
}

/// Reads one complete reply into `buf` (cleared of it afterwards; bytes beyond it are kept
/// for the next reply, where they will not match and make it a bad reply).
async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    protocol: Protocol,
    token: &str,
    rec: &mut ConnRecord,
    ctl: &LoadControl,
) -> Result<Reply, ReadFailure> {
    let mut eof = false;
    loop {
        let parsed = match protocol {
            Protocol::Line => parse_line_reply(buf, token),
            Protocol::Http1 => parse_http_reply(buf, eof),
        };
        match parsed {
            Err(detail) => return Err(ReadFailure::Bad(detail)),
            Ok(Some((reply, used))) => {
                buf.drain(..used);
                return Ok(reply);
            }
            Ok(None) if eof => return Err(ReadFailure::Eof),
            Ok(None) => {}
        }
        // Read straight into `buf` (no per-connection staging buffer: with thousands of
        // connections held open, what each one keeps between requests is what counts).
        if buf.capacity() - buf.len() < READ_MIN {
            buf.reserve(READ_RESERVE);
        }
        let n = stream.read_buf(buf).await.map_err(ReadFailure::Io)?;
        if n == 0 {
            eof = true;
            continue;
        }
        if rec.first_byte.is_none() {
            rec.first_byte = Some(ctl.since_t0(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream as StdTcpStream};
    use std::sync::mpsc;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    }

    /// A one-connection server on a thread: `serve` gets the accepted stream.
    fn server(serve: impl FnOnce(StdTcpStream) + Send + 'static) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                serve(s);
            }
        });
        addr
    }

    fn plan(addr: ConnectAddr, protocol: Protocol) -> LoadPlan {
        LoadPlan {
            spec: LoadSpec {
                profile: Profile::Keepalive,
                protocol,
                clients: 1,
                requests_per_conn: 3,
                interval: Duration::ZERO,
                ramp: Duration::ZERO,
                connect_timeout: Duration::from_secs(2),
                reply_timeout: Duration::from_millis(500),
                burst_size: 0,
            },
            addr,
            hard_deadline: Instant::now() + Duration::from_secs(10),
        }
    }

    /// Runs one connection of `requests` requests and returns its journal.
    fn one(addr: ConnectAddr, protocol: Protocol, requests: u32) -> crate::model::JournalSummary {
        let journal = Arc::new(Mutex::new(Journal::new(10)));
        let ctl = LoadControl::new(Instant::now(), Arc::clone(&journal));
        let plan = plan(addr, protocol);
        runtime().block_on(async {
            let mut seq = 0;
            one_connection(0, &mut seq, requests, &plan, &ctl).await
        });
        journal.lock().expect("journal").summary()
    }

    fn read_line(s: &StdTcpStream) -> String {
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line.trim().to_string()
    }

    #[test]
    fn a_reply_then_a_close_while_idle_is_a_normal_end() {
        // Like a draining echo server: one reply, then close. The client's next request
        // must not be counted as dropped.
        let addr = server(|mut s| {
            let token = read_line(&s);
            let _ = s.write_all(format!("pid=7 gen=1 {token}\n").as_bytes());
        });
        let j = one(ConnectAddr::Tcp(addr), Protocol::Line, 3);
        assert_eq!(j.outcomes["ok"], 1, "{j:#?}");
        assert_eq!(j.replies, 1);
        assert_eq!(j.served_by[&7].replies, 1);
    }

    #[test]
    fn a_request_read_and_then_closed_without_reply_is_short() {
        let addr = server(|s| {
            let _ = read_line(&s);
        });
        let j = one(ConnectAddr::Tcp(addr), Protocol::Line, 1);
        assert_eq!(j.outcomes["short"], 1, "{j:#?}");
        assert!(j.failures[0].detail.contains("EOF"), "{j:#?}");
        assert!(j.failures[0].connected.is_some());
    }

    #[test]
    fn a_request_left_unread_at_close_is_a_reset() {
        // Closing a socket with unread data makes the kernel send a reset.
        let addr = server(|s| {
            let mut b = [0u8; 1];
            let _ = s.peek(&mut b);
            drop(s);
        });
        let j = one(ConnectAddr::Tcp(addr), Protocol::Line, 1);
        assert_eq!(j.outcomes["reset"], 1, "{j:#?}");
    }

    #[test]
    fn a_partial_reply_names_its_server_and_is_short() {
        let addr = server(|mut s| {
            let _ = read_line(&s);
            let _ = s.write_all(b"pid=99 gen=3 c0-");
        });
        let j = one(ConnectAddr::Tcp(addr), Protocol::Line, 1);
        assert_eq!(j.outcomes["short"], 1, "{j:#?}");
        assert_eq!(j.failures[0].pid, Some(99));
        assert!(j.failures[0].first_byte.is_some());
    }

    #[test]
    fn a_wrong_echo_is_a_bad_reply_and_silence_a_timeout() {
        let addr = server(|mut s| {
            let _ = read_line(&s);
            let _ = s.write_all(b"pid=1 someone-else\n");
        });
        let j = one(ConnectAddr::Tcp(addr), Protocol::Line, 1);
        assert_eq!(j.outcomes["bad-reply"], 1, "{j:#?}");
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let addr = server(move |s| {
            let _ = read_line(&s);
            let _ = hold_rx.recv();
        });
        let j = one(ConnectAddr::Tcp(addr), Protocol::Line, 1);
        drop(hold_tx);
        assert_eq!(j.outcomes["timeout"], 1, "{j:#?}");
    }

    #[test]
    fn nothing_listening_is_refused() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let j = one(ConnectAddr::Tcp(addr), Protocol::Line, 1);
        assert_eq!(j.outcomes["refused"], 1, "{j:#?}");
        assert!(j.failures[0].connected.is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let j = one(
            ConnectAddr::Unix(dir.path().join("absent")),
            Protocol::Line,
            1,
        );
        assert_eq!(j.outcomes["refused"], 1, "{j:#?}");
    }

    #[test]
    fn http_keepalive_honours_connection_close() {
        let addr = server(|mut s| {
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let body = "pid=5 gen=1\n";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        let j = one(ConnectAddr::Tcp(addr), Protocol::Http1, 3);
        assert_eq!(j.outcomes["ok"], 1, "{j:#?}");
        assert_eq!(j.replies, 1);
    }

    #[test]
    fn the_socket_probes_tell_who_closed_first() {
        // The server closes before our request arrives: our request is answered by a reset.
        let (tx, rx) = mpsc::channel();
        let addr = server(move |s| {
            drop(s);
            let _ = tx.send(());
        });
        let mut c = StdTcpStream::connect(addr).expect("connect");
        rx.recv().expect("server closed");
        assert!(
            probe::peer_closed(c.as_raw_fd()),
            "the FIN is visible to a peek"
        );
        c.write_all(b"late\n")
            .expect("writing into a half-closed connection succeeds");
        assert!(runtime().block_on(probe::reset_follows(c.as_raw_fd(), Duration::from_secs(2))));

        // The server reads our request, then closes: no reset follows.
        let (tx, rx) = mpsc::channel();
        let addr = server(move |s| {
            let _ = read_line(&s);
            drop(s);
            let _ = tx.send(());
        });
        let mut c = StdTcpStream::connect(addr).expect("connect");
        assert!(!probe::peer_closed(c.as_raw_fd()), "open and idle");
        c.write_all(b"req\n").expect("write");
        rx.recv().expect("server closed");
        assert!(!runtime().block_on(probe::reset_follows(
            c.as_raw_fd(),
            Duration::from_millis(50)
        )));
    }

    #[test]
    fn the_stop_is_journaled_once_as_the_end_of_the_load_window() {
        let journal = Arc::new(Mutex::new(Journal::new(1)));
        let ctl = LoadControl::new(Instant::now(), Arc::clone(&journal));
        assert_eq!(
            journal.lock().expect("journal").summary().load_stopped,
            None
        );
        ctl.stop();
        let first = journal.lock().expect("journal").summary().load_stopped;
        assert!(first.is_some() && ctl.is_stopped());
        ctl.stop();
        assert_eq!(
            journal.lock().expect("journal").summary().load_stopped,
            first
        );
    }

    #[test]
    fn the_ramp_spreads_the_clients_first_connects() {
        // A line server answering every line on every connection; it notes when it accepted.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let _ = tx.send(Instant::now());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().expect("clone"));
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                        let _ = writeln!(s, "pid=3 gen=1 conn=keep {}", line.trim());
                        line.clear();
                    }
                });
            }
        });
        let journal = Arc::new(Mutex::new(Journal::new(10)));
        let t0 = Instant::now();
        let ctl = LoadControl::new(t0, Arc::clone(&journal));
        let mut plan = plan(ConnectAddr::Tcp(addr), Protocol::Line);
        plan.spec.profile = Profile::Long;
        plan.spec.clients = 4;
        plan.spec.interval = Duration::from_millis(50);
        plan.spec.ramp = Duration::from_millis(600);
        let plan = Arc::new(plan);
        let rt = runtime();
        rt.block_on(async {
            let load = tokio::spawn(run(Arc::clone(&plan), Arc::clone(&ctl)));
            tokio::time::sleep(Duration::from_millis(900)).await;
            assert_eq!(journal.lock().expect("journal").open_connections(), 4);
            ctl.stop();
            let _ = load.await;
        });
        let accepted: Vec<Duration> = rx.try_iter().map(|at| at - t0).collect();
        assert_eq!(accepted.len(), 4, "{accepted:?}");
        // Clients 0..4 start at 0, 150, 300 and 450 ms.
        assert!(accepted[0] < Duration::from_millis(400), "{accepted:?}");
        assert!(accepted[3] >= Duration::from_millis(450), "{accepted:?}");
        let s = journal.lock().expect("journal").summary();
        assert_eq!(s.open_peak, 4, "{s:#?}");
        assert_eq!(s.outcomes["ok"], 4, "{s:#?}");
    }

    #[test]
    fn connect_errors_blame_the_server_only_when_it_answered() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(matches!(
            classify_connect_error(&refused),
            ConnectError::Outcome(Outcome::Refused, _)
        ));
        let no_path = io::Error::from_raw_os_error(libc::ENOENT);
        assert!(matches!(
            classify_connect_error(&no_path),
            ConnectError::Outcome(Outcome::Refused, _)
        ));
        let no_port = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert!(matches!(
            classify_connect_error(&no_port),
            ConnectError::Harness(_)
        ));
    }
}
