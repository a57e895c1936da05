//! `takes-over`: after each restart (other than one armed to fail by a `fail-next` event, which
//! `rollback` judges, one whose new generation the scenario killed the moment it reported
//! ready, or one that arrived while an upgrade was in flight, which `single-upgrade` judges), a
//! generation other than the one serving before it serves a reply within
//! `expect.takeover-within-ms`. Catches a restart that silently did nothing.
//!
//! "Other" means a pid of any member of a newer generation (a generation is a set of processes,
//! see [`crate::model::infer`]) whose first reply came after the restart; a pid that replies but
//! that the observer never saw as a member counts as new only then. A restart that started
//! nothing and joined no upgrade in flight fails.

use std::time::Duration;

use crate::checkers::{
    Upgrade, fail, fail_next_before, killed_on_ready_after, lineage, no_restart_reason, pass,
    restarts, secs, stop_or_end, ts, unknown, upgrades,
};
use crate::model::{Lineage, RunRecord, Scenario, Verdict};

/// For the restart at `at`: the earliest first reply at or after it from a pid of a generation
/// newer than the one serving before it (or from a pid the observer never saw, whose replies
/// began after it), as `(pid, first reply)`.
fn first_new_reply(r: &RunRecord, l: &Lineage, at: Duration) -> Option<(u32, Duration)> {
    let before = l.serving_at(at);
    let older_or_same = |pid: u32| {
        before.is_some_and(|b| l.of(pid).is_some_and(|g| g.number <= b.number))
            || l.supervisors.contains(&pid)
    };
    r.journal
        .served_by
        .iter()
        // A new generation starts after the restart, so its first reply cannot come before
        // it: a pid that was already replying is an old one the observer did not see.
        .filter(|(pid, by)| !older_or_same(**pid) && by.first_reply >= at)
        .map(|(pid, by)| (*pid, by.first_reply))
        .min_by_key(|(_, t)| *t)
}

/// The restarts takes-over judges: each that began an upgrade (a restart joining one in flight
/// asks for nothing new), was not armed to fail, and whose new generation the scenario did not
/// kill.
fn judged_restarts(r: &RunRecord, l: &Lineage) -> Vec<Upgrade> {
    upgrades(r, l)
        .into_iter()
        .filter(|u| fail_next_before(r, u.start).is_none())
        .filter(|u| killed_on_ready_after(r, u.start).is_none())
        .collect()
}

/// The restarts whose new generation the scenario killed as it reported ready, as lines.
fn killed_by_the_scenario(r: &RunRecord, l: &Lineage) -> Vec<String> {
    upgrades(r, l)
        .into_iter()
        .filter_map(|u| {
            killed_on_ready_after(r, u.start).map(|(pid, at)| {
                format!(
                    "the restart at {}: its new generation (pid {pid}) was killed by the scenario as it reported ready, at {}",
                    ts(u.start),
                    ts(at)
                )
            })
        })
        .collect()
}

/// Restart latency: for each restart takes-over judges, the time from the injection to the
/// first reply from a new generation (restarts never taken over are left out).
pub fn latencies(s: &Scenario, r: &RunRecord) -> Vec<Duration> {
    let l = lineage(s, r);
    judged_restarts(r, &l)
        .into_iter()
        .filter_map(|u| first_new_reply(r, &l, u.start).map(|(_, t)| t - u.start))
        .collect()
}

/// See the module docs.
pub fn check(s: &Scenario, r: &RunRecord) -> Verdict {
    let all = restarts(r);
    if all.is_empty() {
        return unknown(no_restart_reason(r));
    }
    let l = lineage(s, r);
    let plain = judged_restarts(r, &l);
    let killed = killed_by_the_scenario(r, &l);
    if plain.is_empty() {
        return unknown(
            "every restart was armed to fail by a fail-next event (`rollback` judges those) or had its new generation killed by the scenario",
        );
    }
    if r.journal.served_by.is_empty() {
        return unknown(format!(
            "no reply named the pid that served it ({} replies without a pid), so the new generation cannot be told from the old",
            r.journal.replies_without_pid
        ));
    }
    let within = s.expect.takeover_within;
    let stop = stop_or_end(r);
    let mut evidence = Vec::new();
    let mut undecided = Vec::new();
    let mut taken = Vec::new();
    let mut passed_over = killed;
    for u in plain {
        match one_restart(r, &l, &u, within, stop) {
            Restart::Taken(line) => taken.push(line),
            Restart::PassedOver(line) => passed_over.push(line),
            Restart::Undecided(why) => undecided.push(why),
            Restart::NotTaken(lines) => evidence.extend(lines),
        }
    }
    if !evidence.is_empty() {
        return fail(
            format!("a restart was not taken over within {}", secs(within)),
            evidence,
        );
    }
    if !undecided.is_empty() {
        return unknown(undecided.join("; "));
    }
    let passed_over = if passed_over.is_empty() {
        String::new()
    } else {
        format!("; not judged: {}", passed_over.join("; "))
    };
    if taken.is_empty() {
        return unknown(format!(
            "no restart reached the serving generation{passed_over}"
        ));
    }
    pass(format!(
        "every restart was taken over within {}: {}{passed_over}",
        secs(within),
        taken.join("; ")
    ))
}

/// How one restart came out.
enum Restart {
    /// A new generation replied within the window.
    Taken(String),
    /// The signal reached a generation that had already handed over: not judged.
    PassedOver(String),
    /// The run cannot tell.
    Undecided(String),
    /// No new generation replied within the window: the evidence.
    NotTaken(Vec<String>),
}

/// Judges the restart that began upgrade `u`: a reply from a new generation within `within`,
/// before the judged window ends at `stop`.
fn one_restart(
    r: &RunRecord,
    l: &Lineage,
    u: &Upgrade,
    within: Duration,
    stop: Duration,
) -> Restart {
    let at = u.start;
    let Some(before) = l.serving_at(at) else {
        return Restart::Undecided(format!(
            "no generation was serving when the restart at {} was injected",
            ts(at)
        ));
    };
    // A signal sent to a generation that had already handed over (the pid file was read a
    // moment before it changed): that generation rightly ignores it, and nothing else was
    // asked to restart.
    if let Some(old) =
        u.to.and_then(|pid| l.of(pid))
            .filter(|g| g.number < before.number)
    {
        return Restart::PassedOver(format!(
            "the restart at {} reached {}, which had already handed over to {}",
            ts(at),
            old.name(),
            before.name()
        ));
    }
    let found = match first_new_reply(r, l, at) {
        Some((pid, first)) if first <= at + within => {
            return Restart::Taken(format!(
                "restart {}: pid {pid} replied after {}",
                ts(at),
                secs(first - at)
            ));
        }
        found => found,
    };
    if at + within > stop {
        return Restart::Undecided(format!(
            "the final stop {} came before the takeover window of the restart at {} ended",
            ts(stop),
            ts(at)
        ));
    }
    let window_end = at + within;
    let any_reply_in_window = r
        .journal
        .served_by
        .values()
        .any(|by| by.last_reply >= at && by.first_reply <= window_end);
    // Connections that stay open (long, keep-alive) belong to the generation that accepted
    // them; only a connection opened after the restart asks who serves now. When none was
    // opened within the window, a new generation's first reply after it (`found`, late) came
    // on a connection opened after the window too: it tells when the load next asked, not
    // how long the takeover took.
    let asked = r.journal.started_within(at, window_end);
    if !asked && r.journal.starts.iter().any(|n| *n > 0) {
        return Restart::Undecided(format!(
            "no connection was opened between the restart at {} and {}: the load asked nothing a new generation could answer",
            ts(at),
            ts(window_end)
        ));
    }
    if found.is_none() && !any_reply_in_window {
        // Idle clients: nothing was asked, so nothing tells who would have answered.
        return Restart::Undecided(format!(
            "no reply at all between the restart at {} and {}: the load sent nothing to tell the new generation from the old",
            ts(at),
            ts(window_end)
        ));
    }
    let late = match found {
        Some((pid, first)) => format!(
            "; pid {pid} first replied only {} after it",
            secs(first - at)
        ),
        None => String::new(),
    };
    let mut evidence = vec![format!(
        "restart at {}: no generation other than {} (serving before it) replied by {}{late}",
        ts(at),
        before.name(),
        ts(at + within)
    )];
    for (pid, by) in &r.journal.served_by {
        evidence.push(format!(
            "  pid {pid} served {} replies from {} to {}",
            by.replies,
            ts(by.first_reply),
            ts(by.last_reply)
        ));
    }
    Restart::NotTaken(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;
    use crate::model::{Action, ServedBy};

    #[test]
    fn a_restart_whose_generation_the_scenario_killed_is_not_judged() {
        let r = killed_in_window();
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("killed by the scenario"),
            "{}",
            evidence(&v)
        );
        assert_eq!(latencies(&scenario(), &r), vec![ms(55)]);
    }

    #[test]
    fn a_reply_from_any_worker_of_the_new_generation_takes_over() {
        let r = reload_run();
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("restart t=1.000s: pid 21 replied after 0.055s"),
            "{v:?}"
        );
        // A respawned worker of the old generation is no takeover.
        let mut r = reload_run();
        r.journal.served_by.retain(|pid, _| *pid < 20);
        if let Some(by) = r.journal.served_by.get_mut(&13) {
            by.last_reply = ms(2490);
        }
        r.listeners[3].exited = Some(ms(2540));
        r.listeners.truncate(4);
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
    }

    #[test]
    fn passes_a_clean_run_and_measures_latency() {
        let r = clean_run();
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert_eq!(latencies(&scenario(), &r), vec![ms(55)]);
    }

    #[test]
    fn fails_a_restart_that_did_nothing() {
        let mut r = clean_run();
        r.listeners.truncate(1);
        r.listeners[0].exited = Some(ms(2600));
        r.journal.served_by.remove(&200);
        if let Some(by) = r.journal.served_by.get_mut(&100) {
            by.last_reply = ms(2490);
        }
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        let e = evidence(&v);
        assert!(
            e.contains("restart at t=1.000s: no generation other than gen 1 (pid 100)"),
            "{e}"
        );
        assert!(e.contains("pid 100 served 500 replies"), "{e}");
    }

    #[test]
    fn a_pid_replying_since_before_the_restart_does_not_take_over() {
        // A restart that did nothing, served all along by a process the observer never saw as
        // a generation: its replies after the restart are no takeover.
        let mut r = clean_run();
        r.listeners.truncate(1);
        r.listeners[0].exited = Some(ms(2600));
        r.journal.served_by.remove(&200);
        r.journal.served_by.insert(
            300,
            ServedBy {
                replies: 50,
                first_sent: ms(100),
                first_reply: ms(100),
                last_reply: ms(2400),
            },
        );
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
    }

    #[test]
    fn unknown_when_nothing_was_asked_after_the_restart() {
        let mut r = clean_run();
        r.journal.served_by.remove(&200);
        if let Some(by) = r.journal.served_by.get_mut(&100) {
            by.last_reply = ms(900);
        }
        let v = check(&scenario(), &r);
        assert!(is_unknown(&v), "{v:?}");
    }

    #[test]
    fn a_late_first_reply_when_nothing_was_asked_in_the_window_is_unknown() {
        // From a real run (an explored schedule of reference/echo/idle-past-drain-deadline:
        // long connections with a message every 1.5 s, drain deadline 300 ms): the restart
        // at 17 ms came as the 8 clients connected; gen 1 (still accepting until its successor
        // was ready at 22 ms) answered their first message at 18 ms, then closed them idle at
        // its drain deadline; the clients paused their interval and reconnected only at about
        // 2.37 s, when gen 2 answered its first reply. Nothing was asked within 1 s of the
        // restart, so nothing tells how long the takeover took.
        let mut r = clean_run();
        r.first_ready = Some(ms(6));
        r.listeners[0].listening_since = ms(2);
        r.listeners[0].ready_at = Some(ms(6));
        r.injected[0].at = ms(17);
        r.processes[1].first_seen = ms(19);
        r.listeners[1].listening_since = ms(19);
        r.listeners[1].ready_at = Some(ms(22));
        r.listeners[0].exited = Some(ms(326));
        r.processes[0].exited = Some(ms(326));
        r.journal.served_by.insert(
            100,
            ServedBy {
                replies: 8,
                first_sent: ms(18),
                first_reply: ms(18),
                last_reply: ms(18),
            },
        );
        r.journal.served_by.insert(
            200,
            ServedBy {
                replies: 2,
                first_sent: ms(2378),
                first_reply: ms(2378),
                last_reply: ms(2959),
            },
        );
        r.journal.starts = vec![0; 250];
        r.journal.starts[1] = 8;
        r.journal.starts[237] = 2;
        let v = check(&scenario(), &r);
        assert!(is_unknown(&v), "{v:?}");
        assert!(
            evidence(&v).contains("no connection was opened between the restart at t=0.017s"),
            "{}",
            evidence(&v)
        );
        // Had a client connected within the window and been answered only at 2.378 s, the
        // takeover would have been late.
        r.journal.starts[50] = 1;
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(
            evidence(&v).contains("pid 200 first replied only 2.361s after it"),
            "{}",
            evidence(&v)
        );
    }

    #[test]
    fn a_recorded_burst_refused_while_the_old_generation_drains_is_not_judged() {
        // harness/testdata/histories/one-process-handoff-echo-burst-refused.json: the burst's
        // later signals reached gen 2 while gen 1 drained, and gen 2 rightly refused them;
        // the next process came from a restart 1.36 s later. Only the restarts at 7 ms and
        // 1387 ms began upgrades, and each was taken over.
        let r = recorded("one-process-handoff-echo-burst-refused");
        let u = upgrades(&r, &lineage_of(&r));
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(u[0].joined.len(), 4, "{u:?}");
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn a_restart_that_reached_a_generation_already_handed_over_is_not_judged() {
        // From a real run: the pid file still named gen 1 when the restart at 1052 ms read it,
        // 2 ms after gen 2 became ready; gen 1, draining, ignored the signal. (Gen 1 was gone
        // well before the next process, a child gen 2 started for a later restart, appeared:
        // so the restart at 1052 ms began an upgrade of its own, as far as the records tell.)
        let mut r = clean_run();
        r.injected.insert(1, injected(1052, Action::Restart));
        r.processes.push(process(300, 200, 1300, Some(1305)));
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains(
                "not judged: the restart at t=1.052s reached gen 1 (pid 100), which had already handed over to gen 2 (pid 200)"
            ),
            "{v:?}"
        );
    }

    #[test]
    fn fails_a_takeover_that_came_too_late() {
        let mut r = clean_run();
        r.journal.served_by.insert(
            200,
            ServedBy {
                replies: 5,
                first_sent: ms(2200),
                first_reply: ms(2200),
                last_reply: ms(2400),
            },
        );
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(
            evidence(&v).contains("pid 200 first replied only 1.200s after it"),
            "{}",
            evidence(&v)
        );
    }

    #[test]
    fn unknown_without_restart_pids_or_window() {
        let mut r = clean_run();
        r.injected.retain(|i| i.action != Action::Restart);
        assert!(is_unknown(&check(&scenario(), &r)));

        let mut r = clean_run();
        r.journal.served_by.clear();
        r.journal.replies_without_pid = 1000;
        assert!(is_unknown(&check(&scenario(), &r)));

        let mut r = clean_run();
        r.injected.insert(
            0,
            injected(
                900,
                Action::FailNext {
                    mode: "crash".into(),
                },
            ),
        );
        assert!(is_unknown(&check(&scenario(), &r)));

        let mut r = clean_run();
        r.journal.served_by.remove(&200);
        r.final_stop = Some(ms(1500));
        assert!(is_unknown(&check(&scenario(), &r)));
    }
}
