//! Validation of `[[events]]`: each event's action and the keys it takes, and the order the
//! final stop imposes.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::ScenarioError;
use super::raw::RawEvent;
use super::validate::{Validator, to_u32};
use crate::model::{Action, Event, Protocol, TargetSpec, Which};

/// One event being validated: its index (for the field names) and its keys.
struct Keys<'e> {
    i: usize,
    ev: &'e RawEvent,
}

impl Keys<'_> {
    /// `events[i].key`.
    fn f(&self, key: &str) -> String {
        format!("events[{}].{key}", self.i)
    }

    fn action(&self) -> &str {
        self.ev.action.get_ref().as_str()
    }
}

impl Validator<'_> {
    pub(super) fn events(
        &self,
        raw: Vec<Spanned<RawEvent>>,
        target: &TargetSpec,
        protocol: Protocol,
        duration_ms: i64,
    ) -> Result<Vec<Event>, ScenarioError> {
        let mut events = Vec::with_capacity(raw.len());
        let mut stop_at: Option<(i64, usize)> = None;
        for (i, ev) in raw.iter().enumerate() {
            let k = Keys {
                i,
                ev: ev.get_ref(),
            };
            let ev = k.ev;
            let at = *ev.at_ms.get_ref();
            if at < 0 || at >= duration_ms {
                return Err(self.err(
                    ev.at_ms.span(),
                    &k.f("at-ms"),
                    format!(
                        "`{}` must be at least 0 and before the end of the run (`duration-ms` = {duration_ms}), got {at}",
                        k.f("at-ms")
                    ),
                ));
            }
            let action = self.action(&k, target, protocol)?;
            self.stop_order(&k, &action, &events, &mut stop_at)?;
            if action != Action::Restart {
                self.reject(&k, ev.after_drain.as_ref().map(|s| s.span()), "after-drain")?;
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

    /// An error when `key` is given (its span) to an action that does not take it.
    fn reject(&self, k: &Keys, what: Option<Range<usize>>, key: &str) -> Result<(), ScenarioError> {
        match what {
            Some(span) => Err(self.err(
                span,
                &k.f(key),
                format!("`{}` does not apply to action \"{}\"", k.f(key), k.action()),
            )),
            None => Ok(()),
        }
    }

    /// The event's action, with the keys it takes and no other.
    fn action(
        &self,
        k: &Keys,
        target: &TargetSpec,
        protocol: Protocol,
    ) -> Result<Action, ScenarioError> {
        let ev = k.ev;
        match k.action() {
            "restart" | "stop" => {
                self.reject(k, ev.profile.as_ref().map(|s| s.span()), "profile")?;
                self.reject(k, ev.signal.as_ref().map(|s| s.span()), "signal")?;
                self.reject(k, ev.generation.as_ref().map(|s| s.span()), "generation")?;
                self.reject(k, ev.mode.as_ref().map(|s| s.span()), "mode")?;
                if k.action() == "stop" {
                    return Ok(Action::Stop);
                }
                if target.restart.is_none() {
                    return Err(self.err(
                        ev.action.span(),
                        &k.f("action"),
                        format!(
                            "`{}` = \"restart\" needs `target.restart`, e.g. restart = {{ signal = \"SIGHUP\", to = \"main\" }}",
                            k.f("action")
                        ),
                    ));
                }
                Ok(Action::Restart)
            }
            "kill" => self.kill(k),
            "fail-next" => self.fail_next(k, target),
            "load" => {
                self.reject(k, ev.signal.as_ref().map(|s| s.span()), "signal")?;
                self.reject(k, ev.generation.as_ref().map(|s| s.span()), "generation")?;
                self.reject(k, ev.mode.as_ref().map(|s| s.span()), "mode")?;
                let Some(p) = &ev.profile else {
                    return Err(self.err(
                        ev.action.span(),
                        &k.f("profile"),
                        format!(
                            "`{}` = \"load\" needs `profile`, e.g. profile = \"burst\"",
                            k.f("action")
                        ),
                    ));
                };
                let profile = self.profile(p, &k.f("profile"))?;
                if protocol == Protocol::Banner {
                    self.banner_profile(profile, Some(p.span()), &k.f("profile"))?;
                }
                Ok(Action::Load { profile })
            }
            other => Err(self.err(
                ev.action.span(),
                &k.f("action"),
                format!(
                    "`{}` must be \"restart\", \"stop\", \"kill\", \"fail-next\" or \"load\", got \"{other}\"",
                    k.f("action")
                ),
            )),
        }
    }

    /// `action = "kill"`: a signal (SIGKILL by default) and which generation.
    fn kill(&self, k: &Keys) -> Result<Action, ScenarioError> {
        let ev = k.ev;
        self.reject(k, ev.profile.as_ref().map(|s| s.span()), "profile")?;
        self.reject(k, ev.mode.as_ref().map(|s| s.span()), "mode")?;
        let signal = match &ev.signal {
            Some(s) => self.signal(s, &k.f("signal"))?,
            None => "SIGKILL".to_string(),
        };
        let generation = match &ev.generation {
            None => Which::Newest,
            Some(g) => match g.get_ref() {
                toml::Value::String(s) if s == "newest" => Which::Newest,
                toml::Value::String(s) if s == "starting" => Which::Starting,
                toml::Value::String(s) if s == "next-ready" => Which::NextReady,
                toml::Value::Integer(n) if (1..=i64::from(u32::MAX)).contains(n) => {
                    Which::Number(to_u32(*n))
                }
                other => {
                    return Err(self.err(
                        g.span(),
                        &k.f("generation"),
                        format!(
                            "`{}` must be a generation number from 1, \"newest\", \"starting\" or \"next-ready\", got {other}",
                            k.f("generation")
                        ),
                    ));
                }
            },
        };
        Ok(Action::Kill { signal, generation })
    }

    /// `action = "fail-next"`: a mode, and a target that has a `fail-next-file`.
    fn fail_next(&self, k: &Keys, target: &TargetSpec) -> Result<Action, ScenarioError> {
        let ev = k.ev;
        self.reject(k, ev.profile.as_ref().map(|s| s.span()), "profile")?;
        self.reject(k, ev.signal.as_ref().map(|s| s.span()), "signal")?;
        self.reject(k, ev.generation.as_ref().map(|s| s.span()), "generation")?;
        if target.fail_next_file.is_none() {
            return Err(self.err(
                ev.action.span(),
                &k.f("action"),
                format!(
                    "`{}` = \"fail-next\" needs `target.fail-next-file`, e.g. fail-next-file = \"{{dir}}/fail\"",
                    k.f("action")
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
                    &k.f("mode"),
                    format!(
                        "`{}` must be \"crash\", \"exit\" or \"hang\", got \"{}\"",
                        k.f("mode"),
                        m.get_ref()
                    ),
                ));
            }
            None => {
                return Err(self.err(
                    ev.action.span(),
                    &k.f("mode"),
                    format!(
                        "`{}` = \"fail-next\" needs `mode` = \"crash\", \"exit\" or \"hang\"",
                        k.f("action")
                    ),
                ));
            }
        };
        Ok(Action::FailNext { mode })
    }

    /// Nothing may follow the final stop, there is at most one, and it comes after every
    /// event before it in the file. `stop_at` is the stop seen so far (its time and index).
    fn stop_order(
        &self,
        k: &Keys,
        action: &Action,
        events: &[Event],
        stop_at: &mut Option<(i64, usize)>,
    ) -> Result<(), ScenarioError> {
        let ev = k.ev;
        let at = *ev.at_ms.get_ref();
        if let Some((stop_ms, stop_i)) = *stop_at
            && at >= stop_ms
        {
            return Err(self.err(
                ev.at_ms.span(),
                &k.f("at-ms"),
                format!(
                    "`{}` = {at} is at or after the stop at events[{stop_i}] ({stop_ms} ms): nothing may follow the final stop",
                    k.f("at-ms")
                ),
            ));
        }
        if *action != Action::Stop {
            return Ok(());
        }
        if let Some((_, stop_i)) = *stop_at {
            return Err(self.err(
                ev.action.span(),
                &k.f("action"),
                format!("only one \"stop\" event is allowed, events[{stop_i}] is already one"),
            ));
        }
        if let Some((j, _)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| e.at.as_millis() >= at as u128)
        {
            return Err(self.err(
                ev.at_ms.span(),
                &k.f("at-ms"),
                format!(
                    "the stop at {at} ms must come after every other event, but events[{j}] is not earlier"
                ),
            ));
        }
        *stop_at = Some((at, k.i));
        Ok(())
    }
}
