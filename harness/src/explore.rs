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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::checkers;
use crate::model::{Invariant, Scenario, Verdict};
use crate::report;
use crate::run::{self, RunError, RunOptions};
use crate::scenario::{self, ScenarioError};

mod schedule;
mod shrink;
mod strategy;

pub use schedule::{FailMode, Schedule, Step, Timed};
pub use strategy::{Space, schedules, strategy};

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
    /// Where the JSON report of every run that broke a judged invariant is written (one
    /// `run-<n>.json` each), so that a flaky failure leaves its evidence; nowhere when `None`.
    pub records: Option<PathBuf>,
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

    /// Gives every case the same load draws, from `seed`, unless the base names its own
    /// `load.seed`: a case, its shrinking and the file written replay the clients' phases and
    /// jitter as well as the schedule.
    pub fn pin_load_seed(&mut self, seed: u64) {
        let load = self
            .table
            .entry("load")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(load) = load {
            // Scenario files hold seeds up to i64::MAX.
            let seed = i64::try_from(seed >> 1).unwrap_or(i64::MAX);
            load.entry("seed").or_insert(toml::Value::Integer(seed));
        }
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

/// Runs `text` (a scenario) once and judges it by `judged`. When it broke one of them and
/// `record` is given, the run's JSON report (as `handoff check --json` writes it) goes there.
///
/// # Errors
/// The text is invalid (a bug in the explorer: reported, never hidden), or the target could
/// not be run, or an interrupt, or the record could not be written.
pub fn run_case(
    path: &Path,
    text: &str,
    judged: &[Invariant],
    opts: &RunOptions,
    record: Option<&Path>,
) -> Result<CaseResult, ExploreError> {
    let s = scenario::parse(path, text)?;
    let r = run::run_scenario(&s, opts)?;
    let connections = r.journal.connections;
    let result = checkers::judge(&s, r);
    let failed: Vec<(Invariant, String)> = result
        .judged
        .iter()
        .filter(|j| judged.contains(&j.invariant))
        .filter_map(|j| match &j.verdict {
            Verdict::Fail { summary, .. } => Some((j.invariant, summary.clone())),
            _ => None,
        })
        .collect();
    if let Some(out) = record.filter(|_| !failed.is_empty()) {
        report::write_json(out, std::slice::from_ref(&result)).map_err(|source| {
            ExploreError::Write {
                path: out.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(CaseResult {
        failed,
        connections,
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
        let (found, cases, runs) = shrink::round(base, cfg, opts, log, skip, explored.runs)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0x2a"), Ok(42));
        assert!(parse_seed("forty-two").unwrap_err().contains("forty-two"));
    }

    #[test]
    fn cases_replay_the_load_draws_unless_the_base_names_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("base.toml");
        let base_text = |load: &str| {
            format!(
                "id = \"b\"\ndescription = \"d\"\nrequirement = \"MUST\"\nduration-ms = 1000\n[target]\ncommand = [\"x\"]\nrestart = {{ signal = \"SIGHUP\" }}\n{load}[expect]\npass = [\"no-refused\"]\n"
            )
        };
        let case = |text: String| {
            std::fs::write(&path, text).expect("write");
            let mut base = Base::load(&path).expect("valid");
            base.pin_load_seed(0x5eed);
            let empty = Schedule {
                steps: Vec::new(),
                stop_at: None,
            };
            let case = base.case_text(&empty, "c", "c", 1000, None);
            scenario::parse(&path, &case)
                .expect("a valid case")
                .load
                .seed
        };
        assert_eq!(case(base_text("")), Some(0x5eed >> 1));
        assert_eq!(case(base_text("[load]\nclients = 2\n")), Some(0x5eed >> 1));
        assert_eq!(case(base_text("[load]\nseed = 7\n")), Some(7));
    }
}
