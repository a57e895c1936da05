//! The HTML report: one self-contained page (no scripts, no external files) with, per scenario,
//! the verdicts beside their expectations, the evidence, and a timeline of the run drawn in
//! SVG: each generation's life (listening, ready, stopped listening, exit), other processes of
//! the target, the injected events, and every failed connection the journal kept.

use std::fmt::Write as _;
use std::time::Duration;

use crate::checkers::{Expected, ScenarioResult};
use crate::model::{
    Action, ConnRecord, Injected, ListenerRecord, ProcessRecord, RunRecord, Verdict,
};
use crate::report::xml_escape as esc;

/// Drawing width of the time axis, in SVG units.
const WIDTH: f64 = 900.0;
/// Left margin for row labels.
const LABEL: f64 = 150.0;
const ROW: f64 = 22.0;

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}\
.pass{background:#dfd}.fail{background:#fcc}.unknown{background:#eee}.unexpected{outline:3px solid #c00}\
.nothing{opacity:.6}pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;font-size:12px}\
svg text{font-size:11px;font-family:sans-serif}h2{margin-top:2em}";

/// The whole page.
pub fn render(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>handoff report</title><style>{STYLE}</style></head><body>\n<h1>handoff report</h1>\n"
    );
    let _ = writeln!(
        out,
        "<p>{} scenario(s), exit status {}. Cells with a red outline are not as expected; faded cells were expected neither way.</p>",
        results.len(),
        super::exit_code(results)
    );
    for r in results {
        scenario(&mut out, r);
    }
    out.push_str("</body></html>\n");
    out
}

fn scenario(out: &mut String, r: &ScenarioResult) {
    let _ = writeln!(
        out,
        "<h2 id=\"{id}\">{id}</h2>\n<p>{}<br><b>Requirement:</b> {}<br><small>{}</small></p>",
        esc(&r.description),
        esc(&r.requirement),
        esc(&r.path.display().to_string()),
        id = esc(&r.id),
    );
    if let Some(err) = &r.setup_error {
        let _ = writeln!(
            out,
            "<p class=\"fail\">The target could not be run:</p><pre>{}</pre>",
            esc(err)
        );
        return;
    }
    out.push_str(
        "<table><tr><th>invariant</th><th>expected</th><th>verdict</th><th>summary</th></tr>\n",
    );
    for j in &r.judged {
        let (class, text) = match &j.verdict {
            Verdict::Pass { summary } => ("pass", summary.as_str()),
            Verdict::Fail { summary, .. } => ("fail", summary.as_str()),
            Verdict::Unknown { reason } => ("unknown", reason.as_str()),
        };
        let mut classes = class.to_string();
        if !j.as_expected {
            classes.push_str(" unexpected");
        }
        if j.expected == Expected::Nothing {
            classes.push_str(" nothing");
        }
        let expected = match j.expected {
            Expected::Pass => "pass",
            Expected::Fail => "fail",
            Expected::Nothing => "",
        };
        let _ = write!(
            out,
            "<tr class=\"{classes}\"><td>{}</td><td>{expected}</td><td>{}</td><td>{}",
            j.invariant,
            j.verdict.label(),
            esc(text)
        );
        if let Verdict::Fail { evidence, .. } = &j.verdict
            && !evidence.is_empty()
        {
            let _ = write!(
                out,
                "<details><summary>evidence ({} lines)</summary><pre>{}</pre></details>",
                evidence.len(),
                esc(&evidence.join("\n"))
            );
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</table>\n");
    if let Some(record) = &r.record {
        timeline(out, record);
    }
}

fn timeline(out: &mut String, r: &RunRecord) {
    let generation_pids: Vec<u32> = r.listeners.iter().map(|g| g.pid).collect();
    let others: Vec<&ProcessRecord> = r
        .processes
        .iter()
        .filter(|p| !generation_pids.contains(&p.pid))
        .collect();
    let rows = r.listeners.len() + others.len() + 2;
    let scale = Scale {
        end: r.end.max(Duration::from_millis(1)).as_secs_f64(),
        height: ROW * (rows as f64 + 1.5),
    };
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{:.0}\">",
        LABEL + WIDTH + 20.0,
        scale.height
    );
    // Time axis, one tick per tenth of the run.
    for k in 0..=10 {
        let t = Duration::from_secs_f64(scale.end * f64::from(k) / 10.0);
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"0\" x2=\"{0:.1}\" y2=\"{1:.0}\" stroke=\"#eee\"/><text x=\"{0:.1}\" y=\"{2:.0}\">{3:.2}s</text>",
            scale.x(t),
            scale.height - ROW,
            scale.height - 4.0,
            t.as_secs_f64()
        );
    }
    let mut row = 0usize;
    events_row(out, &scale, row, &r.injected);
    row += 1;
    for g in &r.listeners {
        generation_row(out, &scale, row, g, &role(r, g.pid), r.end);
        row += 1;
    }
    for p in others {
        process_row(out, &scale, row, p, r.end);
        row += 1;
    }
    failures_row(out, &scale, row, &r.journal.failures);
    out.push_str("</svg>\n");
    let _ = writeln!(
        out,
        "<p><small>{}</small></p>",
        esc(&super::lineage_line(&r.lineage))
    );
    let counts: Vec<String> = r
        .journal
        .outcomes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        out,
        "<p><small>{} connections ({}), {} replies; {} failed connection(s) shown{}</small></p>",
        r.journal.connections,
        esc(&counts.join(" ")),
        r.journal.replies,
        r.journal.failures.len(),
        if r.journal.failures_dropped > 0 {
            format!(", {} more not kept", r.journal.failures_dropped)
        } else {
            String::new()
        }
    );
}

/// Where a time and a row go in the timeline.
struct Scale {
    /// The run's length, seconds.
    end: f64,
    height: f64,
}

impl Scale {
    fn x(&self, t: Duration) -> f64 {
        LABEL + t.as_secs_f64() / self.end * WIDTH
    }

    fn y(&self, row: usize) -> f64 {
        ROW * row as f64 + 4.0
    }
}

/// Injected events: a labelled vertical line each.
fn events_row(out: &mut String, scale: &Scale, row: usize, injected: &[Injected]) {
    let _ = writeln!(
        out,
        "<text x=\"4\" y=\"{:.0}\">events</text>",
        scale.y(row) + 13.0
    );
    for i in injected {
        let label = match &i.action {
            Action::Restart => "restart".to_string(),
            Action::Stop => "stop".to_string(),
            Action::Kill { signal, .. } => format!("kill {signal}"),
            Action::FailNext { mode } => format!("fail-next {mode}"),
            Action::Load { profile } => format!("load {}", profile.name()),
        };
        let colour = if i.error.is_some() { "#c00" } else { "#36c" };
        let title = match &i.error {
            Some(e) => format!("{label} at {:.3}s failed: {e}", i.at.as_secs_f64()),
            None => format!("{label} at {:.3}s", i.at.as_secs_f64()),
        };
        let _ = writeln!(
            out,
            "<g><title>{}</title><line x1=\"{1:.1}\" y1=\"0\" x2=\"{1:.1}\" y2=\"{2:.0}\" stroke=\"{colour}\" stroke-dasharray=\"3,2\"/><text x=\"{3:.1}\" y=\"{4:.0}\" fill=\"{colour}\">{5}</text></g>",
            esc(&title),
            scale.x(i.at),
            scale.height - ROW,
            scale.x(i.at) + 2.0,
            scale.y(row) + 13.0,
            esc(&label)
        );
    }
}

/// What a listener was in the run's generations: `gen 2 (pid 42)`, `supervisor (pid 10)`,
/// `launcher (pid 5)`.
fn role(r: &RunRecord, pid: u32) -> String {
    let l = &r.lineage;
    if let Some(g) = l.of(pid) {
        format!("gen {} (pid {pid})", g.number)
    } else if l.supervisors.contains(&pid) {
        format!("supervisor (pid {pid})")
    } else if l.launcher == Some(pid) {
        format!("launcher (pid {pid})")
    } else {
        format!("pid {pid}")
    }
}

/// A process that held the listener (a member of a generation, a supervisor, a launcher): a
/// bar from when it listened until it exited, with marks when it was ready and when it stopped
/// listening.
fn generation_row(
    out: &mut String,
    scale: &Scale,
    row: usize,
    g: &ListenerRecord,
    label: &str,
    end: Duration,
) {
    let until = g.exited.unwrap_or(end);
    let title = format!(
        "{label}: listening {:.3}s, ready {}, stopped listening {}, exited {} {}",
        g.listening_since.as_secs_f64(),
        opt(g.ready_at),
        opt(g.stopped_listening),
        opt(g.exited),
        g.status.as_deref().unwrap_or("")
    );
    let _ = writeln!(
        out,
        "<g><title>{}</title><text x=\"4\" y=\"{:.0}\">{}</text><rect x=\"{:.1}\" y=\"{:.0}\" width=\"{:.1}\" height=\"{:.0}\" fill=\"{}\"/>",
        esc(&title),
        scale.y(row) + 13.0,
        esc(label),
        scale.x(g.listening_since),
        scale.y(row) + 3.0,
        (scale.x(until) - scale.x(g.listening_since)).max(1.0),
        ROW - 8.0,
        if g.ready_at.is_some() { "#8c8" } else { "#ccc" }
    );
    for (t, colour) in [(g.ready_at, "#060"), (g.stopped_listening, "#c80")] {
        if let Some(t) = t {
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.0}\" width=\"2\" height=\"{:.0}\" fill=\"{colour}\"/>",
                scale.x(t),
                scale.y(row),
                ROW
            );
        }
    }
    out.push_str("</g>\n");
}

/// Another process of the tree: a bar from when it was first seen until it exited.
fn process_row(out: &mut String, scale: &Scale, row: usize, p: &ProcessRecord, end: Duration) {
    let until = p.exited.unwrap_or(end);
    let title = format!(
        "pid {} (parent {}): {} first seen {:.3}s, exited {} {}",
        p.pid,
        p.ppid,
        p.cmdline,
        p.first_seen.as_secs_f64(),
        opt(p.exited),
        p.status.as_deref().unwrap_or("")
    );
    let _ = writeln!(
        out,
        "<g><title>{}</title><text x=\"4\" y=\"{:.0}\">pid {}</text><rect x=\"{:.1}\" y=\"{:.0}\" width=\"{:.1}\" height=\"{:.0}\" fill=\"#bbd\"/></g>",
        esc(&title),
        scale.y(row) + 13.0,
        p.pid,
        scale.x(p.first_seen),
        scale.y(row) + 3.0,
        (scale.x(until) - scale.x(p.first_seen)).max(1.0),
        ROW - 8.0
    );
}

/// Failed connections, at the time they ended.
fn failures_row(out: &mut String, scale: &Scale, row: usize, failures: &[ConnRecord]) {
    let _ = writeln!(
        out,
        "<text x=\"4\" y=\"{:.0}\">failed connections</text>",
        scale.y(row) + 13.0
    );
    for c in failures {
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.0}\" r=\"3\" fill=\"#c00\"><title>{}</title></circle>",
            scale.x(c.done),
            scale.y(row) + 10.0,
            esc(&crate::checkers::conn_line(c))
        );
    }
}

fn opt(t: Option<Duration>) -> String {
    t.map_or_else(|| "-".to_string(), |t| format!("{:.3}s", t.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::{clean_run, scenario};
    use crate::model::Invariant;

    #[test]
    fn renders_a_self_contained_escaped_page_with_a_timeline() {
        let mut s = scenario();
        s.id = "x/<y>".into();
        s.expect.pass = vec![Invariant::NoRefused, Invariant::Rollback];
        let r = crate::checkers::judge(&s, clean_run());
        let page = render(&[r]);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(
            page.contains("<h2 id=\"x/&lt;y&gt;\">x/&lt;y&gt;</h2>"),
            "{page}"
        );
        assert!(page.contains("<svg"));
        assert!(page.contains("gen 2 (pid 200)"));
        assert!(
            page.contains("generations: gen 1 (pid 100), gen 2 (pid 200)"),
            "{page}"
        );
        assert!(
            page.contains("class=\"unknown unexpected\""),
            "rollback is expected but unknown"
        );
        assert!(!page.contains("<script"));
    }
}
