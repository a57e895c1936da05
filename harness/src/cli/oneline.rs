//! The one-line check: `handoff check --exec 'CMD ...' --restart SIGHUP ...` builds a default
//! scenario (a short load, three restarts) from flags, as the text of a scenario file, so that
//! `--save` keeps exactly what ran.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::model::Scenario;
use crate::scenario;

/// The flags of a one-line check (all need `--exec`).
#[derive(Args, Debug, Default, Clone)]
pub struct OneLine {
    /// Check the server this command line starts, with a default scenario (a short load, three
    /// restarts) instead of scenario files. Split into words like a shell would (quotes and
    /// backslashes, no expansions); `{port}` (a free port), `{dir}` (a fresh directory) and
    /// `{bin}` (the directory of this handoff) are substituted, as in scenario files.
    #[arg(
        long,
        value_name = "CMD",
        requires = "restart",
        conflicts_with = "paths"
    )]
    pub exec: Option<String>,
    /// How a restart is triggered: a signal (`SIGHUP`, `USR2`...) sent to the pid in
    /// `--pid-file` if given, else to the process started; or any other command line, run
    /// (`'my-server reload --pid-file {dir}/pid'`).
    #[arg(long, value_name = "SIGNAL|CMD", requires = "exec")]
    pub restart: Option<String>,
    /// How the final stop is triggered, in the same forms.
    #[arg(
        long,
        value_name = "SIGNAL|CMD",
        default_value = "SIGTERM",
        requires = "exec"
    )]
    pub stop: String,
    /// Where the load connects.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:{port}",
        requires = "exec"
    )]
    pub connect: String,
    /// What the load speaks.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Line, requires = "exec")]
    pub protocol: ProtocolArg,
    /// A PID file the server keeps: signals go to the pid in it.
    #[arg(long, value_name = "FILE", requires = "exec")]
    pub pid_file: Option<String>,
    /// Readiness is a line of the server's output containing TEXT [default: a connect succeeds]
    #[arg(long, value_name = "TEXT", requires = "exec")]
    pub ready_line: Option<String>,
    /// The server's drain deadline: how long a superseded generation may take to exit.
    #[arg(long, value_name = "MS", default_value_t = 5000, requires = "exec",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub drain_timeout_ms: u64,
    /// Concurrent clients of the load.
    #[arg(long, default_value_t = 4, requires = "exec",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Also write the scenario that ran to FILE, to keep and edit (`handoff check FILE`
    /// runs it again).
    #[arg(long, value_name = "FILE", requires = "exec")]
    pub save: Option<PathBuf>,
}

/// The load's protocol, as `--protocol` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// A line with a token; the reply is one line carrying it.
    #[default]
    Line,
    /// HTTP/1.1 GET; the reply is a complete 200.
    Http1,
    /// The server speaks first; its first line is the reply.
    Banner,
}

impl ProtocolArg {
    fn name(self) -> &'static str {
        match self {
            ProtocolArg::Line => "line",
            ProtocolArg::Http1 => "http1",
            ProtocolArg::Banner => "banner",
        }
    }
}

/// The run length of the default scenario, and when its three restarts come.
const DURATION_MS: u64 = 4000;
const RESTARTS_MS: [u64; 3] = [1000, 2000, 3000];

impl OneLine {
    /// The scenario the flags describe, and its text as a scenario file (written to `--save`
    /// first, if given).
    ///
    /// # Errors
    ///
    /// `--exec` or a trigger does not split into words, the scenario built is invalid, or the
    /// file cannot be written: a message for stderr.
    pub fn scenario(&self) -> Result<Scenario, String> {
        let text = self.text()?;
        let path = self.save.clone().unwrap_or_else(|| PathBuf::from("--exec"));
        let s = scenario::parse(&path, &text).map_err(|e| e.to_string())?;
        if let Some(save) = &self.save {
            std::fs::write(save, &text)
                .map_err(|e| format!("writing the scenario to `{}`: {e}", save.display()))?;
        }
        Ok(s)
    }

    /// The scenario file's text.
    fn text(&self) -> Result<String, String> {
        let exec = self.exec.as_deref().unwrap_or_default();
        let argv = split_words(exec).map_err(|e| format!("--exec: {e}"))?;
        let Some(program) = argv.first() else {
            return Err("--exec: no command given".to_string());
        };
        let name = Path::new(program)
            .file_name()
            .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
        let to = if self.pid_file.is_some() {
            "pid-file"
        } else {
            "main"
        };
        let restart = self.restart.as_deref().unwrap_or_default();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# The default scenario of `handoff check --exec`: a short load, three restarts.\n# Run it again with `handoff check <this file>`; the format is in the harness's scenarios/README.md.\nid = {}\ndescription = {}\nrequirement = \"A server restarting under load MUST NOT refuse a connect or drop an accepted connection, and each superseded generation MUST exit once it has finished.\"\nduration-ms = {DURATION_MS}\n",
            quote(&format!("exec/{name}")),
            quote(&format!(
                "`{exec}` restarted three times under short connections"
            )),
        );
        let _ = writeln!(t, "[target]\ncommand = {}", array(&argv));
        let _ = writeln!(t, "connect = {}", quote(&self.connect));
        match &self.ready_line {
            Some(line) => {
                let _ = writeln!(t, "ready = {{ log-line = {} }}", quote(line));
            }
            None => t.push_str("ready = \"connect\"\n"),
        }
        if let Some(pid_file) = &self.pid_file {
            let _ = writeln!(t, "pid-file = {}", quote(pid_file));
        }
        let _ = writeln!(t, "restart = {}", trigger(restart, to, "--restart")?);
        let _ = writeln!(t, "stop = {}", trigger(&self.stop, to, "--stop")?);
        let _ = writeln!(t, "drain-timeout-ms = {}\n", self.drain_timeout_ms);
        let _ = writeln!(
            t,
            "[load]\nprofile = \"short\"\nprotocol = \"{}\"\nclients = {}\n",
            self.protocol.name(),
            self.clients
        );
        for (k, at) in RESTARTS_MS.iter().enumerate() {
            let _ = writeln!(t, "[[events]]\nat-ms = {at}\naction = \"restart\"");
            if k > 0 {
                // A correct server refuses a restart while its predecessor drains: wait.
                t.push_str("after-drain = true\n");
            }
            t.push('\n');
        }
        t.push_str("[expect]\npass = [\"no-refused\", \"no-dropped\", \"drains-then-exits\", \"single-upgrade\", \"takes-over\", \"clean-stop\"]\n");
        Ok(t)
    }
}

/// A trigger: `{ signal = "...", to = "..." }` for a signal name, else `{ command = [...] }`.
fn trigger(value: &str, to: &str, flag: &str) -> Result<String, String> {
    let words = split_words(value).map_err(|e| format!("{flag}: {e}"))?;
    match words.as_slice() {
        [] => Err(format!(
            "{flag}: give a signal such as SIGHUP, or a command"
        )),
        [one] if crate::scenario::parse_signal(one).is_some() => Ok(format!(
            "{{ signal = {}, to = \"{to}\" }}",
            quote(&crate::scenario::parse_signal(one).unwrap_or_default())
        )),
        _ => Ok(format!("{{ command = {} }}", array(&words))),
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn array(words: &[String]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| quote(w)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Splits a command line into words as a POSIX shell does, without expansions: blanks
/// separate, `'...'` keeps everything, `"..."` keeps everything but `\"`, `\\`, `\$` and
/// `` \` ``, and a backslash outside quotes keeps the next character.
///
/// # Errors
///
/// An unclosed quote, or a backslash at the end.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed ' in `{line}`")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("unclosed \" in `{line}`")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unclosed \" in `{line}`")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("a backslash ends `{line}`")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Profile, Protocol, SignalTo, Trigger};

    fn one_line(exec: &str, restart: &str) -> OneLine {
        OneLine {
            exec: Some(exec.into()),
            restart: Some(restart.into()),
            stop: "SIGTERM".into(),
            connect: "127.0.0.1:{port}".into(),
            drain_timeout_ms: 5000,
            clients: 4,
            ..OneLine::default()
        }
    }

    #[test]
    fn words_split_like_a_shell() {
        let w = split_words(r#"a  'b c' "d \"e\" \x" f\ g ''"#).expect("splits");
        assert_eq!(w, ["a", "b c", r#"d "e" \x"#, "f g", ""]);
        assert!(split_words("a 'b").is_err());
        assert!(split_words("a \"b").is_err());
        assert!(split_words("a \\").is_err());
    }

    #[test]
    fn the_default_scenario_has_a_short_load_and_three_restarts() {
        let mut o = one_line(
            "my-server --listen 127.0.0.1:{port} --pid-file '{dir}/pid'",
            "HUP",
        );
        o.pid_file = Some("{dir}/pid".into());
        o.protocol = ProtocolArg::Http1;
        let s = o.scenario().expect("a valid scenario");
        assert_eq!(s.id, "exec/my-server");
        assert_eq!(
            s.target.command,
            [
                "my-server",
                "--listen",
                "127.0.0.1:{port}",
                "--pid-file",
                "{dir}/pid"
            ]
        );
        assert_eq!(s.load.profile, Profile::Short);
        assert_eq!(s.load.protocol, Protocol::Http1);
        let restarts = s
            .events
            .iter()
            .filter(|e| e.action == Action::Restart)
            .count();
        assert_eq!(restarts, 3);
        match &s.target.restart {
            Some(Trigger::Signal { signal, to }) => {
                assert_eq!((signal.as_str(), *to), ("SIGHUP", SignalTo::PidFile));
            }
            other => panic!("{other:?}"),
        }
        assert!(!s.expect.pass.is_empty());
    }

    #[test]
    fn a_trigger_that_is_not_a_signal_is_a_command() {
        let mut o = one_line("srv", "srv-ctl reload --now");
        o.stop = "srv-ctl 'stop now'".into();
        let s = o.scenario().expect("a valid scenario");
        match (&s.target.restart, &s.target.stop) {
            (Some(Trigger::Command { argv: r }), Trigger::Command { argv: st }) => {
                assert_eq!(r, &["srv-ctl", "reload", "--now"]);
                assert_eq!(st, &["srv-ctl", "stop now"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_saved_file_loads_as_the_scenario_that_ran() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = one_line("srv --port {port} \"quo\\\"te\"", "SIGUSR2");
        o.save = Some(dir.path().join("saved.toml"));
        o.ready_line = Some("listening \"now\"".into());
        let ran = o.scenario().expect("a valid scenario");
        let saved = scenario::load(&dir.path().join("saved.toml")).expect("the saved file loads");
        assert_eq!(format!("{ran:?}"), format!("{saved:?}"));
    }

    #[test]
    fn an_empty_or_broken_command_is_an_error() {
        assert!(one_line("", "SIGHUP").scenario().is_err());
        let e = one_line("srv 'x", "SIGHUP").scenario().unwrap_err();
        assert!(e.starts_with("--exec: unclosed '"), "{e}");
    }
}
