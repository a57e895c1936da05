//! `drains-then-exits`: each superseded generation (one whose successor became ready) exits
//! after its last connection finished and within its drain deadline, `drain-timeout-ms` plus
//! `expect.drain-slack-ms` after its successor's readiness; none lingers.
//!
//! For each superseded generation it fails when the generation
//! - exited before its successor was ready (it did not wait for the handover), by more than
//!   the skew with which readiness is observed;
//! - cut a connection it was serving (reset or EOF before a full reply) while draining, other
//!   than at an exit at or after its drain deadline, where cutting idle connections is the point
//!   of the deadline;
//! - exited after the deadline, was killed by the harness at the end, or never exited.
//!
//! A generation that became ready and died while its predecessor lived, after which the
//! predecessor served again, superseded nothing: the predecessor took the service back (a
//! rollback window) and is judged against the generation that next supersedes it.

use std::time::Duration;

use crate::checkers::{conn_line, fail, gen_name, pass, secs, ts, unkept, unknown};
use crate::model::{ConnRecord, GenerationRecord, Outcome, RunRecord, Scenario, Verdict};

/// A client notices a connection cut by an exit a little after the exit itself.
const CUT_TOLERANCE: Duration = Duration::from_millis(100);
/// How much later than the truth a successor's readiness may be seen: it is the first of its
/// ready log line (read through a pipe) and its first reply (which waits for the load), while
/// its parent's exit is reaped at once. A parent that exits as soon as it is told "ready", with
/// nothing left to drain, is often reaped a millisecond before the line is read. When there is
/// no ready line, the first reply marks readiness, and it lags by up to one pause of the load's
/// clients on top of this.
const READY_SKEW: Duration = Duration::from_millis(50);

/// See the module docs.
pub fn check(s: &Scenario, r: &RunRecord) -> Verdict {
    let mut ready: Vec<&GenerationRecord> = Vec::new();
    let mut gave_back = Vec::new();
    for g in r.generations.iter().filter(|g| g.ready_at.is_some()) {
        if let Some(prev) = ready.last()
            && took_back(r, prev, g)
        {
            gave_back.push(format!(
                "{} died while {} lived, which then served again",
                gen_name(g),
                gen_name(prev)
            ));
            continue;
        }
        ready.push(g);
    }
    if ready.len() < 2 {
        return unknown(format!(
            "no generation was superseded: {} generation(s) became ready, so no drain happened",
            ready.len()
        ));
    }
    let mut evidence = Vec::new();
    let mut undecided = Vec::new();
    let mut passed = Vec::new();
    for pair in ready.windows(2) {
        let (g, next) = (pair[0], pair[1]);
        let Some(handover) = next.ready_at else {
            continue;
        };
        match superseded(s, r, g, next, handover) {
            Drain::Done(line) => passed.push(line),
            Drain::Draining(why) => undecided.push(why),
            Drain::Broken(lines) => evidence.extend(lines),
        }
    }
    if !evidence.is_empty() {
        return fail(
            "a superseded generation did not drain and exit in time",
            evidence,
        );
    }
    if !undecided.is_empty() {
        return unknown(undecided.join("; "));
    }
    let hidden = unkept(r, &[Outcome::Reset, Outcome::Short]);
    if hidden > 0 {
        // Cut connections are judged from the full records; some were not kept.
        return unknown(format!(
            "{hidden} reset or short connection(s) were counted but not kept in full, so whether a generation cut them before its deadline cannot be told"
        ));
    }
    let gave_back = match gave_back.is_empty() {
        true => String::new(),
        false => format!("; superseded nothing: {}", gave_back.join("; ")),
    };
    pass(format!(
        "{} superseded generation(s) drained and exited in time: {}{gave_back}",
        passed.len(),
        passed.join("; ")
    ))
}

/// Whether `prev` took the service back from `g`: `g` died while `prev` lived, and `prev`
/// served a reply after `g`'s death.
fn took_back(r: &RunRecord, prev: &GenerationRecord, g: &GenerationRecord) -> bool {
    let Some(died) = g.exited else {
        return false;
    };
    prev.exited.is_none_or(|e| e > died)
        && r.journal
            .served_by
            .get(&prev.pid)
            .is_some_and(|s| s.last_reply > died)
}

/// How one superseded generation's drain came out.
enum Drain {
    /// It drained and exited in time.
    Done(String),
    /// It was still draining, within its deadline, when the run ended.
    Draining(String),
    /// The evidence against it.
    Broken(Vec<String>),
}

/// Judges generation `g`, superseded by `next`, ready at `handover`.
fn superseded(
    s: &Scenario,
    r: &RunRecord,
    g: &GenerationRecord,
    next: &GenerationRecord,
    handover: Duration,
) -> Drain {
    let drain_deadline = handover + s.target.drain_timeout;
    let deadline = drain_deadline + s.expect.drain_slack;
    let why_deadline = format!(
        "deadline {} = successor {} ready {} + drain {} + slack {}",
        ts(deadline),
        gen_name(next),
        ts(handover),
        secs(s.target.drain_timeout),
        secs(s.expect.drain_slack)
    );
    let Some(exited) = g.exited else {
        if r.end > deadline {
            return Drain::Broken(vec![format!(
                "{} never exited: still alive when the run ended {}, {why_deadline}",
                gen_name(g),
                ts(r.end)
            )]);
        }
        return Drain::Draining(format!(
            "{} was still draining when the run ended {}, before its {why_deadline}",
            gen_name(g),
            ts(r.end)
        ));
    };
    let mut evidence = Vec::new();
    if r.killed_at_end.contains(&g.pid) {
        evidence.push(format!(
            "{} lingered: the harness had to kill it at {}, {why_deadline}",
            gen_name(g),
            ts(exited)
        ));
    } else if exited > deadline {
        evidence.push(format!(
            "{} exited {}, {} after its {why_deadline}",
            gen_name(g),
            ts(exited),
            secs(exited - deadline)
        ));
    }
    // Readiness seen from a reply lags by up to one pause of the load's clients.
    if exited + READY_SKEW + s.load.interval < handover {
        evidence.push(format!(
            "{} exited {} before its successor {} was ready {}",
            gen_name(g),
            ts(exited),
            gen_name(next),
            ts(handover)
        ));
    }
    let cut = cut_while_draining(r, g, handover, exited, drain_deadline);
    if !cut.is_empty() {
        evidence.push(format!(
            "{} exited {} (drain deadline {}) while {} connection(s) it served were cut before finishing:",
            gen_name(g),
            ts(exited),
            ts(drain_deadline),
            cut.len()
        ));
        evidence.extend(cut.into_iter().map(|c| format!("  {}", conn_line(c))));
    }
    if !evidence.is_empty() {
        return Drain::Broken(evidence);
    }
    Drain::Done(format!(
        "{} exited {} ({})",
        gen_name(g),
        ts(exited),
        why_deadline
    ))
}

/// The connections `g` served that were cut (reset, or EOF before a full reply) while it
/// drained, other than at an exit at or after its drain deadline.
fn cut_while_draining<'r>(
    r: &'r RunRecord,
    g: &GenerationRecord,
    handover: Duration,
    exited: Duration,
    drain_deadline: Duration,
) -> Vec<&'r ConnRecord> {
    let at_deadline = exited + CUT_TOLERANCE >= drain_deadline;
    r.journal
        .failures
        .iter()
        .filter(|c| {
            // A connection cut before any reply names no pid; one that started before the
            // handover (only this generation was accepting) and was cut as it exited is
            // taken to be its.
            let its = match c.pid {
                Some(pid) => pid == g.pid,
                None => c.started < handover && c.done + CUT_TOLERANCE >= exited,
            };
            its && matches!(c.outcome, Outcome::Reset | Outcome::Short)
                // The client can see the cut a moment before the exit is recorded.
                && c.done + CUT_TOLERANCE >= handover.min(exited)
                && c.done <= exited + CUT_TOLERANCE
                && !(at_deadline && c.done + CUT_TOLERANCE >= drain_deadline)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;

    #[test]
    fn passes_a_clean_run() {
        let v = check(&scenario(), &clean_run());
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn a_generation_killed_in_its_predecessors_rollback_window_supersedes_nothing() {
        let v = check(&scenario(), &killed_in_window());
        assert!(is_pass(&v), "{v:?}");
        // Without the predecessor serving after the death, the death is not a resume: the
        // predecessor was superseded and is judged against it.
        let mut r = killed_in_window();
        r.journal.served_by.get_mut(&100).unwrap().last_reply = ms(520);
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
    }

    #[test]
    fn unknown_when_cut_connections_were_not_kept_in_full() {
        let mut r = clean_run();
        r.journal.outcomes.insert("reset".into(), 3);
        let v = check(&scenario(), &r);
        assert!(is_unknown(&v), "{v:?}");
    }

    #[test]
    fn fails_when_exiting_past_the_deadline() {
        let mut r = clean_run();
        // Successor ready at 1.050 s + 1 s drain + 0.5 s slack = 2.550 s.
        r.generations[0].exited = Some(ms(2600));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(
            evidence(&v)
                .contains("gen 1 (pid 100) exited t=2.600s, 0.050s after its deadline t=2.550s"),
            "{}",
            evidence(&v)
        );
    }

    #[test]
    fn fails_when_lingering_or_killed() {
        let mut r = clean_run();
        r.generations[0].exited = None;
        let v = check(&scenario(), &r);
        assert!(evidence(&v).contains("never exited"), "{v:?}");

        let mut r = clean_run();
        r.generations[0].exited = Some(ms(2650));
        r.killed_at_end = vec![100];
        assert!(evidence(&check(&scenario(), &r)).contains("had to kill it"));
    }

    #[test]
    fn fails_when_exiting_before_the_successor_is_ready() {
        let mut r = clean_run();
        // An exit seen 1 ms before the successor's ready line is a matter of observation.
        r.generations[0].exited = Some(ms(1049));
        assert!(is_pass(&check(&scenario(), &r)));
        r.generations[0].exited = Some(ms(980));
        let v = check(&scenario(), &r);
        assert!(
            evidence(&v).contains("before its successor gen 2 (pid 200) was ready"),
            "{v:?}"
        );
    }

    #[test]
    fn fails_when_cutting_a_connection_before_the_drain_deadline() {
        let mut r = clean_run();
        add_failure(
            &mut r,
            conn(3, 1000, Some(1001), 1101, Outcome::Short, Some(100)),
        );
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("connection #3"), "{}", evidence(&v));
    }

    #[test]
    fn a_cut_connection_without_pid_is_attributed_by_time() {
        let mut r = clean_run();
        add_failure(
            &mut r,
            conn(4, 1000, Some(1001), 1120, Outcome::Reset, None),
        );
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("connection #4"), "{}", evidence(&v));
        // Started after the handover: the successor accepted it.
        let mut r = clean_run();
        add_failure(
            &mut r,
            conn(4, 1060, Some(1061), 1120, Outcome::Reset, None),
        );
        assert!(is_pass(&check(&scenario(), &r)));
    }

    #[test]
    fn cutting_idle_connections_at_the_deadline_is_allowed() {
        let mut r = clean_run();
        r.generations[0].exited = Some(ms(2060));
        add_failure(
            &mut r,
            conn(3, 1000, Some(1001), 2070, Outcome::Short, Some(100)),
        );
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn unknown_without_a_superseded_generation_or_when_the_run_ends_first() {
        let mut r = clean_run();
        r.generations.truncate(1);
        assert!(is_unknown(&check(&scenario(), &r)));

        let mut r = clean_run();
        r.generations[0].exited = None;
        r.end = ms(2000);
        assert!(is_unknown(&check(&scenario(), &r)));
    }
}
