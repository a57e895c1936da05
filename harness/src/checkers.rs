//! The invariant checkers: one module per invariant, each a pure function from a scenario and
//! the record of its run to a [`Verdict`].
//!
//! Checkers judge only evidence that is in the [`RunRecord`]. When the evidence an invariant
//! needs is absent (no restart was injected, replies carry no pid, the journal dropped failure
//! records past its cap), the verdict is Unknown with the reason, never a silent Pass: a harness
//! that passes a server it did not actually test is worse than none.
//!
//! Times in evidence lines are offsets from the run's start, written `t=1.234s`. [`judge`]
//! puts every verdict beside what the scenario expects of it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use crate::model::infer::SEEN_SKEW;
use crate::model::{
    Action, ConnRecord, Generation, Injected, Invariant, Lineage, Outcome, RunRecord, Scenario,
    Verdict, Which,
};

pub mod clean_stop;
pub mod drains_then_exits;
pub mod fd_stable;
mod judge;
pub mod no_dropped;
pub mod no_refused;
pub mod rollback;
pub mod single_upgrade;
pub mod takes_over;
mod upgrades;

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod recorded_tests;

pub(crate) use crate::model::infer::EXIT_SKEW;
pub use judge::{DropCounts, Expected, Judged, ScenarioResult, judge};
pub(crate) use upgrades::{Upgrade, upgrades};

/// At most this many evidence lines per verdict; the rest are summarised in one line.
pub const MAX_EVIDENCE: usize = 20;

/// Judge one invariant.
pub fn check(invariant: Invariant, s: &Scenario, r: &RunRecord) -> Verdict {
    if r.first_ready.is_none() {
        return unknown("the target was never seen ready, so nothing was tested");
    }
    let checker: fn(&Scenario, &RunRecord) -> Verdict = match invariant {
        Invariant::NoRefused => no_refused::check,
        Invariant::NoDropped => no_dropped::check,
        Invariant::DrainsThenExits => drains_then_exits::check,
        Invariant::SingleUpgrade => single_upgrade::check,
        Invariant::TakesOver => takes_over::check,
        Invariant::Rollback => rollback::check,
        Invariant::CleanStop => clean_stop::check,
        Invariant::FdStable => fd_stable::check,
    };
    // A checker that crashes has not decided anything: Unknown, never Pass (nor a lost run).
    match catch_unwind(AssertUnwindSafe(|| checker(s, r))) {
        Ok(verdict) => verdict,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            unknown(format!("the {invariant} checker crashed: {why}"))
        }
    }
}

/// Every invariant's verdict, in [`Invariant::ALL`] order.
pub fn check_all(s: &Scenario, r: &RunRecord) -> Vec<(Invariant, Verdict)> {
    Invariant::ALL
        .into_iter()
        .map(|i| (i, check(i, s, r)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the checkers.
// ---------------------------------------------------------------------------------------------

pub(crate) fn pass(summary: impl Into<String>) -> Verdict {
    Verdict::Pass {
        summary: summary.into(),
    }
}

/// A failure. Past [`MAX_EVIDENCE`] lines, the first ones and the last few are kept (evidence
/// is in time order, so both ends of an outage show) and the middle is counted.
pub(crate) fn fail(summary: impl Into<String>, mut evidence: Vec<String>) -> Verdict {
    const TAIL: usize = 3;
    if evidence.len() > MAX_EVIDENCE {
        let more = evidence.len() - MAX_EVIDENCE;
        let tail = evidence.split_off(evidence.len() - TAIL);
        evidence.truncate(MAX_EVIDENCE - TAIL);
        evidence.push(format!("... {more} more ..."));
        evidence.extend(tail);
    }
    Verdict::Fail {
        summary: summary.into(),
        evidence,
    }
}

/// `, the first at t=.., the last at t=..` for a set of failed connections, empty for one.
pub(crate) fn span_of(conns: &[&ConnRecord]) -> String {
    let first = conns.iter().map(|c| c.started).min();
    let last = conns.iter().map(|c| c.started).max();
    match (first, last) {
        (Some(a), Some(b)) if conns.len() > 1 => {
            format!(", the first started {}, the last {}", ts(a), ts(b))
        }
        _ => String::new(),
    }
}

pub(crate) fn unknown(reason: impl Into<String>) -> Verdict {
    Verdict::Unknown {
        reason: reason.into(),
    }
}

/// `t=1.234s`.
pub(crate) fn ts(d: Duration) -> String {
    format!("t={:.3}s", d.as_secs_f64())
}

/// `1.234s` (a length of time, not an instant).
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// One evidence line for a failed connection: which, when, what, served by whom.
pub(crate) fn conn_line(c: &ConnRecord) -> String {
    let mut line = format!(
        "connection #{} (client {}) started {}",
        c.id,
        c.client,
        ts(c.started)
    );
    if let Some(at) = c.connected {
        line.push_str(&format!(", connected {}", ts(at)));
    }
    line.push_str(&format!(", ended {}: {}", ts(c.done), c.outcome.id()));
    if c.outcome == Outcome::Timeout && c.connected.is_none() {
        line.push_str(" (connect never completed)");
    }
    line.push_str(&format!(" after {} complete replies", c.replies));
    match c.pid {
        Some(pid) => line.push_str(&format!(", served by pid {pid}")),
        None => line.push_str(", no pid seen"),
    }
    if !c.detail.is_empty() {
        line.push_str(&format!(": {}", c.detail));
    }
    line
}

/// The generations of the run, as [`crate::model::infer`] finds them in its evidence (with the
/// scenario's `target.shape`, if it states one).
pub(crate) fn lineage(s: &Scenario, r: &RunRecord) -> Lineage {
    crate::model::infer(r, s.target.shape)
}

/// When the judged window of the run ends: the final stop, or the end if none was recorded.
pub(crate) fn stop_or_end(r: &RunRecord) -> Duration {
    r.final_stop.unwrap_or(r.end)
}

/// How many connections with one of `outcomes` the journal counted but did not keep in full.
pub(crate) fn unkept(r: &RunRecord, outcomes: &[Outcome]) -> u64 {
    let counted: u64 = outcomes
        .iter()
        .map(|o| r.journal.outcomes.get(o.id()).copied().unwrap_or(0))
        .sum();
    let kept = r
        .journal
        .failures
        .iter()
        .filter(|c| outcomes.contains(&c.outcome))
        .count() as u64;
    counted.saturating_sub(kept)
}

/// How long before the final stop a connect may have completed and still sit unaccepted in the
/// listening socket's queue when the stop closes it.
pub(crate) const STOP_RACE: Duration = Duration::from_millis(20);

/// A connection the final stop caught in the accept queue: its connect completed just before
/// the stop, and it was cut after the stop with not one byte received. The harness stops the
/// load only once the stop is triggered, so a few connects race it; a stopping server may
/// refuse new connections, and one queued as it closes its listener is one of them. Not judged.
pub(crate) fn cut_by_stop(r: &RunRecord, c: &ConnRecord) -> bool {
    let Some(stop) = r.final_stop else {
        return false;
    };
    matches!(c.outcome, Outcome::Reset | Outcome::Short)
        && c.replies == 0
        && c.first_byte.is_none()
        && c.done >= stop
        && c.connected.unwrap_or(c.started) + STOP_RACE >= stop
}

/// `; N connection(s) could not be attempted ...` when the load hit the harness's own limits (no
/// local port, no descriptor): what passed was judged, on a lighter load than asked.
pub(crate) fn harness_note(r: &RunRecord) -> String {
    match r.journal.harness_errors {
        0 => String::new(),
        n => format!(
            "; {n} connection(s) could not be attempted on the harness's side ({}), so the load was lighter than asked",
            r.journal
                .harness_error_example
                .as_deref()
                .unwrap_or("no detail")
        ),
    }
}

/// Restarts the harness did inject (an injection that failed did not happen), in time order.
pub(crate) fn restarts(r: &RunRecord) -> Vec<&Injected> {
    let mut out: Vec<&Injected> = r
        .injected
        .iter()
        .filter(|i| i.action == Action::Restart && i.error.is_none())
        .collect();
    out.sort_by_key(|i| i.at);
    out
}

/// When the upgrade that started `h` began: the last restart injected from `since` on and at
/// most a poll after `h` was first seen (a process forked by a signal may be stamped by the
/// poll that began just before it), or `h`'s appearance if none was (a server that upgrades on
/// its own); never later than that appearance.
pub(crate) fn upgrade_began(r: &RunRecord, since: Duration, h: &Generation) -> Duration {
    restarts(r)
        .into_iter()
        .map(|i| i.at)
        .filter(|at| *at >= since && *at <= h.started + SEEN_SKEW)
        .max()
        .unwrap_or(h.started)
        .min(h.started)
}

/// Why no restart was injected: `no restart was injected`, plus the errors of restart
/// injections that failed (a missing pid file, a dead pid), which are the real story.
pub(crate) fn no_restart_reason(r: &RunRecord) -> String {
    let failed: Vec<String> = r
        .injected
        .iter()
        .filter(|i| i.action == Action::Restart)
        .filter_map(|i| {
            i.error
                .as_ref()
                .map(|e| format!("the restart at {} failed: {e}", ts(i.at)))
        })
        .collect();
    if failed.is_empty() {
        "no restart was injected".to_string()
    } else {
        format!("no restart was injected ({})", failed.join("; "))
    }
}

/// The `fail-next` mode armed for the restart at `at`: a fail-next injected after the previous
/// restart and no later than this one. The next generation started reads the file, so only the
/// first restart after a fail-next is expected to fail.
pub(crate) fn fail_next_before(r: &RunRecord, at: Duration) -> Option<String> {
    let previous = restarts(r)
        .into_iter()
        .map(|i| i.at)
        .filter(|t| *t < at)
        .max();
    r.injected
        .iter()
        .filter(|i| i.error.is_none() && i.at <= at && previous.is_none_or(|p| i.at > p))
        .filter_map(|i| match &i.action {
            Action::FailNext { mode } => Some(mode.clone()),
            _ => None,
        })
        .next_back()
}

/// The kill the scenario armed for the generation the restart at `at` started: a `kill` of
/// the next generation to report ready that fired after `at` and before any later restart.
/// Its pid and when it fired.
pub(crate) fn killed_on_ready_after(r: &RunRecord, at: Duration) -> Option<(u32, Duration)> {
    let next = restarts(r)
        .into_iter()
        .map(|i| i.at)
        .filter(|t| *t > at)
        .min();
    r.injected
        .iter()
        .filter(|i| i.at >= at && next.is_none_or(|n| i.at < n))
        .find_map(|i| match (&i.action, i.pid, &i.error) {
            (
                Action::Kill {
                    generation: Which::NextReady,
                    ..
                },
                Some(pid),
                None,
            ) => Some((pid, i.at)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn all_unknown_when_never_ready() {
        let mut r = clean_run();
        r.first_ready = None;
        let verdicts = check_all(&scenario(), &r);
        assert_eq!(verdicts.len(), 8);
        assert!(verdicts.iter().all(|(_, v)| is_unknown(v)));
        assert_eq!(
            verdicts.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            Invariant::ALL.to_vec()
        );
    }

    #[test]
    fn fail_next_is_matched_to_the_next_restart_only() {
        let mut r = clean_run();
        r.injected = vec![
            injected(
                500,
                Action::FailNext {
                    mode: "crash".into(),
                },
            ),
            injected(1000, Action::Restart),
            injected(1500, Action::Restart),
        ];
        assert_eq!(fail_next_before(&r, ms(1000)).as_deref(), Some("crash"));
        assert_eq!(fail_next_before(&r, ms(1500)), None);
    }

    #[test]
    fn a_failed_restart_injection_is_named() {
        let mut r = clean_run();
        r.injected[0].error = Some("no pid file yet".into());
        assert_eq!(
            no_restart_reason(&r),
            "no restart was injected (the restart at t=1.000s failed: no pid file yet)"
        );
        let v = check(Invariant::TakesOver, &scenario(), &r);
        assert!(
            matches!(&v, Verdict::Unknown { reason } if reason.contains("no pid file yet")),
            "{v:?}"
        );
    }

    #[test]
    fn evidence_is_capped() {
        let v = fail("x", (0..30).map(|i| i.to_string()).collect());
        match v {
            Verdict::Fail { evidence, .. } => {
                assert_eq!(evidence.len(), MAX_EVIDENCE + 1);
                assert_eq!(evidence[MAX_EVIDENCE - 3], "... 10 more ...");
                assert_eq!(evidence[0], "0");
                assert_eq!(evidence[MAX_EVIDENCE], "29");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
