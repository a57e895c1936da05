//! Drawing schedules: what a base scenario allows ([`Space`]), the proptest strategy over it,
//! and the seeded runner that draws (and shrinks) them.

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::schedule::{FailMode, STEP_TAIL_MS, Schedule, Step, TIME_GRID_MS, Timed};
use super::{Base, ExploreConfig};
use crate::model::{Profile, Scenario};

/// What the base scenario allows a schedule to do.
#[derive(Clone, Debug)]
pub struct Space {
    /// Steps are drawn in `0..window_ms`.
    pub window_ms: u64,
    pub max_steps: usize,
    /// The target has a `fail-next-file`.
    pub fail_next: bool,
}

impl Space {
    /// The space for `base` run for `duration_ms`.
    pub fn of(base: &Scenario, duration_ms: u64, max_steps: usize) -> Space {
        Space {
            window_ms: duration_ms.saturating_sub(STEP_TAIL_MS).max(1),
            max_steps: max_steps.max(1),
            fail_next: base.target.fail_next_file.is_some(),
        }
    }
}

fn step_strategy(space: &Space) -> BoxedStrategy<Step> {
    // Shrinking tries the options before the drawn one, nearest first, and stops at the first
    // that no longer fails: so each option comes right after the one it most resembles, and
    // every restart-like one shrinks through a burst to a plain restart.
    let restart = Just(Step::Restart).boxed();
    let burst = (2u8..=5, 1u8..=5)
        .prop_map(|(signals, gap_ms)| Step::Burst { signals, gap_ms })
        .boxed();
    let kill_after = (150u16..=400)
        .prop_map(|after_ms| Step::KillAfterReady { after_ms })
        .boxed();
    let switch = proptest::sample::select(Profile::ALL.to_vec())
        .prop_map(|profile| Step::Switch { profile })
        .boxed();
    let mut options: Vec<(u32, BoxedStrategy<Step>)> =
        vec![(4, restart), (3, burst), (1, kill_after), (1, switch)];
    if space.fail_next {
        options.push((
            2,
            prop_oneof![
                Just(FailMode::Crash),
                Just(FailMode::Exit),
                Just(FailMode::Hang)
            ]
            .prop_map(|mode| Step::FailedRestart { mode })
            .boxed(),
        ));
        options.push((
            1,
            (50u16..=250)
                .prop_map(|after_ms| Step::KillBeforeReady { after_ms })
                .boxed(),
        ));
    }
    Union::new_weighted(options).boxed()
}

/// Schedules over `space`. Shrinking drops steps, simplifies a step before moving it earlier,
/// and drops the early stop.
pub fn strategy(space: &Space) -> impl Strategy<Value = Schedule> + use<> {
    let window = space.window_ms;
    // Times on a 10 ms grid: shrinking moves a step earlier in a few runs, not a dozen.
    let slots = window.div_ceil(TIME_GRID_MS).max(1);
    let timed = (step_strategy(space), 0..slots).prop_map(|(step, slot)| Timed {
        step,
        at_ms: slot * TIME_GRID_MS,
    });
    (
        proptest::collection::vec(timed, 1..=space.max_steps),
        proptest::option::weighted(0.2, 0..window + STEP_TAIL_MS / 2),
    )
        .prop_map(|(steps, stop_at)| Schedule { steps, stop_at })
}

pub(super) fn runner(cfg: &ExploreConfig) -> TestRunner {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&cfg.seed.to_le_bytes());
    let config = Config {
        cases: cfg.cases,
        max_shrink_iters: cfg.shrink_runs,
        // Runs are real and slow; the run count above is the budget, not the clock.
        max_shrink_time: 0,
        failure_persistence: None,
        // A schedule is run once: shrinking steps back to the last failing schedule after each
        // simpler one passes, and a timing-dependent failure that passed on that re-run would
        // end the shrinking there. What was seen once is what the replays then test.
        result_cache: proptest::test_runner::basic_result_cache,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

/// The schedules `cfg` draws, in order, without running anything.
pub fn schedules(base: &Base, cfg: &ExploreConfig) -> Vec<Schedule> {
    let duration = cfg
        .duration_ms
        .unwrap_or(base.scenario.duration.as_millis() as u64);
    let space = Space::of(&base.scenario, duration, cfg.max_steps);
    let drawn = RefCell::new(Vec::new());
    // The same path as `explore` takes, so the same schedules come out.
    let _ = runner(cfg).run(&strategy(&space), |s| {
        drawn.borrow_mut().push(s);
        Ok(())
    });
    drawn.into_inner()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::strategy::ValueTree;

    use super::*;

    fn space() -> Space {
        Space {
            window_ms: 2000,
            max_steps: 3,
            fail_next: true,
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_schedules() {
        let draw = |seed: u64| {
            let mut r = runner(&ExploreConfig {
                cases: 20,
                seed,
                max_steps: 3,
                shrink_runs: 0,
                replays: 0,
                duration_ms: None,
                out: PathBuf::new(),
                id: None,
                records: None,
            });
            let s = strategy(&space());
            (0..20)
                .map(|_| s.new_tree(&mut r).map(|t| t.current()).ok())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
