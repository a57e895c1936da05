//! `single-upgrade`: never more than two generations alive at once (old draining, new
//! serving), and a restart injected while an upgrade was in flight starts no other process.
//!
//! An upgrade started by a restart at `t` is in flight until the first generation that appeared
//! at or after `t` became ready or exited. Restarts injected before that join the same upgrade;
//! together they may start at most one new generation before the next restart that came after
//! the upgrade resolved (a server that queues the extra request and runs it afterwards still
//! started another process because of it).

use std::time::Duration;

use crate::checkers::{fail, gen_name, pass, restarts, ts, unknown};
use crate::model::{GenerationRecord, RunRecord, Scenario, Verdict};

/// When the upgrade started at `start` resolved: the first generation that appeared at or after
/// it became ready or exited. `None` while it never resolved.
fn resolved_at(r: &RunRecord, start: Duration) -> Option<Duration> {
    r.generations
        .iter()
        .filter(|g| g.listening_since >= start)
        .filter_map(|g| match (g.ready_at, g.exited) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
        .min()
}

/// The most generations alive at once, when that was first reached, and who they were.
fn most_alive(r: &RunRecord) -> (usize, Duration, Vec<&GenerationRecord>) {
    let mut best = (0, Duration::ZERO, Vec::new());
    // Every peak starts when some generation appears: check those instants.
    for g in &r.generations {
        let at = g.listening_since;
        let alive: Vec<&GenerationRecord> = r
            .generations
            .iter()
            .filter(|o| o.listening_since <= at && o.exited.unwrap_or(r.end) > at)
            .collect();
        if alive.len() > best.0 {
            best = (alive.len(), at, alive);
        }
    }
    best
}

/// See the module docs.
pub fn check(_s: &Scenario, r: &RunRecord) -> Verdict {
    let restarts = restarts(r);
    if restarts.is_empty() {
        return unknown("no restart was injected, so no upgrade could overlap another");
    }
    if r.generations.is_empty() {
        return unknown("the observer recorded no generation holding the listening socket");
    }
    let mut evidence = Vec::new();
    let (peak, peak_at, alive) = most_alive(r);
    if peak > 2 {
        evidence.push(format!(
            "{peak} generations alive at once at {}:",
            ts(peak_at)
        ));
        for g in alive {
            let exited = g.exited.map_or_else(
                || "never exited".to_string(),
                |x| format!("exited {}", ts(x)),
            );
            evidence.push(format!(
                "  {} listening since {}, {exited}",
                gen_name(g),
                ts(g.listening_since)
            ));
        }
    }
    let mut overlapping = 0;
    let mut i = 0;
    while i < restarts.len() {
        let start = restarts[i].at;
        let resolved = resolved_at(r, start);
        let mut j = i + 1;
        while j < restarts.len() && resolved.is_none_or(|t| restarts[j].at < t) {
            j += 1;
        }
        if j > i + 1 {
            overlapping += j - i - 1;
            let window_end = restarts.get(j).map_or(r.end, |n| n.at);
            let started: Vec<&GenerationRecord> = r
                .generations
                .iter()
                .filter(|g| g.listening_since >= start && g.listening_since < window_end)
                .collect();
            if started.len() > 1 {
                let until = resolved.map_or_else(
                    || "never resolved".to_string(),
                    |t| format!("in flight until {}", ts(t)),
                );
                for extra in &restarts[i + 1..j] {
                    evidence.push(format!(
                        "restart at {} arrived while the upgrade started by the restart at {} was in flight ({until})",
                        ts(extra.at),
                        ts(start)
                    ));
                }
                evidence.push(format!(
                    "{} generations started for that one upgrade:",
                    started.len()
                ));
                for g in started {
                    evidence.push(format!(
                        "  {} started {}",
                        gen_name(g),
                        ts(g.listening_since)
                    ));
                }
            }
        }
        i = j;
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
        r.generations
            .push(generation(3, 300, 1012, Some(1060), Some(2600)));
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        let e = evidence(&v);
        assert!(e.contains("restart at t=1.001s arrived while the upgrade started by the restart at t=1.000s was in flight"), "{e}");
        assert!(e.contains("gen 3 (pid 300) started t=1.012s"), "{e}");
        assert!(e.contains("3 generations alive at once"), "{e}");
    }

    #[test]
    fn a_later_restart_after_the_upgrade_resolved_may_start_another() {
        let mut r = clean_run();
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1500, Action::Restart),
        ];
        r.generations
            .push(generation(3, 300, 1510, Some(1550), Some(2600)));
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn unknown_without_restarts_or_generations() {
        let mut r = clean_run();
        r.injected.clear();
        assert!(is_unknown(&check(&scenario(), &r)));
        let mut r = clean_run();
        r.generations.clear();
        assert!(is_unknown(&check(&scenario(), &r)));
    }
}
