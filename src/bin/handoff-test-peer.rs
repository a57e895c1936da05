//! A process that takes over through a hand-over socket and reports what it got, for
//! `tests/handover.rs`: `handoff-test-peer SOCKET [--hold]`. Prints `took <name>...` or
//! `refused: <error>`, then `sockets: <n>`, the socket descriptors it holds (a refused peer
//! must hold none: its connection is closed too). It never reports ready: with
//! `--hold` it keeps what it took until its stdin closes, else it exits at once.
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("usage: handoff-test-peer SOCKET [--hold]");
        return ExitCode::from(2);
    };
    let hold = args.next().as_deref() == Some("--hold");
    let taken = handoff::Builder::new().take_over(&socket).build();
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
