//! `handoff-ctl`: asks a server's control socket to upgrade, or for its status, with exit
//! codes a deploy script can trust: 0 upgraded (or status shown), 1 the upgrade failed (the
//! reason on stderr), 2 the server could not be asked, would not take the command (another
//! uid, busy), or did not answer in time (the outcome unknown).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Ask a server built on the handoff library, through its control socket, to upgrade or to
/// report its status.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The server's control socket (`--control-socket`); `@name` for an abstract one.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// How long to wait for the answer, in milliseconds (an upgrade is answered once the new
    /// generation is ready, or has failed).
    #[arg(long, default_value_t = 120_000)]
    timeout_ms: u64,
    /// What to ask.
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Command {
    /// Start the next generation; exit 0 when it took over, 1 when it failed.
    Upgrade,
    /// Print pid, generation, phase, connections, upgrades, last failure, previous
    /// generation.
    Status,
}

/// Parses the command line, asks, prints the answer; see the module's exit codes.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let command = match args.command {
        Command::Upgrade => "upgrade",
        Command::Status => "status",
    };
    let timeout = Some(Duration::from_millis(args.timeout_ms.max(1)));
    let answer = match handoff::ask(&args.socket, command, timeout) {
        Ok(answer) => answer,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut && command == "upgrade" => {
            eprintln!(
                "handoff-ctl: asked {} to upgrade, but {e}: its outcome is not known (it may \
                 still be under way; `status` shows the generation and the last failure)",
                args.socket.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!(
                "handoff-ctl: could not ask {} to {command}: {e}",
                args.socket.display()
            );
            return ExitCode::from(2);
        }
    };
    match outcome(args.command, &answer) {
        Outcome::Done => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Outcome::Failed(reason) => {
            eprintln!("handoff-ctl: {command} failed: {reason}");
            ExitCode::from(1)
        }
        Outcome::Refused(why) => {
            eprintln!(
                "handoff-ctl: {} refused to take commands from us: {why}",
                args.socket.display()
            );
            ExitCode::from(2)
        }
        Outcome::Busy(why) => {
            eprintln!(
                "handoff-ctl: {} did not take the command, nothing was tried: {why}; ask again \
                 later",
                args.socket.display()
            );
            ExitCode::from(2)
        }
        Outcome::Unreadable => {
            eprintln!(
                "handoff-ctl: unexpected answer from {}: {answer:?}",
                args.socket.display()
            );
            ExitCode::from(2)
        }
    }
}

/// What an answer says.
#[derive(Debug, PartialEq, Eq)]
enum Outcome<'a> {
    Done,
    Failed(&'a str),
    /// The server would not take the command from us (our uid, or its socket's protections).
    Refused(&'a str),
    /// The server had too many commands in progress to take ours: nothing was tried.
    Busy(&'a str),
    Unreadable,
}

/// What `answer` says to `command`: an answer of the other command's form is unreadable.
fn outcome(command: Command, answer: &str) -> Outcome<'_> {
    let done = match command {
        Command::Upgrade => "upgraded: pid ",
        Command::Status => "pid: ",
    };
    if let Some(why) = answer.strip_prefix("failed: refused: ") {
        Outcome::Refused(why)
    } else if answer.starts_with("failed: busy: ") {
        Outcome::Busy(&answer["failed: ".len()..])
    } else if let Some(reason) = answer.strip_prefix("failed: ") {
        Outcome::Failed(reason)
    } else if answer.starts_with(done) {
        Outcome::Done
    } else {
        Outcome::Unreadable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_outcomes() {
        use Command::{Status, Upgrade};
        assert_eq!(outcome(Upgrade, "upgraded: pid 4 gen 2"), Outcome::Done);
        assert_eq!(outcome(Status, "pid: 4\ngeneration: 1"), Outcome::Done);
        assert_eq!(
            outcome(Upgrade, "failed: child 5 exited 1"),
            Outcome::Failed("child 5 exited 1")
        );
        assert_eq!(
            outcome(Upgrade, "failed: refused: uid 7"),
            Outcome::Refused("uid 7")
        );
        assert_eq!(
            outcome(Upgrade, "failed: busy: 8 commands are in progress"),
            Outcome::Busy("busy: 8 commands are in progress")
        );
        assert_eq!(outcome(Upgrade, "hello"), Outcome::Unreadable);
        // An answer of the other command's form is not taken for success.
        assert_eq!(
            outcome(Upgrade, "pid: 4\ngeneration: 1"),
            Outcome::Unreadable
        );
        assert_eq!(
            outcome(Status, "upgraded: pid 4 gen 2"),
            Outcome::Unreadable
        );
    }
}
