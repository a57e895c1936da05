//! `single-upgrade`: never more than two generations alive at once (old draining, new
//! serving), and a restart injected while an upgrade was in flight starts no other generation.
//!
//! Generations are sets of processes ([`crate::model::infer`]): workers that fork or are
//! respawned inside one generation are not upgrades, and supervisors do not count.
//!
//! An upgrade is in flight while the generation it started (or a child a serving generation
//! forked, which may die before it ever holds the socket) is alive and not yet ready, or within
//! a short grace after the restart in which it may not have been seen yet. Restarts arriving
//! then join that upgrade; together they may start only one generation before the next upgrade
//! begins (a server that queues the extra request and runs it afterwards still started another).

use std::time::Duration;

use crate::checkers::upgrades::failed_child;
use crate::checkers::{
    EXIT_SKEW, fail, lineage, no_restart_reason, pass, restarts, ts, unknown, upgrades,
};
use crate::model::{Generation, Lineage, RunRecord, Scenario, Verdict};

/// What was started for an upgrade begun at `start`, before `end`: every generation that first
/// held the listening socket in between, and every other process that a member of a generation
/// alive at `start` forked in between (a child may die before it is ever seen holding the
/// socket), one line each.
fn started_in(r: &RunRecord, l: &Lineage, start: Duration, end: Duration) -> Vec<String> {
    let mut lines: Vec<(Duration, String)> = l
        .generations
        .iter()
        .filter(|g| g.started >= start && g.started < end)
        .map(|g| (g.started, format!("{} started {}", g.name(), ts(g.started))))
        .collect();
    for p in &r.processes {
        if p.first_seen < end && failed_child(l, start, p) {
            let fate = match (p.exited, &p.status) {
                (Some(x), Some(status)) => format!(", {status} {}", ts(x)),
                (Some(x), None) => format!(", gone {}", ts(x)),
                (None, _) => String::new(),
            };
            lines.push((
                p.first_seen,
                format!(
                    "pid {} (child of pid {}) started {}{fate}",
                    p.pid,
                    p.ppid,
                    ts(p.first_seen)
                ),
            ));
        }
    }
    lines.sort();
    lines.into_iter().map(|(_, line)| line).collect()
}

/// The most generations alive at once, when, and which: counted as each one starts (one that
/// exits within [`EXIT_SKEW`] of another's start is not counted with it).
fn most_alive<'l>(r: &RunRecord, l: &'l Lineage) -> (usize, Duration, Vec<&'l Generation>) {
    let mut best = (0, Duration::ZERO, Vec::new());
    for g in &l.generations {
        let at = g.started;
        let alive: Vec<&Generation> = l
            .generations
            .iter()
            .filter(|o| {
                o.started <= at
                    && (o.number == g.number || o.exited.unwrap_or(r.end) > at + EXIT_SKEW)
            })
            .collect();
        if alive.len() > best.0 {
            best = (alive.len(), at, alive);
        }
    }
    best
}

/// See the module docs.
pub fn check(s: &Scenario, r: &RunRecord) -> Verdict {
    let restarts = restarts(r);
    if restarts.is_empty() {
        return unknown(format!(
            "{}, so no upgrade could overlap another",
            no_restart_reason(r)
        ));
    }
    let l = lineage(s, r);
    if l.generations.is_empty() {
        return unknown("the observer recorded no generation holding the listening socket");
    }
    let mut evidence = Vec::new();
    let (peak, peak_at, alive) = most_alive(r, &l);
    if peak > 2 {
        evidence.push(format!(
            "{peak} generations alive at once at {}:",
            ts(peak_at)
        ));
        for g in alive {
            let exited = g.exited.map_or_else(
                || "never exited".to_string(),
                |x| format!("the last exited {}", ts(x)),
            );
            evidence.push(format!(
                "  {} listening since {}, {exited}",
                g.name(),
                ts(g.started)
            ));
        }
    }
    let mut overlapping = 0;
    for u in upgrades(r, &l) {
        if u.joined.is_empty() {
            continue;
        }
        overlapping += u.joined.len();
        let started = started_in(r, &l, u.start, u.end);
        if started.len() > 1 {
            for extra in &u.joined {
                evidence.push(format!(
                    "restart at {} arrived while the upgrade started by the restart at {} was in flight",
                    ts(*extra),
                    ts(u.start)
                ));
            }
            evidence.push(format!(
                "{} processes started for that one upgrade:",
                started.len()
            ));
            evidence.extend(started.into_iter().map(|line| format!("  {line}")));
        }
    }
    if !evidence.is_empty() {
        return fail("more than one upgrade ran at once", evidence);
    }
    let overlap_note = if overlapping == 0 {
        "no restart arrived while an upgrade was in flight".to_string()
    } else {
        format!(
            "{overlapping} restart(s) arrived while an upgrade was in flight and started nothing more"
        )
    };
    pass(format!(
        "{overlap_note}; at most {peak} generation(s) alive at once"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;
    use crate::model::Action;

    #[test]
    fn workers_and_their_master_are_not_counted_as_generations() {
        let r = reload_run();
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("at most 2 generation(s) alive at once"),
            "{v:?}"
        );
    }

    fn double_restart() -> RunRecord {
        let mut r = clean_run();
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1001, Action::Restart),
            injected(2500, Action::Stop),
        ];
        r
    }

    #[test]
    fn a_generation_stamped_just_before_its_own_restart_is_not_a_second_child() {
        // Seen in a real run: the observer stamped generation 3 a few milliseconds before the
        // restart that started it was recorded, so it looked like a second child of the
        // previous upgrade.
        let mut r = clean_run();
        r.injected = vec![
            injected(500, Action::Restart),
            injected(1200, Action::Restart),
            injected(2500, Action::Stop),
        ];
        r.listeners = vec![
            listener(100, 5, Some(100), Some(510)),
            listener(200, 502, Some(505), Some(1210)),
            listener(300, 1197, Some(1201), Some(2600)),
        ];
        r.processes = vec![
            process(100, 1, 0, Some(510)),
            process(200, 100, 502, Some(1210)),
            process(300, 200, 1197, Some(2600)),
        ];
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn passes_a_double_signal_that_started_one_generation() {
        let v = check(&scenario(), &double_restart());
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("1 restart(s) arrived while an upgrade was in flight"),
            "{v:?}"
        );
    }

    #[test]
    fn fails_a_double_signal_that_started_two_generations() {
        let mut r = double_restart();
        r.listeners
            .push(listener(300, 1012, Some(1060), Some(2600)));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        let e = evidence(&v);
        assert!(
            e.contains("restart at t=1.001s arrived while the upgrade started by the restart at t=1.000s was in flight"),
            "{e}"
        );
        assert!(e.contains("gen 3 (pid 300) started t=1.012s"), "{e}");
        assert!(
            e.contains("2 processes started for that one upgrade"),
            "{e}"
        );
        assert!(e.contains("3 generations alive at once"), "{e}");
    }

    #[test]
    fn fails_a_second_child_that_died_before_holding_the_socket() {
        let mut r = double_restart();
        r.processes.push(process(300, 100, 1012, Some(1030)));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(
            evidence(&v).contains("pid 300 (child of pid 100) started t=1.012s, exit 0 t=1.030s"),
            "{}",
            evidence(&v)
        );
    }

    #[test]
    fn a_later_restart_after_the_upgrade_resolved_may_start_another() {
        let mut r = clean_run();
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1500, Action::Restart),
        ];
        r.listeners
            .push(listener(300, 1510, Some(1550), Some(2600)));
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
    }

    /// From a real run: the restart at 209 ms was sent while gen 1 still drained (it exited at
    /// 210.8 ms), but gen 2 handled the signal after that and rightly began an upgrade (gen 3
    /// appeared at 212 ms, gen 1 already gone). Never more than two alive.
    fn restart_sent_as_the_predecessor_exits(gen1_exit: u64) -> RunRecord {
        let mut r = clean_run();
        r.injected = vec![
            injected(194, Action::Restart),
            injected(209, Action::Restart),
            injected(2500, Action::Stop),
        ];
        r.listeners = vec![
            listener(100, 2, Some(25), Some(gen1_exit)),
            listener(200, 196, Some(203), Some(224)),
            listener(300, 212, Some(219), Some(2600)),
        ];
        r.processes = vec![
            process(100, 1, 2, Some(gen1_exit)),
            process(200, 100, 196, Some(224)),
            process(300, 200, 212, Some(2600)),
        ];
        r
    }

    #[test]
    fn a_restart_handled_after_the_predecessor_exited_may_begin_an_upgrade() {
        let v = check(&scenario(), &restart_sent_as_the_predecessor_exits(211));
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn a_restart_that_starts_a_child_while_the_predecessor_drains_fails() {
        let v = check(&scenario(), &restart_sent_as_the_predecessor_exits(900));
        assert!(is_fail(&v), "{v:?}");
        let e = evidence(&v);
        assert!(
            e.contains("2 processes started for that one upgrade"),
            "{e}"
        );
    }

    #[test]
    fn an_exit_and_an_appearance_closer_than_the_records_can_order_are_not_an_overlap() {
        // gen 1's exit was reaped 30 ms after gen 3 was stamped, and the restart came while it
        // was already exiting: the records cannot tell whether the two ever lived at once.
        let mut r = restart_sent_as_the_predecessor_exits(242);
        r.injected[1] = injected(210, Action::Restart);
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        // gen 2 handed over at 219 and exited at 224: not an overlap with gen 3 either.
        assert!(!evidence(&v).contains("generations alive"), "{v:?}");
    }

    #[test]
    fn unknown_without_restarts_or_generations() {
        let mut r = clean_run();
        r.injected.clear();
        assert!(is_unknown(&check(&scenario(), &r)));
        let mut r = clean_run();
        r.listeners.clear();
        assert!(is_unknown(&check(&scenario(), &r)));
    }
}
