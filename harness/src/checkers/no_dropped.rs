//! `no-dropped`: every connection that was established before the final stop gets its complete
//! reply: no reset, no EOF before a full reply, no reply timeout, no garbled reply. A connect
//! reset by the peer counts: the handshake had completed and the connection sat in the queue of
//! a listening socket that was then closed (DESIGN section 1), which is a drop.
//!
//! Drops are told apart by what cut them ([`drops`]):
//! - **during the run**: the connection failed before the final stop: always judged;
//! - **by the final stop**: it was in flight when the final stop was triggered and failed
//!   after it. Judged only when the scenario says its stop is graceful (`target.stop.graceful`:
//!   the server finishes what it holds before it exits); otherwise counted, and shown, but a
//!   server is not failed for what its abrupt stop cut;
//! - **queued at the stop**: its connect completed within a few milliseconds of the final stop
//!   and it was cut after it without a byte received: it was still queued when the stopping
//!   server closed its listener, and a stop may turn new connections away. Counted, never
//!   judged.

use crate::checkers::{
    conn_line, cut_by_stop, fail, harness_note, pass, span_of, stop_or_end, ts, unkept, unknown,
};
use crate::model::{ConnRecord, Outcome, RunRecord, Scenario, Verdict};

const DROPS: [Outcome; 4] = [
    Outcome::Reset,
    Outcome::Short,
    Outcome::Timeout,
    Outcome::BadReply,
];

/// The established connections of a run that did not get their complete replies, by what cut
/// them (see the module docs). Only the failures the journal kept in full are sorted.
#[derive(Debug, Default)]
pub struct Drops<'a> {
    /// Failed before the final stop.
    pub during_run: Vec<&'a ConnRecord>,
    /// In flight at the final stop, failed after it.
    pub by_stop: Vec<&'a ConnRecord>,
    /// Queued unaccepted when the final stop closed the listener.
    pub queued_at_stop: Vec<&'a ConnRecord>,
}

/// Sorts the drops of `r` (see [`Drops`]).
pub fn drops(r: &RunRecord) -> Drops<'_> {
    let stop = stop_or_end(r);
    // A connect reset by the peer was established too: the kernel completed the handshake and
    // queued it, then the listening socket it sat on was closed.
    let established = |c: &&ConnRecord| {
        (c.connected.is_some() || c.outcome == Outcome::Reset)
            && c.started < stop
            && DROPS.contains(&c.outcome)
    };
    let mut d = Drops::default();
    for c in r.journal.failures.iter().filter(established) {
        if cut_by_stop(r, c) {
            d.queued_at_stop.push(c);
        } else if r.final_stop.is_some_and(|at| c.done >= at) {
            d.by_stop.push(c);
        } else {
            d.during_run.push(c);
        }
    }
    d
}

/// `reset 2, short 1`.
fn by_outcome(conns: &[&ConnRecord]) -> String {
    DROPS
        .iter()
        .filter_map(|o| {
            let n = conns.iter().filter(|c| c.outcome == *o).count();
            (n > 0).then(|| format!("{} {n}", o.id()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// See the module docs.
pub fn check(s: &Scenario, r: &RunRecord) -> Verdict {
    let stop = stop_or_end(r);
    if r.journal.connections == 0 {
        return unknown("the load made no connection, so no drop could be seen");
    }
    if r.journal.replies == 0 && r.journal.failures.is_empty() {
        return unknown(
            "the load received no reply at all and recorded no failure: the journal is empty",
        );
    }
    let d = drops(r);
    let graceful = s.target.stop_graceful;
    let mut judged: Vec<&ConnRecord> = d.during_run.clone();
    if graceful {
        judged.extend(&d.by_stop);
    }
    judged.sort_by_key(|c| (c.started, c.id));
    let stop_note = match (d.by_stop.len(), graceful) {
        (0, _) => String::new(),
        (n, true) => format!(
            "; {n} of them in flight at the final stop {} and cut by it ({}), which `target.stop` says is graceful",
            ts(stop),
            by_outcome(&d.by_stop)
        ),
        (n, false) => format!(
            "; {n} connection(s) in flight at the final stop {} were cut by it ({}), not judged: `target.stop` is not marked `graceful`",
            ts(stop),
            by_outcome(&d.by_stop)
        ),
    };
    let queued_note = match d.queued_at_stop.len() {
        0 => String::new(),
        n => format!(
            "; {n} connection(s) still queued unaccepted when the final stop closed the listener were cut, not judged"
        ),
    };
    if !judged.is_empty() {
        return fail(
            format!(
                "{} established connection(s) did not get their complete reply{}{stop_note}",
                judged.len(),
                span_of(&judged)
            ),
            judged
                .into_iter()
                .map(|c| {
                    let line = conn_line(c);
                    if r.final_stop.is_some_and(|at| c.done >= at) {
                        format!("cut by the final stop: {line}")
                    } else {
                        line
                    }
                })
                .collect(),
        );
    }
    let hidden = unkept(r, &DROPS);
    if hidden > 0 {
        return unknown(format!(
            "{hidden} reset, short, timed-out or bad-reply connection(s) were not kept in full (the journal's failure cap was reached), so whether they were established before the final stop {} cannot be told",
            ts(stop)
        ));
    }
    pass(format!(
        "all established connections started before the final stop {} got complete replies ({} replies over {} connections){stop_note}{queued_note}{}",
        ts(stop),
        r.journal.replies,
        r.journal.connections,
        harness_note(r)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;

    /// The fixture's scenario, its stop said to be graceful.
    fn graceful() -> Scenario {
        let mut s = scenario();
        s.target.stop_graceful = true;
        s
    }

    #[test]
    fn passes_a_clean_run() {
        let v = check(&scenario(), &clean_run());
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn fails_on_a_reset_with_connection_and_pid() {
        let mut r = clean_run();
        let mut c = conn(5, 1040, Some(1041), 1101, Outcome::Reset, Some(100));
        c.detail = "Connection reset by peer (os error 104)".into();
        add_failure(&mut r, c);
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        let e = evidence(&v);
        assert!(
            e.contains("connection #5") && e.contains("reset") && e.contains("pid 100"),
            "{e}"
        );
        assert!(e.contains("os error 104"), "{e}");
    }

    #[test]
    fn a_connection_queued_as_the_stop_closed_the_listener_is_not_judged() {
        let mut r = clean_run();
        // Final stop at 2.500 s.
        add_failure(
            &mut r,
            conn(6, 2495, Some(2496), 2502, Outcome::Reset, None),
        );
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("1 connection(s) still queued"),
            "{v:?}"
        );
        // One that had been waiting long, or had bytes, was dropped by the stop.
        let mut r = clean_run();
        let mut c = conn(6, 2400, Some(2401), 2502, Outcome::Reset, None);
        add_failure(&mut r, c.clone());
        assert!(is_fail(&check(&graceful(), &r)));
        let mut r = clean_run();
        c.connected = Some(ms(2496));
        c.first_byte = Some(ms(2499));
        add_failure(&mut r, c);
        assert!(is_fail(&check(&graceful(), &r)));
    }

    #[test]
    fn a_drop_by_the_final_stop_is_judged_only_when_the_stop_is_graceful() {
        let mut r = clean_run();
        // In flight at the final stop (2.500 s), cut after it; and one cut before it.
        let mut c = conn(7, 2300, Some(2301), 2510, Outcome::Short, Some(200));
        c.first_byte = Some(ms(2505));
        add_failure(&mut r, c);
        add_failure(
            &mut r,
            conn(8, 2350, Some(2351), 2600, Outcome::Timeout, Some(200)),
        );
        let d = drops(&r);
        assert_eq!((d.during_run.len(), d.by_stop.len()), (0, 2), "{d:?}");

        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        let e = evidence(&v);
        assert!(
            e.contains("2 connection(s) in flight at the final stop")
                && e.contains("short 1, timeout 1")
                && e.contains("not marked `graceful`"),
            "{e}"
        );

        let v = check(&graceful(), &r);
        assert!(is_fail(&v), "{v:?}");
        let e = evidence(&v);
        assert!(
            e.contains("cut by the final stop: connection #7")
                && e.contains("which `target.stop` says is graceful"),
            "{e}"
        );

        // A drop before the stop fails whatever the stop is, and the stop's are still counted.
        add_failure(
            &mut r,
            conn(9, 1040, Some(1041), 1101, Outcome::Reset, Some(100)),
        );
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        let e = evidence(&v);
        assert!(
            e.contains("1 established connection(s)")
                && e.contains("connection #9")
                && !e.contains("connection #7")
                && e.contains("2 connection(s) in flight at the final stop"),
            "{e}"
        );
    }

    #[test]
    fn a_connect_reset_by_a_closing_listener_is_a_drop() {
        let mut r = clean_run();
        add_failure(&mut r, conn(11, 1020, None, 1030, Outcome::Reset, None));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("connection #11"));
    }

    #[test]
    fn a_connect_timeout_is_not_a_drop() {
        let mut r = clean_run();
        add_failure(&mut r, conn(5, 1040, None, 2040, Outcome::Timeout, None));
        assert!(is_pass(&check(&scenario(), &r)));
    }

    #[test]
    fn unknown_when_drops_were_not_kept_or_nothing_was_seen() {
        let mut r = clean_run();
        r.journal.outcomes.insert("short".into(), 2);
        r.journal.failures_dropped = 2;
        assert!(is_unknown(&check(&scenario(), &r)));

        let mut r = clean_run();
        r.journal.replies = 0;
        assert!(is_unknown(&check(&scenario(), &r)));
    }
}
