//! Validation of `[[events]]`: each event's action and the keys it takes, and the order the
//! final stop imposes.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::ScenarioError;
use super::raw::RawEvent;
use super::validate::{Validator, to_u32};
use crate::model::{Action, Event, TargetSpec, Which};

impl Validator<'_> {
    pub(super) fn events(
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
}
