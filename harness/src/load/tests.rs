//! The load against small servers on threads: every outcome, the adapters of each protocol
//! (pid header and pattern, request, reply end and match, banner), and the pacing.

use super::*;
use crate::model::{Exchange, HttpRequest, ReplyEnd};

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

fn spec(protocol: Protocol) -> LoadSpec {
    LoadSpec {
        profile: Profile::Keepalive,
        protocol,
        clients: 1,
        requests_per_conn: 3,
        interval: Duration::ZERO,
        ramp: Duration::ZERO,
        connect_timeout: Duration::from_secs(2),
        reply_timeout: Duration::from_millis(500),
        burst_size: 0,
        exchange: Exchange::default(),
        seed: None,
        random_phase: false,
        jitter: 0.0,
    }
}

fn plan_of(spec: LoadSpec, addr: ConnectAddr) -> LoadPlan {
    LoadPlan::new(spec, addr, Instant::now() + Duration::from_secs(10), 1)
        .expect("the test's patterns compile")
}

fn plan(addr: ConnectAddr, protocol: Protocol) -> LoadPlan {
    plan_of(spec(protocol), addr)
}

/// Runs one connection of `requests` requests and returns its journal.
fn one(addr: ConnectAddr, protocol: Protocol, requests: u32) -> crate::model::JournalSummary {
    one_of(plan(addr, protocol), requests)
}

/// Runs one connection of `requests` requests under `plan` and returns its journal.
fn one_of(plan: LoadPlan, requests: u32) -> crate::model::JournalSummary {
    let journal = Arc::new(Mutex::new(Journal::new(10)));
    let ctl = LoadControl::new(Instant::now(), Arc::clone(&journal));
    runtime().block_on(async {
        let mut seq = 0;
        let mut pacing = Pacing::fixed();
        one_connection(0, &mut seq, requests, &plan, &ctl, &mut pacing).await
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
fn a_close_that_crosses_the_next_request_is_a_normal_end() {
    // A draining server closing a kept-alive connection as the next request arrives: that
    // request sits unread in its socket, so the kernel resets the connection. The server never
    // read it: the connection ended while idle (and the request goes on a new connection).
    let addr = server(|mut s| {
        let token = read_line(&s);
        let _ = s.write_all(format!("pid=7 gen=1 {token}\n").as_bytes());
        let mut b = [0u8; 1];
        let _ = s.peek(&mut b);
        drop(s);
    });
    let j = one(ConnectAddr::Tcp(addr), Protocol::Line, 3);
    assert_eq!(j.outcomes["ok"], 1, "{j:#?}");
    assert_eq!(j.outcomes["reset"], 0, "{j:#?}");
    assert_eq!(j.replies, 1);
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

// ---------------------------------------------------------------------------------------------
// The adapters, each against a small server that speaks its protocol.
// ---------------------------------------------------------------------------------------------

/// Runs one connection of `requests` requests of `protocol` with `exchange` against `addr`.
fn with(
    addr: std::net::SocketAddr,
    protocol: Protocol,
    exchange: Exchange,
    requests: u32,
) -> crate::model::JournalSummary {
    let mut spec = spec(protocol);
    spec.exchange = exchange;
    one_of(plan_of(spec, ConnectAddr::Tcp(addr)), requests)
}

/// Reads an HTTP request head (and a body of its `Content-Length`) from `r`: the head's lines
/// and the body, or `None` at EOF.
fn read_http_request(r: &mut impl BufRead) -> Option<(Vec<String>, String)> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let len = head
        .iter()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    std::io::Read::read_exact(r, &mut body).ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

/// A keep-alive HTTP server for one connection: answers each request with `respond`, and sends
/// what it received (head lines and body) to the returned channel.
fn http_server(
    respond: impl Fn(&[String], &str) -> String + Send + 'static,
) -> (std::net::SocketAddr, mpsc::Receiver<(Vec<String>, String)>) {
    let (tx, rx) = mpsc::channel();
    let addr = server(move |mut s| {
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        while let Some((head, body)) = read_http_request(&mut r) {
            let reply = respond(&head, &body);
            let _ = tx.send((head, body));
            if s.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn ok_with(headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn http_pid_from_a_named_header() {
    // Like nginx's `add_header X-PID $pid`: the body says nothing of the pid.
    let (addr, _) = http_server(|_, _| ok_with("X-PID: 4242\r\nX-Handoff-Pid: 1\r\n", "ok\n"));
    let x = Exchange {
        pid_header: Some("x-pid".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Http1, x, 2);
    assert_eq!(j.outcomes["ok"], 1, "{j:#?}");
    assert_eq!(j.served_by[&4242].replies, 2, "{j:#?}");
    assert_eq!(j.replies_without_pid, 0);
}

#[test]
fn http_pid_by_a_pattern_over_the_body() {
    let (addr, _) = http_server(|_, _| ok_with("", "worker pid:31337 ready\n"));
    let x = Exchange {
        pid_pattern: Some(r"pid[:=](\d+)".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Http1, x, 1);
    assert_eq!(j.served_by[&31337].replies, 1, "{j:#?}");
    // Unchanged defaults do not read `pid:N`.
    let (addr, _) = http_server(|_, _| ok_with("", "worker pid:31337 ready\n"));
    let j = with(addr, Protocol::Http1, Exchange::default(), 1);
    assert_eq!((j.outcomes["ok"], j.replies_without_pid), (1, 1), "{j:#?}");
}

#[test]
fn http_request_method_path_host_headers_and_body_are_the_scenarios() {
    let (addr, rx) = http_server(|_, _| ok_with("", "pid=9\n"));
    let x = Exchange {
        http: HttpRequest {
            method: "POST".into(),
            path: "/api/{token}?fast=1".into(),
            host: Some("app.test".into()),
            headers: vec![("X-Request-Id".into(), "req-{token}".into())],
            body: Some("{\"token\": \"{token}\"}".into()),
        },
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Http1, x, 2);
    assert_eq!(j.outcomes["ok"], 1, "{j:#?}");
    let got: Vec<(Vec<String>, String)> = rx.try_iter().collect();
    assert_eq!(got.len(), 2, "{got:?}");
    let (head, body) = &got[1];
    assert_eq!(head[0], "POST /api/c0-2?fast=1 HTTP/1.1", "{head:?}");
    assert!(head.contains(&"Host: app.test".to_string()), "{head:?}");
    assert!(
        head.contains(&"X-Request-Id: req-c0-2".to_string()),
        "{head:?}"
    );
    assert_eq!(body, "{\"token\": \"c0-2\"}");
}

#[test]
fn http_a_health_path_without_token_and_a_head_request() {
    // A HEAD reply announces a length but carries no body; a fixed health path carries no
    // token.
    let (addr, rx) = http_server(|head, _| {
        if head[0].starts_with("HEAD ") {
            "HTTP/1.1 200 OK\r\nContent-Length: 120\r\nX-PID: 6\r\n\r\n".to_string()
        } else {
            ok_with("X-PID: 6\r\n", "healthy\n")
        }
    });
    let x = Exchange {
        http: HttpRequest {
            method: "HEAD".into(),
            path: "/healthz".into(),
            ..HttpRequest::default()
        },
        pid_header: Some("X-PID".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Http1, x, 3);
    assert_eq!((j.outcomes["ok"], j.replies), (1, 3), "{j:#?}");
    assert_eq!(j.served_by[&6].replies, 3);
    let got: Vec<(Vec<String>, String)> = rx.try_iter().collect();
    assert!(
        got.iter().all(|(h, _)| h[0] == "HEAD /healthz HTTP/1.1"),
        "{got:?}"
    );
}

#[test]
fn http_a_body_that_does_not_match_is_a_bad_reply() {
    let (addr, _) = http_server(|_, _| ok_with("", "maintenance\n"));
    let x = Exchange {
        reply_match: Some("^ok".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Http1, x, 1);
    assert_eq!(j.outcomes["bad-reply"], 1, "{j:#?}");
    assert!(
        j.failures[0]
            .detail
            .contains("does not match `reply-match` `^ok`"),
        "{j:#?}"
    );
}

/// A line server: answers each line it reads with `answer(line)`.
fn line_server(answer: impl Fn(&str) -> String + Send + 'static) -> std::net::SocketAddr {
    server(move |mut s| {
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            if s.write_all(answer(line.trim_end()).as_bytes()).is_err() {
                return;
            }
            line.clear();
        }
    })
}

#[test]
fn line_a_reply_that_carries_the_token_inside_a_word() {
    // `<time>--ll----ll--<line>`: the token is echoed, but not as a word of its own.
    let addr = line_server(|line| format!("12:00:00.123--ll----ll--{line}\n"));
    let x = Exchange {
        reply_match: Some("--ll--{token}$".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Line, x, 3);
    assert_eq!((j.outcomes["ok"], j.replies), (1, 3), "{j:#?}");
    assert_eq!(j.replies_without_pid, 3);
    // Under the default rule (the token as a word) the same server is a bad reply.
    let addr = line_server(|line| format!("12:00:00.123--ll----ll--{line}\n"));
    let j = with(addr, Protocol::Line, Exchange::default(), 1);
    assert_eq!(j.outcomes["bad-reply"], 1, "{j:#?}");
}

#[test]
fn line_a_reply_that_never_matches_is_a_bad_reply_and_another_token_too() {
    let addr = line_server(|_| "pid:3 hello\n".to_string());
    let x = Exchange {
        reply_match: Some("--ll--{token}$".into()),
        pid_pattern: Some(r"pid[:=](\d+)".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Line, x.clone(), 1);
    assert_eq!(j.outcomes["bad-reply"], 1, "{j:#?}");
    // The bad reply still names its server.
    assert_eq!(j.failures[0].pid, Some(3), "{j:#?}");
    // `c0-1` is not echoed by `c0-10`, nor by another request's token.
    let addr = line_server(|line| format!("pid:3 --ll--{line}0\n"));
    let j = with(addr, Protocol::Line, x, 1);
    assert_eq!(j.outcomes["bad-reply"], 1, "{j:#?}");
}

#[test]
fn line_a_reply_of_several_lines_ends_where_its_pattern_says() {
    // A reply of three lines; the pid on the second, as `pid:N`.
    let addr = line_server(|line| format!("BEGIN {line}\nserved-by pid:77\nEND\n"));
    let x = Exchange {
        send: Some("GET {token}\n".into()),
        reply_end: ReplyEnd::Pattern(r"\nEND\r?\n".into()),
        pid_pattern: Some(r"pid:(\d+)".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Line, x, 3);
    assert_eq!((j.outcomes["ok"], j.replies), (1, 3), "{j:#?}");
    assert_eq!(j.served_by[&77].replies, 3, "{j:#?}");
}

#[test]
fn line_a_reply_cut_before_its_end_pattern_is_short() {
    let addr = server(|mut s| {
        let _ = read_line(&s);
        let _ = s.write_all(b"BEGIN\npid:5\n");
    });
    let x = Exchange {
        reply_end: ReplyEnd::Pattern(r"\nEND\r?\n".into()),
        reply_match: Some(".".into()),
        pid_pattern: Some(r"pid:(\d+)".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Line, x, 1);
    assert_eq!(j.outcomes["short"], 1, "{j:#?}");
    assert_eq!(j.failures[0].pid, Some(5), "{j:#?}");
}

/// A server that speaks first: on each connection it writes `banner` and closes, and sends
/// what it had received by then (within `listen` of the connect) to the channel.
fn banner_server(
    banner: &'static [u8],
    listen: Duration,
) -> (std::net::SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let addr = server(move |mut s| {
        let mut got = Vec::new();
        let _ = s.set_read_timeout(Some(listen));
        let mut b = [0u8; 256];
        if let Ok(n) = std::io::Read::read(&mut s, &mut b) {
            got.extend_from_slice(&b[..n]);
        }
        let _ = tx.send(got);
        let _ = s.write_all(banner);
    });
    (addr, rx)
}

#[test]
fn banner_read_without_sending_anything() {
    let (addr, rx) = banner_server(b"SSH-2.0-fake pid=321\r\n", Duration::from_millis(100));
    let j = with(addr, Protocol::Banner, Exchange::default(), 1);
    assert_eq!(j.outcomes["ok"], 1, "{j:#?}");
    assert_eq!(j.served_by[&321].replies, 1, "{j:#?}");
    assert_eq!(
        rx.recv().expect("the server's record"),
        b"",
        "nothing was sent"
    );
}

#[test]
fn banner_cut_short_is_short_and_a_wrong_one_a_bad_reply() {
    let (addr, _) = banner_server(b"SSH-2.0-fa", Duration::from_millis(10));
    let j = with(addr, Protocol::Banner, Exchange::default(), 1);
    assert_eq!(j.outcomes["short"], 1, "{j:#?}");
    assert!(
        j.failures[0].detail.contains("EOF after 10 bytes"),
        "{j:#?}"
    );

    let (addr, _) = banner_server(b"220 mail pid:8\r\n", Duration::from_millis(10));
    let x = Exchange {
        reply_match: Some("^SSH-2.0-".into()),
        pid_pattern: Some(r"pid[:=](\d+)".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Banner, x, 1);
    assert_eq!(j.outcomes["bad-reply"], 1, "{j:#?}");
    assert_eq!(j.failures[0].pid, Some(8), "{j:#?}");
}

#[test]
fn banner_after_a_greeting_of_ours_and_to_its_end_pattern() {
    let (addr, rx) = banner_server(b"hello\npid:12\n.\nmore", Duration::from_secs(2));
    let x = Exchange {
        send: Some("HELO {token}\n".into()),
        reply_end: ReplyEnd::Pattern(r"\n\.\n".into()),
        pid_pattern: Some(r"pid:(\d+)".into()),
        ..Exchange::default()
    };
    let j = with(addr, Protocol::Banner, x, 1);
    assert_eq!(j.outcomes["ok"], 1, "{j:#?}");
    assert_eq!(j.served_by[&12].replies, 1, "{j:#?}");
    assert_eq!(rx.recv().expect("the server's record"), b"HELO c0-1\n");
}

#[test]
fn a_banner_client_opens_one_connection_per_banner() {
    // A banner server for many connections: each client loop must close after each banner.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(b"READY pid=4\n");
        }
    });
    let journal = Arc::new(Mutex::new(Journal::new(10)));
    let ctl = LoadControl::new(Instant::now(), Arc::clone(&journal));
    let mut spec = spec(Protocol::Banner);
    spec.profile = Profile::Short;
    spec.clients = 2;
    spec.interval = Duration::from_millis(5);
    let plan = Arc::new(plan_of(spec, ConnectAddr::Tcp(addr)));
    runtime().block_on(async {
        let load = tokio::spawn(run(Arc::clone(&plan), Arc::clone(&ctl)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        ctl.stop();
        let _ = load.await;
    });
    let j = journal.lock().expect("journal").summary();
    assert!(j.connections >= 4, "{j:#?}");
    assert_eq!(j.outcomes["ok"], j.connections, "{j:#?}");
    assert_eq!(
        j.replies,
        j.connections + j.connections_after_stop,
        "{j:#?}"
    );
}
