//! The client load: `clients` concurrent tokio tasks running a [`Profile`] over a
//! [`Protocol`] against the target, journaling every connection. What each request sends and
//! what its reply must be is the scenario's [`crate::model::Exchange`] (`request`, `reply`);
//! when each client acts, its random phase and jitter, is `pacing`.
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
//!   the server's close crossed our request, which it never read;
//! - a reset before any reply byte: the server closed with our request unread in its socket
//!   (the kernel resets a connection closed with unread data; a process that read the request
//!   and then exits, even killed, closes with a FIN).
//!
//! In each case the connection ends `ok` and the request is retried on a new connection, as
//! HTTP clients retry an idempotent request on a persistent connection the server closed
//! (RFC 9112, 9.3.1). A request that the server did read and then answered with EOF is
//! `short`; a reset on a connection's first request, or after part of a reply, is `reset`. A
//! server that reads a request and then aborts the connection on purpose (`SO_LINGER` 0) before
//! any reply byte is indistinguishable from the crossed close on a reused connection. With the line protocol, which cannot announce a close, a
//! client also waits [`LINE_SETTLE`] after a reply before reusing the connection, so that a
//! close the server issues right after its reply is seen by the peek rather than crossed.

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::journal::Journal;
use crate::model::{ConnRecord, LoadSpec, Outcome, Profile, Protocol};
use crate::target::ConnectAddr;

mod connect;
mod pacing;
mod probe;
mod reply;
mod request;

#[cfg(test)]
use connect::classify_connect_error;
use connect::{ConnectError, Stream, connect, io_outcome, is_reset};
use pacing::Pacing;
pub use pacing::fresh_seed;
pub use reply::{
    DEFAULT_PID_HEADER, Reply, Rules, compile_pid_pattern, compile_reply_end, compile_reply_match,
    pid_in_text,
};
pub use request::Request;

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
    /// The seed of the clients' draws (`spec.seed`, or a fresh one).
    pub seed: u64,
    /// What each request sends.
    pub request: Request,
    /// How replies are framed, checked and attributed.
    pub rules: Rules,
}

impl LoadPlan {
    /// The plan of `spec` against `addr`, its draws from `seed`.
    ///
    /// # Errors
    /// A pattern of the scenario's `[load]` that does not compile (a scenario read from a file
    /// was checked when it was read).
    pub fn new(
        spec: LoadSpec,
        addr: ConnectAddr,
        hard_deadline: Instant,
        seed: u64,
    ) -> Result<LoadPlan, String> {
        let rules = Rules::new(spec.protocol, &spec.exchange)?;
        let request = Request::new(spec.protocol, &spec.exchange, &host_header(&addr));
        Ok(LoadPlan {
            spec,
            addr,
            hard_deadline,
            seed,
            request,
            rules,
        })
    }

    /// This plan with the load switched to `profile` (see [`LoadSpec::switched`]).
    pub fn switched(&self, profile: Profile) -> LoadPlan {
        LoadPlan {
            spec: self.spec.switched(profile),
            ..self.clone()
        }
    }
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
            let mut pacing = Pacing::fixed();
            one_connection(client, &mut seq, 1, &plan, &ctl, &mut pacing).await
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn client_loop(client: u32, plan: &LoadPlan, ctl: &LoadControl) {
    let spec = &plan.spec;
    let per_conn = match (spec.protocol, spec.profile) {
        // A banner server speaks once per connection.
        (Protocol::Banner, _) | (_, Profile::Short | Profile::Burst) => 1,
        (_, Profile::Keepalive | Profile::Slow) => spec.requests_per_conn.max(1),
        (_, Profile::Long) => u32::MAX,
    };
    let mut pacing = Pacing::new(plan.seed, client, spec);
    // The ramp: client k of n starts in the k-th n-th of it.
    let start = pacing.start(client, spec);
    if !start.is_zero() && !ctl.pause(start).await {
        return;
    }
    let mut seq: u64 = 0;
    let mut requests = pacing.first_connection(per_conn);
    let mut first = true;
    while !ctl.is_stopped() && Instant::now() < plan.hard_deadline {
        if !first && !ctl.pause(pacing.pause(spec.interval)).await {
            break;
        }
        first = false;
        let end = one_connection(client, &mut seq, requests, plan, ctl, &mut pacing).await;
        requests = per_conn;
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
    pacing: &mut Pacing,
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
            ctl.journal()
                .record_connect(ctl.since_t0(now), now - started_at);
            let mut conn = Conn {
                client,
                seq,
                plan,
                ctl,
                pacing,
                rec: &mut rec,
            };
            match stream {
                Stream::Tcp(s) => conn.drive(s, true, requests).await,
                Stream::Unix(s) => conn.drive(s, false, requests).await,
            }
        }
    };
    match result {
        Ok(()) => finish(rec, Outcome::Ok, String::new()),
        Err((outcome, detail)) => finish(rec, outcome, detail),
    }
    ConnEnd::Done
}

type Failure = (Outcome, String);

/// One connection being driven: whose, and what it needs to journal its requests.
struct Conn<'a> {
    client: u32,
    /// The client's request counter: tokens are `c<client>-<seq>`.
    seq: &'a mut u64,
    plan: &'a LoadPlan,
    ctl: &'a LoadControl,
    pacing: &'a mut Pacing,
    rec: &'a mut ConnRecord,
}

impl Conn<'_> {
    /// Runs up to `requests` requests on an established connection (`tcp`: a TCP one). `Ok`
    /// when it ended normally (all requests answered, the stop, or the server closing it while
    /// idle).
    async fn drive<S>(&mut self, mut stream: S, tcp: bool, requests: u32) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + AsRawFd,
    {
        let plan = self.plan;
        let spec = &plan.spec;
        // Grown on the first read; a line reply fits in the first reservation.
        let mut buf: Vec<u8> = Vec::new();
        let mut last_reply: Option<Instant> = None;
        let mut token = String::with_capacity(24);
        let mut request = String::with_capacity(128);
        for n in 0..requests {
            let reused = n > 0;
            if reused && !self.may_reuse(stream.as_raw_fd(), last_reply).await {
                return Ok(());
            }
            *self.seq += 1;
            token.clear();
            let _ = write!(token, "c{}-{}", self.client, self.seq);
            plan.request.write(&token, &mut request);
            let sent = Instant::now();
            if !request.is_empty()
                && let Err(e) = stream.write_all(request.as_bytes()).await
            {
                if reused && is_reset(&e) {
                    // The peer was gone before our request: closed while idle.
                    return Ok(());
                }
                return Err((io_outcome(&e), format!("sending request {}: {e}", n + 1)));
            }
            let reply = tokio::time::timeout(
                spec.reply_timeout,
                self.read_reply(&mut stream, &mut buf, &token),
            )
            .await;
            let reply = match reply {
                Err(_) => {
                    self.rec.pid = self.rec.pid.or_else(|| plan.rules.partial_pid(&buf));
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
                    self.rec.replies += 1;
                    self.rec.pid = reply.pid;
                    self.ctl
                        .journal()
                        .record_reply(self.ctl.since_t0(now), now - sent, reply.pid);
                    self.pacing.replied(now - sent, spec.interval);
                    if reply.close {
                        return Ok(());
                    }
                }
                Err(failure) => {
                    let tcp = tcp.then(|| stream.as_raw_fd());
                    return self.failed(failure, reused, tcp, n, &buf).await;
                }
            }
            if self.ctl.is_stopped() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Before a request on a connection already used: waits the pause between requests (and,
    /// with the line protocol, lets a close the server issued right after its reply arrive),
    /// then peeks whether the server has closed it. False when the connection is not to be
    /// reused: the stop or the deadline came, or the server closed it while idle.
    async fn may_reuse(&mut self, fd: RawFd, last_reply: Option<Instant>) -> bool {
        let (plan, ctl) = (self.plan, self.ctl);
        let pause = self.pacing.pause(plan.spec.interval);
        if !ctl.pause(pause).await || Instant::now() >= plan.hard_deadline {
            return false;
        }
        if plan.spec.protocol == Protocol::Line
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
        &mut self,
        failure: ReadFailure,
        reused: bool,
        tcp: Option<RawFd>,
        n: u32,
        buf: &[u8],
    ) -> Result<(), Failure> {
        let partial_pid = || self.plan.rules.partial_pid(buf);
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
                self.rec.pid = partial_pid();
                Err((
                    Outcome::Short,
                    format!(
                        "request {}: EOF after {} bytes of the reply",
                        n + 1,
                        buf.len()
                    ),
                ))
            }
            ReadFailure::Io(e) if buf.is_empty() && reused && is_reset(&e) => {
                // The server closed with our request unread in its socket (a process that had
                // read it closes with a FIN, and that is the EOF above): its close crossed our
                // request, which it never read: closed while idle.
                Ok(())
            }
            ReadFailure::Io(e) => {
                self.rec.pid = partial_pid();
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
                self.rec.pid = partial_pid();
                Err((Outcome::BadReply, format!("request {}: {detail}", n + 1)))
            }
        }
    }

    /// Reads one complete reply into `buf` (cleared of it afterwards; bytes beyond it are kept
    /// for the next reply, where they will not match and make it a bad reply).
    async fn read_reply<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut Vec<u8>,
        token: &str,
    ) -> Result<Reply, ReadFailure> {
        let head = self.plan.request.is_head();
        let mut eof = false;
        loop {
            match self.plan.rules.parse(buf, eof, head, token) {
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
            if self.rec.first_byte.is_none() {
                self.rec.first_byte = Some(self.ctl.since_t0(Instant::now()));
            }
        }
    }
}

fn host_header(addr: &ConnectAddr) -> String {
    match addr {
        ConnectAddr::Tcp(a) => a.to_string(),
        ConnectAddr::Unix(_) => "localhost".to_string(),
    }
}

enum ReadFailure {
    Eof,
    Io(io::Error),
    Bad(String),
}

#[cfg(test)]
mod tests;
