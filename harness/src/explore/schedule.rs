//! Schedules: the steps a case takes ([`Step`]) at their times, and how they become a
//! scenario's `[[events]]`; the simpler schedules shrinking may try.

use crate::model::{Invariant, Profile};

/// What the next generation is made to do by a `fail-next` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    Crash,
    Exit,
    Hang,
}

impl FailMode {
    fn name(self) -> &'static str {
        match self {
            FailMode::Crash => "crash",
            FailMode::Exit => "exit",
            FailMode::Hang => "hang",
        }
    }
}

/// One thing a schedule does, simplest first (shrinking moves towards the earlier ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// One restart signal (after the previous generation's drain).
    Restart,
    /// `signals` restart signals `gap_ms` apart; only the first waits for a drain.
    Burst { signals: u8, gap_ms: u8 },
    /// Restart, and SIGKILL the newest generation `after_ms` later, once it serves.
    KillAfterReady { after_ms: u16 },
    /// Switch the load to another profile.
    Switch { profile: Profile },
    /// Arm the next generation to fail, then restart.
    FailedRestart { mode: FailMode },
    /// Arm the next generation to hang, restart, and SIGKILL it `after_ms` later, before it
    /// could be ready.
    KillBeforeReady { after_ms: u16 },
}

/// A step at an offset from the first readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed {
    pub step: Step,
    pub at_ms: u64,
}

/// A drawn schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub steps: Vec<Timed>,
    /// An early final stop (SIGTERM, or whatever `target.stop` is); steps from then on are
    /// dropped.
    pub stop_at: Option<u64>,
}

/// Invariants that are not judged when a schedule kills a serving generation on purpose.
const SERVICE_INVARIANTS: [Invariant; 5] = [
    Invariant::NoRefused,
    Invariant::NoDropped,
    Invariant::DrainsThenExits,
    Invariant::TakesOver,
    Invariant::Rollback,
];

/// Steps start on multiples of this.
pub(super) const TIME_GRID_MS: u64 = 10;

/// The room a step needs after its own time (a burst's later signals, a kill).
pub(super) const STEP_TAIL_MS: u64 = 450;

impl Schedule {
    /// Whether a step kills a serving generation on purpose.
    pub fn breaks_service(&self) -> bool {
        self.kept()
            .any(|t| matches!(t.step, Step::KillAfterReady { .. }))
    }

    /// The invariants this schedule is judged by.
    pub fn judged(&self) -> Vec<Invariant> {
        Invariant::ALL
            .into_iter()
            .filter(|i| !(self.breaks_service() && SERVICE_INVARIANTS.contains(i)))
            .collect()
    }

    /// Simpler schedules proptest's shrinking cannot reach, each with fewer events: it only
    /// drops steps and simplifies each in place, so a failure first drawn with a burst keeps
    /// the burst's refused signals even when what it needed was the restarts that got
    /// through. A burst of three or more signals becomes two restarts, one grid step apart,
    /// each waiting for the drain before it. With `again` (once a rewrite was adopted, after
    /// which proptest's own simplifications are worth trying again), the schedules without
    /// one of the steps come first, then those with one burst made a single restart.
    pub fn fewer_events(&self, again: bool) -> Vec<Schedule> {
        let mut out = Vec::new();
        let with = |steps| Schedule {
            steps,
            stop_at: self.stop_at,
        };
        if again && self.steps.len() > 1 {
            for i in 0..self.steps.len() {
                let mut steps = self.steps.clone();
                steps.remove(i);
                out.push(with(steps));
            }
        }
        if again {
            for (i, t) in self.steps.iter().enumerate() {
                if let Step::Burst { .. } = t.step {
                    let mut steps = self.steps.clone();
                    steps[i].step = Step::Restart;
                    out.push(with(steps));
                }
            }
        }
        for (i, t) in self.steps.iter().enumerate() {
            if let Step::Burst { signals, .. } = t.step
                && signals >= 3
            {
                let mut steps = self.steps.clone();
                let restart = |at_ms| Timed {
                    step: Step::Restart,
                    at_ms,
                };
                steps.splice(i..=i, [restart(t.at_ms), restart(t.at_ms + TIME_GRID_MS)]);
                out.push(with(steps));
            }
        }
        out
    }

    fn kept(&self) -> impl Iterator<Item = &Timed> {
        self.steps
            .iter()
            .filter(|t| self.stop_at.is_none_or(|s| t.at_ms < s))
    }

    /// One line per event, e.g. `at-ms = 100, action = "restart", after-drain = true`.
    pub fn describe(&self, duration_ms: u64) -> Vec<String> {
        self.events(duration_ms)
            .iter()
            .map(|t| {
                let fields: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                fields.join(", ")
            })
            .collect()
    }

    /// The schedule as `[[events]]` tables, sorted by time (ties keep their order), each time
    /// below `duration_ms`.
    pub fn events(&self, duration_ms: u64) -> Vec<toml::Table> {
        let last = duration_ms.saturating_sub(1);
        let mut out: Vec<(u64, toml::Table)> = Vec::new();
        let mut push = |at: u64, action: &str, extra: &[(&str, toml::Value)]| {
            let mut t = toml::Table::new();
            t.insert("at-ms".into(), toml::Value::Integer(at.min(last) as i64));
            t.insert("action".into(), toml::Value::String(action.into()));
            for (k, v) in extra {
                t.insert((*k).into(), v.clone());
            }
            out.push((at.min(last), t));
        };
        let waits = [("after-drain", toml::Value::Boolean(true))];
        let kill = |which: &str| {
            [
                ("signal", toml::Value::String("SIGKILL".into())),
                ("generation", toml::Value::String(which.into())),
            ]
        };
        let fail = |mode: FailMode| [("mode", toml::Value::String(mode.name().into()))];
        let mut kept: Vec<&Timed> = self.kept().collect();
        kept.sort_by_key(|t| t.at_ms);
        for Timed { step, at_ms: at } in kept {
            let at = *at;
            match step {
                Step::Restart => push(at, "restart", &waits),
                Step::Switch { profile } => push(
                    at,
                    "load",
                    &[("profile", toml::Value::String(profile.name().into()))],
                ),
                Step::Burst { signals, gap_ms } => {
                    push(at, "restart", &waits);
                    for k in 1..u64::from(*signals) {
                        push(at + k * u64::from(*gap_ms), "restart", &[]);
                    }
                }
                Step::FailedRestart { mode } => {
                    push(at, "fail-next", &fail(*mode));
                    push(at, "restart", &waits);
                }
                Step::KillBeforeReady { after_ms } => {
                    push(at, "fail-next", &fail(FailMode::Hang));
                    push(at, "restart", &waits);
                    push(at + u64::from(*after_ms), "kill", &kill("starting"));
                }
                Step::KillAfterReady { after_ms } => {
                    push(at, "restart", &waits);
                    push(at + u64::from(*after_ms), "kill", &kill("newest"));
                }
            }
        }
        if let Some(stop) = self.stop_at {
            // Nothing may follow the final stop.
            let stop = stop.min(last);
            push(stop, "stop", &[]);
            let stop_index = out.len() - 1;
            let mut i = 0;
            out.retain(|(at, _)| {
                i += 1;
                *at < stop || i - 1 == stop_index
            });
        }
        // Stable: same-time events keep the order the steps give them.
        out.sort_by_key(|(at, _)| *at);
        out.into_iter().map(|(_, t)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_become_events_in_time_order_and_stop_last() {
        let s = Schedule {
            steps: vec![
                Timed {
                    step: Step::KillBeforeReady { after_ms: 100 },
                    at_ms: 500,
                },
                Timed {
                    step: Step::Burst {
                        signals: 3,
                        gap_ms: 2,
                    },
                    at_ms: 100,
                },
                Timed {
                    step: Step::Restart,
                    at_ms: 1500,
                },
            ],
            stop_at: Some(1200),
        };
        let events = s.events(3000);
        let shown: Vec<String> = events
            .iter()
            .map(|t| format!("{} {}", t["at-ms"], t["action"].as_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            shown,
            [
                "100 restart",
                "102 restart",
                "104 restart",
                "500 fail-next",
                "500 restart",
                "600 kill",
                "1200 stop"
            ]
        );
        // Only the burst's first signal waits for a drain.
        assert_eq!(
            events[0].get("after-drain"),
            Some(&toml::Value::Boolean(true))
        );
        assert_eq!(events[1].get("after-drain"), None);
        assert!(!s.breaks_service());
        assert_eq!(s.judged().len(), Invariant::ALL.len());
    }

    #[test]
    fn a_burst_of_three_or_more_is_rewritten_as_two_restarts() {
        let timed = |step, at_ms| Timed { step, at_ms };
        let s = Schedule {
            steps: vec![
                timed(Step::Restart, 40),
                timed(
                    Step::Burst {
                        signals: 3,
                        gap_ms: 3,
                    },
                    410,
                ),
                timed(
                    Step::Burst {
                        signals: 2,
                        gap_ms: 1,
                    },
                    900,
                ),
            ],
            stop_at: Some(1200),
        };
        // Again: the three schedules without one step, the two with a burst made a restart,
        // then the rewrite.
        let again = s.fewer_events(true);
        assert_eq!(again.len(), 6);
        assert_eq!(again[0].steps, s.steps[1..]);
        assert_eq!(again[4].steps[2], timed(Step::Restart, 900));
        let rewritten = s.fewer_events(false);
        // The burst of 2 is left to proptest (it shrinks to a restart).
        assert_eq!(rewritten.len(), 1);
        assert_eq!(
            rewritten[0].steps,
            [
                timed(Step::Restart, 40),
                timed(Step::Restart, 410),
                timed(Step::Restart, 420),
                s.steps[2].clone(),
            ]
        );
        assert_eq!(rewritten[0].stop_at, Some(1200));
        assert!(rewritten[0].events(3000).len() < s.events(3000).len());
        // Every restart of the rewrite waits for the drain before it.
        assert!(
            rewritten[0].events(3000)[..3]
                .iter()
                .all(|e| e.get("after-drain") == Some(&toml::Value::Boolean(true)))
        );
    }

    #[test]
    fn killing_a_serving_generation_is_not_judged_by_the_service_invariants() {
        let s = Schedule {
            steps: vec![Timed {
                step: Step::KillAfterReady { after_ms: 200 },
                at_ms: 100,
            }],
            stop_at: None,
        };
        assert!(s.breaks_service());
        let judged = s.judged();
        assert!(judged.contains(&Invariant::SingleUpgrade));
        assert!(!judged.contains(&Invariant::NoRefused));
        // ... unless the kill falls after the stop and is dropped.
        let stopped = Schedule {
            stop_at: Some(50),
            ..s
        };
        assert!(!stopped.breaks_service());
    }

    #[test]
    fn times_are_clamped_below_the_end_of_the_run() {
        let s = Schedule {
            steps: vec![Timed {
                step: Step::KillAfterReady { after_ms: 400 },
                at_ms: 900,
            }],
            stop_at: None,
        };
        let at: Vec<i64> = s
            .events(1000)
            .iter()
            .filter_map(|t| t["at-ms"].as_integer())
            .collect();
        assert_eq!(at, [900, 999]);
    }
}
