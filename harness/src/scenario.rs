//! Scenario files: TOML in, a validated [`Scenario`] out.
//!
//! Parsing happens in two steps. serde (with `deny_unknown_fields` everywhere) turns the text
//! into raw structs whose fields keep their byte spans ([`toml::Spanned`], in `raw`);
//! validation (`validate`, and `events` for `[[events]]`) then checks ranges and
//! cross-field rules and builds the model types. Every error names the file,
//! the line and the field, and says what would be right, because a scenario author fixes the
//! file from the message alone.
//!
//! The format is documented, with a complete annotated example, in `scenarios/README.md`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::model::{
    Exchange, Expect, LoadSpec, Profile, Protocol, Ready, Scenario, SignalTo, TargetSpec, Trigger,
};

mod events;
mod exchange;
mod raw;
mod validate;

use raw::RawScenario;
use validate::Validator;
pub use validate::parse_signal;

/// Upper bound on `load.clients`: far beyond what loopback on a small machine sustains, low
/// enough to catch a typo.
pub const MAX_CLIENTS: i64 = 100_000;
/// Upper bound on any `*-ms` value (one hour): a scenario is a test, not a soak.
pub const MAX_MS: i64 = 3_600_000;
/// Upper bound on `load.requests-per-conn` and `load.burst-size`.
pub const MAX_COUNT: i64 = 1_000_000;

/// Defaults, documented in `scenarios/README.md`.
pub const DEFAULT_READY_TIMEOUT_MS: i64 = 5_000;
/// Matches the reference servers' own `--drain-timeout-ms` default.
pub const DEFAULT_DRAIN_TIMEOUT_MS: i64 = 5_000;
/// Added to the drain timeout to form the default `stop-timeout-ms`: a graceful stop drains
/// first, then exits.
pub const DEFAULT_STOP_GRACE_MS: i64 = 1_000;
pub const DEFAULT_CLIENTS: i64 = 4;
pub const DEFAULT_KEEPALIVE_REQUESTS: i64 = 10;
pub const DEFAULT_INTERVAL_MS: i64 = 10;
pub const DEFAULT_LONG_INTERVAL_MS: i64 = 100;
pub const DEFAULT_CONNECT_TIMEOUT_MS: i64 = 1_000;
pub const DEFAULT_REPLY_TIMEOUT_MS: i64 = 3_000;
pub const DEFAULT_BURST_SIZE: i64 = 50;
pub const DEFAULT_DRAIN_SLACK_MS: i64 = 500;
pub const DEFAULT_TAKEOVER_WITHIN_MS: i64 = 1_000;
/// Each pause between requests is drawn from `interval * [1 - jitter, 1 + jitter]`.
pub const DEFAULT_JITTER: f64 = 0.5;

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario file `{}`: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A path given on the command line does not exist.
    #[error("scenario path `{}` does not exist: give a `.toml` file or a directory of them", path.display())]
    Missing { path: PathBuf },
    /// A directory could not be listed.
    #[error("cannot list scenario directory `{}`: {source}", path.display())]
    List { path: PathBuf, source: io::Error },
    /// The file is not valid TOML, has an unknown key or a wrong type, or breaks a rule.
    #[error("{} line {line}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// Dotted key, e.g. `load.clients` or `events[2].at-ms`, when it could be told.
        field: Option<String>,
        /// The full explanation, naming the field and what would be right.
        message: String,
    },
    /// Two files declare the same `id`.
    #[error("{} line {line}: `id` `{id}` is already used by `{}`; ids must be unique", path.display(), first.display())]
    DuplicateId {
        path: PathBuf,
        line: usize,
        id: String,
        first: PathBuf,
    },
}

/// Every scenario file named by `paths`: a directory stands for every `*.toml` file below it
/// (recursively, sorted by path), a file for itself. Duplicates are removed, order is kept.
///
/// # Errors
///
/// A path that does not exist, or a directory that cannot be listed.
pub fn discover<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut found = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ScenarioError::Missing {
                path: path.to_path_buf(),
            },
            _ => ScenarioError::List {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        if meta.is_dir() {
            let mut below = Vec::new();
            collect_toml(path, &mut below)?;
            below.sort();
            found.extend(below);
        } else {
            found.push(path.to_path_buf());
        }
    }
    let mut seen = std::collections::HashSet::new();
    found.retain(|p| seen.insert(p.clone()));
    Ok(found)
}

fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ScenarioError> {
    let list_err = |e| ScenarioError::List {
        path: dir.to_path_buf(),
        source: e,
    };
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let path = entry.map_err(list_err)?.path();
        if path.is_dir() {
            collect_toml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Discover and load every scenario under `paths`, collecting every error rather than stopping
/// at the first, so one run of `handoff check` shows all that needs fixing.
///
/// # Errors
///
/// All the errors found, in file order; also two files with the same `id`.
pub fn load_all<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Scenario>, Vec<ScenarioError>> {
    let files = discover(paths).map_err(|e| vec![e])?;
    let mut scenarios = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load(&file) {
            Ok(s) => scenarios.push(s),
            Err(e) => errors.push(e),
        }
    }
    let mut ids: BTreeMap<&str, &Path> = BTreeMap::new();
    for s in &scenarios {
        if let Some(first) = ids.insert(&s.id, &s.path) {
            errors.push(ScenarioError::DuplicateId {
                path: s.path.clone(),
                line: id_line(&s.path),
                id: s.id.clone(),
                first: first.to_path_buf(),
            });
        }
    }
    if errors.is_empty() {
        Ok(scenarios)
    } else {
        Err(errors)
    }
}

/// The line of the top-level `id` key, for the duplicate-id message (1 if it cannot be told).
fn id_line(path: &Path) -> usize {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines().position(|l| {
                l.trim_start().starts_with("id ") || l.trim_start().starts_with("id=")
            })
        })
        .map_or(1, |i| i + 1)
}

/// A scenario built in code rather than read from a file: what a file with only these keys
/// gives (every other setting at its default of `scenarios/README.md`, no `target.restart`,
/// no events), with nothing expected. Tests and tools change the fields they need.
pub fn inline(id: &str, command: &[&str], duration: Duration) -> Scenario {
    let ms = |n: i64| Duration::from_millis(n.unsigned_abs());
    Scenario {
        path: PathBuf::from("inline.toml"),
        id: id.to_string(),
        description: format!("{id}, built in code"),
        requirement: "The invariants expected MUST hold.".to_string(),
        target: TargetSpec {
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            connect: "127.0.0.1:{port}".to_string(),
            ready: Ready::Connect,
            ready_timeout: ms(DEFAULT_READY_TIMEOUT_MS),
            restart: None,
            stop: Trigger::signal("SIGTERM", SignalTo::Main),
            stop_graceful: false,
            stop_timeout: ms(DEFAULT_DRAIN_TIMEOUT_MS + DEFAULT_STOP_GRACE_MS),
            drain_timeout: ms(DEFAULT_DRAIN_TIMEOUT_MS),
            fail_next_file: None,
            pid_file: None,
            shape: None,
        },
        load: LoadSpec {
            profile: Profile::Short,
            protocol: Protocol::Line,
            clients: DEFAULT_CLIENTS as u32,
            requests_per_conn: 1,
            interval: ms(DEFAULT_INTERVAL_MS),
            ramp: Duration::ZERO,
            connect_timeout: ms(DEFAULT_CONNECT_TIMEOUT_MS),
            reply_timeout: ms(DEFAULT_REPLY_TIMEOUT_MS),
            burst_size: 0,
            exchange: Exchange::default(),
            seed: None,
            random_phase: true,
            jitter: DEFAULT_JITTER,
        },
        events: Vec::new(),
        expect: Expect {
            pass: Vec::new(),
            fail: Vec::new(),
            drain_slack: ms(DEFAULT_DRAIN_SLACK_MS),
            takeover_within: ms(DEFAULT_TAKEOVER_WITHIN_MS),
        },
        duration,
    }
}

/// Read and validate one scenario file.
///
/// # Errors
///
/// The file cannot be read, or [`parse`] rejects it.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = fs::read_to_string(path).map_err(|e| ScenarioError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse(path, &text)
}

/// Validate scenario `text`, reporting errors against `path`.
///
/// # Errors
///
/// Invalid TOML, an unknown key, a value of the wrong type, a value out of range, or a
/// cross-field rule broken (see `scenarios/README.md`): [`ScenarioError::Invalid`] with the line
/// and the field.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| read_error(path, text, &e))?;
    Validator { path, text }.scenario(raw)
}

/// A TOML syntax error, an unknown key, a value of the wrong type or a missing key: the line
/// from the span toml gives, the field from the path serde took to it. A syntax error (a
/// broken table header, an unclosed string) has no field: it is named as what it is.
fn read_error(
    path: &Path,
    text: &str,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> ScenarioError {
    let inner = e.inner();
    let span = inner.span().unwrap_or(0..0);
    let field = field_of(e.path());
    // toml's message may run over lines (`invalid table header\nexpected ...`): one line.
    let said: Vec<&str> = inner
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let said = said.join(": ");
    let message = match &field {
        Some(f) if !said.contains(&format!("`{f}`")) => format!("`{f}`: {said}"),
        _ => said,
    };
    ScenarioError::Invalid {
        path: path.to_path_buf(),
        line: line_of(text, span.start),
        field,
        message,
    }
}

/// The dotted key a serde path names (`load.clients`, `events[2].at-ms`), without the
/// wrappers `toml::Spanned` adds; `None` for the document itself.
fn field_of(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut field = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } if key.starts_with("$__serde_spanned_private_") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    (!field.is_empty()).then_some(field)
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{Action, Invariant, Profile, Ready, SignalTo, Trigger};

    const GOOD: &str = r#"
id = "reference/echo/short"
description = "Short connections across a restart."
requirement = "A restart MUST NOT refuse a connect."
duration-ms = 2000

[target]
command = ["{bin}/handoff-echo", "--listen", "127.0.0.1:{port}", "--fail-next-file", "{dir}/fail"]
ready = { log-line = "ready pid=" }
restart = { signal = "HUP" }
fail-next-file = "{dir}/fail"
drain-timeout-ms = 1000

[load]
profile = "keepalive"
clients = 8

[[events]]
at-ms = 500
action = "restart"

[[events]]
at-ms = 400
action = "fail-next"
mode = "crash"

[expect]
pass = ["no-refused", "no-dropped"]
fail = ["fd-stable"]
"#;

    fn parse_str(text: &str) -> Result<Scenario, ScenarioError> {
        parse(Path::new("s.toml"), text)
    }

    fn err_of(text: &str) -> (usize, Option<String>, String) {
        match parse_str(text) {
            Err(ScenarioError::Invalid {
                line,
                field,
                message,
                ..
            }) => (line, field, message),
            Err(other) => panic!("expected an Invalid error, got {other}"),
            Ok(_) => panic!("expected an error, the scenario was accepted"),
        }
    }

    #[test]
    fn a_good_scenario_gets_defaults_and_sorted_events() {
        let s = parse_str(GOOD).expect("valid");
        assert_eq!(s.id, "reference/echo/short");
        assert_eq!(s.duration, Duration::from_millis(2000));
        assert_eq!(s.target.connect, "127.0.0.1:{port}");
        assert!(matches!(&s.target.ready, Ready::LogLine { contains } if contains == "ready pid="));
        assert!(
            matches!(&s.target.restart, Some(Trigger::Signal { signal, to: SignalTo::Main }) if signal == "SIGHUP")
        );
        assert!(
            matches!(&s.target.stop, Trigger::Signal { signal, to: SignalTo::Main } if signal == "SIGTERM")
        );
        assert_eq!(s.target.stop_timeout, Duration::from_millis(2000));
        assert_eq!(s.load.profile, Profile::Keepalive);
        assert_eq!(s.load.requests_per_conn, 10);
        assert_eq!(s.load.clients, 8);
        assert_eq!(s.events.len(), 2);
        assert_eq!(
            s.events[0].action,
            Action::FailNext {
                mode: "crash".into()
            }
        );
        assert_eq!(s.events[1].action, Action::Restart);
        assert_eq!(
            s.expect.pass,
            vec![Invariant::NoRefused, Invariant::NoDropped]
        );
        assert_eq!(s.expect.fail, vec![Invariant::FdStable]);
        assert_eq!(s.expect.drain_slack, Duration::from_millis(500));
    }

    #[test]
    fn zero_clients_names_line_and_field() {
        let text = GOOD.replace("clients = 8", "clients = 0");
        let (line, field, message) = err_of(&text);
        assert_eq!(line, 16);
        assert_eq!(field.as_deref(), Some("load.clients"));
        assert_eq!(
            message,
            "`load.clients` must be between 1 and 100000, got 0"
        );
        let shown = parse_str(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            shown,
            "s.toml line 16: `load.clients` must be between 1 and 100000, got 0"
        );
    }

    #[test]
    fn unknown_key_names_line_and_field() {
        let text = GOOD.replace("clients = 8", "clients = 8\nclientz = 3");
        let (line, field, message) = err_of(&text);
        assert_eq!(line, 17);
        assert_eq!(field.as_deref(), Some("load.clientz"));
        assert!(message.contains("unknown field `clientz`"), "{message}");
    }

    #[test]
    fn wrong_type_names_line_and_field() {
        let text = GOOD.replace("clients = 8", "clients = \"eight\"");
        let (line, field, message) = err_of(&text);
        assert_eq!(line, 16);
        assert_eq!(field.as_deref(), Some("load.clients"));
        assert!(message.starts_with("`load.clients`"), "{message}");
    }

    #[test]
    fn the_ramp_defaults_to_zero_and_must_end_before_the_run() {
        assert_eq!(parse_str(GOOD).expect("valid").load.ramp, Duration::ZERO);
        let text = GOOD.replace("clients = 8", "clients = 8\nramp-ms = 1500");
        let s = parse_str(&text).expect("valid");
        assert_eq!(s.load.ramp, Duration::from_millis(1500));
        for bad in ["2000", "-1", "99999999"] {
            let text = GOOD.replace("clients = 8", &format!("clients = 8\nramp-ms = {bad}"));
            let (line, field, message) = err_of(&text);
            assert_eq!(line, 17);
            assert_eq!(field.as_deref(), Some("load.ramp-ms"));
            assert_eq!(
                message,
                format!(
                    "`load.ramp-ms` must be at least 0 and less than `duration-ms` (2000), got {bad}"
                )
            );
        }
        let text = GOOD.replace("clients = 8", "clients = 8\nramp-ms = \"1s\"");
        let (line, field, message) = err_of(&text);
        assert_eq!(line, 17);
        assert_eq!(field.as_deref(), Some("load.ramp-ms"));
        assert!(message.starts_with("`load.ramp-ms`"), "{message}");
    }

    #[test]
    fn the_adapter_keys_of_each_protocol() {
        let text = GOOD
            .replace(
                "drain-timeout-ms = 1000",
                "drain-timeout-ms = 1000\nstop = { signal = \"SIGQUIT\", graceful = true }",
            )
            .replace(
                "clients = 8",
                r#"clients = 8
protocol = "http1"
pid-header = "X-PID"
pid-pattern = 'pid[:=](\d+)'
reply-match = '^ok'
seed = 42
jitter = 0
random-phase = false
http = { method = "HEAD", path = "/healthz?{token}", host = "app.test", headers = { "X-A" = "1", "X-B" = "{token}" } }"#,
            );
        let s = parse_str(&text).expect("valid");
        assert!(s.target.stop_graceful);
        let x = &s.load.exchange;
        assert_eq!(s.load.protocol, Protocol::Http1);
        assert_eq!(x.pid_header.as_deref(), Some("X-PID"));
        assert_eq!(x.pid_pattern.as_deref(), Some(r"pid[:=](\d+)"));
        assert_eq!(x.reply_match.as_deref(), Some("^ok"));
        assert_eq!(x.http.method, "HEAD");
        assert_eq!(x.http.path, "/healthz?{token}");
        assert_eq!(x.http.host.as_deref(), Some("app.test"));
        assert_eq!(
            x.http.headers,
            vec![("X-A".into(), "1".into()), ("X-B".into(), "{token}".into())]
        );
        assert_eq!(
            (s.load.seed, s.load.jitter, s.load.random_phase),
            (Some(42), 0.0, false)
        );

        // The defaults: today's requests and replies, a fresh seed, random phase and jitter.
        let s = parse_str(GOOD).expect("valid");
        assert!(!s.target.stop_graceful);
        assert_eq!(s.load.exchange.http.path, "/?{token}");
        assert_eq!(s.load.exchange.http.method, "GET");
        assert_eq!(s.load.exchange.reply_end, crate::model::ReplyEnd::Line);
        assert_eq!(
            (s.load.seed, s.load.jitter, s.load.random_phase),
            (None, 0.5, true)
        );

        let banner = GOOD.replace(
            "profile = \"keepalive\"",
            "profile = \"short\"\nprotocol = \"banner\"\nreply-end = { pattern = '\\r?\\n' }",
        );
        let s = parse_str(&banner).expect("valid");
        assert_eq!(s.load.protocol, Protocol::Banner);
        assert_eq!(
            s.load.exchange.reply_end,
            crate::model::ReplyEnd::Pattern(r"\r?\n".into())
        );
        // A body makes a POST unless a method is named.
        let post = GOOD.replace(
            "clients = 8",
            "clients = 8\nprotocol = \"http1\"\nhttp = { body = \"{token}\" }",
        );
        assert_eq!(
            parse_str(&post).expect("valid").load.exchange.http.method,
            "POST"
        );
    }

    #[test]
    fn adapter_keys_out_of_place_or_wrong_name_their_line_and_field() {
        let add = |extra: &str| GOOD.replace("clients = 8", &format!("clients = 8\n{extra}"));
        let cases: [(&str, &str, &str); 12] = [
            (
                "pid-header = \"X-PID\"",
                "load.pid-header",
                "applies to `load.protocol` \"http1\", not \"line\"",
            ),
            (
                "protocol = \"http1\"\nsend = \"x\"",
                "load.send",
                "applies to `load.protocol` \"line\" or \"banner\"",
            ),
            (
                "pid-pattern = 'pid=\\d+'",
                "load.pid-pattern",
                "exactly one capture group",
            ),
            (
                "reply-match = '(unclosed'",
                "load.reply-match",
                "not a valid regex",
            ),
            (
                "reply-end = { pattern = 'x*' }",
                "load.reply-end",
                "matches an empty reply",
            ),
            (
                "reply-end = \"lines\"",
                "load.reply-end",
                "must be \"line\" or { pattern",
            ),
            ("send = \"PING\\n\"", "load.send", "has no `{token}`"),
            ("jitter = 1.5", "load.jitter", "between 0 and 1"),
            ("seed = -1", "load.seed", "between 0 and"),
            (
                "protocol = \"banner\"",
                "load.profile",
                "use \"short\" or \"burst\"",
            ),
            (
                "protocol = \"http1\"\nhttp = { headers = { Host = \"x\" } }",
                "load.http.headers.Host",
                "set by the load",
            ),
            (
                "protocol = \"http1\"\nhttp = { path = \"healthz\" }",
                "load.http.path",
                "must start with `/`",
            ),
        ];
        for (extra, field, says) in cases {
            let (line, got_field, message) = err_of(&add(extra));
            assert_eq!(got_field.as_deref(), Some(field), "{extra}: {message}");
            assert!(message.contains(says), "{extra}: {message}");
            assert!((15..=18).contains(&line), "{extra}: line {line}: {message}");
        }
        // `load.send` with a `reply-match` of its own needs no token.
        assert!(parse_str(&add("send = \"PING\\n\"\nreply-match = '^PONG'")).is_ok());
        let text = GOOD.replace(
            "restart = { signal = \"HUP\" }",
            "restart = { signal = \"HUP\", graceful = true }",
        );
        let (line, field, message) = err_of(&text);
        assert_eq!(
            (line, field.as_deref()),
            (10, Some("target.restart.graceful"))
        );
        assert!(message.contains("belongs to `target.stop`"), "{message}");
        // A banner load cannot switch to a profile of several requests per connection.
        let text = GOOD
            .replace("profile = \"keepalive\"", "protocol = \"banner\"")
            .replace(
                "action = \"restart\"",
                "action = \"load\"\nprofile = \"slow\"",
            );
        let (_, field, message) = err_of(&text);
        assert_eq!(field.as_deref(), Some("events[0].profile"), "{message}");
    }

    /// The format's documentation shows what it accepts: its annotated example is a valid
    /// scenario, and so is each `[load]` of "Talking to any server" in a scenario.
    #[test]
    fn the_documented_examples_are_valid() {
        let doc = include_str!("../../scenarios/README.md");
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect();
        assert!(blocks.len() >= 7, "{} toml blocks", blocks.len());
        let annotated = parse_str(blocks[0]).expect("the annotated example");
        assert!(annotated.target.stop_graceful);
        for block in &blocks[1..] {
            let load = block
                .trim_start()
                .strip_prefix("[load]")
                .expect("a [load] table");
            let text = GOOD.replace("[load]\nprofile = \"keepalive\"", &format!("[load]{load}"));
            assert_ne!(text, GOOD);
            if let Err(e) = parse_str(&text) {
                panic!("{e}\n{block}");
            }
        }
    }

    #[test]
    fn event_at_or_after_the_end_is_rejected() {
        let text = GOOD.replace("at-ms = 500", "at-ms = 2000");
        let (line, field, message) = err_of(&text);
        assert_eq!(line, 19);
        assert_eq!(field.as_deref(), Some("events[0].at-ms"));
        assert!(message.contains("before the end of the run"), "{message}");
    }

    #[test]
    fn after_drain_is_for_restarts_only() {
        let s = parse_str(&GOOD.replace(
            "action = \"restart\"\n",
            "action = \"restart\"\nafter-drain = true\n",
        ))
        .expect("after-drain on a restart is valid");
        let restart = s.events.iter().find(|e| e.action == Action::Restart);
        assert!(restart.is_some_and(|e| e.after_drain));
        assert!(
            !s.events
                .iter()
                .any(|e| e.action != Action::Restart && e.after_drain)
        );

        let text = GOOD.replace(
            "mode = \"crash\"\n",
            "mode = \"crash\"\nafter-drain = true\n",
        );
        let (line, field, message) = err_of(&text);
        assert_eq!(line, 26);
        assert_eq!(field.as_deref(), Some("events[1].after-drain"));
        assert!(
            message.contains("does not apply to action \"fail-next\""),
            "{message}"
        );
    }

    #[test]
    fn a_load_switch_names_a_profile() {
        let switch = "[[events]]\nat-ms = 600\naction = \"load\"\nprofile = \"burst\"\n\n[expect]";
        let s = parse_str(&GOOD.replace("[expect]", switch)).expect("a load switch is valid");
        assert_eq!(
            s.events.last().map(|e| &e.action),
            Some(&Action::Load {
                profile: Profile::Burst
            })
        );

        let text = GOOD.replace("[expect]", &switch.replace("burst", "bursty"));
        let (line, field, message) = err_of(&text);
        assert_eq!(line, 30);
        assert_eq!(field.as_deref(), Some("events[2].profile"));
        assert!(message.contains("got \"bursty\""), "{message}");

        let text = GOOD.replace("[expect]", &switch.replace("profile = \"burst\"\n", ""));
        let (_, field, message) = err_of(&text);
        assert_eq!(field.as_deref(), Some("events[2].profile"));
        assert!(message.contains("needs `profile`"), "{message}");
    }

    #[test]
    fn restart_without_trigger_is_rejected() {
        let text = GOOD.replace("restart = { signal = \"HUP\" }\n", "");
        let (_, field, message) = err_of(&text);
        assert_eq!(field.as_deref(), Some("events[0].action"));
        assert!(message.contains("needs `target.restart`"), "{message}");
    }

    #[test]
    fn a_spawned_restart_is_a_restart_only_and_names_a_program() {
        let spawn = "restart = { spawn = [\"{bin}/handoff-echo\", \"--take-over\", \"{dir}/run/h.sock\"] }\n";
        let s = parse_str(&GOOD.replace("restart = { signal = \"HUP\" }\n", spawn)).unwrap();
        assert!(
            matches!(&s.target.restart, Some(Trigger::Spawn { argv }) if argv[1] == "--take-over"),
            "{:?}",
            s.target.restart
        );
        let both = spawn.replace("] }", "], signal = \"HUP\" }");
        let (line, field, message) =
            err_of(&GOOD.replace("restart = { signal = \"HUP\" }\n", &both));
        assert_eq!((line, field.as_deref()), (10, Some("target.restart")));
        assert!(
            message.contains("one of `spawn`, `command` or `signal`"),
            "{message}"
        );
        let empty = "restart = { spawn = [] }\n";
        let (_, field, message) = err_of(&GOOD.replace("restart = { signal = \"HUP\" }\n", empty));
        assert_eq!(field.as_deref(), Some("target.restart.spawn"));
        assert!(message.contains("must name a program"), "{message}");
        let stop = "stop = { spawn = [\"x\"] }\n";
        let (line, field, message) = err_of(&GOOD.replace(
            "drain-timeout-ms = 1000\n",
            &format!("drain-timeout-ms = 1000\n{stop}"),
        ));
        assert_eq!((line, field.as_deref()), (13, Some("target.stop.spawn")));
        assert!(message.contains("belongs to `target.restart`"), "{message}");
    }

    #[test]
    fn fail_next_without_file_is_rejected() {
        let text = GOOD.replace("fail-next-file = \"{dir}/fail\"\n", "");
        let (_, field, message) = err_of(&text);
        assert_eq!(field.as_deref(), Some("events[1].action"));
        assert!(
            message.contains("needs `target.fail-next-file`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_invariant_and_contradiction_are_rejected() {
        let (line, field, message) = err_of(&GOOD.replace("\"no-dropped\"]", "\"no-droped\"]"));
        assert_eq!(line, 28);
        assert_eq!(field.as_deref(), Some("expect.pass"));
        assert!(
            message.contains("unknown invariant `no-droped`"),
            "{message}"
        );
        let (_, field, message) =
            err_of(&GOOD.replace("fail = [\"fd-stable\"]", "fail = [\"no-refused\"]"));
        assert_eq!(field.as_deref(), Some("expect.fail"));
        assert!(
            message.contains("both `expect.pass` and `expect.fail`"),
            "{message}"
        );
    }

    #[test]
    fn bad_signal_connect_and_ready_are_rejected() {
        let (_, field, _) = err_of(&GOOD.replace("signal = \"HUP\"", "signal = \"SIGFOO\""));
        assert_eq!(field.as_deref(), Some("target.restart.signal"));
        let (_, field, _) =
            err_of(&GOOD.replace("ready = {", "connect = \"10.0.0.1:80\"\nready = {"));
        assert_eq!(field.as_deref(), Some("target.connect"));
        let (_, field, _) = err_of(&GOOD.replace("{ log-line = \"ready pid=\" }", "\"pid-file\""));
        assert_eq!(field.as_deref(), Some("target.ready"));
    }

    #[test]
    fn the_shape_is_inferred_unless_stated_and_a_bad_one_says_what_would_be_right() {
        assert_eq!(parse_str(GOOD).expect("valid").target.shape, None);
        let ready = "ready = {";
        let text = GOOD.replace(ready, &format!("shape = \"new-master\"\n{ready}"));
        let s = parse_str(&text).expect("valid");
        assert_eq!(s.target.shape, Some(crate::model::Shape::NewMaster));
        let text = GOOD.replace(ready, &format!("shape = \"master-worker\"\n{ready}"));
        let line = text.lines().position(|l| l.starts_with("shape")).unwrap() + 1;
        let (at, field, message) = err_of(&text);
        assert_eq!((at, field.as_deref()), (line, Some("target.shape")));
        assert!(
            message.contains(
                "unknown shape `master-worker`, expected one of: one-process, master-workers, new-master, supervisor"
            ),
            "{message}"
        );
    }

    #[test]
    fn nothing_may_follow_a_stop() {
        let text = GOOD.replace("action = \"restart\"", "action = \"stop\"");
        // The stop at 500 ms is after the fail-next at 400 ms: fine.
        assert!(parse_str(&text).is_ok());
        let text = GOOD
            .replace("at-ms = 400", "at-ms = 600")
            .replace("action = \"restart\"", "action = \"stop\"");
        let (_, field, message) = err_of(&text);
        assert_eq!(field.as_deref(), Some("events[1].at-ms"));
        assert!(
            message.contains("nothing may follow the final stop"),
            "{message}"
        );
    }

    #[test]
    fn keys_inside_inline_tables_and_missing_keys_are_named() {
        let (line, field, _) = err_of(&GOOD.replace("signal = \"HUP\"", "signal = 5"));
        assert_eq!(line, 10);
        assert_eq!(field.as_deref(), Some("target.restart.signal"));
        let (line, field, message) = err_of(&GOOD.replace("at-ms = 500\n", ""));
        assert_eq!(line, 18);
        assert_eq!(field.as_deref(), Some("events[0]"));
        assert!(message.contains("missing field `at-ms`"), "{message}");
        let (_, field, _) = err_of(&GOOD.replace(
            "ready = { log-line = \"ready pid=\" }",
            "ready = { log-line = \"a=b{\", x = 1 }",
        ));
        assert_eq!(field.as_deref(), Some("target.ready"));
    }

    /// A syntax error names its line and no field: the old inference named the key before it.
    #[test]
    fn a_broken_table_header_on_line_3_is_a_syntax_error_there() {
        let text = "id = \"x\"\nduration-ms = 2000\n[target\ncommand = [\"a\"]\n";
        let (line, field, message) = err_of(text);
        assert_eq!(line, 3);
        assert_eq!(field, None, "{message}");
        assert!(message.starts_with("invalid table header"), "{message}");
        assert!(!message.contains("duration-ms"), "{message}");
        let shown = parse_str(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            shown.starts_with("s.toml line 3: invalid table header"),
            "{shown}"
        );
    }

    /// A wrong element of an array is named with its index, on its own line.
    #[test]
    fn a_wrong_array_element_is_named_with_its_index() {
        let (line, field, message) = err_of(&GOOD.replace(
            "pass = [\"no-refused\", \"no-dropped\"]",
            "pass = [\"no-refused\", 3]",
        ));
        assert_eq!(line, 28);
        assert_eq!(field.as_deref(), Some("expect.pass[1]"));
        assert!(
            message.starts_with("`expect.pass[1]`: invalid type"),
            "{message}"
        );

        let text = GOOD.replace(
            "command = [\"{bin}/handoff-echo\", \"--listen\", \"127.0.0.1:{port}\", \"--fail-next-file\", \"{dir}/fail\"]",
            "command = [\n  \"{bin}/handoff-echo\",\n  5,\n]",
        );
        let (line, field, _) = err_of(&text);
        assert_eq!(line, 10, "the line of the `5`");
        assert_eq!(field.as_deref(), Some("target.command[1]"));
    }

    /// Events written as an inline array of tables are numbered like `[[events]]` tables.
    #[test]
    fn an_inline_array_of_events_is_numbered() {
        let text = GOOD
            .replace("[[events]]\nat-ms = 500\naction = \"restart\"\n\n", "")
            .replace(
                "[[events]]\nat-ms = 400\naction = \"fail-next\"\nmode = \"crash\"\n\n",
                "",
            )
            .replace(
                "duration-ms = 2000\n",
                "duration-ms = 2000\nevents = [{ at-ms = 100, action = \"restart\" }, { at-ms = \"late\", action = \"restart\" }]\n",
            );
        let (line, field, message) = err_of(&text);
        assert_eq!(line, 6);
        assert_eq!(field.as_deref(), Some("events[1].at-ms"), "{message}");
    }

    #[test]
    fn missing_required_key_is_reported() {
        let text = GOOD.replace("duration-ms = 2000\n", "");
        let (_, _, message) = err_of(&text);
        assert!(message.contains("duration-ms"), "{message}");
    }

    /// `inline` is what the parser makes of a file with only those keys.
    #[test]
    fn an_inline_scenario_is_a_minimal_file() {
        let text = "id = \"x/y\"\ndescription = \"d\"\nrequirement = \"r\"\nduration-ms = 2500\n[target]\ncommand = [\"{bin}/srv\", \"--flag\"]\n[expect]\npass = [\"no-refused\"]\n";
        let parsed = parse_str(text).expect("valid");
        let mut built = inline("x/y", &["{bin}/srv", "--flag"], Duration::from_millis(2500));
        built.path = parsed.path.clone();
        built.description = "d".into();
        built.requirement = "r".into();
        built.expect.pass = vec![Invariant::NoRefused];
        let json = |s: &Scenario| serde_json::to_value(s).expect("serialisable");
        assert_eq!(json(&built), json(&parsed));
    }

    #[test]
    fn discover_sorts_directories_and_rejects_missing_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("b");
        fs::create_dir(&sub).expect("mkdir");
        for p in [
            dir.path().join("z.toml"),
            sub.join("a.toml"),
            dir.path().join("notes.md"),
        ] {
            fs::write(&p, "").expect("write");
        }
        let found = discover(&[dir.path()]).expect("discover");
        assert_eq!(found, vec![sub.join("a.toml"), dir.path().join("z.toml")]);
        let missing = dir.path().join("nope");
        assert!(matches!(
            discover(&[&missing]),
            Err(ScenarioError::Missing { .. })
        ));
    }
}
