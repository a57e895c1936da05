//! What `handoff check` shows while it runs: on a terminal, a live line per run (scenario n of
//! m, elapsed time, connections, failures so far, the run's last step); otherwise, or with
//! `--quiet`, plain lines that a log keeps.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::checkers::ScenarioResult;
use crate::errln;
use crate::model::Scenario;
use crate::run::{RunProgress, Watch};

/// How runs are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A live line on the terminal, replaced by a plain line when the run ends.
    Live,
    /// A line when each run starts and one when it ends.
    Plain,
    /// Only the line when each run ends.
    Quiet,
}

impl Mode {
    /// Live when stderr is a terminal, unless `quiet`, or `verbose` (whose own lines would
    /// tear a live one).
    pub fn choose(quiet: bool, verbose: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if verbose || !std::io::stderr().is_terminal() {
            Mode::Plain
        } else {
            Mode::Live
        }
    }
}

/// The progress of a whole `check`: `total` runs.
pub struct Progress {
    mode: Mode,
    total: usize,
}

impl Progress {
    pub fn new(mode: Mode, total: usize) -> Progress {
        Progress { mode, total }
    }

    /// Run `n` (1-based) of scenario `s` starts.
    pub fn start(&self, n: usize, s: &Scenario) -> RunLine {
        let prefix = format!("[{n}/{}] {}", self.total, s.id);
        let bar = match self.mode {
            Mode::Live => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                bar.set_prefix(prefix.clone());
                bar.set_message("starting");
                Some(bar)
            }
            Mode::Plain => {
                errln!("handoff: {prefix}: running ({})", s.path.display());
                None
            }
            Mode::Quiet => None,
        };
        RunLine {
            bar,
            prefix,
            started: Instant::now(),
        }
    }
}

/// One run's line.
pub struct RunLine {
    bar: Option<ProgressBar>,
    prefix: String,
    started: Instant,
}

impl RunLine {
    /// What the runner tells, to update the live line; `None` when there is none.
    pub fn watch(&self) -> Option<Watch> {
        let bar = self.bar.clone()?;
        Some(Arc::new(move |p: &RunProgress| {
            bar.set_message(live_message(p));
            bar.tick();
        }))
    }

    /// The run ended with `result`: the live line gives way to a plain one.
    pub fn finish(self, result: &ScenarioResult) {
        let text = ended(result, self.started.elapsed());
        self.end(&text);
    }

    /// The run was interrupted.
    pub fn interrupted(self) {
        self.end("interrupted");
    }

    fn end(self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        errln!("handoff: {}: {text}", self.prefix);
    }
}

/// The live line's text after its prefix.
fn live_message(p: &RunProgress) -> String {
    format!(
        "{:.1}s  {} connections  {} failed  last: {}",
        p.elapsed.as_secs_f64(),
        p.connections,
        p.failures,
        p.last_event
    )
}

/// The plain line of a finished run, e.g. `as expected in 3.2s (1200 connections, 0 failed)` or
/// `NOT as expected: no-dropped FAIL (expected pass) in 3.2s (...)`.
pub fn ended(r: &ScenarioResult, elapsed: Duration) -> String {
    if let Some(e) = &r.setup_error {
        return format!(
            "could not run: {}",
            e.lines().next().unwrap_or("(no message)")
        );
    }
    let verdict = if r.ok() {
        "as expected".to_string()
    } else {
        let bad: Vec<String> = r
            .unexpected()
            .map(|j| {
                format!(
                    "{} {} (expected {})",
                    j.invariant,
                    j.verdict.label(),
                    j.expected.label()
                )
            })
            .collect();
        format!("NOT as expected: {}", bad.join(", "))
    };
    let load = r.record.as_ref().map_or(String::new(), |rec| {
        let ok = rec.journal.outcomes.get("ok").copied().unwrap_or(0);
        format!(
            " ({} connections, {} failed)",
            rec.journal.connections,
            rec.journal.connections.saturating_sub(ok)
        )
    });
    format!("{verdict} in {:.1}s{load}", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::{add_failure, clean_run, conn, scenario};
    use crate::model::{Invariant, Outcome};

    #[test]
    fn a_finished_run_says_whether_it_was_as_expected_with_its_counts() {
        let mut s = scenario();
        s.expect.pass = vec![Invariant::NoDropped];
        let good = crate::checkers::judge(&s, clean_run());
        let line = ended(&good, Duration::from_millis(3210));
        assert!(line.starts_with("as expected in 3.2s ("), "{line}");

        let mut rec = clean_run();
        add_failure(
            &mut rec,
            conn(99, 500, Some(510), 600, Outcome::Reset, Some(100)),
        );
        let bad = crate::checkers::judge(&s, rec);
        let line = ended(&bad, Duration::from_secs(1));
        assert!(
            line.starts_with("NOT as expected: no-dropped FAIL (expected pass) in 1.0s"),
            "{line}"
        );
        assert!(line.contains(" 1 failed)"), "{line}");
    }

    #[test]
    fn the_live_line_names_counts_and_the_last_step() {
        let p = RunProgress {
            elapsed: Duration::from_millis(12_340),
            connections: 1234,
            failures: 5,
            last_event: "restart -> pid 42".into(),
        };
        assert_eq!(
            live_message(&p),
            "12.3s  1234 connections  5 failed  last: restart -> pid 42"
        );
    }
}
