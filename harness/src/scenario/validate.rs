//! Validation: ranges, defaults and the rules between fields, from the raw tables to the
//! model's types. Every error names the line and the field and says what would be right.

use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::Spanned;

use super::raw::{RawExpect, RawLoad, RawScenario, RawTarget, RawTrigger};
use super::*;
use crate::model::{
    Expect, Invariant, LoadSpec, Profile, Protocol, Ready, Scenario, Shape, SignalTo, TargetSpec,
    Trigger,
};

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Validator<'_> {
    pub(super) fn err(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> ScenarioError {
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// A `*-ms` or count field within `min..=max`.
    pub(super) fn int(
        &self,
        v: &Spanned<i64>,
        field: &str,
        min: i64,
        max: i64,
    ) -> Result<i64, ScenarioError> {
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

    pub(super) fn ms(
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

    pub(super) fn text(
        &self,
        v: &Spanned<String>,
        field: &str,
        what: &str,
    ) -> Result<String, ScenarioError> {
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

    pub(super) fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
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
        let events = self.events(raw.events, &target, load.protocol, duration_ms)?;
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

    pub(super) fn target(&self, raw: RawTarget) -> Result<TargetSpec, ScenarioError> {
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
        let shape = match &raw.shape {
            Some(v) => Some(
                v.get_ref()
                    .parse::<Shape>()
                    .map_err(|why| self.err(v.span(), "target.shape", why))?,
            ),
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
            Some(t) => {
                if let Some(g) = &t.get_ref().graceful {
                    return Err(self.err(
                        g.span(),
                        "target.restart.graceful",
                        "`graceful` belongs to `target.stop` (whether the final stop finishes what the server holds); a restart is always expected to lose nothing",
                    ));
                }
                Some(self.trigger(t, "target.restart", None, pid_file.is_some())?)
            }
            None => None,
        };
        let stop_graceful = raw
            .stop
            .as_ref()
            .and_then(|t| t.get_ref().graceful.as_ref())
            .is_some_and(|g| *g.get_ref());
        if let Some(spawn) = raw.stop.as_ref().and_then(|t| t.get_ref().spawn.as_ref()) {
            return Err(self.err(
                spawn.span(),
                "target.stop.spawn",
                "`spawn` belongs to `target.restart` (a new process that takes over); a stop is a `signal` or a `command`",
            ));
        }
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
            stop_graceful,
            stop_timeout,
            drain_timeout,
            fail_next_file,
            pid_file,
            shape,
        })
    }

    pub(super) fn ready(&self, v: &Spanned<toml::Value>) -> Result<Ready, ScenarioError> {
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

    pub(super) fn signal(&self, v: &Spanned<String>, field: &str) -> Result<String, ScenarioError> {
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

    pub(super) fn trigger(
        &self,
        t: &Spanned<RawTrigger>,
        field: &str,
        default_signal: Option<&str>,
        have_pid_file: bool,
    ) -> Result<Trigger, ScenarioError> {
        let raw = t.get_ref();
        if let Some(spawn) = &raw.spawn {
            if let Some(extra) = [
                raw.signal.as_ref().map(|s| s.span()),
                raw.to.as_ref().map(|s| s.span()),
                raw.command.as_ref().map(|s| s.span()),
            ]
            .into_iter()
            .flatten()
            .next()
            {
                return Err(self.err(
                    extra,
                    field,
                    format!(
                        "`{field}` takes one of `spawn`, `command` or `signal`/`to`, not several"
                    ),
                ));
            }
            if spawn.get_ref().is_empty() || spawn.get_ref()[0].trim().is_empty() {
                return Err(self.err(
                    spawn.span(),
                    &format!("{field}.spawn"),
                    format!("`{field}.spawn` must name a program, e.g. [\"{{bin}}/handoff-echo\", \"--take-over\", \"{{dir}}/run/handover.sock\"]"),
                ));
            }
            return Ok(Trigger::Spawn {
                argv: spawn.get_ref().clone(),
            });
        }
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

    pub(super) fn profile(
        &self,
        p: &Spanned<String>,
        field: &str,
    ) -> Result<Profile, ScenarioError> {
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

    pub(super) fn load(&self, raw: RawLoad, duration_ms: i64) -> Result<LoadSpec, ScenarioError> {
        let profile = match &raw.profile {
            None => Profile::Short,
            Some(p) => self.profile(p, "load.profile")?,
        };
        let protocol = match &raw.protocol {
            None => Protocol::Line,
            Some(p) => match p.get_ref().as_str() {
                "line" => Protocol::Line,
                "http1" => Protocol::Http1,
                "banner" => Protocol::Banner,
                other => {
                    return Err(self.err(
                        p.span(),
                        "load.protocol",
                        format!(
                            "`load.protocol` must be \"line\", \"http1\" or \"banner\", got \"{other}\""
                        ),
                    ));
                }
            },
        };
        if protocol == Protocol::Banner {
            self.banner_profile(
                profile,
                raw.profile.as_ref().map(|p| p.span()),
                "load.profile",
            )?;
        }
        let exchange = self.exchange(&raw, protocol)?;
        let seed = match &raw.seed {
            Some(v) => Some(self.int(v, "load.seed", 0, i64::MAX)?.unsigned_abs()),
            None => None,
        };
        let jitter = match &raw.jitter {
            Some(v) => {
                let j = *v.get_ref();
                if !(0.0..=1.0).contains(&j) {
                    return Err(self.err(
                        v.span(),
                        "load.jitter",
                        format!("`load.jitter` must be between 0 and 1 (a fraction of `interval-ms`), got {j}"),
                    ));
                }
                j
            }
            None => DEFAULT_JITTER,
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
            exchange,
            seed,
            random_phase: raw.random_phase.as_ref().is_none_or(|b| *b.get_ref()),
            jitter,
        })
    }

    /// A banner is read once per connection: only the one-request profiles fit.
    pub(super) fn banner_profile(
        &self,
        profile: Profile,
        span: Option<Range<usize>>,
        field: &str,
    ) -> Result<(), ScenarioError> {
        if matches!(profile, Profile::Short | Profile::Burst) {
            return Ok(());
        }
        Err(self.err(
            span.unwrap_or(0..0),
            field,
            format!(
                "profile \"{}\" sends several requests per connection, but a banner server speaks once and closes: with `load.protocol = \"banner\"` use \"short\" or \"burst\"",
                profile.name()
            ),
        ))
    }

    pub(super) fn expect(&self, raw: RawExpect) -> Result<Expect, ScenarioError> {
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

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Only called on values already range-checked to fit.
pub(super) fn to_u32(n: i64) -> u32 {
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
