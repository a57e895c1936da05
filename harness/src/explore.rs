//! Random fault exploration: draw event schedules with proptest, run each against the target
//! for real, judge it with every invariant, and shrink a failing schedule to a minimal one that
//! is written as a scenario file `handoff check` replays.
//!
//! A schedule is a few [`Step`]s at random times, and maybe an early final stop. Each case is
//! materialised as scenario text (the base scenario with the schedule's events) and parsed by
//! the same parser `handoff check` uses, so a written file replays exactly what was run.
//!
//! # Honesty
//! - The seed decides the schedules: the same seed draws the same schedules, in the same order.
//!   What a run *does* depends on timing, so a failure is replayed from its file before it is
//!   reported, and one that does not fail every replay is reported as flaky.
//! - A step that takes the service down on purpose (killing the new generation after it is
//!   ready) makes the invariants about the service meaningless for that case: those are not
//!   judged, and the report says so.
//! - A restart step waits for the previous generation's drain (`after-drain`), because a correct
//!   server refuses an upgrade while its predecessor drains; the signals of a burst after the
//!   first do not wait, which is the point of a burst.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use crate::checkers;
use crate::model::{Invariant, Profile, Scenario, Verdict};
use crate::run::{self, RunError, RunOptions};
use crate::scenario::{self, ScenarioError};

/// What the next generation is made to do by a `fail-next` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    Crash,
    Exit,
    Hang,
}

impl FailMode {
    fn name(self) -> &'static str {
        match self {
            FailMode::Crash => "crash",
            FailMode::Exit => "exit",
            FailMode::Hang => "hang",
        }
    }
}

/// One thing a schedule does, simplest first (shrinking moves towards the earlier ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// One restart signal (after the previous generation's drain).
    Restart,
    /// `signals` restart signals `gap_ms` apart; only the first waits for a drain.
    Burst { signals: u8, gap_ms: u8 },
    /// Restart, and SIGKILL the newest generation `after_ms` later, once it serves.
    KillAfterReady { after_ms: u16 },
    /// Switch the load to another profile.
    Switch { profile: Profile },
    /// Arm the next generation to fail, then restart.
    FailedRestart { mode: FailMode },
    /// Arm the next generation to hang, restart, and SIGKILL it `after_ms` later, before it
    /// could be ready.
    KillBeforeReady { after_ms: u16 },
}

/// A step at an offset from the first readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed {
    pub step: Step,
    pub at_ms: u64,
}

/// A drawn schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub steps: Vec<Timed>,
    /// An early final stop (SIGTERM, or whatever `target.stop` is); steps from then on are
    /// dropped.
    pub stop_at: Option<u64>,
}

/// Invariants that are not judged when a schedule kills a serving generation on purpose.
const SERVICE_INVARIANTS: [Invariant; 5] = [
    Invariant::NoRefused,
    Invariant::NoDropped,
    Invariant::DrainsThenExits,
    Invariant::TakesOver,
    Invariant::Rollback,
];

/// Which failed invariant a case is shrunk for when it broke several: the ones that name a
/// mechanism (a second upgrade, no readiness check, a restart ignored, a leak) before the ones
/// that describe what clients saw, and those before the lingering that often follows them
/// (a server that rebinds refuses connects, and its old process may then outlive its drain).
const CAUSES_FIRST: [Invariant; 8] = [
    Invariant::SingleUpgrade,
    Invariant::Rollback,
    Invariant::TakesOver,
    Invariant::FdStable,
    Invariant::NoRefused,
    Invariant::NoDropped,
    Invariant::DrainsThenExits,
    Invariant::CleanStop,
];

/// Steps start on multiples of this.
const TIME_GRID_MS: u64 = 10;

/// The room a step needs after its own time (a burst's later signals, a kill).
const STEP_TAIL_MS: u64 = 450;

impl Schedule {
    /// Whether a step kills a serving generation on purpose.
    pub fn breaks_service(&self) -> bool {
        self.kept()
            .any(|t| matches!(t.step, Step::KillAfterReady { .. }))
    }

    /// The invariants this schedule is judged by.
    pub fn judged(&self) -> Vec<Invariant> {
        Invariant::ALL
            .into_iter()
            .filter(|i| !(self.breaks_service() && SERVICE_INVARIANTS.contains(i)))
            .collect()
    }

    /// Simpler schedules proptest's shrinking cannot reach, each with fewer events: it only
    /// drops steps and simplifies each in place, so a failure first drawn with a burst keeps
    /// the burst's refused signals even when what it needed was the restarts that got
    /// through. A burst of three or more signals becomes two restarts, one grid step apart,
    /// each waiting for the drain before it. With `again` (once a rewrite was adopted, after
    /// which proptest's own simplifications are worth trying again), the schedules without
    /// one of the steps come first, then those with one burst made a single restart.
    pub fn fewer_events(&self, again: bool) -> Vec<Schedule> {
        let mut out = Vec::new();
        let with = |steps| Schedule {
            steps,
            stop_at: self.stop_at,
        };
        if again && self.steps.len() > 1 {
            for i in 0..self.steps.len() {
                let mut steps = self.steps.clone();
                steps.remove(i);
                out.push(with(steps));
            }
        }
        if again {
            for (i, t) in self.steps.iter().enumerate() {
                if let Step::Burst { .. } = t.step {
                    let mut steps = self.steps.clone();
                    steps[i].step = Step::Restart;
                    out.push(with(steps));
                }
            }
        }
        for (i, t) in self.steps.iter().enumerate() {
            if let Step::Burst { signals, .. } = t.step
                && signals >= 3
            {
                let mut steps = self.steps.clone();
                let restart = |at_ms| Timed {
                    step: Step::Restart,
                    at_ms,
                };
                steps.splice(i..=i, [restart(t.at_ms), restart(t.at_ms + TIME_GRID_MS)]);
                out.push(with(steps));
            }
        }
        out
    }

    fn kept(&self) -> impl Iterator<Item = &Timed> {
        self.steps
            .iter()
            .filter(|t| self.stop_at.is_none_or(|s| t.at_ms < s))
    }

    /// One line per event, e.g. `at-ms = 100, action = "restart", after-drain = true`.
    pub fn describe(&self, duration_ms: u64) -> Vec<String> {
        self.events(duration_ms)
            .iter()
            .map(|t| {
                let fields: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                fields.join(", ")
            })
            .collect()
    }

    /// The schedule as `[[events]]` tables, sorted by time (ties keep their order), each time
    /// below `duration_ms`.
    pub fn events(&self, duration_ms: u64) -> Vec<toml::Table> {
        let last = duration_ms.saturating_sub(1);
        let mut out: Vec<(u64, toml::Table)> = Vec::new();
        let mut push = |at: u64, action: &str, extra: &[(&str, toml::Value)]| {
            let mut t = toml::Table::new();
            t.insert("at-ms".into(), toml::Value::Integer(at.min(last) as i64));
            t.insert("action".into(), toml::Value::String(action.into()));
            for (k, v) in extra {
                t.insert((*k).into(), v.clone());
            }
            out.push((at.min(last), t));
        };
        let waits = [("after-drain", toml::Value::Boolean(true))];
        let kill = |which: &str| {
            [
                ("signal", toml::Value::String("SIGKILL".into())),
                ("generation", toml::Value::String(which.into())),
            ]
        };
        let fail = |mode: FailMode| [("mode", toml::Value::String(mode.name().into()))];
        let mut kept: Vec<&Timed> = self.kept().collect();
        kept.sort_by_key(|t| t.at_ms);
        for Timed { step, at_ms: at } in kept {
            let at = *at;
            match step {
                Step::Restart => push(at, "restart", &waits),
                Step::Switch { profile } => push(
                    at,
                    "load",
                    &[("profile", toml::Value::String(profile.name().into()))],
                ),
                Step::Burst { signals, gap_ms } => {
                    push(at, "restart", &waits);
                    for k in 1..u64::from(*signals) {
                        push(at + k * u64::from(*gap_ms), "restart", &[]);
                    }
                }
                Step::FailedRestart { mode } => {
                    push(at, "fail-next", &fail(*mode));
                    push(at, "restart", &waits);
                }
                Step::KillBeforeReady { after_ms } => {
                    push(at, "fail-next", &fail(FailMode::Hang));
                    push(at, "restart", &waits);
                    push(at + u64::from(*after_ms), "kill", &kill("starting"));
                }
                Step::KillAfterReady { after_ms } => {
                    push(at, "restart", &waits);
                    push(at + u64::from(*after_ms), "kill", &kill("newest"));
                }
            }
        }
        if let Some(stop) = self.stop_at {
            // Nothing may follow the final stop.
            let stop = stop.min(last);
            push(stop, "stop", &[]);
            let stop_index = out.len() - 1;
            let mut i = 0;
            out.retain(|(at, _)| {
                i += 1;
                *at < stop || i - 1 == stop_index
            });
        }
        // Stable: same-time events keep the order the steps give them.
        out.sort_by_key(|(at, _)| *at);
        out.into_iter().map(|(_, t)| t).collect()
    }
}

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

/// How to explore.
#[derive(Clone, Debug)]
pub struct ExploreConfig {
    pub cases: u32,
    pub seed: u64,
    pub max_steps: usize,
    /// Most re-runs spent shrinking a failure.
    pub shrink_runs: u32,
    /// Re-runs of the written file to tell a reproducible failure from a flaky one.
    pub replays: u32,
    /// Run length; the base scenario's when `None`.
    pub duration_ms: Option<u64>,
    /// Where the minimal failing scenario is written.
    pub out: PathBuf,
    /// The written scenario's `id`; a name under `explored/` when `None`.
    pub id: Option<String>,
}

/// A minimal failing schedule, written and replayed.
#[derive(Clone, Debug)]
pub struct Found {
    pub invariant: Invariant,
    /// The failing verdict's summary on a replay (empty if it never failed again).
    pub summary: String,
    /// Which case (1-based) first failed, and its schedule's event count.
    pub first_case: u32,
    pub first_events: usize,
    pub schedule: Schedule,
    pub events: usize,
    pub path: PathBuf,
    pub text: String,
    /// Shrinking runs spent.
    pub shrink_runs: u32,
    /// Replays of the written file that failed `invariant`, out of `replays`.
    pub reproduced: u32,
    pub replays: u32,
}

impl Found {
    /// Failed every replay.
    pub fn reproducible(&self) -> bool {
        self.reproduced == self.replays
    }
}

/// The result of an exploration.
#[derive(Clone, Debug)]
pub struct Explored {
    /// A failure that reproduced on every replay; exploring stops at the first.
    pub found: Option<Box<Found>>,
    /// Failures that did not reproduce on every replay, each written to a file of its own;
    /// exploring went on past them.
    pub flaky: Vec<Found>,
    /// Cases drawn and runs made (shrinking and replays included).
    pub cases: u32,
    pub runs: u32,
}

impl Explored {
    /// The closing lines `handoff explore` prints for an exploration of `base` with `seed`:
    /// each flaky finding, then the reproducible one (its scenario text first) or that there
    /// was none.
    pub fn report(&self, base: &Path, seed: u64) -> String {
        let shown = base.display();
        let mut out = String::new();
        for f in &self.flaky {
            let _ = writeln!(
                out,
                "explore {shown}: case {} broke {}, FLAKY: failed {} of {} replays of its {}-event shrunk schedule; wrote {}",
                f.first_case,
                f.invariant,
                f.reproduced,
                f.replays,
                f.events,
                f.path.display()
            );
        }
        let Some(f) = &self.found else {
            let flaky = match self.flaky.len() {
                0 => String::new(),
                n => format!(", {n} flaky failure(s)"),
            };
            let _ = writeln!(
                out,
                "explore {shown}: no reproducible failure in {} cases ({} runs){flaky}; seed {seed:#x}",
                self.cases, self.runs
            );
            return out;
        };
        let _ = writeln!(out, "{}", f.text.trim_end());
        let why = if f.summary.is_empty() {
            String::new()
        } else {
            format!(" ({})", f.summary)
        };
        let _ = writeln!(
            out,
            "explore {shown}: case {} broke {}{why}; shrunk from {} to {} events in {} runs; wrote {}; reproducible: failed {} of {} replays; seed {seed:#x}",
            f.first_case,
            f.invariant,
            f.first_events,
            f.events,
            f.shrink_runs,
            f.path.display(),
            f.reproduced,
            f.replays,
        );
        out
    }
}

/// Why an exploration could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ExploreError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("{0}")]
    Base(String),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A base scenario and the text it was read from.
pub struct Base {
    pub scenario: Scenario,
    table: toml::Table,
}

impl Base {
    /// Reads and validates the base scenario: its target and load are explored; its events
    /// and expectations are replaced.
    ///
    /// # Errors
    /// An invalid file, or a target without a restart trigger.
    pub fn load(path: &Path) -> Result<Base, ExploreError> {
        let scenario = scenario::load(path)?;
        if scenario.target.restart.is_none() {
            return Err(ExploreError::Base(format!(
                "{}: `target.restart` is missing: exploring needs a way to restart the target",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Already validated: this cannot fail for a file the parser accepted.
        let table: toml::Table = text
            .parse()
            .map_err(|e| ExploreError::Base(format!("{}: {e}", path.display())))?;
        Ok(Base { scenario, table })
    }

    /// The scenario text for `schedule`: the base with `id`, `description`, `duration-ms`,
    /// `[[events]]` and `[expect]` replaced.
    pub fn case_text(
        &self,
        schedule: &Schedule,
        id: &str,
        description: &str,
        duration_ms: u64,
        expect_fail: Option<Invariant>,
    ) -> String {
        let mut t = self.table.clone();
        t.insert("id".into(), toml::Value::String(id.into()));
        t.insert(
            "description".into(),
            toml::Value::String(description.into()),
        );
        t.insert(
            "duration-ms".into(),
            toml::Value::Integer(duration_ms as i64),
        );
        let events = schedule
            .events(duration_ms)
            .into_iter()
            .map(toml::Value::Table)
            .collect();
        t.insert("events".into(), toml::Value::Array(events));
        let mut expect = match t.remove("expect") {
            Some(toml::Value::Table(e)) => e,
            _ => toml::Table::new(),
        };
        let ids = |list: Vec<Invariant>| {
            toml::Value::Array(
                list.into_iter()
                    .map(|i| toml::Value::String(i.id().into()))
                    .collect(),
            )
        };
        // A case expects what it is judged by; a finding expects its invariant to fail.
        let (pass, fail) = match expect_fail {
            None => (schedule.judged(), Vec::new()),
            Some(i) => (Vec::new(), vec![i]),
        };
        expect.insert("pass".into(), ids(pass));
        expect.insert("fail".into(), ids(fail));
        // Last, so that `[[events]]` and `[expect]` follow the plain keys and `[target]`.
        t.remove("events").map(|e| t.insert("events".into(), e));
        t.insert("expect".into(), toml::Value::Table(expect));
        toml::to_string(&t).unwrap_or_default()
    }
}

/// How one case came out.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// Judged invariants that failed, with their summaries.
    pub failed: Vec<(Invariant, String)>,
    pub connections: u64,
}

/// Runs `text` (a scenario) once and judges it by `judged`.
///
/// # Errors
/// The text is invalid (a bug in the explorer: reported, never hidden), or the target could
/// not be run, or an interrupt.
pub fn run_case(
    path: &Path,
    text: &str,
    judged: &[Invariant],
    opts: &RunOptions,
) -> Result<CaseResult, ExploreError> {
    let s = scenario::parse(path, text)?;
    let r = run::run_scenario(&s, opts)?;
    let failed = checkers::check_all(&s, &r)
        .into_iter()
        .filter(|(i, _)| judged.contains(i))
        .filter_map(|(i, v)| match v {
            Verdict::Fail { summary, .. } => Some((i, summary)),
            _ => None,
        })
        .collect();
    Ok(CaseResult {
        failed,
        connections: r.journal.connections,
    })
}

/// Parses a seed written in decimal or as `0x` hex.
pub fn parse_seed(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("`{s}` is not a seed: expected a number, decimal or 0x-hex"))
}

/// A seed from the clock and the pid, for runs without `--seed`.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // SplitMix64's finaliser: spreads nearby clock readings over the whole range.
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn runner(cfg: &ExploreConfig) -> TestRunner {
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

/// Explores `base`: up to `cfg.cases` schedules, each run for real. A failure is shrunk
/// within `cfg.shrink_runs` re-runs and its minimal schedule replayed `cfg.replays` times and
/// written as a scenario: to `cfg.out` if it failed every replay (and exploring stops), else
/// beside it as `<name>-flaky-<case>.toml` (and exploring goes on with the next case). `log`
/// gets one line per run.
///
/// # Errors
/// A target that cannot be run, an interrupt, or a file that cannot be written.
pub fn explore(
    base: &Base,
    cfg: &ExploreConfig,
    opts: &RunOptions,
    log: &mut dyn FnMut(&str),
) -> Result<Explored, ExploreError> {
    let mut explored = Explored {
        found: None,
        flaky: Vec::new(),
        cases: 0,
        runs: 0,
    };
    let mut skip = 0;
    loop {
        let (found, cases, runs) = round(base, cfg, opts, log, skip)?;
        explored.cases = cases;
        explored.runs += runs;
        let Some(found) = found else {
            return Ok(explored);
        };
        if found.reproducible() {
            explored.found = Some(Box::new(found));
            return Ok(explored);
        }
        log(&format!(
            "case {}: {} failed {} of {} replays: kept as flaky ({}); exploring on",
            found.first_case,
            found.invariant,
            found.reproduced,
            found.replays,
            found.path.display()
        ));
        skip = found.first_case;
        explored.flaky.push(found);
        if skip >= cfg.cases {
            return Ok(explored);
        }
    }
}

/// Where a failure found at `case` is written.
fn found_path(cfg: &ExploreConfig, case: u32, reproducible: bool) -> PathBuf {
    if reproducible {
        return cfg.out.clone();
    }
    let stem = cfg
        .out
        .file_stem()
        .map_or_else(|| "explored".into(), |s| s.to_string_lossy().into_owned());
    cfg.out.with_file_name(format!("{stem}-flaky-{case}.toml"))
}

/// One proptest run over the cases after the first `skip`: the first failure, shrunk,
/// replayed and written, if any; and the cases drawn and runs made.
fn round(
    base: &Base,
    cfg: &ExploreConfig,
    opts: &RunOptions,
    log: &mut dyn FnMut(&str),
    skip: u32,
) -> Result<(Option<Found>, u32, u32), ExploreError> {
    let duration = cfg
        .duration_ms
        .unwrap_or(base.scenario.duration.as_millis() as u64);
    let space = Space::of(&base.scenario, duration, cfg.max_steps);
    let case_path = base.scenario.path.clone();
    let case_id = format!("explore/{}", base.scenario.id);

    // State shared with the proptest callback, which is a `Fn`.
    let runs = Cell::new(0u32);
    let cases = Cell::new(0u32);
    let first: RefCell<Option<First>> = RefCell::new(None);
    let abort: RefCell<Option<ExploreError>> = RefCell::new(None);
    let log = RefCell::new(log);

    let result = runner(cfg).run(&strategy(&space), |schedule| {
        if abort.borrow().is_some() {
            return Ok(());
        }
        let shrinking = first.borrow().as_ref().map(|f| f.case);
        if shrinking.is_none() {
            cases.set(cases.get() + 1);
            // Drawn again for determinism, but run already in an earlier round.
            if cases.get() <= skip {
                return Ok(());
            }
        }
        let text = base.case_text(&schedule, &case_id, "explored case", duration, None);
        let events = schedule.events(duration).len();
        // While shrinking, a simpler schedule counts as passing only if it passes twice: a
        // timing-dependent failure hides on some runs, and one lucky pass would end the
        // shrinking there. And only what the first failure broke counts: a simpler schedule
        // that breaks something else is another finding, not this one made smaller.
        let tries = if shrinking.is_some() { 2 } else { 1 };
        let mut failing: Vec<(Invariant, String)> = Vec::new();
        let mut connections = 0;
        for _ in 0..tries {
            let outcome = match run_case(&case_path, &text, &schedule.judged(), opts) {
                Ok(o) => o,
                Err(e) => {
                    *abort.borrow_mut() = Some(e);
                    return Ok(());
                }
            };
            runs.set(runs.get() + 1);
            connections = outcome.connections;
            failing = outcome
                .failed
                .into_iter()
                .filter(|(i, _)| {
                    first
                        .borrow()
                        .as_ref()
                        .is_none_or(|f| f.invariants.contains(i))
                })
                .collect();
            if !failing.is_empty() {
                break;
            }
        }
        let what = match shrinking {
            Some(case) => format!("shrink run {}", runs.get() - (case - skip)),
            None => format!("case {}/{}", cases.get(), cfg.cases),
        };
        let Some((shown, summary)) = preferred(&failing) else {
            (log.borrow_mut())(&format!(
                "{what}: {events} events: ok ({connections} connections)"
            ));
            return Ok(());
        };
        let also = failing.len() - 1;
        let also = if also > 0 {
            format!(" (and {also} more)")
        } else {
            String::new()
        };
        (log.borrow_mut())(&format!(
            "{what}: {events} events: FAIL {shown}: {summary}{also}"
        ));
        if first.borrow().is_none() {
            *first.borrow_mut() = Some(First {
                case: cases.get(),
                events,
                invariants: failing.iter().map(|(i, _)| *i).collect(),
            });
        }
        Err(TestCaseError::fail(format!("{shown}: {summary}")))
    });

    if let Some(e) = abort.into_inner() {
        return Err(e);
    }
    let schedule = match result {
        Ok(()) => return Ok((None, cases.get(), runs.get())),
        Err(TestError::Fail(_, schedule)) => schedule,
        Err(TestError::Abort(why)) => return Err(ExploreError::Base(why.to_string())),
    };
    let Some(first) = first.into_inner() else {
        return Err(ExploreError::Base(
            "proptest reported a failure the explorer did not see".into(),
        ));
    };
    // Each case run up to the failure was one run; the rest were spent shrinking.
    let mut shrink_runs = runs.get() - (first.case - skip);

    // Then the simplifications proptest cannot make, within what is left of the budget; a
    // candidate counts as passing only if it passes twice, as above.
    let mut schedule = schedule;
    let mut rewritten = false;
    'rewrite: while shrink_runs < cfg.shrink_runs {
        for candidate in schedule.fewer_events(rewritten) {
            let text = base.case_text(&candidate, &case_id, "explored case", duration, None);
            let events = candidate.events(duration).len();
            for _ in 0..2 {
                if shrink_runs >= cfg.shrink_runs {
                    break 'rewrite;
                }
                let outcome = run_case(&case_path, &text, &candidate.judged(), opts)?;
                runs.set(runs.get() + 1);
                shrink_runs += 1;
                let failing: Vec<(Invariant, String)> = outcome
                    .failed
                    .into_iter()
                    .filter(|(i, _)| first.invariants.contains(i))
                    .collect();
                if let Some((shown, summary)) = preferred(&failing) {
                    (log.borrow_mut())(&format!(
                        "shrink run {shrink_runs}: {events} events (rewritten): FAIL {shown}: {summary}"
                    ));
                    schedule = candidate;
                    rewritten = true;
                    continue 'rewrite;
                }
                (log.borrow_mut())(&format!(
                    "shrink run {shrink_runs}: {events} events (rewritten): ok ({} connections)",
                    outcome.connections
                ));
            }
        }
        break;
    }
    let events = schedule.events(duration).len();

    // Replay the minimal schedule, through the same parser `handoff check` uses, and count
    // which of the first failure's invariants broke each time: the file names the one that
    // broke most often (a mechanism before a symptom on a tie).
    let replay_text = base.case_text(&schedule, &case_id, "replay", duration, None);
    let mut broke: Vec<(Invariant, u32, String)> = Vec::new();
    for k in 1..=cfg.replays {
        let outcome = run_case(&cfg.out, &replay_text, &schedule.judged(), opts)?;
        runs.set(runs.get() + 1);
        let mut names = Vec::new();
        for (i, summary) in outcome.failed {
            if !first.invariants.contains(&i) {
                continue;
            }
            names.push(i.id());
            match broke.iter_mut().find(|(b, _, _)| *b == i) {
                Some(entry) => entry.1 += 1,
                None => broke.push((i, 1, summary)),
            }
        }
        let verdict = if names.is_empty() {
            "nothing it broke before failed".to_string()
        } else {
            format!("FAIL {}", names.join(", "))
        };
        (log.borrow_mut())(&format!("replay {k}/{}: {verdict}", cfg.replays));
    }
    let rank = |i: Invariant| CAUSES_FIRST.iter().position(|c| *c == i);
    broke.sort_by_key(|(i, n, _)| (std::cmp::Reverse(*n), rank(*i)));
    let (invariant, reproduced, summary) = match broke.into_iter().next() {
        Some(best) => best,
        // Never again: name what the first failure broke, and say it did not reproduce.
        None => {
            let i = first
                .invariants
                .iter()
                .copied()
                .min_by_key(|i| rank(*i))
                .unwrap_or(Invariant::NoRefused);
            (i, 0, String::new())
        }
    };

    // Write the minimal schedule as a scenario that expects that invariant to fail.
    let id = cfg
        .id
        .clone()
        .unwrap_or_else(|| format!("explored/{}/{:x}", base.scenario.id, cfg.seed));
    let description = format!(
        "Found by `handoff explore {} --seed {:#x}`: case {} broke {invariant}; shrunk from {} to {events} events; failed {reproduced} of {} replays",
        base.scenario.path.display(),
        cfg.seed,
        first.case,
        first.events,
        cfg.replays
    );
    let mut text = format!(
        "# Written by `handoff explore {} --seed {:#x}`.\n# Replay: handoff check <this file> (exit 0 while `{invariant}` still fails).\n",
        base.scenario.path.display(),
        cfg.seed
    );
    text.push_str(&base.case_text(&schedule, &id, &description, duration, Some(invariant)));
    let path = found_path(cfg, first.case, reproduced == cfg.replays);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ExploreError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(&path, &text).map_err(|source| ExploreError::Write {
        path: path.clone(),
        source,
    })?;
    let found = Found {
        invariant,
        summary,
        first_case: first.case,
        first_events: first.events,
        events,
        schedule,
        path,
        text,
        shrink_runs,
        reproduced,
        replays: cfg.replays,
    };
    Ok((Some(found), cases.get(), runs.get()))
}

/// The first failing case.
struct First {
    case: u32,
    events: usize,
    /// Every judged invariant it broke.
    invariants: Vec<Invariant>,
}

/// The failure to show first: by [`CAUSES_FIRST`].
fn preferred(failed: &[(Invariant, String)]) -> Option<&(Invariant, String)> {
    CAUSES_FIRST
        .iter()
        .find_map(|i| failed.iter().find(|(f, _)| f == i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;

    fn space() -> Space {
        Space {
            window_ms: 2000,
            max_steps: 3,
            fail_next: true,
        }
    }

    #[test]
    fn steps_become_events_in_time_order_and_stop_last() {
        let s = Schedule {
            steps: vec![
                Timed {
                    step: Step::KillBeforeReady { after_ms: 100 },
                    at_ms: 500,
                },
                Timed {
                    step: Step::Burst {
                        signals: 3,
                        gap_ms: 2,
                    },
                    at_ms: 100,
                },
                Timed {
                    step: Step::Restart,
                    at_ms: 1500,
                },
            ],
            stop_at: Some(1200),
        };
        let events = s.events(3000);
        let shown: Vec<String> = events
            .iter()
            .map(|t| format!("{} {}", t["at-ms"], t["action"].as_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            shown,
            [
                "100 restart",
                "102 restart",
                "104 restart",
                "500 fail-next",
                "500 restart",
                "600 kill",
                "1200 stop"
            ]
        );
        // Only the burst's first signal waits for a drain.
        assert_eq!(
            events[0].get("after-drain"),
            Some(&toml::Value::Boolean(true))
        );
        assert_eq!(events[1].get("after-drain"), None);
        assert!(!s.breaks_service());
        assert_eq!(s.judged().len(), Invariant::ALL.len());
    }

    #[test]
    fn a_burst_of_three_or_more_is_rewritten_as_two_restarts() {
        let timed = |step, at_ms| Timed { step, at_ms };
        let s = Schedule {
            steps: vec![
                timed(Step::Restart, 40),
                timed(
                    Step::Burst {
                        signals: 3,
                        gap_ms: 3,
                    },
                    410,
                ),
                timed(
                    Step::Burst {
                        signals: 2,
                        gap_ms: 1,
                    },
                    900,
                ),
            ],
            stop_at: Some(1200),
        };
        // Again: the three schedules without one step, the two with a burst made a restart,
        // then the rewrite.
        let again = s.fewer_events(true);
        assert_eq!(again.len(), 6);
        assert_eq!(again[0].steps, s.steps[1..]);
        assert_eq!(again[4].steps[2], timed(Step::Restart, 900));
        let rewritten = s.fewer_events(false);
        // The burst of 2 is left to proptest (it shrinks to a restart).
        assert_eq!(rewritten.len(), 1);
        assert_eq!(
            rewritten[0].steps,
            [
                timed(Step::Restart, 40),
                timed(Step::Restart, 410),
                timed(Step::Restart, 420),
                s.steps[2].clone(),
            ]
        );
        assert_eq!(rewritten[0].stop_at, Some(1200));
        assert!(rewritten[0].events(3000).len() < s.events(3000).len());
        // Every restart of the rewrite waits for the drain before it.
        assert!(
            rewritten[0].events(3000)[..3]
                .iter()
                .all(|e| e.get("after-drain") == Some(&toml::Value::Boolean(true)))
        );
    }

    #[test]
    fn killing_a_serving_generation_is_not_judged_by_the_service_invariants() {
        let s = Schedule {
            steps: vec![Timed {
                step: Step::KillAfterReady { after_ms: 200 },
                at_ms: 100,
            }],
            stop_at: None,
        };
        assert!(s.breaks_service());
        let judged = s.judged();
        assert!(judged.contains(&Invariant::SingleUpgrade));
        assert!(!judged.contains(&Invariant::NoRefused));
        // ... unless the kill falls after the stop and is dropped.
        let stopped = Schedule {
            stop_at: Some(50),
            ..s
        };
        assert!(!stopped.breaks_service());
    }

    #[test]
    fn times_are_clamped_below_the_end_of_the_run() {
        let s = Schedule {
            steps: vec![Timed {
                step: Step::KillAfterReady { after_ms: 400 },
                at_ms: 900,
            }],
            stop_at: None,
        };
        let at: Vec<i64> = s
            .events(1000)
            .iter()
            .filter_map(|t| t["at-ms"].as_integer())
            .collect();
        assert_eq!(at, [900, 999]);
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
            });
            let s = strategy(&space());
            (0..20)
                .map(|_| s.new_tree(&mut r).map(|t| t.current()).ok())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0x2a"), Ok(42));
        assert!(parse_seed("forty-two").unwrap_err().contains("forty-two"));
    }
}
