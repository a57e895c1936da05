//! `no-refused`: no connect is refused between the first readiness and the final stop.
//!
//! A connect that timed out without ever completing counts as refused too: the server never
//! accepted it (a full accept queue drops the SYN, and the client sees a timeout, not a
//! refusal), which is the same outage seen from the client. A connect reset by the peer is not
//! a refusal: the handshake had completed (a port nobody listens on answers the SYN with a
//! refusal), so the connection was established and then dropped; `no-dropped` judges it.

use crate::checkers::{
    conn_line, fail, harness_note, pass, span_of, stop_or_end, ts, unkept, unknown,
};
use crate::model::{ConnRecord, Outcome, RunRecord, Scenario, Verdict};

fn not_accepted(c: &ConnRecord) -> bool {
    c.outcome == Outcome::Refused || (c.outcome == Outcome::Timeout && c.connected.is_none())
}

/// See the module docs.
pub fn check(_s: &Scenario, r: &RunRecord) -> Verdict {
    let Some(ready) = r.first_ready else {
        return unknown("the target was never seen ready");
    };
    let stop = stop_or_end(r);
    if r.journal.connections == 0 {
        return unknown("the load made no connection, so no connect could be judged");
    }
    let refused: Vec<&ConnRecord> = r
        .journal
        .failures
        .iter()
        .filter(|c| not_accepted(c) && c.started >= ready && c.started < stop)
        .collect();
    if !refused.is_empty() {
        return fail(
            format!(
                "{} connect(s) not accepted between the first readiness {} and the final stop {}{}",
                refused.len(),
                ts(ready),
                ts(stop),
                span_of(&refused)
            ),
            refused.into_iter().map(conn_line).collect(),
        );
    }
    let refused_total = r
        .journal
        .outcomes
        .get(Outcome::Refused.id())
        .copied()
        .unwrap_or(0);
    // Connect timeouts are counted with reply timeouts in `outcomes`, so every timeout that was
    // not kept in full might have been a connect that was never accepted.
    let hidden = unkept(r, &[Outcome::Refused, Outcome::Timeout]);
    if hidden > 0 {
        return unknown(format!(
            "{hidden} refused or timed-out connection(s) were not kept in full (the journal's failure cap was reached), so whether they fell between {} and {} cannot be told",
            ts(ready),
            ts(stop)
        ));
    }
    let outside = if refused_total > 0 {
        format!(" ({refused_total} refused outside that window)")
    } else {
        String::new()
    };
    pass(format!(
        "all {} connects were accepted between the first readiness {} and the final stop {}{outside}{}",
        r.journal.connections,
        ts(ready),
        ts(stop),
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
    fn fails_on_a_refusal_during_the_run_with_the_connection_named() {
        let mut r = clean_run();
        add_failure(&mut r, conn(42, 1020, None, 1021, Outcome::Refused, None));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(
            evidence(&v).contains("connection #42 (client 1) started t=1.020s"),
            "{}",
            evidence(&v)
        );
    }

    #[test]
    fn fails_on_a_connect_that_never_completed() {
        let mut r = clean_run();
        add_failure(&mut r, conn(7, 1020, None, 2020, Outcome::Timeout, None));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("connect never completed"));
    }

    #[test]
    fn a_connect_reset_is_not_a_refusal() {
        let mut r = clean_run();
        add_failure(&mut r, conn(11, 1020, None, 1030, Outcome::Reset, None));
        assert!(is_pass(&check(&scenario(), &r)));
    }

    #[test]
    fn a_pass_says_when_the_load_was_lighter_than_asked() {
        let mut r = clean_run();
        r.journal.harness_errors = 3;
        r.journal.harness_error_example = Some("no local port".into());
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(evidence(&v).contains(
            "3 connection(s) could not be attempted on the harness's side (no local port)"
        ));
    }

    #[test]
    fn ignores_refusals_after_the_final_stop() {
        let mut r = clean_run();
        add_failure(&mut r, conn(9, 2500, None, 2501, Outcome::Refused, None));
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(evidence(&v).contains("1 refused outside"));
    }

    #[test]
    fn unknown_without_connections_or_with_unkept_refusals() {
        let mut r = clean_run();
        r.journal.connections = 0;
        assert!(is_unknown(&check(&scenario(), &r)));

        let mut r = clean_run();
        r.journal.outcomes.insert("refused".into(), 3);
        r.journal.failures_dropped = 3;
        let v = check(&scenario(), &r);
        assert!(is_unknown(&v), "{v:?}");
    }
}
