//! `drains-then-exits`: each superseded generation (one whose successor became ready) exits
//! after its last connection finished and within its drain deadline, `drain-timeout-ms` plus
//! `expect.drain-slack-ms` after its successor's readiness; none lingers.
//!
//! A generation is a set of processes ([`crate::model::infer`]); supervisors are never
//! superseded. For each superseded generation it fails when
//! - a connection was cut (reset or EOF before a full reply) by one of its members, after the
//!   restart that superseded it and before the drain deadline, whatever else happened: by the pid the
//!   reply named, or, when it named none, a connection cut as a member exited, or one that began
//!   before the successor was ready and was cut while a member still lived (a member's exit is
//!   seen when it is reaped, which for a worker reaped by its master can be long after the cut);
//!   a cut at an exit at or after the drain deadline, of a connection begun before the
//!   successor was ready, is the point of the deadline, not a failure (one begun after it was
//!   accepted by a generation that should have stopped accepting);
//! - a member exited after the deadline, was killed by the harness at the end, or never exited.
//!
//! A generation that exited before its successor was ready is reported, not failed: the
//! connects and requests that found no one serving are what `no-refused` and `no-dropped` judge.
//!
//! A generation that became ready and died while its predecessor lived, after which the
//! predecessor served again, superseded nothing: the predecessor took the service back (a
//! rollback window) and is judged against the generation that next supersedes it.

use std::time::Duration;

use crate::checkers::{
    conn_line, cut_by_stop, fail, lineage, pass, secs, ts, unkept, unknown, upgrade_began,
};
use crate::model::{ConnRecord, Generation, Outcome, RunRecord, Scenario, Verdict};

/// A client notices a connection cut by an exit a little after the exit itself.
const CUT_TOLERANCE: Duration = Duration::from_millis(100);

/// See the module docs.
pub fn check(s: &Scenario, r: &RunRecord) -> Verdict {
    let l = lineage(s, r);
    let mut ready: Vec<&Generation> = Vec::new();
    let mut gave_back = Vec::new();
    for g in l.generations.iter().filter(|g| g.ready_at.is_some()) {
        if let Some(prev) = ready.last()
            && took_back(r, prev, g)
        {
            gave_back.push(format!(
                "{} died while {} lived, which then served again",
                g.name(),
                prev.name()
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
    let mut notes = Vec::new();
    for pair in ready.windows(2) {
        let (g, next) = (pair[0], pair[1]);
        match superseded(s, r, g, next) {
            Drain::Done(line, note) => {
                passed.push(line);
                notes.extend(note);
            }
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
        return unknown(format!(
            "{hidden} reset or short connection(s) were counted but not kept in full, so whether a generation cut them before its deadline cannot be told"
        ));
    }
    let gave_back = match gave_back.is_empty() {
        true => String::new(),
        false => format!("; superseded nothing: {}", gave_back.join("; ")),
    };
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!("; note: {}", notes.join("; "))
    };
    pass(format!(
        "{} superseded generation(s) drained and exited in time: {}{notes}{gave_back}",
        passed.len(),
        passed.join("; ")
    ))
}

/// Whether `prev` took the service back from `g`: `g` died while `prev` lived, and a member
/// of `prev` served a reply after `g`'s death.
fn took_back(r: &RunRecord, prev: &Generation, g: &Generation) -> bool {
    let Some(died) = g.exited else {
        return false;
    };
    prev.exited.is_none_or(|e| e > died)
        && prev.members.iter().any(|pid| {
            r.journal
                .served_by
                .get(pid)
                .is_some_and(|s| s.last_reply > died)
        })
}

enum Drain {
    /// In time; with a note when it exited before its successor was ready.
    Done(String, Option<String>),
    Draining(String),
    Broken(Vec<String>),
}

/// Judges `g`, superseded by `next` (ready).
fn superseded(s: &Scenario, r: &RunRecord, g: &Generation, next: &Generation) -> Drain {
    let handover = next.ready_at.unwrap_or(next.started);
    let drain_deadline = handover + s.target.drain_timeout;
    let deadline = drain_deadline + s.expect.drain_slack;
    let why_deadline = format!(
        "deadline {} = successor {} ready {} + drain {} + slack {}",
        ts(deadline),
        next.name(),
        ts(handover),
        secs(s.target.drain_timeout),
        secs(s.expect.drain_slack)
    );
    let mut evidence = Vec::new();
    let mut draining = Vec::new();
    for pid in &g.members {
        let exited = r
            .listeners
            .iter()
            .find(|x| x.pid == *pid)
            .and_then(|x| x.exited);
        let member = member_name(*pid, g);
        match exited {
            None if r.end > deadline => evidence.push(format!(
                "{member} never exited: still alive when the run ended {}, {why_deadline}",
                ts(r.end)
            )),
            None => draining.push(member),
            Some(x) if r.killed_at_end.contains(pid) => evidence.push(format!(
                "{member} lingered: the harness had to kill it at {}, {why_deadline}",
                ts(x)
            )),
            Some(x) if x > deadline => evidence.push(format!(
                "{member} exited {}, {} after its {why_deadline}",
                ts(x),
                secs(x - deadline)
            )),
            Some(_) => {}
        }
    }
    let cut = cut_while_draining(r, g, next, drain_deadline);
    if !cut.is_empty() {
        evidence.push(format!(
            "{} (the last exited {}, drain deadline {}) cut {} connection(s) before they finished:",
            g.name(),
            g.exited.map_or_else(|| "never".to_string(), ts),
            ts(drain_deadline),
            cut.len()
        ));
        evidence.extend(cut.into_iter().map(|c| format!("  {}", conn_line(c))));
    }
    if !evidence.is_empty() {
        return Drain::Broken(evidence);
    }
    let Some(exited) = g.exited else {
        return Drain::Draining(format!(
            "{} was still draining when the run ended {}, before its {why_deadline}",
            draining.join(", "),
            ts(r.end)
        ));
    };
    let note = (exited < handover).then(|| {
        format!(
            "{} exited {} before its successor {} was ready {}",
            g.name(),
            ts(exited),
            next.name(),
            ts(handover)
        )
    });
    Drain::Done(
        format!("{} exited {} ({})", g.name(), ts(exited), why_deadline),
        note,
    )
}

/// `pid 42 of gen 2 (pids 42, 43)`, or `gen 2 (pid 42)` when it is alone.
fn member_name(pid: u32, g: &Generation) -> String {
    if g.members.len() == 1 {
        g.name()
    } else {
        format!("pid {pid} of {}", g.name())
    }
}

/// The connections a member of `g` cut after the restart that superseded it and before the drain deadline (see
/// the module docs).
fn cut_while_draining<'r>(
    r: &'r RunRecord,
    g: &Generation,
    next: &Generation,
    drain_deadline: Duration,
) -> Vec<&'r ConnRecord> {
    let handover = next.ready_at.unwrap_or(next.started);
    // When `g` began to be superseded. A server may end the old generation before it starts
    // the new one (uWSGI's reload): what it cuts from the restart on is the upgrade's doing.
    let began = upgrade_began(r, g.started, next);
    let last_exit = g.exited.unwrap_or(r.end);
    let at_deadline = last_exit + CUT_TOLERANCE >= drain_deadline;
    // The members' exits after the restart that superseded them: a connection that names no
    // pid and was cut as one of them exited was that member's.
    let exits: Vec<Duration> = r
        .listeners_of(g)
        .filter_map(|x| x.exited)
        .filter(|x| *x >= began)
        .collect();
    let coincides = |c: &ConnRecord, exit: Duration| {
        c.started < exit && c.done + CUT_TOLERANCE >= exit && c.done <= exit + CUT_TOLERANCE
    };
    r.journal
        .failures
        .iter()
        .filter(|c| {
            let its = match c.pid {
                Some(pid) => g.contains(pid),
                None => c.started < handover || exits.iter().any(|x| coincides(c, *x)),
            };
            its && matches!(c.outcome, Outcome::Reset | Outcome::Short)
                && !cut_by_stop(r, c)
                && c.done + CUT_TOLERANCE >= began
                && c.done <= last_exit + CUT_TOLERANCE
                && !(at_deadline
                    && c.done + CUT_TOLERANCE >= drain_deadline
                    && c.started < handover)
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
        // Gen 1 exits at 2.2 s: past the deadline counted from gen 2's readiness (2.024 s),
        // within the one counted from gen 3's (3.35 s).
        let mut r = killed_in_window();
        r.listeners[0].exited = Some(ms(2200));
        r.processes[0].exited = Some(ms(2200));
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(evidence(&v).contains("superseded nothing"), "{v:?}");
        // Without the predecessor serving after the death, the death is not a resume: the
        // predecessor was superseded and is judged against it.
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
        r.listeners[0].exited = Some(ms(2600));
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
        r.listeners[0].exited = None;
        let v = check(&scenario(), &r);
        assert!(evidence(&v).contains("never exited"), "{v:?}");

        let mut r = clean_run();
        r.listeners[0].exited = Some(ms(2650));
        r.killed_at_end = vec![100];
        assert!(evidence(&check(&scenario(), &r)).contains("had to kill it"));
    }

    #[test]
    fn exiting_before_the_successor_is_ready_is_reported_not_failed() {
        // What that costs (refused connects, cut requests) is no-refused's and no-dropped's.
        let mut r = clean_run();
        r.listeners[0].exited = Some(ms(980));
        r.processes[0].exited = Some(ms(980));
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains(
                "note: gen 1 (pid 100) exited t=0.980s before its successor gen 2 (pid 200) was ready t=1.050s"
            ),
            "{v:?}"
        );
    }

    /// A master with two workers (gen 1), superseded by a new master with its own (gen 2).
    fn new_master_run() -> RunRecord {
        let mut r = clean_run();
        r.processes = vec![
            process(100, 1, 0, Some(1100)),
            process(101, 100, 5, Some(1090)),
            process(102, 100, 5, Some(1095)),
            process(200, 100, 1010, Some(2600)),
            process(201, 200, 1020, Some(2600)),
        ];
        r.listeners = vec![
            listener(100, 5, None, Some(1100)),
            listener(101, 5, Some(100), Some(1090)),
            listener(102, 5, Some(100), Some(1095)),
            listener(200, 1010, None, Some(2600)),
            listener(201, 1020, Some(1050), Some(2600)),
        ];
        r.journal.served_by = [(101, 100), (102, 100), (201, 1050)]
            .into_iter()
            .map(|(pid, at)| (pid, served(at, at + 500)))
            .collect();
        r
    }

    #[test]
    fn every_member_of_a_superseded_generation_must_exit_in_time() {
        let r = new_master_run();
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("gen 1 (pids 100, 101, 102) exited t=1.100s"),
            "{v:?}"
        );
        // One worker of the old master lingers past the deadline (drain 1 s + slack 0.5 s).
        let mut r = new_master_run();
        r.listeners[2].exited = Some(ms(2700));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(
            evidence(&v).contains("pid 102 of gen 1 (pids 100, 101, 102) exited t=2.700s"),
            "{v:?}"
        );
    }

    #[test]
    fn a_cut_by_a_member_is_a_failure_whoever_else_served() {
        // Named by its pid: a worker of the old master cut a request after the restart.
        let mut r = new_master_run();
        add_failure(
            &mut r,
            conn(5, 900, Some(901), 1060, Outcome::Short, Some(102)),
        );
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("connection #5"), "{v:?}");
        // Without a pid: begun before the successor was ready, cut while the old generation
        // still lived, well before any member's exit.
        let mut r = new_master_run();
        add_failure(&mut r, conn(6, 900, Some(901), 1020, Outcome::Reset, None));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("connection #6"), "{v:?}");
        // Cut before the restart: not the drain's doing (no-dropped judges it).
        let mut r = new_master_run();
        add_failure(&mut r, conn(7, 500, Some(501), 700, Outcome::Reset, None));
        assert!(is_pass(&check(&scenario(), &r)));
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
        // Begun before the successor was ready, cut as the old generation exited.
        let mut r = clean_run();
        add_failure(
            &mut r,
            conn(4, 1000, Some(1001), 1120, Outcome::Reset, None),
        );
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("connection #4"), "{}", evidence(&v));
        // Begun after the handover but cut as the old generation exited (a connect queued on
        // a socket of its own, or a server whose old process accepts until it is gone).
        let mut r = clean_run();
        add_failure(
            &mut r,
            conn(4, 1060, Some(1061), 1120, Outcome::Reset, None),
        );
        assert!(is_fail(&check(&scenario(), &r)));
        // Begun after the handover and cut well apart from any exit of the old generation:
        // the successor's.
        let mut r = clean_run();
        add_failure(
            &mut r,
            conn(4, 1060, Some(1061), 1300, Outcome::Reset, None),
        );
        assert!(is_pass(&check(&scenario(), &r)));
    }

    #[test]
    fn a_connection_accepted_after_the_handover_and_cut_at_the_deadline_fails() {
        // The old process kept accepting after its successor was ready and was killed at
        // the deadline with the request in flight (a worker that does not drain).
        let mut r = clean_run();
        r.listeners[0].exited = Some(ms(2060));
        add_failure(
            &mut r,
            conn(3, 2056, Some(2056), 2061, Outcome::Short, None),
        );
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("connection #3"), "{v:?}");
    }

    #[test]
    fn cutting_idle_connections_at_the_deadline_is_allowed() {
        let mut r = clean_run();
        r.listeners[0].exited = Some(ms(2060));
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
        r.listeners.truncate(1);
        assert!(is_unknown(&check(&scenario(), &r)));

        let mut r = clean_run();
        r.listeners[0].exited = None;
        r.end = ms(2000);
        assert!(is_unknown(&check(&scenario(), &r)));
    }
}
