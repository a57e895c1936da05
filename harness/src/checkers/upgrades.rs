//! The upgrades of a run as the harness saw them: the injected restarts grouped into upgrades
//! (a restart that arrives while one is in flight joins it). Several checkers judge per
//! upgrade.

use std::time::Duration;

use super::restarts;
use crate::model::infer::{EXIT_SKEW, SEEN_SKEW};
use crate::model::{Generation, Injected, Lineage, ProcessRecord, RunRecord};

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
pub(crate) fn upgrades(r: &RunRecord, l: &Lineage) -> Vec<Upgrade> {
    let mut out: Vec<Upgrade> = Vec::new();
    for restart in restarts(r) {
        match out.last_mut() {
            Some(u) if in_flight(r, l, u.start, restart) => u.joined.push(restart.at),
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

/// A process a restart at `start` may have started that never held the listener (a child that
/// failed before it could): a child of a member serving then (not of a supervisor, which runs
/// helpers of its own), seen since, and of no generation.
pub(crate) fn failed_child(l: &Lineage, start: Duration, p: &ProcessRecord) -> bool {
    let members: Vec<u32> = l
        .generations
        .iter()
        .filter(|g| g.started <= start && g.alive_at(start))
        .flat_map(|g| g.members.iter().copied())
        .collect();
    p.first_seen >= start
        && members.contains(&p.ppid)
        && l.of(p.pid).is_none()
        && !l.supervisors.contains(&p.pid)
}

/// Whether `p` is a process a member of some generation forked that never held the listener.
fn forked(l: &Lineage, p: &ProcessRecord) -> bool {
    l.generations.iter().any(|g| g.contains(p.ppid)) && l.of(p.pid).is_none()
}

/// Whether the upgrade begun at `start` was still in flight at `at`: a new generation, or a
/// child of a generation serving at `start`, had appeared since and was alive but not ready;
/// or the new generation was ready but the one it replaced had not exited yet; or it is so
/// soon after `start` that the child may not have been seen yet, and nothing became ready
/// (nor was a child seen to start and end) meanwhile.
fn in_flight(r: &RunRecord, l: &Lineage, start: Duration, restart: &Injected) -> bool {
    let at = restart.at;
    let ready_by = |g: &Generation| g.ready_at.is_some_and(|t| t <= at);
    // Seen before `at` by more than the observer's granularity: a process forked by the
    // restart at `at` itself can be stamped a few milliseconds before it.
    let before_at = |seen: Duration| seen + SEEN_SKEW < at;
    let new_generation = |g: &Generation| g.started >= start;
    let old_generation = |g: &Generation| g.started <= start && g.alive_at(start);
    let new_child = |p: &ProcessRecord| failed_child(l, start, p);
    let starting_generation = l
        .generations
        .iter()
        .any(|g| new_generation(g) && before_at(g.started) && g.alive_at(at) && !ready_by(g));
    let gone = |exited: Option<Duration>| exited.is_some_and(|x| x <= at);
    let starting_child = r
        .processes
        .iter()
        .any(|p| new_child(p) && before_at(p.first_seen) && !gone(p.exited));
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
    let started: Vec<&Generation> = l
        .generations
        .iter()
        .filter(|g| new_generation(g) && before_at(g.started))
        .collect();
    if !started.is_empty() && started.iter().all(|g| !g.alive_at(at)) {
        return false;
    }
    let new_ready = |g: &Generation| new_generation(g) && ready_by(g);
    let handed_over = l.generations.iter().any(|g| {
        new_ready(g)
            || (old_generation(g) && g.stopped_listening.is_some_and(|x| x > start && x <= at))
    });
    // The first member of a generation (or failed child) that may have been started by this
    // restart: seen no earlier than a poll before it, not serving by then, and not the process
    // the restart was sent to (a generation started by this upgrade, already signalled, was
    // not started by the signal). And not one that appeared well after `exited` (the replaced
    // generation's exit) and after a later restart sent once that exit had come: that restart
    // may have started it, and a server that accepted this one on seeing the exit would have
    // started its child at once, not long after. (Within moments of the exit it may be
    // either's: in a burst of upgrades that each hand over in 3 ms the next child comes as the
    // old one exits, and as the next signal goes out.)
    let next_process = |exited: Option<Duration>| {
        let later = restarts(r)
            .into_iter()
            .map(|i| i.at)
            .find(|t| *t > at && exited.is_some_and(|x| *t >= x));
        let latecomer = |seen: Duration| {
            later.is_some_and(|t| seen + SEEN_SKEW >= t)
                && exited.is_some_and(|x| seen > x + EXIT_SKEW)
        };
        l.generations
            .iter()
            .filter(|g| g.started + SEEN_SKEW >= at && !ready_by(g))
            .filter(|g| !restart.pid.is_some_and(|pid| g.contains(pid)))
            .map(|g| g.started)
            .chain(
                r.processes
                    .iter()
                    .filter(|p| forked(l, p) && p.first_seen + SEEN_SKEW >= at)
                    .map(|p| p.first_seen),
            )
            .filter(|seen| !latecomer(*seen))
            .min()
    };
    let replaced_draining = l.generations.iter().any(|g| {
        old_generation(g)
            && g.alive_at(at)
            && next_process(g.exited).is_none_or(|next| g.alive_at(next + EXIT_SKEW))
    });
    if handed_over && replaced_draining {
        return true;
    }
    // Resolved: a new generation was seen ready, or the one serving at `start` has already
    // exited (it handed over and drained; its successor's ready line or first reply may
    // simply not have been read yet), by now or before the next process appeared: the
    // server decides when it handles the signal, a moment after it was sent.
    let resolved = l.generations.iter().any(|g| {
        new_ready(g)
            || (old_generation(g)
                && g.exited.is_some_and(|x| {
                    x <= at || next_process(g.exited).is_some_and(|next| x <= next)
                }))
    });
    // Or failed: the process it started was seen, and is gone.
    let failed = l
        .generations
        .iter()
        .any(|g| new_generation(g) && gone(g.exited))
        || r.processes.iter().any(|p| new_child(p) && gone(p.exited));
    at < start + JOIN_GRACE && !resolved && !failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;
    use crate::model::{Action, Injected, ServedBy};

    #[test]
    fn restarts_join_an_upgrade_only_while_it_is_in_flight() {
        let mut r = clean_run();
        // 1 ms apart: the child cannot have been seen yet.
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1001, Action::Restart),
        ];
        let u = upgrades(&r, &lineage_of(&r));
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].joined, vec![ms(1001)]);
        assert_eq!(u[0].end, r.end);

        // 100 ms apart with a hung child alive and not ready: joined.
        let mut r = clean_run();
        r.listeners.truncate(1);
        r.listeners[0].exited = Some(ms(2600));
        r.processes = vec![
            process(100, 1, 0, Some(2600)),
            process(150, 100, 1005, Some(1500)),
        ];
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1100, Action::Restart),
        ];
        assert_eq!(upgrades(&r, &lineage_of(&r)).len(), 1);

        // The same, after the failed child is gone: a new upgrade.
        r.injected = vec![
            injected(1000, Action::Restart),
            injected(1600, Action::Restart),
        ];
        let u = upgrades(&r, &lineage_of(&r));
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
        r.listeners = vec![
            listener(100, 1, Some(3), Some(291)),
            listener(200, 284, Some(286), Some(1509)),
        ];
        r.processes = vec![
            process(100, 1, 1, Some(291)),
            process(200, 100, 284, Some(1509)),
        ];
        let u = upgrades(&r, &lineage_of(&r));
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
        r.listeners = vec![
            listener(100, 1, Some(3), Some(366)),
            listener(200, 367, Some(367), Some(558)),
            listener(300, 555, Some(559), Some(560)),
            listener(400, 562, Some(560), Some(1504)),
        ];
        r.processes = vec![
            process(100, 1, 1, Some(366)),
            process(200, 1, 367, Some(558)),
            process(300, 200, 555, Some(560)),
            process(400, 1, 562, Some(1504)),
        ];
        let u = upgrades(&r, &lineage_of(&r));
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(555), ms(556)]);
        assert_eq!(u[1].start, ms(557));

        // Gen 2 still draining when gen 4 appeared: the last signal joined the first upgrade,
        // which then started two processes.
        r.listeners[1].exited = Some(ms(600));
        r.processes[1].exited = Some(ms(600));
        let u = upgrades(&r, &lineage_of(&r));
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
        r.listeners = vec![
            listener(100, 1, Some(4), Some(128)),
            listener(200, 9, Some(9), Some(1456)),
            listener(300, 1389, Some(1389), Some(3009)),
        ];
        r.processes = vec![
            process(100, 1, 1, Some(128)),
            process(200, 100, 9, Some(1456)),
            process(300, 200, 1389, Some(3009)),
        ];
        let u = upgrades(&r, &lineage_of(&r));
        assert_eq!(u.len(), 2, "{u:?}");
        assert_eq!(u[0].joined, vec![ms(12), ms(17), ms(22), ms(27)]);
        assert_eq!(u[1].start, ms(1387));
        // Without the restart at 1387 ms, gen 3 could only be the burst's, started once gen 1
        // was gone (the server's to explain why so late): as far as the records tell, the
        // signal at 12 ms then began an upgrade.
        r.injected.pop();
        let u = upgrades(&r, &lineage_of(&r));
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
        // Each signal went to the generation serving then: gen 1, gen 2, gen 3.
        r.injected = [(4348, 100), (4379, 200), (4409, 300)]
            .iter()
            .map(|(at, to)| {
                let mut i = injected(0, Action::Restart);
                i.at = tenths(*at);
                i.pid = Some(*to);
                i
            })
            .collect();
        r.listeners = vec![
            listener(100, 0, Some(0), None),
            listener(200, 0, None, None),
            listener(300, 0, None, None),
            listener(400, 0, None, None),
        ];
        let times = [
            (35, 35, 4384),
            (4359, 4359, 4412),
            (4403, 4403, 4439),
            (4452, 4452, 25062),
        ];
        for (g, (seen, ready, exit)) in r.listeners.iter_mut().zip(times) {
            g.listening_since = tenths(seen);
            g.ready_at = Some(tenths(ready));
            g.exited = Some(tenths(exit));
        }
        r.processes = r
            .listeners
            .iter()
            .map(|g| process(g.pid, g.pid - 100, 0, None))
            .zip(times)
            .map(|(mut p, (seen, _, exit))| {
                p.first_seen = tenths(seen);
                p.exited = Some(tenths(exit));
                p
            })
            .collect();
        // Each served from its readiness until it exited.
        r.journal.served_by = r
            .listeners
            .iter()
            .map(|g| {
                let by = ServedBy {
                    replies: 1,
                    first_sent: g.ready_at.unwrap(),
                    first_reply: g.ready_at.unwrap() + tenths(1),
                    last_reply: g.exited.unwrap(),
                };
                (g.pid, by)
            })
            .collect();
        let l = lineage_of(&r);
        assert_eq!(l.generations.len(), 4, "{l:?}");
        let u = upgrades(&r, &l);
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
        r.listeners = vec![
            listener(100, 2, Some(8), Some(1510)),
            listener(200, 400, None, Some(404)),
            listener(300, 440, None, Some(444)),
        ];
        r.processes = vec![
            process(100, 1, 2, Some(1510)),
            process(200, 100, 400, Some(404)),
            process(300, 100, 440, Some(444)),
        ];
        let u = upgrades(&r, &lineage_of(&r));
        assert_eq!(u.len(), 2, "{u:?}");
        // While the child still lived, the second restart would have joined its upgrade.
        r.listeners[1].exited = Some(ms(460));
        r.processes[1].exited = Some(ms(460));
        assert_eq!(upgrades(&r, &lineage_of(&r)).len(), 1);
    }
}
