//! Judging one run: every invariant's verdict beside what the scenario expects of it.
//!
//! A verdict is *as expected* when the scenario expected `pass` and it passed, or expected
//! `fail` and it failed. An expected verdict that came out Unknown is **not** as expected: the
//! harness could not show what the scenario asks for, and saying "fine" would be a silent pass.
//! Invariants the scenario expects nothing of are still judged, for information.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{check_all, no_dropped, takes_over};
use crate::model::{Invariant, RunRecord, Scenario, Verdict};

/// What a scenario expects of one invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expected {
    Pass,
    Fail,
    /// Neither: judged for information only.
    Nothing,
}

impl Expected {
    /// What `s` expects of `invariant`.
    pub fn of(s: &Scenario, invariant: Invariant) -> Expected {
        if s.expect.pass.contains(&invariant) {
            Expected::Pass
        } else if s.expect.fail.contains(&invariant) {
            Expected::Fail
        } else {
            Expected::Nothing
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Expected::Pass => "pass",
            Expected::Fail => "fail",
            Expected::Nothing => "nothing",
        }
    }
}

/// One invariant's verdict beside its expectation.
#[derive(Clone, Debug, Serialize)]
pub struct Judged {
    pub invariant: Invariant,
    pub expected: Expected,
    pub verdict: Verdict,
    pub as_expected: bool,
}

impl Judged {
    fn new(invariant: Invariant, expected: Expected, verdict: Verdict) -> Judged {
        let as_expected = match expected {
            Expected::Pass => matches!(verdict, Verdict::Pass { .. }),
            Expected::Fail => matches!(verdict, Verdict::Fail { .. }),
            Expected::Nothing => true,
        };
        Judged {
            invariant,
            expected,
            verdict,
            as_expected,
        }
    }
}

/// The result of one scenario: verdicts, or why it could not be run.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub id: String,
    pub path: PathBuf,
    pub description: String,
    pub requirement: String,
    /// Set when the target could not be started or never became ready (then nothing was
    /// judged).
    pub setup_error: Option<String>,
    /// Every invariant, in [`Invariant::ALL`] order (empty after a setup error).
    pub judged: Vec<Judged>,
    /// Median time from a restart to the first reply from a new generation, in milliseconds.
    pub restart_latency_ms: Option<f64>,
    /// Restarts that went into the median.
    pub restarts_measured: usize,
    /// The failed established connections by what cut them (absent after a setup error).
    pub drops: Option<DropCounts>,
    /// Everything the run observed (absent after a setup error).
    pub record: Option<RunRecord>,
}

/// The established connections of a run that did not get their complete replies, by what cut
/// them (see [`no_dropped::drops`]); counted over the failures the journal kept in full.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DropCounts {
    /// Failed before the final stop: always judged.
    pub during_run: usize,
    /// In flight at the final stop and cut by it: judged only when `stop_graceful`.
    pub by_stop: usize,
    /// Still queued unaccepted when the final stop closed the listener: never judged.
    pub queued_at_stop: usize,
    /// What `target.stop.graceful` says.
    pub stop_graceful: bool,
}

/// Judges a completed run with every checker, each verdict beside what `s` expects of it.
pub fn judge(s: &Scenario, record: RunRecord) -> ScenarioResult {
    let judged = check_all(s, &record)
        .into_iter()
        .map(|(i, v)| Judged::new(i, Expected::of(s, i), v))
        .collect();
    let latencies = takes_over::latencies(s, &record);
    let d = no_dropped::drops(&record);
    let drops = DropCounts {
        during_run: d.during_run.len(),
        by_stop: d.by_stop.len(),
        queued_at_stop: d.queued_at_stop.len(),
        stop_graceful: s.target.stop_graceful,
    };
    ScenarioResult {
        restart_latency_ms: median(&latencies).map(|d| d.as_secs_f64() * 1000.0),
        restarts_measured: latencies.len(),
        drops: Some(drops),
        record: Some(record),
        judged,
        setup_error: None,
        ..ScenarioResult::header(s)
    }
}

impl ScenarioResult {
    /// A scenario whose target could not be run.
    pub fn setup_failed(s: &Scenario, message: impl Into<String>) -> ScenarioResult {
        ScenarioResult {
            setup_error: Some(message.into()),
            ..ScenarioResult::header(s)
        }
    }

    fn header(s: &Scenario) -> ScenarioResult {
        ScenarioResult {
            id: s.id.clone(),
            path: s.path.clone(),
            description: s.description.clone(),
            requirement: s.requirement.clone(),
            setup_error: None,
            judged: Vec::new(),
            restart_latency_ms: None,
            restarts_measured: 0,
            drops: None,
            record: None,
        }
    }

    /// Verdicts that differ from the expectation.
    pub fn unexpected(&self) -> impl Iterator<Item = &Judged> {
        self.judged.iter().filter(|j| !j.as_expected)
    }

    /// Every verdict as expected and no setup error.
    pub fn ok(&self) -> bool {
        self.setup_error.is_none() && self.judged.iter().all(|j| j.as_expected)
    }
}

fn median(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}
