//! The upgrades of a run as the harness saw them: the injected restarts grouped into upgrades
//! (a restart that arrives while one is in flight joins it), and which generation was serving
//! when. Several checkers judge per upgrade.

use std::time::Duration;

use super::restarts;
use crate::model::{GenerationRecord, Injected, ProcessRecord, RunRecord};

/// A new generation that has not been seen within this long of the restart that asked for it
/// may simply not have been polled yet: a restart that follows that closely joins the upgrade.
const JOIN_GRACE: Duration = Duration::from_millis(50);

/// One upgrade as the harness saw it: the restart that began it, the restarts that arrived
/// while it was in flight (and so must not start anything more), and when the next upgrade
/// began (or the run ended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Upgrade {
    pub start: Duration,
    /// The pid the restart that began it was sent to, if known.
    pub to: Option<u32>,
    pub joined: Vec<Duration>,
    pub end: Duration,
}

/// The injected restarts grouped into upgrades, in time order.
pub(crate) fn upgrades(r: &RunRecord) -> Vec<Upgrade> {
    let mut out: Vec<Upgrade> = Vec::new();
    for restart in restarts(r) {
        match out.last_mut() {
            Some(u) if in_flight(r, u.start, restart) => u.joined.push(restart.at),
            _ => out.push(Upgrade {
                start: restart.at,
                to: restart.pid,
                joined: Vec::new(),
                end: r.end,
            }),
        }
    }
    let starts: Vec<Duration> = out.iter().map(|u| u.start).collect();
    for (u, next) in out.iter_mut().zip(starts.iter().skip(1)) {
        u.end = *next;
    }
    out
}

/// Whether the upgrade begun at `start` was still in flight at `at`: a new generation, or a
/// child of a generation serving at `start`, had appeared since and was alive but not ready;
/// or the new generation was ready but the one it replaced had not exited yet; or it is so
/// soon after `start` that the child may not have been seen yet, and nothing became ready
/// (nor was a child seen to start and end) meanwhile.
fn in_flight(r: &RunRecord, start: Duration, restart: &Injected) -> bool {
    let at = restart.at;
    let ready_by = |pid: u32| {
        r.generations
            .iter()
            .any(|g| g.pid == pid && g.ready_at.is_some_and(|t| t <= at))
    };
    let alive = |exited: Option<Duration>| exited.is_none_or(|x| x > at);
    // Seen before `at` by more than the observer's granularity: a process forked by the
    // restart at `at` itself can be stamped a few milliseconds before it.
    let before_at = |seen: Duration| seen + SEEN_SKEW < at;
    // A generation, or a process forked by one serving at `start`, that this upgrade started.
    let parents: Vec<u32> = r
        .generations
        .iter()
        .filter(|g| g.listening_since <= start && alive_at(g.exited, start))
        .map(|g| g.pid)
        .collect();
    let new_generation = |g: &GenerationRecord| g.listening_since >= start;
    let new_child = |p: &ProcessRecord| p.first_seen >= start && parents.contains(&p.ppid);
    let starting_generation = r.generations.iter().any(|g| {
        new_generation(g) && before_at(g.listening_since) && alive(g.exited) && !ready_by(g.pid)
    });
    let starting_child = r
        .processes
        .iter()
        .any(|p| new_child(p) && before_at(p.first_seen) && alive(p.exited) && !ready_by(p.pid));
    if starting_generation || starting_child {
        return true;
    }
    // Handed over, but the generation it replaced still drains: until that one is gone, a
    // correct server refuses another upgrade (at most two generations alive), so a restart
    // now joins this upgrade rather than begins one. The server decides when it handles the
    // signal, a moment after it was sent: if the replaced generation was gone by the time the
    // next process appeared, the restart may rightly have begun a new upgrade.
    // Handed over: the new generation was seen ready, or the one serving at `start` stopped
    // listening (its successor's ready line or first reply may not have been read yet).
    // Every generation this upgrade started has died by `at`: it is over (the one it was to
    // replace serves on, or took the service back in a rollback window), and a restart now
    // begins a new one.
    let started: Vec<&GenerationRecord> = r
        .generations
        .iter()
        .filter(|g| new_generation(g) && before_at(g.listening_since))
        .collect();
    if !started.is_empty() && started.iter().all(|g| !alive(g.exited)) {
        return false;
    }
    // A generation started by this upgrade and seen ready by `at`.
    let new_ready = |g: &GenerationRecord| new_generation(g) && g.ready_at.is_some_and(|t| t <= at);
    let handed_over = r.generations.iter().any(|g| {
        new_ready(g)
            || (g.listening_since <= start
                && alive_at(g.exited, start)
                && g.stopped_listening.is_some_and(|x| x > start && x <= at))
    });
    let serving_by_then = |pid: u32| {
        r.generations
            .iter()
            .any(|g| g.pid == pid && g.ready_at.is_some_and(|t| t <= at))
    };
    // The first process that may have been started by this restart: seen no earlier than a
    // poll before it, not serving by then, and not the process the restart was sent to (a
    // generation started by this upgrade, already signalled, was not started by the signal).
    // And not one that appeared well after `exited` (the replaced generation's exit) and
    // after a later restart sent once that exit had come: that restart may have started it,
    // and a server that accepted this one on seeing the exit would have started its child at
    // once, not long after. (Within moments of the exit it may be either's: in a burst of
    // upgrades that each hand over in 3 ms the next child comes as the old one exits, and
    // as the next signal goes out.)
    let next_process = |exited: Option<Duration>| {
        let later = restarts(r)
            .into_iter()
            .map(|i| i.at)
            .find(|t| *t > at && exited.is_some_and(|x| *t >= x));
        let latecomer = |seen: Duration| {
            later.is_some_and(|t| seen + SEEN_SKEW >= t)
                && exited.is_some_and(|x| seen > x + EXIT_SKEW)
        };
        r.processes
            .iter()
            .filter(|p| {
                p.first_seen + SEEN_SKEW >= at
                    && !latecomer(p.first_seen)
                    && !serving_by_then(p.pid)
                    && restart.pid != Some(p.pid)
            })
            .map(|p| p.first_seen)
            .min()
    };
    let replaced_draining = r.generations.iter().any(|g| {
        g.listening_since <= start
            && alive_at(g.exited, start)
            && alive(g.exited)
            && next_process(g.exited).is_none_or(|next| alive_at(g.exited, next + EXIT_SKEW))
    });
    if handed_over && replaced_draining {
        return true;
    }
    // Resolved: a new generation was seen ready, or the one serving at `start` has already
    // exited (it handed over and drained; its successor's ready line or first reply may
    // simply not have been read yet), by now or before the next process appeared: the
    // server decides when it handles the signal, a moment after it was sent.
    let resolved = r.generations.iter().any(|g| {
        new_ready(g)
            || (g.listening_since <= start
                && alive_at(g.exited, start)
                && g.exited.is_some_and(|x| {
                    x <= at || next_process(g.exited).is_some_and(|next| x <= next)
                }))
    });
    // Or failed: the process it started was seen, and is gone.
    let gone = |exited: Option<Duration>| exited.is_some_and(|x| x <= at);
    let failed = r
        .generations
        .iter()
        .any(|g| new_generation(g) && gone(g.exited))
        || r.processes.iter().any(|p| new_child(p) && gone(p.exited));
    at < start + JOIN_GRACE && !resolved && !failed
}

/// How much earlier than the event that caused it the observer may stamp a process: it stamps
/// everything found in one poll with the poll's start, and a poll takes a few milliseconds.
const SEEN_SKEW: Duration = Duration::from_millis(10);

/// How far apart an exit and another process's appearance must be for the harness to tell
/// their order: appearances are stamped up to a poll early, exits when the reaper gets to
/// them, and both drift on a loaded machine.
pub(crate) const EXIT_SKEW: Duration = Duration::from_millis(50);

fn alive_at(exited: Option<Duration>, at: Duration) -> bool {
    exited.is_none_or(|x| x > at)
}

/// The generation serving at `at`: the newest one that was ready by then and had not exited.
pub(crate) fn serving_at(r: &RunRecord, at: Duration) -> Option<&GenerationRecord> {
    r.generations
        .iter()
        .filter(|g| g.ready_at.is_some_and(|t| t <= at) && g.exited.is_none_or(|x| x > at))
        .max_by_key(|g| g.generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;
    use crate::model::{Action, Injected};

    #[test]
    fn restarts_join_an_upgrade_only_while_it_is_in_flight() {
        let mut r = clean_run();
        // 1 ms apart: the child cannot have been seen yet.
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1001, Action::Restart),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].joined, vec![ms(1001)]);
        assert_eq!(u[0].end, r.end);

        // 100 ms apart with a hung child alive and not ready: joined.
        let mut r = clean_run();
        r.generations.truncate(1);
        r.generations[0].exited = Some(ms(2600));
        r.processes = vec![
            process(100, 1, 0, Some(2600)),
            process(150, 100, 1005, Some(1500)),
        ];
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1100, Action::Restart),
        ];
        assert_eq!(upgrades(&r).len(), 1);

        // The same, after the failed child is gone: a new upgrade.
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1600, Action::Restart),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].end, ms(1600));
    }

    #[test]
    fn a_restart_just_after_the_handover_joins_it_while_the_old_one_drains() {
        // From a real run: gen 2 was ready at 286 ms, the second signal of a burst came at
        // 288 ms (to gen 2, which refused it: gen 1 was still draining, until 291 ms).
        let mut r = clean_run();
        r.injected = vec![
            injected(283, Action::Restart),
            injected(288, Action::Restart),
        ];
        r.generations = vec![
            generation(1, 100, 1, Some(3), Some(291)),
            generation(2, 200, 284, Some(286), Some(1509)),
        ];
        r.processes = vec![
            process(100, 1, 1, Some(291)),
            process(200, 100, 284, Some(1509)),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(288)]);
    }

    #[test]
    fn a_restart_sent_to_the_new_generation_as_the_old_one_exits_begins_an_upgrade() {
        // From a real run: a burst to gen 2 started gen 3; its last signal went to gen 3 (the
        // pid file already named it) as gen 2 exited, and before gen 3's ready line was read.
        // Gen 3 rightly began the next upgrade: gen 2 was gone before gen 4 appeared.
        let burst = |to_gen2: &[u64], to_gen3: u64| {
            let mut all: Vec<Injected> = to_gen2
                .iter()
                .map(|at| {
                    let mut i = injected(*at, Action::Restart);
                    i.pid = Some(200);
                    i
                })
                .collect();
            let mut last = injected(to_gen3, Action::Restart);
            last.pid = Some(300);
            all.push(last);
            all
        };
        let mut r = clean_run();
        r.injected = burst(&[553, 555, 556], 557);
        r.generations = vec![
            generation(1, 100, 1, Some(3), Some(366)),
            generation(2, 200, 367, Some(367), Some(558)),
            generation(3, 300, 555, Some(559), Some(560)),
            generation(4, 400, 562, Some(560), Some(1504)),
        ];
        r.processes = vec![
            process(100, 1, 1, Some(366)),
            process(200, 1, 367, Some(558)),
            process(300, 200, 555, Some(560)),
            process(400, 1, 562, Some(1504)),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(555), ms(556)]);
        assert_eq!(u[1].start, ms(557));

        // Gen 2 still draining when gen 4 appeared: the last signal joined the first upgrade,
        // which then started two processes.
        r.generations[1].exited = Some(ms(600));
        r.processes[1].exited = Some(ms(600));
        let u = upgrades(&r);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(555), ms(556), ms(557)]);
    }

    #[test]
    fn a_process_started_by_a_later_restart_does_not_make_a_refused_one_an_upgrade() {
        // From a real run (ci/soak, explore reference/echo/long-3-restarts --seed
        // 0xd22840991892): a burst to gen 1 at 7 ms started gen 2, ready at 9.5 ms; the other
        // signals of the burst, at 12 to 27 ms, went to gen 2, which refused them: gen 1
        // drained until 128 ms. The next process, gen 3, appeared only at 1389 ms, after the
        // restart at 1387 ms. It says nothing about when the server handled the burst.
        let mut r = clean_run();
        r.injected = [7, 12, 17, 22, 27, 1387]
            .iter()
            .map(|at| injected(*at, Action::Restart))
            .collect();
        r.generations = vec![
            generation(1, 100, 1, Some(4), Some(128)),
            generation(2, 200, 9, Some(9), Some(1456)),
            generation(3, 300, 1389, Some(1389), Some(3009)),
        ];
        r.processes = vec![
            process(100, 1, 1, Some(128)),
            process(200, 100, 9, Some(1456)),
            process(300, 200, 1389, Some(3009)),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(12), ms(17), ms(22), ms(27)]);
        assert_eq!(u[1].start, ms(1387));
        // Without the restart at 1387 ms, gen 3 could only be the burst's, started once gen 1
        // was gone (the server's to explain why so late): as far as the records tell, the
        // signal at 12 ms then began an upgrade.
        r.injected.pop();
        let u = upgrades(&r);
        assert_eq!(u[1].start, ms(12), "{u:?}");
    }

    #[test]
    fn in_a_burst_of_quick_upgrades_each_signal_after_an_exit_begins_one() {
        // From a real run (ci/soak, explore reference/echo/double-restart): three signals
        // 3 ms apart, each upgrade handing over in about 3 ms. The second, to gen 2, came
        // 0.5 ms before gen 1 exited, and gen 2 accepted it (gen 3 appeared 2 ms after the
        // exit, 0.6 ms before the third signal went out to gen 3). Three upgrades, one
        // process each.
        // Times in tenths of a millisecond, as recorded.
        let tenths = |n: u64| Duration::from_micros(n * 100);
        let mut r = clean_run();
        r.injected = [4348, 4379, 4409]
            .iter()
            .map(|at| {
                let mut i = injected(0, Action::Restart);
                i.at = tenths(*at);
                i
            })
            .collect();
        r.generations = vec![
            generation(1, 100, 0, Some(0), None),
            generation(2, 200, 0, None, None),
            generation(3, 300, 0, None, None),
            generation(4, 400, 0, None, None),
        ];
        let times = [
            (35, 35, 4384),
            (4359, 4359, 4412),
            (4403, 4403, 4439),
            (4452, 4452, 25062),
        ];
        for (g, (seen, ready, exit)) in r.generations.iter_mut().zip(times) {
            g.listening_since = tenths(seen);
            g.ready_at = Some(tenths(ready));
            g.exited = Some(tenths(exit));
        }
        r.processes = r
            .generations
            .iter()
            .map(|g| process(g.pid, g.pid - 100, 0, None))
            .zip(times)
            .map(|(mut p, (seen, _, exit))| {
                p.first_seen = tenths(seen);
                p.exited = Some(tenths(exit));
                p
            })
            .collect();
        let u = upgrades(&r);
        assert_eq!(u.len(), 3, "{u:?}");
        assert!(u.iter().all(|u| u.joined.is_empty()), "{u:?}");
    }

    #[test]
    fn a_restart_after_the_failed_child_is_gone_begins_an_upgrade() {
        // From a real run: two restarts 40 ms apart, each armed to crash its child; the first
        // child was gone 35 ms before the second restart, which rightly started another.
        let mut r = clean_run();
        r.injected = vec![
            injected(399, Action::Restart),
            injected(439, Action::Restart),
        ];
        r.generations = vec![
            generation(1, 100, 2, Some(8), Some(1510)),
            generation(2, 200, 400, None, Some(404)),
            generation(3, 300, 440, None, Some(444)),
        ];
        r.processes = vec![
            process(100, 1, 2, Some(1510)),
            process(200, 100, 400, Some(404)),
            process(300, 100, 440, Some(444)),
        ];
        let u = upgrades(&r);
        assert_eq!(u.len(), 2, "{u:?}");
        // While the child still lived, the second restart would have joined its upgrade.
        r.generations[1].exited = Some(ms(460));
        r.processes[1].exited = Some(ms(460));
        assert_eq!(upgrades(&r).len(), 1);
    }
}
