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

use crate::model::{
    Action, ConnRecord, GenerationRecord, Injected, Invariant, Outcome, ProcessRecord, RunRecord,
    Scenario, Verdict,
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

pub use judge::{Expected, Judged, ScenarioResult, judge};

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

/// `gen 2 (pid 4242)`.
pub(crate) fn gen_name(g: &GenerationRecord) -> String {
    format!("gen {} (pid {})", g.generation, g.pid)
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

/// A new generation that has not been seen within this long of the restart that asked for it
/// may simply not have been polled yet: a restart that follows that closely joins the upgrade.
pub(crate) const JOIN_GRACE: Duration = Duration::from_millis(50);

/// One upgrade as the harness saw it: the restart that began it, the restarts that arrived
/// while it was in flight (and so must not start anything more), and when the next upgrade
/// began (or the run ended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Upgrade {
    pub start: Duration,
    /// The pid the restart that began it was sent to, if known.
    pub to: Option<u32>,
    pub joined: Vec<Duration>,
    pub end: Duration,
}

/// The injected restarts grouped into upgrades, in time order.
pub(crate) fn upgrades(r: &RunRecord) -> Vec<Upgrade> {
    let mut out: Vec<Upgrade> = Vec::new();
    for restart in restarts(r) {
        match out.last_mut() {
            Some(u) if in_flight(r, u.start, restart) => u.joined.push(restart.at),
            _ => out.push(Upgrade {
                start: restart.at,
                to: restart.pid,
                joined: Vec::new(),
                end: r.end,
            }),
        }
    }
    let starts: Vec<Duration> = out.iter().map(|u| u.start).collect();
    for (u, next) in out.iter_mut().zip(starts.iter().skip(1)) {
        u.end = *next;
    }
    out
}

/// Whether the upgrade begun at `start` was still in flight at `at`: a new generation, or a
/// child of a generation serving at `start`, had appeared since and was alive but not ready;
/// or the new generation was ready but the one it replaced had not exited yet; or it is so
/// soon after `start` that the child may not have been seen yet, and nothing became ready
/// (nor was a child seen to start and end) meanwhile.
fn in_flight(r: &RunRecord, start: Duration, restart: &Injected) -> bool {
    let at = restart.at;
    let ready_by = |pid: u32| {
        r.generations
            .iter()
            .any(|g| g.pid == pid && g.ready_at.is_some_and(|t| t <= at))
    };
    let alive = |exited: Option<Duration>| exited.is_none_or(|x| x > at);
    // Seen before `at` by more than the observer's granularity: a process forked by the
    // restart at `at` itself can be stamped a few milliseconds before it.
    let before_at = |seen: Duration| seen + SEEN_SKEW < at;
    // A generation, or a process forked by one serving at `start`, that this upgrade started.
    let parents: Vec<u32> = r
        .generations
        .iter()
        .filter(|g| g.listening_since <= start && alive_at(g.exited, start))
        .map(|g| g.pid)
        .collect();
    let new_generation = |g: &GenerationRecord| g.listening_since >= start;
    let new_child = |p: &ProcessRecord| p.first_seen >= start && parents.contains(&p.ppid);
    let starting_generation = r.generations.iter().any(|g| {
        new_generation(g) && before_at(g.listening_since) && alive(g.exited) && !ready_by(g.pid)
    });
    let starting_child = r
        .processes
        .iter()
        .any(|p| new_child(p) && before_at(p.first_seen) && alive(p.exited) && !ready_by(p.pid));
    if starting_generation || starting_child {
        return true;
    }
    // Handed over, but the generation it replaced still drains: until that one is gone, a
    // correct server refuses another upgrade (at most two generations alive), so a restart
    // now joins this upgrade rather than begins one. The server decides when it handles the
    // signal, a moment after it was sent: if the replaced generation was gone by the time the
    // next process appeared, the restart may rightly have begun a new upgrade.
    // Handed over: the new generation was seen ready, or the one serving at `start` stopped
    // listening (its successor's ready line or first reply may not have been read yet).
    // A generation started by this upgrade and seen ready by `at`.
    let new_ready = |g: &GenerationRecord| new_generation(g) && g.ready_at.is_some_and(|t| t <= at);
    let handed_over = r.generations.iter().any(|g| {
        new_ready(g)
            || (g.listening_since <= start
                && alive_at(g.exited, start)
                && g.stopped_listening.is_some_and(|x| x > start && x <= at))
    });
    let serving_by_then = |pid: u32| {
        r.generations
            .iter()
            .any(|g| g.pid == pid && g.ready_at.is_some_and(|t| t <= at))
    };
    // The first process that may have been started by this restart: seen no earlier than a
    // poll before it, not serving by then, and not the process the restart was sent to (a
    // generation started by this upgrade, already signalled, was not started by the signal).
    let next_process = r
        .processes
        .iter()
        .filter(|p| {
            p.first_seen + SEEN_SKEW >= at && !serving_by_then(p.pid) && restart.pid != Some(p.pid)
        })
        .map(|p| p.first_seen)
        .min();
    let replaced_draining = r.generations.iter().any(|g| {
        g.listening_since <= start
            && alive_at(g.exited, start)
            && alive(g.exited)
            && next_process.is_none_or(|next| alive_at(g.exited, next + EXIT_SKEW))
    });
    if handed_over && replaced_draining {
        return true;
    }
    // Resolved: a new generation was seen ready, or the one serving at `start` has already
    // exited (it handed over and drained; its successor's ready line or first reply may
    // simply not have been read yet), by now or before the next process appeared: the
    // server decides when it handles the signal, a moment after it was sent.
    let resolved = r.generations.iter().any(|g| {
        new_ready(g)
            || (g.listening_since <= start
                && alive_at(g.exited, start)
                && g.exited
                    .is_some_and(|x| x <= at || next_process.is_some_and(|next| x <= next)))
    });
    // Or failed: the process it started was seen, and is gone.
    let gone = |exited: Option<Duration>| exited.is_some_and(|x| x <= at);
    let failed = r
        .generations
        .iter()
        .any(|g| new_generation(g) && gone(g.exited))
        || r.processes.iter().any(|p| new_child(p) && gone(p.exited));
    at < start + JOIN_GRACE && !resolved && !failed
}

/// How much earlier than the event that caused it the observer may stamp a process: it stamps
/// everything found in one poll with the poll's start, and a poll takes a few milliseconds.
const SEEN_SKEW: Duration = Duration::from_millis(10);

/// How far apart an exit and another process's appearance must be for the harness to tell
/// their order: appearances are stamped up to a poll early, exits when the reaper gets to
/// them, and both drift on a loaded machine.
pub(crate) const EXIT_SKEW: Duration = Duration::from_millis(50);

fn alive_at(exited: Option<Duration>, at: Duration) -> bool {
    exited.is_none_or(|x| x > at)
}

/// The generation serving at `at`: the newest one that was ready by then and had not exited.
pub(crate) fn serving_at(r: &RunRecord, at: Duration) -> Option<&GenerationRecord> {
    r.generations
        .iter()
        .filter(|g| g.ready_at.is_some_and(|t| t <= at) && g.exited.is_none_or(|x| x > at))
        .max_by_key(|g| g.generation)
}

/// Hand-built records for the checkers' unit tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::model::{
        Action, ConnRecord, Event, Expect, GenerationRecord, Injected, JournalSummary, LoadSpec,
        Outcome, ProcessRecord, Profile, Protocol, Ready, RunRecord, Scenario, ServedBy, SignalTo,
        TargetSpec, Trigger,
    };

    pub fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Echo target, drain 1000 ms, stop 2000 ms, slack 500 ms, takeover within 1000 ms.
    pub fn scenario() -> Scenario {
        Scenario {
            path: PathBuf::from("fixture.toml"),
            id: "fixture".into(),
            description: "fixture".into(),
            requirement: "MUST".into(),
            target: TargetSpec {
                command: vec!["{bin}/handoff-echo".into()],
                env: BTreeMap::new(),
                connect: "127.0.0.1:{port}".into(),
                ready: Ready::Connect,
                ready_timeout: ms(5000),
                restart: Some(Trigger::Signal {
                    signal: "SIGHUP".into(),
                    to: SignalTo::Main,
                }),
                stop: Trigger::Signal {
                    signal: "SIGTERM".into(),
                    to: SignalTo::Main,
                },
                stop_timeout: ms(2000),
                drain_timeout: ms(1000),
                fail_next_file: Some("{dir}/fail".into()),
                pid_file: None,
            },
            load: LoadSpec {
                profile: Profile::Short,
                protocol: Protocol::Line,
                clients: 4,
                requests_per_conn: 1,
                interval: ms(10),
                ramp: Duration::ZERO,
                connect_timeout: ms(1000),
                reply_timeout: ms(3000),
                burst_size: 0,
            },
            events: vec![Event::at(ms(1000), Action::Restart)],
            expect: Expect {
                pass: vec![],
                fail: vec![],
                drain_slack: ms(500),
                takeover_within: ms(1000),
            },
            duration: ms(3000),
        }
    }

    pub fn generation(
        n: u32,
        pid: u32,
        listening: u64,
        ready: Option<u64>,
        exited: Option<u64>,
    ) -> GenerationRecord {
        GenerationRecord {
            generation: n,
            pid,
            listening_since: ms(listening),
            ready_at: ready.map(ms),
            stopped_listening: None,
            exited: exited.map(ms),
            status: exited.map(|_| "exit 0".into()),
            listen_inodes: vec![77],
            fd_samples: vec![],
        }
    }

    pub fn process(pid: u32, ppid: u32, first_seen: u64, exited: Option<u64>) -> ProcessRecord {
        ProcessRecord {
            pid,
            ppid,
            cmdline: "handoff-echo --listen 127.0.0.1:4000".into(),
            first_seen: ms(first_seen),
            exited: exited.map(ms),
            status: exited.map(|_| "exit 0".into()),
        }
    }

    pub fn injected(at: u64, action: Action) -> Injected {
        Injected {
            at: ms(at),
            action,
            pid: Some(100),
            error: None,
            open_connections: 0,
        }
    }

    pub fn conn(
        id: u64,
        started: u64,
        connected: Option<u64>,
        done: u64,
        outcome: Outcome,
        pid: Option<u32>,
    ) -> ConnRecord {
        ConnRecord {
            id,
            client: 1,
            started: ms(started),
            connected: connected.map(ms),
            first_byte: None,
            done: ms(done),
            outcome,
            replies: 0,
            pid,
            detail: String::new(),
        }
    }

    /// A clean run: gen 1 (pid 100) ready at 100 ms; a restart at 1000 ms; gen 2 (pid 200)
    /// ready at 1050 ms; gen 1 exits at 1100 ms; final stop at 2500 ms; gen 2 exits at 2600 ms.
    /// 1000 connections, all ok; both pids served.
    pub fn clean_run() -> RunRecord {
        let mut outcomes: BTreeMap<String, u64> = Outcome::ALL
            .iter()
            .map(|o| (o.id().to_string(), 0))
            .collect();
        outcomes.insert("ok".into(), 1000);
        let mut served_by = BTreeMap::new();
        served_by.insert(
            100,
            ServedBy {
                replies: 500,
                first_reply: ms(110),
                last_reply: ms(1060),
            },
        );
        served_by.insert(
            200,
            ServedBy {
                replies: 500,
                first_reply: ms(1055),
                last_reply: ms(2490),
            },
        );
        RunRecord {
            first_ready: Some(ms(100)),
            final_stop: Some(ms(2500)),
            end: ms(2700),
            injected: vec![
                injected(1000, Action::Restart),
                injected(2500, Action::Stop),
            ],
            processes: vec![
                process(100, 1, 0, Some(1100)),
                process(200, 100, 1010, Some(2600)),
            ],
            generations: vec![
                generation(1, 100, 5, Some(100), Some(1100)),
                generation(2, 200, 1010, Some(1050), Some(2600)),
            ],
            journal: JournalSummary {
                connections: 1000,
                replies: 1000,
                outcomes,
                served_by,
                // A steady load: connections start in every 10 ms from 100 ms to 2500 ms.
                starts: (0..250).map(|b| u32::from(b >= 10)).collect(),
                ..JournalSummary::default()
            },
            killed_at_end: vec![],
            harness: Default::default(),
        }
    }

    /// Record a failed connection, keeping `outcomes` consistent.
    pub fn add_failure(r: &mut RunRecord, c: ConnRecord) {
        *r.journal
            .outcomes
            .entry(c.outcome.id().to_string())
            .or_insert(0) += 1;
        if let Some(ok) = r.journal.outcomes.get_mut("ok") {
            *ok = ok.saturating_sub(1);
        }
        r.journal.failures.push(c);
    }

    pub fn is_pass(v: &crate::model::Verdict) -> bool {
        matches!(v, crate::model::Verdict::Pass { .. })
    }
    pub fn is_fail(v: &crate::model::Verdict) -> bool {
        matches!(v, crate::model::Verdict::Fail { .. })
    }
    pub fn is_unknown(v: &crate::model::Verdict) -> bool {
        matches!(v, crate::model::Verdict::Unknown { .. })
    }
    /// The evidence of a failure, joined, for `contains` assertions.
    pub fn evidence(v: &crate::model::Verdict) -> String {
        match v {
            crate::model::Verdict::Fail { summary, evidence } => {
                format!("{summary}\n{}", evidence.join("\n"))
            }
            crate::model::Verdict::Pass { summary } => summary.clone(),
            crate::model::Verdict::Unknown { reason } => reason.clone(),
        }
    }
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
    fn restarts_join_an_upgrade_only_while_it_is_in_flight() {
        let mut r = clean_run();
        // 1 ms apart: the child cannot have been seen yet.
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1001, Action::Restart),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].joined, vec![ms(1001)]);
        assert_eq!(u[0].end, r.end);

        // 100 ms apart with a hung child alive and not ready: joined.
        let mut r = clean_run();
        r.generations.truncate(1);
        r.generations[0].exited = Some(ms(2600));
        r.processes = vec![
            process(100, 1, 0, Some(2600)),
            process(150, 100, 1005, Some(1500)),
        ];
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1100, Action::Restart),
        ];
        assert_eq!(upgrades(&r).len(), 1);

        // The same, after the failed child is gone: a new upgrade.
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1600, Action::Restart),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].end, ms(1600));
    }

    #[test]
    fn a_restart_just_after_the_handover_joins_it_while_the_old_one_drains() {
        // From a real run: gen 2 was ready at 286 ms, the second signal of a burst came at
        // 288 ms (to gen 2, which refused it: gen 1 was still draining, until 291 ms).
        let mut r = clean_run();
        r.injected = vec![
            injected(283, Action::Restart),
            injected(288, Action::Restart),
        ];
        r.generations = vec![
            generation(1, 100, 1, Some(3), Some(291)),
            generation(2, 200, 284, Some(286), Some(1509)),
        ];
        r.processes = vec![
            process(100, 1, 1, Some(291)),
            process(200, 100, 284, Some(1509)),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(288)]);
    }

    #[test]
    fn a_restart_sent_to_the_new_generation_as_the_old_one_exits_begins_an_upgrade() {
        // From a real run: a burst to gen 2 started gen 3; its last signal went to gen 3 (the
        // pid file already named it) as gen 2 exited, and before gen 3's ready line was read.
        // Gen 3 rightly began the next upgrade: gen 2 was gone before gen 4 appeared.
        let burst = |to_gen2: &[u64], to_gen3: u64| {
            let mut all: Vec<Injected> = to_gen2
                .iter()
                .map(|at| {
                    let mut i = injected(*at, Action::Restart);
                    i.pid = Some(200);
                    i
                })
                .collect();
            let mut last = injected(to_gen3, Action::Restart);
            last.pid = Some(300);
            all.push(last);
            all
        };
        let mut r = clean_run();
        r.injected = burst(&[553, 555, 556], 557);
        r.generations = vec![
            generation(1, 100, 1, Some(3), Some(366)),
            generation(2, 200, 367, Some(367), Some(558)),
            generation(3, 300, 555, Some(559), Some(560)),
            generation(4, 400, 562, Some(560), Some(1504)),
        ];
        r.processes = vec![
            process(100, 1, 1, Some(366)),
            process(200, 1, 367, Some(558)),
            process(300, 200, 555, Some(560)),
            process(400, 1, 562, Some(1504)),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(555), ms(556)]);
        assert_eq!(u[1].start, ms(557));

        // Gen 2 still draining when gen 4 appeared: the last signal joined the first upgrade,
        // which then started two processes.
        r.generations[1].exited = Some(ms(600));
        r.processes[1].exited = Some(ms(600));
        let u = upgrades(&r);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(555), ms(556), ms(557)]);
    }

    #[test]
    fn a_restart_after_the_failed_child_is_gone_begins_an_upgrade() {
        // From a real run: two restarts 40 ms apart, each armed to crash its child; the first
        // child was gone 35 ms before the second restart, which rightly started another.
        let mut r = clean_run();
        r.injected = vec![
            injected(399, Action::Restart),
            injected(439, Action::Restart),
        ];
        r.generations = vec![
            generation(1, 100, 2, Some(8), Some(1510)),
            generation(2, 200, 400, None, Some(404)),
            generation(3, 300, 440, None, Some(444)),
        ];
        r.processes = vec![
            process(100, 1, 2, Some(1510)),
            process(200, 100, 400, Some(404)),
            process(300, 100, 440, Some(444)),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 2, "{u:?}");
        // While the child still lived, the second restart would have joined its upgrade.
        r.generations[1].exited = Some(ms(460));
        r.processes[1].exited = Some(ms(460));
        assert_eq!(upgrades(&r).len(), 1);
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
