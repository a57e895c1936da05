//! `no-dropped`: every connection that was established before the final stop gets its complete
//! reply: no reset, no EOF before a full reply, no reply timeout, no garbled reply.

use crate::checkers::{conn_line, fail, pass, stop_or_end, ts, unkept, unknown};
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
    let dropped: Vec<&ConnRecord> = r
        .journal
        .failures
        .iter()
        .filter(|c| c.connected.is_some() && c.started < stop && DROPS.contains(&c.outcome))
        .collect();
    if !dropped.is_empty() {
        return fail(
            format!(
                "{} established connection(s) did not get their complete reply",
                dropped.len()
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
    pass(format!(
        "all established connections started before the final stop {} got complete replies ({} replies over {} connections)",
        ts(stop),
        r.journal.replies,
        r.journal.connections
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
