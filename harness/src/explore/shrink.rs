//! Shrinking a failing case: one proptest round until the first failure and proptest's own
//! shrinking, then the rewrites proptest cannot make, then replays of the minimal schedule,
//! which is written as a scenario that expects its invariant to fail.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use proptest::test_runner::{TestCaseError, TestError};

use super::schedule::Schedule;
use super::strategy::{Space, runner, strategy};
use super::{Base, ExploreConfig, ExploreError, Found, run_case};
use crate::model::Invariant;
use crate::run::RunOptions;

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
pub(super) fn round(
    base: &Base,
    cfg: &ExploreConfig,
    opts: &RunOptions,
    log: &mut dyn FnMut(&str),
    skip: u32,
    runs_before: u32,
) -> Result<(Option<Found>, u32, u32), ExploreError> {
    let duration = cfg
        .duration_ms
        .unwrap_or(base.scenario.duration.as_millis() as u64);
    let round = Round {
        base,
        cfg,
        opts,
        duration,
        case_path: base.scenario.path.clone(),
        case_id: format!("explore/{}", base.scenario.id),
        runs: Cell::new(0),
        runs_before,
        log: RefCell::new(log),
    };
    let (drawn, cases) = round.draw(skip)?;
    let Some((schedule, first)) = drawn else {
        return Ok((None, cases, round.runs.get()));
    };
    // Each case run up to the failure was one run; the rest were spent shrinking.
    let shrink_runs = round.runs.get() - (first.case - skip);
    let (schedule, shrink_runs) = round.rewrite(schedule, &first, shrink_runs)?;
    let (invariant, reproduced, summary) = round.replay(&schedule, &first)?;
    let found = round.write(
        schedule,
        &first,
        shrink_runs,
        invariant,
        reproduced,
        summary,
    )?;
    Ok((Some(found), cases, round.runs.get()))
}

/// What every phase of a round needs, and the runs it made.
struct Round<'a, 'l> {
    base: &'a Base,
    cfg: &'a ExploreConfig,
    opts: &'a RunOptions,
    duration: u64,
    case_path: PathBuf,
    case_id: String,
    runs: Cell<u32>,
    /// Runs made by earlier rounds: records are numbered over the whole exploration.
    runs_before: u32,
    log: RefCell<&'l mut dyn FnMut(&str)>,
}

impl Round<'_, '_> {
    fn log(&self, line: &str) {
        (self.log.borrow_mut())(line);
    }

    /// Runs `schedule` once; the invariants of `only` (all when `None`) it broke, and the
    /// connections it made.
    fn run(
        &self,
        schedule: &Schedule,
        path: &Path,
        text: &str,
        only: Option<&First>,
    ) -> Result<(Vec<(Invariant, String)>, u64), ExploreError> {
        let record = self.cfg.records.as_ref().map(|dir| {
            let n = self.runs.get() + 1 + self.runs_before;
            dir.join(format!("run-{n}.json"))
        });
        let outcome = run_case(path, text, &schedule.judged(), self.opts, record.as_deref())?;
        self.runs.set(self.runs.get() + 1);
        if let Some(record) = record.filter(|_| !outcome.failed.is_empty()) {
            self.log(&format!("record of the failing run: {}", record.display()));
        }
        let failing = outcome
            .failed
            .into_iter()
            .filter(|(i, _)| only.is_none_or(|f| f.invariants.contains(i)))
            .collect();
        Ok((failing, outcome.connections))
    }

    /// The proptest phase: cases until the first failure, then proptest's own shrinking of
    /// it. The shrunk schedule and the first failure, if any, and the cases drawn.
    fn draw(&self, skip: u32) -> Result<(Option<(Schedule, First)>, u32), ExploreError> {
        let space = Space::of(&self.base.scenario, self.duration, self.cfg.max_steps);
        // State shared with the proptest callback, which is a `Fn`.
        let cases = Cell::new(0u32);
        let first: RefCell<Option<First>> = RefCell::new(None);
        let abort: RefCell<Option<ExploreError>> = RefCell::new(None);
        let result = runner(self.cfg).run(&strategy(&space), |schedule| {
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
            let text = self.case_text(&schedule);
            let events = schedule.events(self.duration).len();
            // While shrinking, a simpler schedule counts as passing only if it passes twice:
            // a timing-dependent failure hides on some runs, and one lucky pass would end the
            // shrinking there. And only what the first failure broke counts: a simpler
            // schedule that breaks something else is another finding, not this one made
            // smaller.
            let tries = if shrinking.is_some() { 2 } else { 1 };
            let mut failing: Vec<(Invariant, String)> = Vec::new();
            let mut connections = 0;
            for _ in 0..tries {
                let ran = self.run(&schedule, &self.case_path, &text, first.borrow().as_ref());
                match ran {
                    Ok((f, c)) => (failing, connections) = (f, c),
                    Err(e) => {
                        *abort.borrow_mut() = Some(e);
                        return Ok(());
                    }
                }
                if !failing.is_empty() {
                    break;
                }
            }
            let what = match shrinking {
                Some(case) => format!("shrink run {}", self.runs.get() - (case - skip)),
                None => format!("case {}/{}", cases.get(), self.cfg.cases),
            };
            let Some((shown, summary)) = preferred(&failing) else {
                self.log(&format!(
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
            self.log(&format!(
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
            Ok(()) => return Ok((None, cases.get())),
            Err(TestError::Fail(_, schedule)) => schedule,
            Err(TestError::Abort(why)) => return Err(ExploreError::Base(why.to_string())),
        };
        let Some(first) = first.into_inner() else {
            return Err(ExploreError::Base(
                "proptest reported a failure the explorer did not see".into(),
            ));
        };
        Ok((Some((schedule, first)), cases.get()))
    }

    /// The simplifications proptest cannot make, within what is left of the budget; a
    /// candidate counts as passing only if it passes twice, as while shrinking. The schedule
    /// kept and the shrinking runs spent.
    fn rewrite(
        &self,
        mut schedule: Schedule,
        first: &First,
        mut shrink_runs: u32,
    ) -> Result<(Schedule, u32), ExploreError> {
        let mut rewritten = false;
        'rewrite: while shrink_runs < self.cfg.shrink_runs {
            for candidate in schedule.fewer_events(rewritten) {
                let text = self.case_text(&candidate);
                let events = candidate.events(self.duration).len();
                for _ in 0..2 {
                    if shrink_runs >= self.cfg.shrink_runs {
                        break 'rewrite;
                    }
                    let (failing, connections) =
                        self.run(&candidate, &self.case_path, &text, Some(first))?;
                    shrink_runs += 1;
                    if let Some((shown, summary)) = preferred(&failing) {
                        self.log(&format!(
                            "shrink run {shrink_runs}: {events} events (rewritten): FAIL {shown}: {summary}"
                        ));
                        schedule = candidate;
                        rewritten = true;
                        continue 'rewrite;
                    }
                    self.log(&format!(
                        "shrink run {shrink_runs}: {events} events (rewritten): ok ({connections} connections)"
                    ));
                }
            }
            break;
        }
        Ok((schedule, shrink_runs))
    }

    /// Replays the minimal schedule, through the same parser `handoff check` uses, and counts
    /// which of the first failure's invariants broke each time: the one that broke most often
    /// (a mechanism before a symptom on a tie), how often, and its summary.
    fn replay(
        &self,
        schedule: &Schedule,
        first: &First,
    ) -> Result<(Invariant, u32, String), ExploreError> {
        let replay_text =
            self.base
                .case_text(schedule, &self.case_id, "replay", self.duration, None);
        let mut broke: Vec<(Invariant, u32, String)> = Vec::new();
        for k in 1..=self.cfg.replays {
            let (failing, _) = self.run(schedule, &self.cfg.out, &replay_text, Some(first))?;
            let mut names = Vec::new();
            for (i, summary) in failing {
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
            self.log(&format!("replay {k}/{}: {verdict}", self.cfg.replays));
        }
        let rank = |i: Invariant| CAUSES_FIRST.iter().position(|c| *c == i);
        broke.sort_by_key(|(i, n, _)| (std::cmp::Reverse(*n), rank(*i)));
        Ok(match broke.into_iter().next() {
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
        })
    }

    /// Writes the minimal schedule as a scenario that expects `invariant` to fail.
    fn write(
        &self,
        schedule: Schedule,
        first: &First,
        shrink_runs: u32,
        invariant: Invariant,
        reproduced: u32,
        summary: String,
    ) -> Result<Found, ExploreError> {
        let (base, cfg) = (self.base, self.cfg);
        let events = schedule.events(self.duration).len();
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
        text.push_str(&base.case_text(
            &schedule,
            &id,
            &description,
            self.duration,
            Some(invariant),
        ));
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
        Ok(Found {
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
        })
    }

    /// The scenario text of one case of this round.
    fn case_text(&self, schedule: &Schedule) -> String {
        self.base.case_text(
            schedule,
            &self.case_id,
            "explored case",
            self.duration,
            None,
        )
    }
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
