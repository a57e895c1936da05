//! A process that takes over through a hand-over socket and reports what it got, for
//! `tests/handover.rs`: `handoff-test-peer SOCKET [--hold] [--allow-uid UID]` (a running
//! process of that uid may offer the listeners). Prints `took <name>...` or
//! `refused: <error>`, then `sockets: <n>`, the socket descriptors it holds (a refused peer
//! must hold none: its connection is closed too). It never reports ready: with
//! `--hold` it keeps what it took until its stdin closes, else it exits at once.
//!
//! `handoff-test-peer --silent N SOCKET` instead opens N connections to a control socket
//! (`@name` for an abstract one), prints `held N`, and sends nothing on them until its stdin
//! closes: a client that never speaks.
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("usage: handoff-test-peer SOCKET [--hold] [--allow-uid UID] | --silent N SOCKET");
        return ExitCode::from(2);
    };
    if socket == "--silent" {
        let count = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let socket = args.next().unwrap_or_default();
        return silent(count, &socket);
    }
    let mut hold = false;
    let mut builder = handoff::Builder::new().take_over(&socket);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hold" => hold = true,
            "--allow-uid" => match args.next().and_then(|uid| uid.parse().ok()) {
                Some(uid) => builder = builder.allow_uid(uid),
                None => {
                    eprintln!("--allow-uid needs a uid");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let taken = builder.build();
    let code = match &taken {
        Ok(up) => {
            let listener = up.tcp_listener("main", "127.0.0.1:0".parse().unwrap());
            println!("took main={}", listener.is_ok());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("refused: {}", e.chain());
            ExitCode::from(1)
        }
    };
    println!("sockets: {}", sockets());
    if hold {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    drop(taken);
    code
}

/// Socket descriptors of this process (a successful take-over holds its connection, to
/// report ready on, and the listeners).
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Holds `count` silent connections to `socket` until stdin closes.
fn silent(count: usize, socket: &str) -> ExitCode {
    use std::os::linux::net::SocketAddrExt;
    let connect = || match socket.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| UnixStream::connect_addr(&addr)),
        None => UnixStream::connect(socket),
    };
    let held: Result<Vec<_>, _> = (0..count).map(|_| connect()).collect();
    match held {
        Ok(held) => {
            println!("held {}", held.len());
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(held);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("could not connect to {socket}: {e}");
            ExitCode::from(1)
        }
    }
}
