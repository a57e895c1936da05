//! Scenario files: TOML in, a validated [`Scenario`] out.
//!
//! Parsing happens in two steps. serde (with `deny_unknown_fields` everywhere) turns the text
//! into raw structs whose fields keep their byte spans ([`toml::Spanned`]); validation then
//! checks ranges and cross-field rules and builds the model types. Every error names the file,
//! the line and the field, and says what would be right, because a scenario author fixes the
//! file from the message alone.
//!
//! The format is documented, with a complete annotated example, in `scenarios/README.md`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use toml::Spanned;

use crate::model::{
    Action, Event, Expect, Invariant, LoadSpec, Profile, Protocol, Ready, Scenario, SignalTo,
    TargetSpec, Trigger, Which,
};

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
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let field = infer_field(text, span.start);
        let message = match &field {
            Some(f) if !e.message().contains(&format!("`{f}`")) => {
                format!("`{f}`: {}", e.message().trim_end())
            }
            _ => e.message().trim_end().to_string(),
        };
        ScenarioError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, span.start),
            field,
            message,
        }
    })?;
    Validator { path, text }.scenario(raw)
}

// ---------------------------------------------------------------------------------------------
// Raw, as written.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawScenario {
    id: Spanned<String>,
    description: Spanned<String>,
    requirement: Spanned<String>,
    duration_ms: Spanned<i64>,
    target: Spanned<RawTarget>,
    load: Option<Spanned<RawLoad>>,
    #[serde(default)]
    events: Vec<Spanned<RawEvent>>,
    expect: Spanned<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTarget {
    command: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    connect: Option<Spanned<String>>,
    /// `"connect"`, `"pid-file"` or `{ log-line = "..." }`.
    ready: Option<Spanned<toml::Value>>,
    ready_timeout_ms: Option<Spanned<i64>>,
    restart: Option<Spanned<RawTrigger>>,
    stop: Option<Spanned<RawTrigger>>,
    stop_timeout_ms: Option<Spanned<i64>>,
    drain_timeout_ms: Option<Spanned<i64>>,
    pid_file: Option<Spanned<String>>,
    fail_next_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTrigger {
    signal: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLoad {
    profile: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    clients: Option<Spanned<i64>>,
    requests_per_conn: Option<Spanned<i64>>,
    interval_ms: Option<Spanned<i64>>,
    ramp_ms: Option<Spanned<i64>>,
    connect_timeout_ms: Option<Spanned<i64>>,
    reply_timeout_ms: Option<Spanned<i64>>,
    burst_size: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEvent {
    at_ms: Spanned<i64>,
    action: Spanned<String>,
    signal: Option<Spanned<String>>,
    /// A 1-based generation number, `"newest"` or `"starting"`.
    generation: Option<Spanned<toml::Value>>,
    mode: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    after_drain: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawExpect {
    #[serde(default)]
    pass: Vec<Spanned<String>>,
    #[serde(default)]
    fail: Vec<Spanned<String>>,
    drain_slack_ms: Option<Spanned<i64>>,
    takeover_within_ms: Option<Spanned<i64>>,
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    fn err(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// A `*-ms` or count field within `min..=max`.
    fn int(&self, v: &Spanned<i64>, field: &str, min: i64, max: i64) -> Result<i64, ScenarioError> {
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(self.err(
                v.span(),
                field,
                format!("`{field}` must be between {min} and {max}, got {n}"),
            ))
        }
    }

    fn ms(
        &self,
        v: Option<&Spanned<i64>>,
        field: &str,
        min: i64,
        default: i64,
    ) -> Result<Duration, ScenarioError> {
        let n = match v {
            Some(v) => self.int(v, field, min, MAX_MS)?,
            None => default,
        };
        Ok(Duration::from_millis(n.unsigned_abs()))
    }

    fn text(&self, v: &Spanned<String>, field: &str, what: &str) -> Result<String, ScenarioError> {
        let s = v.get_ref().trim();
        if s.is_empty() {
            return Err(self.err(
                v.span(),
                field,
                format!("`{field}` must not be empty: give {what}"),
            ));
        }
        if s.contains('\n') {
            return Err(self.err(v.span(), field, format!("`{field}` must be one line")));
        }
        Ok(s.to_string())
    }

    fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let id = self.text(
            &raw.id,
            "id",
            "a hierarchical id such as `reference/echo/short`",
        )?;
        if !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_./".contains(c))
            || id.starts_with('/')
            || id.ends_with('/')
            || id.contains("//")
        {
            return Err(self.err(
                raw.id.span(),
                "id",
                format!(
                    "`id` must be lowercase letters, digits, `-`, `_`, `.` and `/`-separated parts, got `{id}`"
                ),
            ));
        }
        let description = self.text(
            &raw.description,
            "description",
            "one line saying what the scenario does",
        )?;
        let requirement = self.text(&raw.requirement, "requirement", "a MUST-style sentence")?;
        let duration_ms = self.int(&raw.duration_ms, "duration-ms", 1, MAX_MS)?;
        let duration = Duration::from_millis(duration_ms.unsigned_abs());

        let target = self.target(raw.target.into_inner())?;
        let load = match raw.load {
            Some(l) => self.load(l.into_inner(), duration_ms)?,
            None => self.load(RawLoad::default(), duration_ms)?,
        };
        let events = self.events(raw.events, &target, duration_ms)?;
        let expect = self.expect(raw.expect.into_inner())?;

        Ok(Scenario {
            path: self.path.to_path_buf(),
            id,
            description,
            requirement,
            target,
            load,
            events,
            expect,
            duration,
        })
    }

    fn target(&self, raw: RawTarget) -> Result<TargetSpec, ScenarioError> {
        let command = raw.command.get_ref().clone();
        if command.is_empty() || command[0].trim().is_empty() {
            return Err(self.err(
                raw.command.span(),
                "target.command",
                "`target.command` must name a program, e.g. [\"{bin}/handoff-echo\", \"--listen\", \"127.0.0.1:{port}\"]",
            ));
        }
        let connect = match &raw.connect {
            Some(c) => {
                check_connect(c.get_ref())
                    .map_err(|why| self.err(c.span(), "target.connect", why))?;
                c.get_ref().clone()
            }
            None => "127.0.0.1:{port}".to_string(),
        };
        let pid_file = match &raw.pid_file {
            Some(p) => Some(self.text(p, "target.pid-file", "a path such as `{dir}/pid`")?),
            None => None,
        };
        let fail_next_file = match &raw.fail_next_file {
            Some(p) => {
                Some(self.text(p, "target.fail-next-file", "a path such as `{dir}/fail`")?)
            }
            None => None,
        };
        let ready = match &raw.ready {
            None => Ready::Connect,
            Some(v) => self.ready(v)?,
        };
        if let (Ready::PidFile, None, Some(v)) = (&ready, &pid_file, &raw.ready) {
            return Err(self.err(
                v.span(),
                "target.ready",
                "`target.ready = \"pid-file\"` needs `target.pid-file` to say which file",
            ));
        }
        let restart = match &raw.restart {
            Some(t) => Some(self.trigger(t, "target.restart", None, pid_file.is_some())?),
            None => None,
        };
        let stop = match &raw.stop {
            Some(t) => self.trigger(t, "target.stop", Some("SIGTERM"), pid_file.is_some())?,
            None => Trigger::Signal {
                signal: "SIGTERM".to_string(),
                to: SignalTo::Main,
            },
        };
        let ready_timeout = self.ms(
            raw.ready_timeout_ms.as_ref(),
            "target.ready-timeout-ms",
            1,
            DEFAULT_READY_TIMEOUT_MS,
        )?;
        let drain_timeout = self.ms(
            raw.drain_timeout_ms.as_ref(),
            "target.drain-timeout-ms",
            0,
            DEFAULT_DRAIN_TIMEOUT_MS,
        )?;
        let default_stop = millis(drain_timeout) + DEFAULT_STOP_GRACE_MS;
        let stop_timeout = self.ms(
            raw.stop_timeout_ms.as_ref(),
            "target.stop-timeout-ms",
            1,
            default_stop,
        )?;
        Ok(TargetSpec {
            command,
            env: raw.env,
            connect,
            ready,
            ready_timeout,
            restart,
            stop,
            stop_timeout,
            drain_timeout,
            fail_next_file,
            pid_file,
        })
    }

    fn ready(&self, v: &Spanned<toml::Value>) -> Result<Ready, ScenarioError> {
        let wrong = || {
            self.err(
                v.span(),
                "target.ready",
                format!(
                    "`target.ready` must be \"connect\", \"pid-file\" or {{ log-line = \"text\" }}, got {}",
                    v.get_ref()
                ),
            )
        };
        match v.get_ref() {
            toml::Value::String(s) if s == "connect" => Ok(Ready::Connect),
            toml::Value::String(s) if s == "pid-file" => Ok(Ready::PidFile),
            toml::Value::Table(t) => {
                if let Some(k) = t.keys().find(|k| *k != "log-line") {
                    return Err(self.err(
                        v.span(),
                        "target.ready",
                        format!("unknown key `{k}` in `target.ready`, expected only `log-line`"),
                    ));
                }
                match t.get("log-line") {
                    Some(toml::Value::String(s)) if !s.is_empty() => Ok(Ready::LogLine {
                        contains: s.clone(),
                    }),
                    _ => Err(wrong()),
                }
            }
            _ => Err(wrong()),
        }
    }

    fn signal(&self, v: &Spanned<String>, field: &str) -> Result<String, ScenarioError> {
        parse_signal(v.get_ref()).ok_or_else(|| {
            self.err(
                v.span(),
                field,
                format!(
                    "`{field}` must be a signal name such as \"SIGHUP\" or \"SIGTERM\", got \"{}\"",
                    v.get_ref()
                ),
            )
        })
    }

    fn trigger(
        &self,
        t: &Spanned<RawTrigger>,
        field: &str,
        default_signal: Option<&str>,
        have_pid_file: bool,
    ) -> Result<Trigger, ScenarioError> {
        let raw = t.get_ref();
        if let Some(cmd) = &raw.command {
            if let Some(extra) = raw
                .signal
                .as_ref()
                .map(|s| s.span())
                .or(raw.to.as_ref().map(|s| s.span()))
            {
                return Err(self.err(
                    extra,
                    field,
                    format!("`{field}` takes either `command` or `signal`/`to`, not both"),
                ));
            }
            if cmd.get_ref().is_empty() || cmd.get_ref()[0].trim().is_empty() {
                return Err(self.err(
                    cmd.span(),
                    &format!("{field}.command"),
                    format!("`{field}.command` must name a program"),
                ));
            }
            return Ok(Trigger::Command {
                argv: cmd.get_ref().clone(),
            });
        }
        let signal = match (&raw.signal, default_signal) {
            (Some(s), _) => self.signal(s, &format!("{field}.signal"))?,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(self.err(
                    t.span(),
                    field,
                    format!("`{field}` needs `signal` (e.g. {{ signal = \"SIGHUP\", to = \"main\" }}) or `command`"),
                ));
            }
        };
        let to = match &raw.to {
            None => SignalTo::Main,
            Some(v) => match v.get_ref().as_str() {
                "main" => SignalTo::Main,
                "pid-file" => SignalTo::PidFile,
                "newest" => SignalTo::Newest,
                other => {
                    return Err(self.err(
                        v.span(),
                        &format!("{field}.to"),
                        format!("`{field}.to` must be \"main\", \"pid-file\" or \"newest\", got \"{other}\""),
                    ));
                }
            },
        };
        if to == SignalTo::PidFile && !have_pid_file {
            return Err(self.err(
                t.span(),
                &format!("{field}.to"),
                format!("`{field}.to = \"pid-file\"` needs `target.pid-file` to say which file"),
            ));
        }
        Ok(Trigger::Signal { signal, to })
    }

    fn profile(&self, p: &Spanned<String>, field: &str) -> Result<Profile, ScenarioError> {
        let name = p.get_ref().as_str();
        Profile::ALL
            .into_iter()
            .find(|profile| profile.name() == name)
            .ok_or_else(|| {
                let names: Vec<String> = Profile::ALL
                    .iter()
                    .map(|p| format!("\"{}\"", p.name()))
                    .collect();
                self.err(
                    p.span(),
                    field,
                    format!(
                        "`{field}` must be one of {}, got \"{name}\"",
                        names.join(", ")
                    ),
                )
            })
    }

    fn load(&self, raw: RawLoad, duration_ms: i64) -> Result<LoadSpec, ScenarioError> {
        let profile = match &raw.profile {
            None => Profile::Short,
            Some(p) => self.profile(p, "load.profile")?,
        };
        let protocol = match &raw.protocol {
            None => Protocol::Line,
            Some(p) => match p.get_ref().as_str() {
                "line" => Protocol::Line,
                "http1" => Protocol::Http1,
                other => {
                    return Err(self.err(
                        p.span(),
                        "load.protocol",
                        format!("`load.protocol` must be \"line\" or \"http1\", got \"{other}\""),
                    ));
                }
            },
        };
        let clients = match &raw.clients {
            Some(c) => self.int(c, "load.clients", 1, MAX_CLIENTS)?,
            None => DEFAULT_CLIENTS,
        };
        let default_interval = if profile == Profile::Long {
            DEFAULT_LONG_INTERVAL_MS
        } else {
            DEFAULT_INTERVAL_MS
        };
        let interval = self.ms(
            raw.interval_ms.as_ref(),
            "load.interval-ms",
            0,
            default_interval,
        )?;
        let ramp = match &raw.ramp_ms {
            Some(r) => {
                let n = *r.get_ref();
                if !(0..duration_ms).contains(&n) {
                    return Err(self.err(
                        r.span(),
                        "load.ramp-ms",
                        format!(
                            "`load.ramp-ms` must be at least 0 and less than `duration-ms` ({duration_ms}), got {n}"
                        ),
                    ));
                }
                Duration::from_millis(n.unsigned_abs())
            }
            None => Duration::ZERO,
        };
        let requests_per_conn = match &raw.requests_per_conn {
            Some(r) => self.int(r, "load.requests-per-conn", 1, MAX_COUNT)?,
            None => match profile {
                Profile::Keepalive => DEFAULT_KEEPALIVE_REQUESTS,
                // Enough periodic messages to span the whole run, and still a bound.
                Profile::Long => duration_ms / millis(interval).max(1) + 1,
                Profile::Short | Profile::Slow | Profile::Burst => 1,
            },
        };
        let burst_size = match &raw.burst_size {
            Some(b) => {
                let n = self.int(b, "load.burst-size", 0, MAX_COUNT)?;
                if profile == Profile::Burst && n == 0 {
                    return Err(self.err(
                        b.span(),
                        "load.burst-size",
                        "`load.burst-size` must be at least 1 with profile \"burst\"",
                    ));
                }
                n
            }
            None if profile == Profile::Burst => DEFAULT_BURST_SIZE,
            None => 0,
        };
        Ok(LoadSpec {
            profile,
            protocol,
            clients: to_u32(clients),
            requests_per_conn: to_u32(requests_per_conn),
            interval,
            ramp,
            connect_timeout: self.ms(
                raw.connect_timeout_ms.as_ref(),
                "load.connect-timeout-ms",
                1,
                DEFAULT_CONNECT_TIMEOUT_MS,
            )?,
            reply_timeout: self.ms(
                raw.reply_timeout_ms.as_ref(),
                "load.reply-timeout-ms",
                1,
                DEFAULT_REPLY_TIMEOUT_MS,
            )?,
            burst_size: to_u32(burst_size),
        })
    }

    fn events(
        &self,
        raw: Vec<Spanned<RawEvent>>,
        target: &TargetSpec,
        duration_ms: i64,
    ) -> Result<Vec<Event>, ScenarioError> {
        let mut events = Vec::with_capacity(raw.len());
        let mut stop_at: Option<(i64, usize)> = None;
        for (i, ev) in raw.iter().enumerate() {
            let ev = ev.get_ref();
            let f = |k: &str| format!("events[{i}].{k}");
            let at = *ev.at_ms.get_ref();
            if at < 0 || at >= duration_ms {
                return Err(self.err(
                    ev.at_ms.span(),
                    &f("at-ms"),
                    format!(
                        "`{}` must be at least 0 and before the end of the run (`duration-ms` = {duration_ms}), got {at}",
                        f("at-ms")
                    ),
                ));
            }
            let action_name = ev.action.get_ref().as_str();
            let reject = |what: Option<Range<usize>>, key: &str| -> Result<(), ScenarioError> {
                match what {
                    Some(span) => Err(self.err(
                        span,
                        &f(key),
                        format!("`{}` does not apply to action \"{action_name}\"", f(key)),
                    )),
                    None => Ok(()),
                }
            };
            let action = match action_name {
                "restart" | "stop" => {
                    reject(ev.profile.as_ref().map(|s| s.span()), "profile")?;
                    reject(ev.signal.as_ref().map(|s| s.span()), "signal")?;
                    reject(ev.generation.as_ref().map(|s| s.span()), "generation")?;
                    reject(ev.mode.as_ref().map(|s| s.span()), "mode")?;
                    if action_name == "restart" {
                        if target.restart.is_none() {
                            return Err(self.err(
                                ev.action.span(),
                                &f("action"),
                                format!(
                                    "`{}` = \"restart\" needs `target.restart`, e.g. restart = {{ signal = \"SIGHUP\", to = \"main\" }}",
                                    f("action")
                                ),
                            ));
                        }
                        Action::Restart
                    } else {
                        Action::Stop
                    }
                }
                "kill" => {
                    reject(ev.profile.as_ref().map(|s| s.span()), "profile")?;
                    reject(ev.mode.as_ref().map(|s| s.span()), "mode")?;
                    let signal = match &ev.signal {
                        Some(s) => self.signal(s, &f("signal"))?,
                        None => "SIGKILL".to_string(),
                    };
                    let generation = match &ev.generation {
                        None => Which::Newest,
                        Some(g) => match g.get_ref() {
                            toml::Value::String(s) if s == "newest" => Which::Newest,
                            toml::Value::String(s) if s == "starting" => Which::Starting,
                            toml::Value::Integer(n) if (1..=i64::from(u32::MAX)).contains(n) => {
                                Which::Number(to_u32(*n))
                            }
                            other => {
                                return Err(self.err(
                                    g.span(),
                                    &f("generation"),
                                    format!(
                                        "`{}` must be a generation number from 1, \"newest\" or \"starting\", got {other}",
                                        f("generation")
                                    ),
                                ));
                            }
                        },
                    };
                    Action::Kill { signal, generation }
                }
                "fail-next" => {
                    reject(ev.profile.as_ref().map(|s| s.span()), "profile")?;
                    reject(ev.signal.as_ref().map(|s| s.span()), "signal")?;
                    reject(ev.generation.as_ref().map(|s| s.span()), "generation")?;
                    if target.fail_next_file.is_none() {
                        return Err(self.err(
                            ev.action.span(),
                            &f("action"),
                            format!(
                                "`{}` = \"fail-next\" needs `target.fail-next-file`, e.g. fail-next-file = \"{{dir}}/fail\"",
                                f("action")
                            ),
                        ));
                    }
                    let mode = match &ev.mode {
                        Some(m) if ["crash", "exit", "hang"].contains(&m.get_ref().as_str()) => {
                            m.get_ref().clone()
                        }
                        Some(m) => {
                            return Err(self.err(
                                m.span(),
                                &f("mode"),
                                format!(
                                    "`{}` must be \"crash\", \"exit\" or \"hang\", got \"{}\"",
                                    f("mode"),
                                    m.get_ref()
                                ),
                            ));
                        }
                        None => {
                            return Err(self.err(
                                ev.action.span(),
                                &f("mode"),
                                format!("`{}` = \"fail-next\" needs `mode` = \"crash\", \"exit\" or \"hang\"", f("action")),
                            ));
                        }
                    };
                    Action::FailNext { mode }
                }
                "load" => {
                    reject(ev.signal.as_ref().map(|s| s.span()), "signal")?;
                    reject(ev.generation.as_ref().map(|s| s.span()), "generation")?;
                    reject(ev.mode.as_ref().map(|s| s.span()), "mode")?;
                    let Some(p) = &ev.profile else {
                        return Err(self.err(
                            ev.action.span(),
                            &f("profile"),
                            format!(
                                "`{}` = \"load\" needs `profile`, e.g. profile = \"burst\"",
                                f("action")
                            ),
                        ));
                    };
                    Action::Load {
                        profile: self.profile(p, &f("profile"))?,
                    }
                }
                other => {
                    return Err(self.err(
                        ev.action.span(),
                        &f("action"),
                        format!(
                            "`{}` must be \"restart\", \"stop\", \"kill\", \"fail-next\" or \"load\", got \"{other}\"",
                            f("action")
                        ),
                    ));
                }
            };
            if let Some((stop_ms, stop_i)) = stop_at
                && at >= stop_ms
            {
                return Err(self.err(
                    ev.at_ms.span(),
                    &f("at-ms"),
                    format!(
                        "`{}` = {at} is at or after the stop at events[{stop_i}] ({stop_ms} ms): nothing may follow the final stop",
                        f("at-ms")
                    ),
                ));
            }
            if action == Action::Stop {
                if let Some((_, stop_i)) = stop_at {
                    return Err(self.err(
                        ev.action.span(),
                        &f("action"),
                        format!(
                            "only one \"stop\" event is allowed, events[{stop_i}] is already one"
                        ),
                    ));
                }
                if let Some((j, _)) = events
                    .iter()
                    .enumerate()
                    .find(|(_, e): &(usize, &Event)| e.at.as_millis() >= at as u128)
                {
                    return Err(self.err(
                        ev.at_ms.span(),
                        &f("at-ms"),
                        format!("the stop at {at} ms must come after every other event, but events[{j}] is not earlier"),
                    ));
                }
                stop_at = Some((at, i));
            }
            if action != Action::Restart {
                reject(ev.after_drain.as_ref().map(|s| s.span()), "after-drain")?;
            }
            events.push(Event {
                at: Duration::from_millis(at.unsigned_abs()),
                action,
                after_drain: ev.after_drain.as_ref().is_some_and(|b| *b.get_ref()),
            });
        }
        // Stable: events at the same time keep their file order.
        events.sort_by_key(|e| e.at);
        Ok(events)
    }

    fn expect(&self, raw: RawExpect) -> Result<Expect, ScenarioError> {
        let ids = |list: &[Spanned<String>],
                   key: &str|
         -> Result<Vec<(Invariant, Range<usize>)>, ScenarioError> {
            let mut out: Vec<(Invariant, Range<usize>)> = Vec::new();
            for v in list {
                let field = format!("expect.{key}");
                let inv = Invariant::from_str(v.get_ref())
                    .map_err(|why| self.err(v.span(), &field, format!("`{field}`: {why}")))?;
                if out.iter().any(|(i, _)| *i == inv) {
                    return Err(self.err(
                        v.span(),
                        &field,
                        format!("`{field}` lists `{inv}` twice"),
                    ));
                }
                out.push((inv, v.span()));
            }
            Ok(out)
        };
        let pass = ids(&raw.pass, "pass")?;
        let fail = ids(&raw.fail, "fail")?;
        if let Some((inv, span)) = fail.iter().find(|(f, _)| pass.iter().any(|(p, _)| p == f)) {
            return Err(self.err(
                span.clone(),
                "expect.fail",
                format!("`{inv}` is in both `expect.pass` and `expect.fail`; an invariant can only be expected one way"),
            ));
        }
        if pass.is_empty() && fail.is_empty() {
            return Err(ScenarioError::Invalid {
                path: self.path.to_path_buf(),
                line: self.text.lines().position(|l| l.trim() == "[expect]").map_or(1, |i| i + 1),
                field: Some("expect.pass".to_string()),
                message: "`expect.pass` and `expect.fail` are both empty: list at least one invariant, e.g. pass = [\"no-refused\", \"no-dropped\"]".to_string(),
            });
        }
        Ok(Expect {
            pass: pass.into_iter().map(|(i, _)| i).collect(),
            fail: fail.into_iter().map(|(i, _)| i).collect(),
            drain_slack: self.ms(
                raw.drain_slack_ms.as_ref(),
                "expect.drain-slack-ms",
                0,
                DEFAULT_DRAIN_SLACK_MS,
            )?,
            takeover_within: self.ms(
                raw.takeover_within_ms.as_ref(),
                "expect.takeover-within-ms",
                1,
                DEFAULT_TAKEOVER_WITHIN_MS,
            )?,
        })
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Only called on values already range-checked to fit.
fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `SIGHUP`, `HUP` or `sighup` → `SIGHUP`; `None` if it names no signal.
pub fn parse_signal(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok().map(|s| s.as_str().to_string())
}

/// The load may only reach loopback: `127.x.y.z:PORT`, `[::1]:PORT`, `localhost:PORT` or
/// `unix:PATH`, where `PORT` is a number or `{port}`.
fn check_connect(addr: &str) -> Result<(), String> {
    if let Some(path) = addr.strip_prefix("unix:") {
        return if path.is_empty() {
            Err("`target.connect` = \"unix:\" needs a path, e.g. \"unix:{dir}/sock\"".to_string())
        } else {
            Ok(())
        };
    }
    let bad = || {
        format!(
            "`target.connect` must be a loopback address \"127.0.0.1:PORT\", \"[::1]:PORT\" or \"unix:PATH\" (PORT may be {{port}}), got \"{addr}\""
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if port != "{port}" && port.parse::<u16>().is_err() {
        return Err(bad());
    }
    let loopback = host == "[::1]"
        || host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback { Ok(()) } else { Err(bad()) }
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

/// Best effort at naming the dotted key at `offset` for a serde error, which carries only a
/// span: the table (from the nearest header at or above, with `[[array]]` entries numbered from
/// 0), the inline tables opened since (`restart = { ...`), and the key (the one at the span, as
/// for an unknown key, or the nearest `key =` before it, as for a wrong value).
fn infer_field(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';

    // The table: the last header line starting at or before the offset.
    let mut path: Vec<String> = Vec::new();
    let mut body_start = 0;
    let mut array_counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if pos > offset {
            break;
        }
        let t = line.trim();
        if let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let n = array_counts.entry(name.to_string()).or_insert(0);
            path = vec![format!("{name}[{n}]")];
            *n += 1;
            body_start = pos + line.len();
        } else if let Some(name) = t
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim())
        {
            path = vec![name.to_string()];
            body_start = pos + line.len();
        }
        pos += line.len();
    }

    // Keys between the header and the offset: inline tables still open, and the last key.
    let mut last_key: Option<String> = None;
    let mut inline: Vec<Option<String>> = Vec::new();
    let mut ident = String::new();
    let mut chars = text.get(body_start.min(offset)..offset)?.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                // Skip the string, so an `=` or a brace inside it counts for nothing.
                let mut escaped = false;
                for d in chars.by_ref() {
                    if d == c && !escaped {
                        break;
                    }
                    escaped = c == '"' && d == '\\' && !escaped;
                }
                ident.clear();
            }
            '#' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                ident.clear();
            }
            '=' => {
                if !ident.is_empty() {
                    last_key = Some(std::mem::take(&mut ident));
                }
            }
            '{' => {
                inline.push(last_key.take());
                ident.clear();
            }
            '}' => {
                inline.pop();
                last_key = None;
                ident.clear();
            }
            c if is_key_char(c) => ident.push(c),
            // `key = `: the space does not end the key.
            ' ' | '\t' => {}
            _ => ident.clear(),
        }
    }
    // Unknown-key errors point at the key itself.
    let rest = &text[offset..];
    let at_span: String = rest.chars().take_while(|&c| is_key_char(c)).collect();
    if !at_span.is_empty() && rest[at_span.len()..].trim_start().starts_with('=') {
        last_key = Some(at_span);
    }
    path.extend(inline.into_iter().flatten());
    path.extend(last_key);
    (!path.is_empty()).then(|| path.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn missing_required_key_is_reported() {
        let text = GOOD.replace("duration-ms = 2000\n", "");
        let (_, _, message) = err_of(&text);
        assert!(message.contains("duration-ms"), "{message}");
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
