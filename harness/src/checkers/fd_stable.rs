//! `fd-stable`: the serving generation's open descriptor count does not grow across restarts.
//!
//! A generation is a set of processes ([`crate::model::infer`]): its count is the sum of its
//! members' and the supervisors'. Only the samples taken while a generation was the serving one
//! count (see [`serving_window`]); the observer takes one every 20 ms or so, and one right before each
//! restart signal sent to a generation serving alone, so that one replaced within
//! milliseconds still has one. The samples leave out sockets that are not listeners (mostly the
//! connections of the moment) but still count short-lived descriptors (a file being written, a
//! pipe). So each generation is represented by the median of its samples, and growth is judged
//! against what noise remains:
//! - a climb over at least two restarts after the first (never falling, and growing by at least
//!   2 and by one every other restart) is a leak: load noise rarely climbs steadily. The first
//!   generation is left out of this: the harness started it, not the server, so its descriptor
//!   table legitimately differs from its successors';
//! - a rise at one restart larger than every connection the load can hold at once
//!   (`clients + burst-size`) is a leak;
//! - a steady rise over too few restarts to tell it from noise is Unknown.

use std::time::Duration;

use crate::checkers::{fail, lineage, pass, unknown, upgrade_began};
use crate::model::{Action, Generation, Lineage, ListenerRecord, RunRecord, Scenario, Verdict};

/// A generation's descriptor counts in its window: median, smallest, largest, and how many
/// samples.
type Counts = (u32, u32, u32, usize);

/// Descriptor-count samples: when, how many.
type Samples = [(Duration, u32)];

fn median(samples: &Samples) -> Option<u32> {
    let mut counts: Vec<u32> = samples.iter().map(|(_, n)| *n).collect();
    counts.sort_unstable();
    counts.get(counts.len() / 2).copied()
}

/// The window in which generation `index` was the serving one, not in the middle of an
/// upgrade: from its readiness (or from when every older generation was gone, if that was
/// seen first: its ready line may be read late) until its successor's readiness (or its exit),
/// leaving out the time a child was starting. Before, it may not have opened everything yet;
/// after, it closes its listeners and connections as it drains; during an upgrade it holds the
/// child's readiness pipe too. `None` if it never served.
fn serving_window(
    r: &RunRecord,
    l: &Lineage,
    index: usize,
) -> Option<(Duration, Duration, impl Fn(Duration) -> bool)> {
    let g = &l.generations[index];
    let older_gone = (index > 0)
        .then(|| {
            l.generations[..index]
                .iter()
                .map(|o| o.exited)
                .try_fold(g.started, |latest, exited| exited.map(|x| latest.max(x)))
        })
        .flatten();
    let from = [g.ready_at, older_gone].into_iter().flatten().min()?;
    let until = l.generations[index + 1..]
        .iter()
        .filter_map(|n| n.ready_at)
        .filter(|t| *t >= from)
        .min()
        .or(g.exited)
        .unwrap_or(r.end);
    // While an upgrade is in flight the generation also holds the readiness pipe and more:
    // from the restart signal that started a child until the child is ready, or gone. The
    // child is first seen up to a poll after the signal (the observer polls every few
    // milliseconds), and a sample may fall in between: the upgrade counts from the restart
    // that started the child, if it came after `from`.
    let starting: Vec<(Duration, Duration)> = l
        .generations
        .iter()
        .filter(|h| h.number != g.number && h.started >= from)
        .map(|h| {
            (
                upgrade_began(r, from, h),
                h.ready_at.or(h.exited).unwrap_or(r.end),
            )
        })
        .collect();
    let upgrading = move |t: Duration| starting.iter().any(|(a, b)| *a <= t && t <= *b);
    Some((from, until, upgrading))
}

/// The median, smallest and largest of `x`'s samples in generation `index`'s window (see
/// [`serving_window`]), and how many there were.
fn in_window(r: &RunRecord, l: &Lineage, index: usize, x: &ListenerRecord) -> Option<Counts> {
    let (from, until, upgrading) = serving_window(r, l, index)?;
    let samples: Vec<(Duration, u32)> = x
        .fd_samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= until && !upgrading(*t))
        .copied()
        .collect();
    let m = median(&samples)?;
    let min = samples.iter().map(|(_, n)| *n).min().unwrap_or(0);
    let max = samples.iter().map(|(_, n)| *n).max().unwrap_or(0);
    Some((m, min, max, samples.len()))
}

/// What each generation held while it served, by index: per member, the median of its samples
/// in the window, summed (with the sums of their smallest and largest samples, and how many
/// samples there were); plus each supervisor's, when it was sampled in the window of every
/// generation that was (a supervisor sampled in some windows only would make a step of its
/// own). A generation replaced within milliseconds may have no sample, and is then left out.
fn serving_counts(r: &RunRecord, l: &Lineage) -> Vec<(usize, Counts)> {
    let add = |a: Counts, b: Counts| (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3);
    let mut counts: Vec<(usize, Counts)> = (0..l.generations.len())
        .filter_map(|i| {
            let g = &l.generations[i];
            r.listeners_of(g)
                .filter_map(|x| in_window(r, l, i, x))
                .reduce(add)
                .map(|c| (i, c))
        })
        .collect();
    for x in r
        .listeners
        .iter()
        .filter(|x| l.supervisors.contains(&x.pid))
    {
        let per: Vec<Option<Counts>> = counts.iter().map(|(i, _)| in_window(r, l, *i, x)).collect();
        if per.iter().all(Option::is_some) {
            for ((_, c), s) in counts.iter_mut().zip(per.into_iter().flatten()) {
                *c = add(*c, s);
            }
        }
    }
    counts
}

/// See the module docs.
pub fn check(s: &Scenario, r: &RunRecord) -> Verdict {
    let l = lineage(s, r);
    let sampled: Vec<(&Generation, Counts)> = serving_counts(r, &l)
        .into_iter()
        .map(|(i, c)| (&l.generations[i], c))
        .collect();
    if sampled.len() < 2 {
        return unknown(format!(
            "descriptor counts are needed from at least 2 serving generations, got {}",
            sampled.len()
        ));
    }
    // Every connection the load can hold at once, under the heaviest profile it switches to.
    let noise = s
        .events
        .iter()
        .filter_map(|e| match &e.action {
            Action::Load { profile } => Some(s.load.switched(*profile)),
            _ => None,
        })
        .chain(std::iter::once(s.load.clone()))
        .map(|l| l.clients.saturating_add(l.burst_size))
        .max()
        .unwrap_or(0);
    let lines: Vec<String> = sampled
        .iter()
        .map(|(g, (m, min, max, samples))| {
            format!(
                "{}: median {m} ({min} to {max}) descriptors over {samples} samples while serving",
                g.name(),
            )
        })
        .collect();
    let sampled: Vec<(&Generation, u32)> = sampled.iter().map(|(g, (m, ..))| (*g, *m)).collect();
    let rising = |gens: &[(&Generation, u32)]| gens.windows(2).all(|w| w[1].1 > w[0].1);
    // Generations started by the server's own restarts.
    let later = &sampled[1..];
    let steps = later.len().saturating_sub(1);
    let never_falls = later.windows(2).all(|w| w[1].1 >= w[0].1);
    let growth = later.last().map_or(0, |l| l.1).saturating_sub(later[0].1);
    // A leak climbs with every restart; the median of one generation can still tie with the
    // next when samples straddle a step, so ties are allowed as long as it never falls and
    // climbs at least every other restart.
    let enough = u32::try_from(steps.div_ceil(2)).unwrap_or(u32::MAX).max(2);
    if steps >= 2 && never_falls && growth >= enough {
        return fail(
            format!(
                "the serving generation's descriptor count never fell and grew from {} to {} over the last {steps} restarts",
                later[0].1,
                later[later.len() - 1].1
            ),
            lines,
        );
    }
    if let Some(w) = sampled
        .windows(2)
        .find(|w| w[1].1.saturating_sub(w[0].1) > noise)
    {
        return fail(
            format!(
                "the descriptor count rose from {} to {} at one restart, more than the {noise} connections the load can hold",
                w[0].1, w[1].1
            ),
            lines,
        );
    }
    let (first, last) = (sampled[0].1, sampled[sampled.len() - 1].1);
    if (later.len() >= 2 && rising(later)) || (later.len() == 1 && last > first) {
        return unknown(format!(
            "the descriptor count rose at every restart, from {first} to {last}, but over too few restarts to tell a leak from load noise ({})",
            lines.join("; ")
        ));
    }
    pass(format!(
        "no growth across {} generations: {}",
        sampled.len(),
        lines.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;

    fn with_samples(counts: &[&[u32]]) -> RunRecord {
        let mut r = clean_run();
        r.listeners = counts
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let n = u32::try_from(k).unwrap_or(0);
                let mut g = listener(
                    100 + n,
                    1000 * u64::from(n),
                    Some(1000 * u64::from(n) + 50),
                    None,
                );
                g.fd_samples = c
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (ms(1000 * u64::from(n) + 50 + 100 * i as u64), *v))
                    .collect();
                g
            })
            .collect();
        r.end = ms(1000 * counts.len() as u64 + 1000);
        r
    }

    #[test]
    fn leaves_out_samples_from_before_ready_and_from_the_drain() {
        // Generation 3 was replaced within milliseconds (a burst of restarts): its only
        // samples were taken while it started (5 descriptors) and while it drained.
        let mut r = with_samples(&[&[13, 13, 13], &[13, 13, 13], &[13], &[13, 13, 13]]);
        r.listeners[2].ready_at = Some(ms(2050));
        r.listeners[2].fd_samples = vec![(ms(2010), 5), (ms(2060), 3)];
        r.listeners[3].listening_since = ms(2052);
        r.listeners[3].ready_at = Some(ms(2055));
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("no growth across 3 generations"),
            "{v:?}"
        );
    }

    #[test]
    fn a_sample_between_a_restart_signal_and_the_child_seen_is_left_out() {
        // From a real run: a burst of restarts, each accepted in about 3 ms. Gen 3's only
        // sample (14 descriptors, its usual 11 and the upgrade's pipe and child pidfd) came
        // 0.1 ms after the signal that started gen 4, which was first seen 4 ms later.
        let mut r = with_samples(&[&[11, 11], &[11, 11], &[14], &[11, 11, 11]]);
        r.listeners[2].fd_samples = vec![(ms(2060), 14)];
        r.injected = vec![injected(2059, Action::Restart)];
        r.listeners[3].listening_since = ms(2064);
        r.listeners[3].ready_at = Some(ms(2062));
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(
            evidence(&v).contains("no growth across 3 generations"),
            "{}",
            evidence(&v)
        );
        assert!(!evidence(&v).contains("gen 3"), "{}", evidence(&v));
    }

    #[test]
    fn a_generation_serving_alone_counts_before_its_ready_line_is_read() {
        // From a real run: generation 3's only sample was taken right before the next restart,
        // after generation 2 had exited but before generation 3's ready line was read.
        let mut r = with_samples(&[&[6, 6], &[7], &[8], &[9, 9, 9]]);
        r.listeners[0].exited = Some(ms(1020));
        r.listeners[1].exited = Some(ms(2020));
        r.listeners[2].ready_at = Some(ms(2060));
        r.listeners[2].fd_samples = vec![(ms(2030), 8)];
        let v = check(&scenario(), &r);
        assert!(is_fail(&v), "{v:?}");
        assert!(
            evidence(&v).contains("gen 3 (pid 102): median 8 (8 to 8) descriptors over 1 samples"),
            "{}",
            evidence(&v)
        );
        // While generation 2 was still alive, the same sample does not count.
        r.listeners[1].exited = Some(ms(2040));
        let v = check(&scenario(), &r);
        assert!(!is_fail(&v), "{v:?}");
    }

    #[test]
    fn passes_steady_counts_despite_startup_and_connection_noise() {
        let v = check(
            &scenario(),
            &with_samples(&[&[15, 15, 16, 19], &[17, 13, 20, 13, 13], &[5, 13, 13, 14]]),
        );
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn fails_a_leak_at_every_restart() {
        let v = check(
            &scenario(),
            &with_samples(&[&[9, 9, 14], &[10, 10, 15], &[11, 11, 13], &[12, 12, 18]]),
        );
        assert!(is_fail(&v), "{v:?}");
        assert!(
            evidence(&v).contains("never fell and grew from 10 to 12 over the last 2 restarts"),
            "{}",
            evidence(&v)
        );
        assert!(
            evidence(&v)
                .contains("gen 4 (pid 103): median 12 (12 to 18) descriptors over 3 samples")
        );
    }

    #[test]
    fn fails_a_leak_whose_medians_tie_at_one_restart() {
        let v = check(
            &scenario(),
            &with_samples(&[
                &[9],
                &[10, 9, 9, 11, 11],
                &[8, 10, 10],
                &[11],
                &[12],
                &[13],
                &[14],
            ]),
        );
        assert!(is_fail(&v), "{v:?}");
    }

    #[test]
    fn a_single_bump_is_no_leak() {
        let v = check(&scenario(), &with_samples(&[&[15], &[13], &[13], &[14]]));
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn fails_a_jump_beyond_the_load() {
        // 4 clients in the fixture: a rise of 20 is no connection noise.
        let v = check(&scenario(), &with_samples(&[&[10, 10], &[30, 30]]));
        assert!(is_fail(&v), "{v:?}");
    }

    #[test]
    fn unknown_with_too_few_samples_or_a_small_single_rise() {
        assert!(is_unknown(&check(
            &scenario(),
            &with_samples(&[&[9, 10], &[]])
        )));
        assert!(is_unknown(&check(&scenario(), &clean_run())));
        assert!(is_unknown(&check(
            &scenario(),
            &with_samples(&[&[10, 10], &[12, 12]])
        )));
        assert!(is_unknown(&check(
            &scenario(),
            &with_samples(&[&[15], &[10], &[11]])
        )));
        // The first generation is the harness's: a different table there is no growth.
        assert!(is_pass(&check(
            &scenario(),
            &with_samples(&[&[15], &[13], &[13], &[13]])
        )));
    }
}
