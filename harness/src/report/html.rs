//! The HTML report: one self-contained page (inline CSS and SVG; no script, no external file)
//! with a summary table of every run and its verdicts linking to the run's section; in each
//! section the verdicts beside their expectations, the evidence, and the run's timeline
//! ([`timeline`]).

use std::fmt::Write as _;

use crate::checkers::{Expected, Judged, ScenarioResult};
use crate::model::{Invariant, Outcome, Verdict};
use crate::report::xml_escape as esc;

mod timeline;

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}\
th{background:#f3f3f3}.pass{background:#dfd}.fail{background:#fcc}.unknown{background:#eee}\
.unexpected{outline:3px solid #c00;outline-offset:-3px;font-weight:bold}.nothing{opacity:.55}\
.verdict-ok{color:#060}.verdict-bad{color:#c00;font-weight:bold}\
pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;font-size:12px}\
section{border-top:2px solid #ddd;margin-top:1.5em}h2{margin:.6em 0 .2em}\
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}\
svg.timeline{display:block;margin:.5em 0}svg text{font-size:12px;font-family:sans-serif;fill:#333}\
svg text.small{font-size:10px;fill:#666}svg .grid{stroke:#eee}\
svg .panel{fill:#fafafa;stroke:#ddd}svg .hit{fill:transparent}svg .bucket:hover .hit{fill:#0001}\
svg .lane rect{fill:#8c8}svg .lane.unready rect{fill:#ccc}svg .lane.other rect{fill:#bbd}\
svg .lane rect.ready{fill:#060}svg .lane rect.unlisten{fill:#c80}svg .lane:hover rect{stroke:#333}\
svg .event line{stroke:#36c;stroke-dasharray:4,3}svg .event text{fill:#36c}\
svg .event.restart line{stroke:#c3c;stroke-width:1.5}svg .event.restart text{fill:#a2a;font-weight:bold}\
svg .event.failed line{stroke:#c00}svg .event.failed text{fill:#c00}\
svg .open{fill:none;stroke:#333;stroke-width:1}svg .latency path{fill:none;stroke-width:1.8}svg .latency circle{stroke:none}\
svg .conn line{stroke-width:1;opacity:.5}svg .conn:hover line{stroke-width:3;opacity:1}\
svg .conn:hover circle{r:7;stroke:#000}";

/// The whole page.
pub fn render(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>handoff report</title><style>{STYLE}</style></head><body>\n<h1>handoff report</h1>\n"
    );
    let as_expected = results.iter().filter(|r| r.ok()).count();
    let _ = writeln!(
        out,
        "<p>{} run(s): {as_expected} as expected, {} not; exit status {}. A cell with a red outline is not as expected; faded cells were expected neither way, shown for information. Hover over the timelines for details.</p>",
        results.len(),
        results.len() - as_expected,
        super::exit_code(results)
    );
    summary(&mut out, results);
    for (k, r) in results.iter().enumerate() {
        section(&mut out, k, r);
    }
    out.push_str("</body></html>\n");
    out
}

/// The anchor of run `k`'s section.
fn anchor(k: usize) -> String {
    format!("run-{}", k + 1)
}

/// One row per run: its id (a link to its section), whether it was as expected, a cell per
/// invariant, the load's counts and the restart latency.
fn summary(out: &mut String, results: &[ScenarioResult]) {
    out.push_str("<table class=\"summary\">\n<tr><th>scenario</th><th>result</th>");
    for i in Invariant::ALL {
        let _ = write!(out, "<th>{}</th>", i.id());
    }
    out.push_str("<th>connections</th><th>failed</th><th>restart p50</th></tr>\n");
    for (k, r) in results.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><td><a href=\"#{}\">{}</a></td>",
            anchor(k),
            esc(&r.id)
        );
        if let Some(err) = &r.setup_error {
            let _ = writeln!(
                out,
                "<td class=\"verdict-bad\">could not run</td><td colspan=\"{}\">{}</td></tr>",
                Invariant::ALL.len() + 3,
                esc(err.lines().next().unwrap_or(""))
            );
            continue;
        }
        let _ = write!(
            out,
            "<td class=\"{}\">{}</td>",
            if r.ok() { "verdict-ok" } else { "verdict-bad" },
            if r.ok() {
                "as expected"
            } else {
                "NOT as expected"
            }
        );
        for j in &r.judged {
            let _ = write!(
                out,
                "<td class=\"{}\" title=\"expected: {}\">{}</td>",
                classes(j),
                j.expected.label(),
                j.verdict.label()
            );
        }
        let (connections, failed) = r.record.as_ref().map_or((0, 0), |rec| {
            let ok = rec.journal.outcomes.get("ok").copied().unwrap_or(0);
            (
                rec.journal.connections,
                rec.journal.connections.saturating_sub(ok),
            )
        });
        let latency = r
            .restart_latency_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
        let _ = writeln!(
            out,
            "<td>{connections}</td><td class=\"{}\">{failed}</td><td>{latency}</td></tr>",
            if failed > 0 { "fail" } else { "" }
        );
    }
    out.push_str("</table>\n");
}

/// The CSS classes of a verdict cell.
fn classes(j: &Judged) -> String {
    let mut c = match j.verdict {
        Verdict::Pass { .. } => "pass",
        Verdict::Fail { .. } => "fail",
        Verdict::Unknown { .. } => "unknown",
    }
    .to_string();
    if !j.as_expected {
        c.push_str(" unexpected");
    }
    if j.expected == Expected::Nothing {
        c.push_str(" nothing");
    }
    c
}

fn section(out: &mut String, k: usize, r: &ScenarioResult) {
    let _ = writeln!(
        out,
        "<section id=\"{}\">\n<h2>{}</h2>\n<p>{}<br><b>Requirement:</b> {}<br><small>{}</small></p>",
        anchor(k),
        esc(&r.id),
        esc(&r.description),
        esc(&r.requirement),
        esc(&r.path.display().to_string()),
    );
    if let Some(err) = &r.setup_error {
        let _ = writeln!(
            out,
            "<p class=\"fail\">The target could not be run:</p><pre>{}</pre>\n</section>",
            esc(err)
        );
        return;
    }
    verdicts(out, r);
    if let Some(record) = &r.record {
        legend(out);
        out.push_str(&timeline::render(record));
        let j = &record.journal;
        let counts: Vec<String> = j
            .outcomes
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "<p><small>{} connections ({}), {} replies, seed {}; {} failed connection(s) drawn{}.</small></p>",
            j.connections,
            esc(&counts.join(" ")),
            j.replies,
            record.seed,
            j.failures.len(),
            if j.failures_dropped > 0 {
                format!(", {} more not kept", j.failures_dropped)
            } else {
                String::new()
            }
        );
    }
    out.push_str("</section>\n");
}

/// The verdicts beside their expectations, with the evidence of each failure.
fn verdicts(out: &mut String, r: &ScenarioResult) {
    out.push_str(
        "<table><tr><th>invariant</th><th>expected</th><th>verdict</th><th>summary</th></tr>\n",
    );
    for j in &r.judged {
        let text = match &j.verdict {
            Verdict::Pass { summary } | Verdict::Fail { summary, .. } => summary,
            Verdict::Unknown { reason } => reason,
        };
        let expected = match j.expected {
            Expected::Nothing => "",
            e => e.label(),
        };
        let _ = write!(
            out,
            "<tr class=\"{}\"><td>{}</td><td>{expected}</td><td>{}</td><td>{}",
            classes(j),
            j.invariant,
            j.verdict.label(),
            esc(text)
        );
        if let Verdict::Fail { evidence, .. } = &j.verdict
            && !evidence.is_empty()
        {
            let _ = write!(
                out,
                "<details{}><summary>evidence ({} lines)</summary><pre>{}</pre></details>",
                if j.as_expected { "" } else { " open" },
                evidence.len(),
                esc(&evidence.join("\n"))
            );
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</table>\n");
}

/// What the timeline's colours mean.
fn legend(out: &mut String) {
    out.push_str("<div class=\"legend\"><small>");
    for o in Outcome::ALL {
        let _ = write!(
            out,
            "<span style=\"background:{}\"></span>{}",
            timeline::colour(o),
            o.id()
        );
    }
    out.push_str(
        "<span style=\"background:#060\"></span>ready<span style=\"background:#c80\"></span>stopped listening<span style=\"background:#c3c\"></span>restart</small></div>\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::{add_failure, clean_run, conn, scenario};
    use crate::journal::Journal;
    use crate::model::Invariant;
    use std::time::Duration;

    /// A record whose journal has a series, as a real run's does.
    fn with_series(
        mut rec: crate::model::RunRecord,
        failures: &[(u64, u64)],
    ) -> crate::model::RunRecord {
        let mut j = Journal::new(100);
        let ms = Duration::from_millis;
        for k in 0..200u64 {
            let at = ms(100 + k * 12);
            let mut c = conn(k, 0, None, 0, Outcome::Ok, Some(100));
            c.started = at;
            c.connected = Some(at + ms(1));
            c.done = at + ms(5);
            j.record_connect(at + ms(1), ms(1));
            j.record_reply(at + ms(4), ms(3), Some(100));
            j.record_conn(c, false);
        }
        for (k, (started, done)) in failures.iter().enumerate() {
            let c = conn(
                1000 + k as u64,
                *started,
                Some(started + 1),
                *done,
                Outcome::Reset,
                Some(100),
            );
            j.record_connect(ms(started + 1), ms(1));
            j.record_conn(c.clone(), false);
            add_failure(&mut rec, c);
        }
        rec.journal.series = j.summary().series;
        rec
    }

    fn page_of(pass: bool) -> String {
        let mut s = scenario();
        s.expect.pass = vec![Invariant::NoDropped];
        let good = crate::checkers::judge(&s, with_series(clean_run(), &[]));
        s.id = "x/<failing>".into();
        let bad_record = with_series(clean_run(), &[(990, 1005), (995, 1010)]);
        let bad = crate::checkers::judge(&s, bad_record);
        if pass {
            render(&[good])
        } else {
            render(&[good, bad])
        }
    }

    #[test]
    fn a_passing_and_a_failing_run_each_get_a_summary_row_and_a_section() {
        let page = page_of(false);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("<script"), "no script");
        for external in ["src=", "href=\"http", "@import", "url("] {
            assert!(!page.contains(external), "self-contained: {external}");
        }
        // The summary links to both sections, the failing one marked.
        assert!(page.contains("<a href=\"#run-1\">fixture</a>"), "{page}");
        assert!(
            page.contains("<a href=\"#run-2\">x/&lt;failing&gt;</a>"),
            "{page}"
        );
        assert!(page.contains("<section id=\"run-2\">"));
        assert!(page.contains("NOT as expected"));
        assert_eq!(page.matches("<svg class=\"timeline\"").count(), 2);
        // Lanes, the load band, the latency lines, restarts through the panels.
        assert!(page.contains("gen 2 (pid 200)"), "{page}");
        assert!(page.contains("<g class=\"bucket\"><title>"));
        assert_eq!(page.matches("<g class=\"latency\"").count(), 8);
        assert!(page.contains("<g class=\"event restart\">"));
        // Each failed connection is a mark with its record on hover, in the failing run only.
        assert_eq!(
            page.matches("<g class=\"conn\"><title>connection #")
                .count(),
            2
        );
        assert!(page.contains("failed: reset"));
        assert!(page_of(true).contains("failed connections</text>"));
        assert!(!page_of(true).contains("<g class=\"conn\">"));
    }

    #[test]
    fn setup_errors_and_unexpected_unknowns_are_shown() {
        let mut s = scenario();
        s.expect.pass = vec![Invariant::Rollback];
        let unknown = crate::checkers::judge(&s, clean_run());
        let broken = ScenarioResult::setup_failed(&s, "target exited 1 <early>");
        let page = render(&[unknown, broken]);
        assert!(page.contains("class=\"unknown unexpected\""), "{page}");
        assert!(page.contains("could not run</td>"), "{page}");
        assert!(page.contains("target exited 1 &lt;early&gt;"), "{page}");
    }
}
