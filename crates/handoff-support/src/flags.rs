//! The flags every server of this repository takes: the reference servers (`handoff-echo`,
//! `handoff-http`) and the known-bad ones (`bad-*`, `fixture-sound`), so that one scenario
//! can run any of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address, e.g. `127.0.0.1:8080` or `[::1]:0`.
    Tcp(SocketAddr),
    /// A unix socket path, written `unix:/path`.
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path, e.g. unix:/run/echo.sock".into());
            }
            return Ok(Listen::Unix(path.into()));
        }
        s.parse().map(Listen::Tcp).map_err(|_| {
            format!(
                "{s:?} is not an address: expected IP:PORT (127.0.0.1:8080, [::1]:0) or unix:/path"
            )
        })
    }
}

/// The shared flags; a server flattens them into its own command line
/// (`#[command(flatten)]`).
#[derive(Clone, Debug, clap::Args)]
pub struct ServerFlags {
    /// Where to listen: IP:PORT (port 0 picks one) or unix:/path.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: Listen,
    /// How long each request takes to serve, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Keep a PID file here (replaced atomically on each successful upgrade).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// How long a superseded generation waits for its connections before it exits anyway.
    #[arg(long, default_value_t = 5000)]
    pub drain_timeout_ms: u64,
    /// How long a new generation has to report ready before it is killed and rolled back.
    #[arg(long, default_value_t = 5000)]
    pub ready_timeout_ms: u64,
    /// A new generation reads this file at start, deletes it, and if it says `crash`, `exit`
    /// or `hang` fails that way before it is ready (to demonstrate rollback).
    #[arg(long)]
    pub fail_next_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerFlags,
    }

    #[test]
    fn defaults_and_every_flag() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(
            cli.server.listen,
            Listen::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(cli.server.drain_timeout_ms, 5000);
        let cli = Cli::parse_from([
            "x",
            "--listen",
            "unix:/tmp/s",
            "--delay-ms",
            "3",
            "--pid-file",
            "/tmp/p",
            "--drain-timeout-ms",
            "7",
            "--ready-timeout-ms",
            "9",
            "--fail-next-file",
            "/tmp/f",
        ]);
        let s = cli.server;
        assert_eq!(s.listen, Listen::Unix("/tmp/s".into()));
        assert_eq!(
            (s.delay_ms, s.drain_timeout_ms, s.ready_timeout_ms),
            (3, 7, 9)
        );
        assert_eq!(s.pid_file, Some("/tmp/p".into()));
        assert_eq!(s.fail_next_file, Some("/tmp/f".into()));
    }

    #[test]
    fn bad_addresses_say_what_is_expected() {
        assert!(
            "unix:"
                .parse::<Listen>()
                .unwrap_err()
                .contains("needs a path")
        );
        assert!("nowhere".parse::<Listen>().unwrap_err().contains("IP:PORT"));
    }
}
