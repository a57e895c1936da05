//! `rollback`: when the new generation fails before it is ready (a restart armed by a
//! `fail-next` event), the old one keeps serving with no refusal and no drop.
//!
//! For each armed restart at `t`, up to the next upgrade (restarts arriving while the failing
//! child is still starting belong to this one) or the final stop: no generation
//! that appeared after `t` became ready; the failed child is gone by then; the generation
//! serving at `t` did not exit and served replies after the child was gone; and no connection
//! started in the window was refused or dropped.
//!
//! A child that crashes at once may live shorter than the observer's polling interval and never
//! be seen; the window is then judged from `t`, and the verdict says so. A restart that joined
//! the window before any child was seen may then have begun an upgrade of its own: a
//! generation that appeared after it and became ready is not blamed on the armed restart,
//! which is judged up to that restart only and is at best Unknown.

use std::time::Duration;

use crate::checkers::{
    Upgrade, conn_line, cut_by_stop, fail, fail_next_before, lineage, pass, stop_or_end, ts,
    unkept, unknown, upgrades,
};
use crate::model::{
    ConnRecord, Generation, Lineage, Outcome, ProcessRecord, RunRecord, Scenario, Verdict,
};

/// What `no-refused` or `no-dropped` would count: a refusal, a timeout (of the connect or of a
/// reply), a reset (a connect reset had completed its handshake), or an established
/// connection cut short or answered wrongly.
fn refused_or_dropped(c: &ConnRecord) -> bool {
    match c.outcome {
        Outcome::Ok => false,
        Outcome::Refused | Outcome::Timeout | Outcome::Reset => true,
        Outcome::Short | Outcome::BadReply => c.connected.is_some(),
    }
}

/// See the module docs.
pub fn check(s: &Scenario, r: &RunRecord) -> Verdict {
    let l = lineage(s, r);
    let armed: Vec<(Upgrade, String)> = upgrades(r, &l)
        .into_iter()
        .filter_map(|u| fail_next_before(r, u.start).map(|mode| (u, mode)))
        .collect();
    if armed.is_empty() {
        return unknown(
            "no restart was armed to fail by a fail-next event, so no rollback was exercised",
        );
    }
    if r.journal.served_by.is_empty() {
        return unknown(
            "no reply named the pid that served it, so whether the old generation kept serving cannot be told",
        );
    }
    let stop = stop_or_end(r);
    let mut evidence = Vec::new();
    let mut undecided = Vec::new();
    let mut passed = Vec::new();
    for (u, mode) in armed {
        let one = armed_restart(r, &l, &u, &mode, stop);
        evidence.extend(one.evidence);
        undecided.extend(one.undecided);
        passed.extend(one.passed);
    }
    if !evidence.is_empty() {
        return fail(
            "the old generation did not carry on through a failed upgrade",
            evidence,
        );
    }
    let hidden = unkept(
        r,
        &[
            Outcome::Refused,
            Outcome::Reset,
            Outcome::Short,
            Outcome::Timeout,
            Outcome::BadReply,
        ],
    );
    if hidden > 0 {
        undecided.push(format!(
            "{hidden} failed connection(s) were not kept in full (the journal's failure cap was reached), so whether they fell in a rollback window cannot be told"
        ));
    }
    if !undecided.is_empty() {
        return unknown(undecided.join("; "));
    }
    pass(passed.join("; "))
}

/// What one armed restart showed: evidence of a failure, or why it cannot be decided, or
/// that it rolled back.
#[derive(Default)]
struct Armed {
    evidence: Vec<String>,
    undecided: Option<String>,
    passed: Option<String>,
}

/// Judges the upgrade `u`, begun by a restart armed with fail-next `mode`, up to the next
/// upgrade or `stop`.
fn armed_restart(r: &RunRecord, l: &Lineage, u: &Upgrade, mode: &str, stop: Duration) -> Armed {
    let at = u.start;
    // Up to the next upgrade: restarts that arrive while the failing child is still
    // starting belong to this one.
    let mut window_end = u.end.min(stop);
    let Some(old) = l.serving_at(at) else {
        return Armed {
            undecided: Some(format!(
                "no generation was serving when the armed restart at {} was injected",
                ts(at)
            )),
            ..Armed::default()
        };
    };
    let what = format!("restart at {} armed with fail-next `{mode}`", ts(at));
    let ambiguous = ambiguous_end(r, l, u, old, &what, &mut window_end);
    let mut evidence = Vec::new();
    for g in l
        .generations
        .iter()
        .filter(|g| g.started >= at && g.started < window_end)
    {
        if let Some(ready) = g.ready_at {
            evidence.push(format!(
                "{what}: {} became ready {} (the failure did not happen or was not detected)",
                g.name(),
                ts(ready)
            ));
        }
    }
    let child = FailedChild::of(r, old, at, window_end, &what);
    if let Some(x) = old.exited.filter(|x| *x < window_end) {
        evidence.push(format!(
            "{what}: the old {} exited {} ({})",
            old.name(),
            ts(x),
            status_of(r, old)
        ));
    }
    let gone = child.gone;
    let last = old
        .members
        .iter()
        .filter_map(|pid| r.journal.served_by.get(pid).map(|by| by.last_reply))
        .max();
    // Whether the old generation carried on can only be seen if the load asked something
    // after the child was gone and before the window closed (a stop right after, say).
    let asked = r.journal.started_within(gone, window_end);
    let unasked = (child.still_starting.is_none() && !asked && last.is_none_or(|l| l <= gone))
        .then(|| {
            format!(
                "{what}: no connection was opened between the failed child's end {} and {}, so whether the old {} carried on cannot be told",
                ts(gone),
                ts(window_end),
                old.name()
            )
        });
    if child.still_starting.is_none() && unasked.is_none() && last.is_none_or(|l| l <= gone) {
        let last = last.map_or_else(|| "never".to_string(), ts);
        evidence.push(format!(
            "{what}: the old {} served no reply after the failed child was gone {} (last reply {last}); {}",
            old.name(),
            ts(gone),
            child.note
        ));
    }
    let bad: Vec<&ConnRecord> = r
        .journal
        .failures
        .iter()
        .filter(|c| refused_or_dropped(c) && c.started >= at && c.started < window_end)
        .filter(|c| !cut_by_stop(r, c))
        .collect();
    if !bad.is_empty() {
        evidence.push(format!(
            "{what}: {} connection(s) refused or dropped during the rollback:",
            bad.len()
        ));
        evidence.extend(bad.into_iter().map(|c| format!("  {}", conn_line(c))));
    }
    let ok = evidence.is_empty();
    if let Some(why) = child.still_starting.or(unasked).or(ambiguous) {
        return Armed {
            evidence,
            undecided: ok.then_some(why),
            passed: None,
        };
    }
    Armed {
        evidence,
        undecided: None,
        passed: ok.then(|| format!("{what}: {} kept serving; {}", old.name(), child.note)),
    }
}

/// How the last member of `g` to exit ended (`exit 0`, `signal 9 (SIGKILL)`), `?` if unknown.
fn status_of(r: &RunRecord, g: &Generation) -> String {
    r.listeners_of(g)
        .max_by_key(|x| x.exited)
        .and_then(|x| x.status.clone())
        .unwrap_or_else(|| "?".to_string())
}

/// A restart joins the upgrade while its child may not have been seen yet; but a child that
/// crashes at once may never be seen, and then that restart may have begun an upgrade of its
/// own. A generation that appeared after it and became ready is then either the armed child
/// (which did not fail) or that restart's: only the time before it can be judged, so the
/// window ends there (`window_end` is moved) and the reason is returned.
fn ambiguous_end(
    r: &RunRecord,
    l: &Lineage,
    u: &Upgrade,
    old: &Generation,
    what: &str,
    window_end: &mut Duration,
) -> Option<String> {
    let at = u.start;
    let seen_before = |t: Duration| {
        r.processes
            .iter()
            .any(|p| old.contains(p.ppid) && p.first_seen >= at && p.first_seen < t)
            || l.generations
                .iter()
                .any(|g| g.started >= at && g.started < t)
    };
    let end = *window_end;
    let (t, g) = u
        .joined
        .iter()
        .copied()
        .find(|t| !seen_before(*t))
        .and_then(|t| {
            l.generations
                .iter()
                .find(|g| g.started >= t && g.started < end && g.ready_at.is_some())
                .map(|g| (t, g))
        })?;
    *window_end = t;
    Some(format!(
        "{what}: its child was never seen, and {} appeared after the restart at {}, which may have started it; judged up to that restart only",
        g.name(),
        ts(t)
    ))
}

/// The failed child: the processes the serving generation started after the restart.
struct FailedChild {
    /// When the last of them was gone (the restart's time when none was seen).
    gone: Duration,
    /// What became of them, for the verdict.
    note: String,
    /// Set when one was still alive at the end of the window: "kept serving after it was
    /// gone" is then undecided (what went wrong meanwhile is still a failure).
    still_starting: Option<String>,
}

impl FailedChild {
    fn of(
        r: &RunRecord,
        old: &Generation,
        at: Duration,
        window_end: Duration,
        what: &str,
    ) -> FailedChild {
        let children: Vec<&ProcessRecord> = r
            .processes
            .iter()
            .filter(|p| old.contains(p.ppid) && p.first_seen >= at && p.first_seen < window_end)
            .collect();
        let lingering: Vec<&&ProcessRecord> = children
            .iter()
            .filter(|p| p.exited.is_none_or(|x| x >= window_end))
            .collect();
        let still_starting = if lingering.is_empty() {
            None
        } else {
            let names: Vec<String> = lingering.iter().map(|p| format!("pid {}", p.pid)).collect();
            Some(format!(
                "{what}: the failed child ({}) was still alive at {}, so the rollback did not finish within the window",
                names.join(", "),
                ts(window_end)
            ))
        };
        let gone: Duration = children.iter().filter_map(|p| p.exited).max().unwrap_or(at);
        let note = if children.is_empty() {
            "no child process was observed (it may have lived shorter than the observer's polling interval)".to_string()
        } else {
            let list: Vec<String> = children
                .iter()
                .map(|p| match &p.status {
                    Some(status) => format!("pid {} ({status})", p.pid),
                    None => format!("pid {}", p.pid),
                })
                .collect();
            format!("failed child {} gone by {}", list.join(", "), ts(gone))
        };
        FailedChild {
            gone,
            note,
            still_starting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;
    use crate::model::{Action, ServedBy};

    /// gen 1 (pid 100) serves throughout; fail-next crash at 900 ms; restart at 1000 ms; the
    /// child pid 150 is seen at 1005 ms and exits at 1010 ms; stop at 2500 ms.
    fn rolled_back() -> RunRecord {
        let mut r = clean_run();
        r.injected = vec![
            injected(
                900,
                Action::FailNext {
                    mode: "crash".into(),
                },
            ),
            injected(1000, Action::Restart),
            injected(2500, Action::Stop),
        ];
        r.listeners.truncate(1);
        r.listeners[0].exited = Some(ms(2600));
        r.processes = vec![
            process(100, 1, 0, Some(2600)),
            process(150, 100, 1005, Some(1010)),
        ];
        r.journal.served_by.clear();
        r.journal.served_by.insert(
            100,
            ServedBy {
                replies: 1000,
                first_sent: ms(110),
                first_reply: ms(110),
                last_reply: ms(2490),
            },
        );
        r
    }

    #[test]
    fn passes_when_the_old_generation_carries_on() {
        let v = check(&scenario(), &rolled_back());
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("failed child pid 150 (exit 0) gone by t=1.010s"),
            "{v:?}"
        );
    }

    #[test]
    fn fails_when_the_failed_child_became_ready() {
        let mut r = rolled_back();
        r.listeners
            .push(listener(150, 1005, Some(1020), Some(2600)));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("gen 2 (pid 150) became ready t=1.020s"));
    }

    #[test]
    fn fails_when_the_old_generation_went_down_with_it() {
        let mut r = rolled_back();
        r.listeners[0].exited = Some(ms(1012));
        if let Some(by) = r.journal.served_by.get_mut(&100) {
            by.last_reply = ms(1000);
        }
        add_failure(&mut r, conn(8, 1100, None, 1100, Outcome::Refused, None));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        let e = evidence(&v);
        assert!(e.contains("the old gen 1 (pid 100) exited t=1.012s"), "{e}");
        assert!(
            e.contains("served no reply after the failed child was gone"),
            "{e}"
        );
        assert!(e.contains("connection #8"), "{e}");
    }

    #[test]
    fn unknown_when_nothing_was_asked_between_the_child_s_end_and_the_stop() {
        // Seen under load: the hung child was cut at its ready deadline 23 ms before the final
        // stop, and the load (quiesced before a stop) opened nothing in between.
        let mut r = rolled_back();
        r.processes[1].exited = Some(ms(2480));
        if let Some(by) = r.journal.served_by.get_mut(&100) {
            by.last_reply = ms(2470);
        }
        r.journal.starts.truncate(248);
        let v = check(&scenario(), &r);
        assert!(is_unknown(&v), "{v:?}");
        assert!(
            evidence(&v).contains("no connection was opened between the failed child's end"),
            "{v:?}"
        );
    }

    #[test]
    fn a_generation_after_a_restart_joined_before_any_child_was_seen_is_not_blamed() {
        // From a real run: the armed child crashed before it was ever seen; a restart 10 ms
        // later (joined to the armed one, since no child had been seen) started gen 2, which
        // became ready, and gen 1 handed over to it.
        let mut r = rolled_back();
        r.processes.truncate(1);
        r.injected.insert(2, injected(1010, Action::Restart));
        r.listeners[0].exited = Some(ms(1030));
        r.listeners
            .push(listener(200, 1025, Some(1026), Some(2600)));
        r.processes.push(process(200, 100, 1025, Some(2600)));
        let v = check(&scenario(), &r);
        assert!(is_unknown(&v), "{v:?}");
        assert!(evidence(&v).contains("its child was never seen"), "{v:?}");

        // Had the child been seen before that restart, gen 2 is the armed child: a failure.
        r.processes.push(process(150, 100, 1005, None));
        r.listeners[1].listening_since = ms(1005);
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
    }

    #[test]
    fn a_lingering_child_does_not_hide_the_old_generation_dying() {
        let mut r = rolled_back();
        r.processes[1].exited = None;
        r.listeners[0].exited = Some(ms(1012));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("the old gen 1 (pid 100) exited t=1.012s"));
    }

    #[test]
    fn unknown_without_fail_next_or_with_a_lingering_child() {
        assert!(is_unknown(&check(&scenario(), &clean_run())));
        let mut r = rolled_back();
        r.processes[1].exited = None;
        let v = check(&scenario(), &r);
        assert!(is_unknown(&v), "{v:?}");
    }
}
