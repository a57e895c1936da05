//! Reports: the terminal verdict table with Requirement / Expected / Actual for every verdict
//! that is not as expected, JSON, JUnit XML, and a self-contained HTML page with a timeline of
//! each run ([`html`]).
//!
//! What *as expected* means is [`crate::checkers::judge`]'s: an expected verdict that came out
//! Unknown is not as expected. Invariants the scenario expects nothing of are shown in brackets,
//! for information.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

pub mod html;
pub mod junit;
pub mod lanes;
pub mod mutation;

use crate::checkers::{Expected, Judged, ScenarioResult, no_dropped};
use crate::model::{Invariant, Lineage, Outcome, RunRecord, Verdict};

/// The process exit status for a set of results: 2 if a target could not be run, else 1 if
/// any verdict is not as expected, else 0.
pub fn exit_code(results: &[ScenarioResult]) -> i32 {
    if results.iter().any(|r| r.setup_error.is_some()) {
        2
    } else if results.iter().any(|r| !r.ok()) {
        1
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// Terminal.
// ---------------------------------------------------------------------------------------------

/// A table cell: the verdict label; `!` when it is not as expected, in brackets when nothing
/// was expected.
fn cell(j: &Judged) -> String {
    let label = j.verdict.label();
    match (j.expected, j.as_expected) {
        (Expected::Nothing, _) => format!("({label})"),
        (_, true) => label.to_string(),
        (_, false) => format!("{label}!"),
    }
}

/// Non-zero connection outcome counts, e.g. `ok=1200 refused=3`, and how many of the failed
/// ones the final stop cut (`reset=3 (2 cut by the stop)`).
fn outcome_counts(record: &RunRecord) -> String {
    let parts: Vec<String> = Outcome::ALL
        .iter()
        .filter_map(|o| {
            let n = record.journal.outcomes.get(o.id()).copied().unwrap_or(0);
            (n > 0 || *o == Outcome::Ok).then(|| format!("{}={n}", o.id()))
        })
        .collect();
    let by_stop = no_dropped::drops(record).by_stop.len();
    let mut counts = parts.join(" ");
    if by_stop > 0 {
        let _ = write!(counts, " ({by_stop} cut by the stop)");
    }
    counts
}

/// One line per injection that failed (a missing pid file, a restart command that exited
/// non-zero or did not finish), e.g. `the restart at t=1.234s failed: ...`.
fn injection_errors(record: &RunRecord) -> Vec<String> {
    record
        .injected
        .iter()
        .filter_map(|i| {
            let what = match &i.action {
                crate::model::Action::Restart => "restart",
                crate::model::Action::Stop => "stop",
                crate::model::Action::Kill { .. } => "kill",
                crate::model::Action::FailNext { .. } => "fail-next",
                crate::model::Action::Load { .. } => "load switch",
            };
            let error = i.error.as_deref()?;
            Some(format!(
                "the {what} at t={:.3}s failed: {error}",
                i.at.as_secs_f64()
            ))
        })
        .collect()
}

/// One line on how much the load held and what the run cost the harness, e.g. `load: at most
/// 10000 connections open at once (10000, 9998, 10000 at the restarts); harness: peak RSS
/// 61.2 MiB, CPU 9.1 s user + 20.3 s system`.
pub fn load_and_cost(rec: &RunRecord) -> String {
    use crate::model::Action;
    let at_restarts: Vec<String> = rec
        .injected
        .iter()
        .filter(|i| i.action == Action::Restart)
        .map(|i| i.open_connections.to_string())
        .collect();
    let restarts = if at_restarts.is_empty() {
        String::new()
    } else {
        format!(" ({} at the restarts)", at_restarts.join(", "))
    };
    let h = &rec.harness;
    let scope = match h.peak_rss_scope {
        crate::usage::RssScope::Run => "",
        crate::usage::RssScope::Process => " since the harness started",
    };
    format!(
        "load: seed {}, at most {} connections open at once{restarts}; harness: peak RSS {:.1} MiB{scope}, CPU {:.1} s user + {:.1} s system",
        rec.seed,
        rec.journal.open_peak,
        h.peak_rss_kib as f64 / 1024.0,
        h.cpu_user.as_secs_f64(),
        h.cpu_system.as_secs_f64(),
    )
}

/// The generations of a run as sets, the supervisors and launcher apart: `generations: gen 1
/// (pids 11, 12), gen 2 (pids 21, 22); supervisor: pid 10`.
pub fn lineage_line(l: &Lineage) -> String {
    let gens: Vec<String> = l.generations.iter().map(|g| g.name()).collect();
    let mut line = if gens.is_empty() {
        "generations: none seen".to_string()
    } else {
        format!("generations: {}", gens.join(", "))
    };
    if !l.supervisors.is_empty() {
        let pids: Vec<String> = l.supervisors.iter().map(|p| format!("pid {p}")).collect();
        line.push_str(&format!("; supervisor: {}", pids.join(", ")));
    }
    if let Some(pid) = l.launcher {
        line.push_str(&format!("; launcher: pid {pid} (exited without serving)"));
    }
    line
}

/// The terminal report: the verdict table, then Requirement / Expected / Actual with evidence
/// for every verdict not as expected, then a summary line. With `verbose`, every verdict's
/// summary is listed too.
pub fn render_terminal(results: &[ScenarioResult], verbose: bool) -> String {
    let mut out = String::new();
    let id_width = results
        .iter()
        .map(|r| r.id.len())
        .max()
        .unwrap_or(0)
        .max("scenario".len());
    let widths: Vec<usize> = Invariant::ALL
        .iter()
        .map(|i| i.id().len().max("(unknown)".len()))
        .collect();
    let _ = write!(out, "{:id_width$}", "scenario");
    for (i, w) in Invariant::ALL.iter().zip(&widths) {
        let _ = write!(out, "  {:w$}", i.id());
    }
    let _ = writeln!(out, "  restart p50    connections");
    for r in results {
        let _ = write!(out, "{:id_width$}", r.id);
        if let Some(err) = &r.setup_error {
            let first = err.lines().next().unwrap_or("");
            let _ = writeln!(out, "  could not run: {first}");
            continue;
        }
        for (j, w) in r.judged.iter().zip(&widths) {
            let _ = write!(out, "  {:w$}", cell(j));
        }
        let latency = match r.restart_latency_ms {
            Some(ms) => format!("{ms:.1}ms (n={})", r.restarts_measured),
            None => "-".to_string(),
        };
        let counts = r.record.as_ref().map(outcome_counts).unwrap_or_default();
        let _ = writeln!(out, "  {latency:13}  {counts}");
    }
    let _ = writeln!(
        out,
        "(x) = nothing expected, shown for information; x! = not as expected"
    );

    for r in results {
        if let Some(err) = &r.setup_error {
            let _ = writeln!(
                out,
                "\n{} ({}): the target could not be run",
                r.id,
                r.path.display()
            );
            for line in err.lines() {
                let _ = writeln!(out, "  {line}");
            }
            continue;
        }
        if let Some(rec) = &r.record {
            let errors = injection_errors(rec);
            if !errors.is_empty() {
                let _ = writeln!(
                    out,
                    "\n{} ({}): {} injection(s) failed (a failed restart is judged as one not made)",
                    r.id,
                    r.path.display(),
                    errors.len()
                );
                for e in errors {
                    let _ = writeln!(out, "  {e}");
                }
            }
        }
        for (n, j) in r.unexpected().enumerate() {
            if n == 0
                && let Some(rec) = &r.record
            {
                let _ = writeln!(
                    out,
                    "\n{}: the load's seed was {} (`seed = {}` under `[load]` replays its draws)",
                    r.id, rec.seed, rec.seed
                );
                let _ = writeln!(out, "  {}", lineage_line(&rec.lineage));
            }
            let _ = writeln!(out, "\n{} ({}): {}", r.id, r.path.display(), j.invariant);
            let _ = writeln!(out, "  Requirement: {}", r.requirement);
            let _ = writeln!(out, "  Expected:    {}", j.expected.label());
            match &j.verdict {
                Verdict::Pass { summary } => {
                    let _ = writeln!(out, "  Actual:      pass: {summary}");
                }
                Verdict::Fail { summary, evidence } => {
                    let _ = writeln!(out, "  Actual:      FAIL: {summary}");
                    for line in evidence {
                        let _ = writeln!(out, "    {line}");
                    }
                }
                Verdict::Unknown { reason } => {
                    let _ = writeln!(out, "  Actual:      unknown: {reason}");
                    let _ = writeln!(
                        out,
                        "    (an expected verdict that could not be decided is not as expected)"
                    );
                }
            }
        }
        if verbose {
            let _ = writeln!(out, "\n{}: {}", r.id, r.description);
            for j in &r.judged {
                let text = match &j.verdict {
                    Verdict::Pass { summary } | Verdict::Fail { summary, .. } => summary,
                    Verdict::Unknown { reason } => reason,
                };
                let _ = writeln!(
                    out,
                    "  {:17} {:7} {text}",
                    j.invariant.id(),
                    j.verdict.label()
                );
            }
            if let Some(rec) = &r.record {
                let _ = writeln!(out, "  {}", lineage_line(&rec.lineage));
                let _ = writeln!(out, "  {}", load_and_cost(rec));
            }
            if let Some(rec) = &r.record
                && rec.journal.harness_errors > 0
            {
                let example = rec.journal.harness_error_example.as_deref().unwrap_or("");
                let _ = writeln!(
                    out,
                    "  note: {} connection(s) could not be attempted on the harness's side: {example}",
                    rec.journal.harness_errors
                );
            }
        }
    }

    let could_not_run = results.iter().filter(|r| r.setup_error.is_some()).count();
    let as_expected = results.iter().filter(|r| r.ok()).count();
    let not_as_expected = results.len() - as_expected - could_not_run;
    let _ = writeln!(
        out,
        "\n{} scenario(s): {as_expected} as expected, {not_as_expected} not as expected, {could_not_run} could not run",
        results.len()
    );
    out
}

// ---------------------------------------------------------------------------------------------
// JSON.
// ---------------------------------------------------------------------------------------------

/// The version of the JSON report's format, `version` in every report. It changes when a field
/// is removed, renamed or changes its meaning or type; adding a field does not change it.
/// `docs/report-schema.json` describes this version.
pub const JSON_VERSION: u32 = 2;

#[derive(Serialize)]
struct JsonReport<'a> {
    version: u32,
    exit_code: i32,
    scenarios: &'a [ScenarioResult],
}

/// The JSON report: `{ "version": 2, "exit_code": n, "scenarios": [ ... ] }`, each scenario
/// with its verdicts, expectations and full run record, as `docs/report-schema.json` describes.
/// Every duration and time is a number of seconds (times are offsets from the run's start),
/// not serde's `{ "secs", "nanos" }` pair.
pub fn json(results: &[ScenarioResult]) -> String {
    let report = JsonReport {
        version: JSON_VERSION,
        exit_code: exit_code(results),
        scenarios: results,
    };
    let mut value = match serde_json::to_value(&report) {
        Ok(v) => v,
        // Plain data with string keys always serialises; keep the reason visible anyway.
        Err(e) => return format!("{{\"error\": \"{e}\"}}"),
    };
    durations_as_seconds(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Replace every `{ "secs": s, "nanos": n }` object (how serde writes a `Duration`) by the
/// number `s + n / 1e9`.
fn durations_as_seconds(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            if map.len() == 2
                && let (Some(secs), Some(nanos)) = (
                    map.get("secs").and_then(Value::as_u64),
                    map.get("nanos").and_then(Value::as_u64),
                )
            {
                let seconds = secs as f64 + nanos as f64 / 1e9;
                *value = serde_json::json!(seconds);
                return;
            }
            map.values_mut().for_each(durations_as_seconds);
        }
        Value::Array(items) => items.iter_mut().for_each(durations_as_seconds),
        _ => {}
    }
}

/// Write [`json`] to `path`.
///
/// # Errors
///
/// The file cannot be written.
pub fn write_json(path: &Path, results: &[ScenarioResult]) -> io::Result<()> {
    fs::write(path, json(results) + "\n")
}

// ---------------------------------------------------------------------------------------------
// JUnit XML.
// ---------------------------------------------------------------------------------------------

/// Escape text for XML attribute values and content. Characters XML 1.0 cannot carry at all
/// (most control characters) become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML ([`junit`]).
pub fn junit_xml(results: &[ScenarioResult]) -> String {
    junit::render(results)
}

/// Write [`junit_xml`] to `path`.
///
/// # Errors
///
/// The file cannot be written.
pub fn write_junit(path: &Path, results: &[ScenarioResult]) -> io::Result<()> {
    fs::write(path, junit_xml(results))
}

/// Write the [`html`] report to `path`.
///
/// # Errors
///
/// The file cannot be written.
pub fn write_html(path: &Path, results: &[ScenarioResult]) -> io::Result<()> {
    fs::write(path, html::render(results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::{clean_run, scenario};
    use crate::checkers::judge;

    fn result(pass: Vec<Invariant>, fail: Vec<Invariant>) -> ScenarioResult {
        let mut s = scenario();
        s.id = "reference/<odd>&\"id\"".into();
        s.expect.pass = pass;
        s.expect.fail = fail;
        judge(&s, clean_run())
    }

    #[test]
    fn failed_injections_the_seed_and_stop_cuts_are_shown() {
        use crate::checkers::fixture::{add_failure, conn};
        let mut s = scenario();
        s.expect.pass = vec![Invariant::Rollback];
        let mut rec = clean_run();
        rec.seed = 987_654;
        rec.injected[0].error = Some("`upgrade-master pid TERM` ended with exit 1".into());
        add_failure(
            &mut rec,
            conn(7, 2300, Some(2301), 2510, Outcome::Reset, Some(200)),
        );
        let r = judge(&s, rec);
        let text = render_terminal(std::slice::from_ref(&r), true);
        assert!(
            text.contains("1 injection(s) failed")
                && text.contains(
                    "the restart at t=1.000s failed: `upgrade-master pid TERM` ended with exit 1"
                ),
            "{text}"
        );
        assert!(text.contains("reset=1 (1 cut by the stop)"), "{text}");
        assert!(text.contains("the load's seed was 987654"), "{text}");
        assert!(text.contains("load: seed 987654"), "{text}");
        let drops = r.drops.expect("counted");
        assert_eq!(
            (drops.during_run, drops.by_stop, drops.stop_graceful),
            (0, 1, false)
        );
        assert!(json(&[r]).contains("\"by_stop\": 1"));
    }

    #[test]
    fn generations_are_shown_as_sets_with_supervisors_apart() {
        let mut rec = crate::checkers::fixture::reload_run();
        rec.lineage = crate::model::infer(&rec, None);
        let r = judge(&scenario(), rec);
        let text = render_terminal(std::slice::from_ref(&r), true);
        assert!(
            text.contains(
                "generations: gen 1 (pids 11, 12, 13), gen 2 (pids 21, 22); supervisor: pid 10"
            ),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&[r])).expect("valid JSON");
        let lineage = &v["scenarios"][0]["record"]["lineage"];
        assert_eq!(
            lineage["generations"][1]["members"],
            serde_json::json!([21, 22])
        );
        assert_eq!(lineage["supervisors"], serde_json::json!([10]));
    }

    #[test]
    fn expected_unknown_is_not_as_expected() {
        // The clean run has no fail-next: rollback is Unknown.
        let r = result(vec![Invariant::NoRefused, Invariant::Rollback], vec![]);
        let bad: Vec<Invariant> = r.unexpected().map(|j| j.invariant).collect();
        assert_eq!(bad, vec![Invariant::Rollback]);
        assert_eq!(exit_code(&[r]), 1);
    }

    #[test]
    fn expected_fail_that_passed_is_not_as_expected() {
        let r = result(vec![], vec![Invariant::NoRefused]);
        assert!(!r.ok());
        let text = render_terminal(&[r], false);
        assert!(text.contains("Expected:    fail"), "{text}");
        assert!(text.contains("Actual:      pass"), "{text}");
        assert!(text.contains("pass!"), "{text}");
    }

    #[test]
    fn as_expected_gives_exit_zero_and_a_latency() {
        let r = result(
            vec![
                Invariant::NoRefused,
                Invariant::NoDropped,
                Invariant::TakesOver,
            ],
            vec![],
        );
        assert!(r.ok());
        assert_eq!(r.restart_latency_ms, Some(55.0));
        let text = render_terminal(std::slice::from_ref(&r), false);
        assert!(text.contains("55.0ms (n=1)"), "{text}");
        assert!(
            text.contains("1 as expected, 0 not as expected, 0 could not run"),
            "{text}"
        );
        assert_eq!(exit_code(&[r]), 0);
    }

    #[test]
    fn setup_error_gives_exit_two() {
        let s = scenario();
        let ok = result(vec![Invariant::NoRefused], vec![]);
        let bad = ScenarioResult::setup_failed(
            &s,
            "target `/bin/false` exited with status 1 before it was ready",
        );
        let text = render_terminal(&[ok.clone(), bad.clone()], false);
        assert!(
            text.contains("could not run: target `/bin/false`"),
            "{text}"
        );
        assert_eq!(exit_code(&[ok, bad]), 2);
    }

    #[test]
    fn json_carries_verdicts_and_exit_code() {
        let r = result(vec![Invariant::NoRefused], vec![]);
        let text = json(&[r]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["scenarios"][0]["judged"][0]["invariant"], "no-refused");
        assert_eq!(v["scenarios"][0]["judged"][0]["verdict"]["verdict"], "pass");
        assert_eq!(v["scenarios"][0]["record"]["first_ready"], 0.1);
        assert_eq!(
            v["scenarios"][0]["record"]["listeners"][1]["ready_at"],
            1.05
        );
        assert!(v["scenarios"][0]["record"]["lineage"]["generations"].is_array());
    }
}
