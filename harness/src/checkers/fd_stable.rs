//! `fd-stable`: the serving generation's open descriptor count does not grow across restarts.
//!
//! Samples include the connections a generation holds, which come and go with the load, so each
//! generation is represented by its quietest moment (its smallest sample), and growth means a
//! steady climb: every serving generation's minimum at least the previous one's, and the last
//! above the first. A leak of even one descriptor per restart shows as such a climb; load noise
//! rarely does.

use crate::checkers::{fail, gen_name, pass, unknown};
use crate::model::{GenerationRecord, RunRecord, Scenario, Verdict};

/// See the module docs.
pub fn check(_s: &Scenario, r: &RunRecord) -> Verdict {
    let sampled: Vec<(&GenerationRecord, u32, u32)> = r
        .generations
        .iter()
        .filter(|g| g.ready_at.is_some())
        .filter_map(|g| {
            let min = g.fd_samples.iter().map(|(_, n)| *n).min()?;
            let max = g.fd_samples.iter().map(|(_, n)| *n).max()?;
            Some((g, min, max))
        })
        .collect();
    if sampled.len() < 2 {
        return unknown(format!(
            "descriptor counts are needed from at least 2 serving generations, got {}",
            sampled.len()
        ));
    }
    let lines: Vec<String> = sampled
        .iter()
        .map(|(g, min, max)| format!("{}: {min} to {max} descriptors over {} samples", gen_name(g), g.fd_samples.len()))
        .collect();
    let climbing = sampled.windows(2).all(|w| w[1].1 >= w[0].1);
    let (first, last) = (sampled[0].1, sampled[sampled.len() - 1].1);
    if climbing && last > first {
        return fail(
            format!(
                "the serving generation's fewest open descriptors grew from {first} to {last} over {} restarts",
                sampled.len() - 1
            ),
            lines,
        );
    }
    pass(format!("no steady growth across {} generations: {}", sampled.len(), lines.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;

    fn with_samples(counts: &[&[u32]]) -> RunRecord {
        let mut r = clean_run();
        r.generations = counts
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let n = u32::try_from(k).unwrap_or(0);
                let mut g = generation(n + 1, 100 + n, 1000 * u64::from(n), Some(1000 * u64::from(n) + 50), None);
                g.fd_samples = c.iter().enumerate().map(|(i, v)| (ms(1000 * u64::from(n) + 100 * i as u64), *v)).collect();
                g
            })
            .collect();
        r
    }

    #[test]
    fn passes_steady_counts_despite_connection_noise() {
        let v = check(&scenario(), &with_samples(&[&[9, 14, 12], &[10, 9, 15], &[11, 9, 13]]));
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn fails_a_leak_per_restart() {
        let v = check(&scenario(), &with_samples(&[&[9, 14], &[10, 15], &[11, 13], &[12, 18]]));
        assert!(is_fail(&v), "{v:?}");
        assert!(evidence(&v).contains("grew from 9 to 12 over 3 restarts"), "{}", evidence(&v));
        assert!(evidence(&v).contains("gen 4 (pid 103): 12 to 18 descriptors over 2 samples"));
    }

    #[test]
    fn unknown_with_fewer_than_two_sampled_generations() {
        assert!(is_unknown(&check(&scenario(), &with_samples(&[&[9, 10], &[]]))));
        assert!(is_unknown(&check(&scenario(), &clean_run())));
    }
}
