//! `no-dropped`: every connection that was established before the final stop gets its complete
//! reply: no reset, no EOF before a full reply, no reply timeout, no garbled reply. A connect
//! reset by the peer counts: the handshake had completed and the connection sat in the queue of
//! a listening socket that was then closed (DESIGN section 1), which is a drop.
//!
//! Connections whose connect completed within a few milliseconds of the final stop and that
//! were cut after it without a byte received were still queued when the stopping server closed
//! its listener: a stop may turn new connections away, so they are counted but not judged.

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

/// See the module docs.
pub fn check(_s: &Scenario, r: &RunRecord) -> Verdict {
    let stop = stop_or_end(r);
    if r.journal.connections == 0 {
        return unknown("the load made no connection, so no drop could be seen");
    }
    if r.journal.replies == 0 && r.journal.failures.is_empty() {
        return unknown(
            "the load received no reply at all and recorded no failure: the journal is empty",
        );
    }
    // A connect reset by the peer was established too: the kernel completed the handshake and
    // queued it, then the listening socket it sat on was closed.
    let established = |c: &&ConnRecord| {
        (c.connected.is_some() || c.outcome == Outcome::Reset)
            && c.started < stop
            && DROPS.contains(&c.outcome)
    };
    let dropped: Vec<&ConnRecord> = r
        .journal
        .failures
        .iter()
        .filter(established)
        .filter(|c| !cut_by_stop(r, c))
        .collect();
    let at_stop = r
        .journal
        .failures
        .iter()
        .filter(established)
        .filter(|c| cut_by_stop(r, c))
        .count();
    if !dropped.is_empty() {
        return fail(
            format!(
                "{} established connection(s) did not get their complete reply{}",
                dropped.len(),
                span_of(&dropped)
            ),
            dropped.into_iter().map(conn_line).collect(),
        );
    }
    let hidden = unkept(r, &DROPS);
    if hidden > 0 {
        return unknown(format!(
            "{hidden} reset, short, timed-out or bad-reply connection(s) were not kept in full (the journal's failure cap was reached), so whether they were established before the final stop {} cannot be told",
            ts(stop)
        ));
    }
    let race_note = if at_stop > 0 {
        format!(
            "; {at_stop} connection(s) still queued unaccepted when the final stop closed the listener were cut, not judged"
        )
    } else {
        String::new()
    };
    pass(format!(
        "all established connections started before the final stop {} got complete replies ({} replies over {} connections){race_note}{}",
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
        assert!(is_fail(&check(&scenario(), &r)));
        let mut r = clean_run();
        c.connected = Some(ms(2496));
        c.first_byte = Some(ms(2499));
        add_failure(&mut r, c);
        assert!(is_fail(&check(&scenario(), &r)));
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
