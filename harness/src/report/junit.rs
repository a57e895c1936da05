//! The JUnit XML report: one testsuite per run, one testcase per scenario and invariant, the
//! evidence of a verdict not as expected in its failure's message, as CI systems display it.
//!
//! Within a testsuite (named by the scenario id; `#2`, `#3`... for `--repeat`), each invariant
//! is a testcase named by its id: as expected, it passes (the verdict's summary in
//! `system-out`); not as expected, it is a `<failure>` whose `message` says what was expected,
//! what came out and the first lines of the evidence, and whose text has Requirement, Expected,
//! Actual and all of it; expected neither way, it is `<skipped>` with the verdict in its
//! message. A scenario whose target could not be run gives an `<error>` on every testcase.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::xml_escape;
use crate::checkers::{Expected, Judged, ScenarioResult};
use crate::model::{Invariant, Verdict};

/// At most this many lines of evidence go into a failure's `message`; its text has them all.
const MESSAGE_EVIDENCE_LINES: usize = 12;

/// The whole document.
pub fn render(results: &[ScenarioResult]) -> String {
    let mut suites = String::new();
    let mut totals = Counts::default();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in results {
        let n = seen.entry(r.id.as_str()).or_insert(0);
        *n += 1;
        let name = if *n == 1 {
            r.id.clone()
        } else {
            format!("{} #{n}", r.id)
        };
        let (suite, counts) = suite(&name, r);
        suites.push_str(&suite);
        totals.add(&counts);
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"handoff\" {}>\n{suites}</testsuites>\n",
        totals.attributes()
    )
}

#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    time: Duration,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.tests += other.tests;
        self.failures += other.failures;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.time += other.time;
    }

    fn attributes(&self) -> String {
        format!(
            "tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\"",
            self.tests,
            self.failures,
            self.errors,
            self.skipped,
            self.time.as_secs_f64()
        )
    }
}

/// One run's testsuite, and its counts.
fn suite(name: &str, r: &ScenarioResult) -> (String, Counts) {
    let class = attr(&r.id);
    let file = attr(&r.path.display().to_string());
    let mut counts = Counts {
        time: r.record.as_ref().map_or(Duration::ZERO, |rec| rec.end),
        ..Counts::default()
    };
    let mut cases = String::new();
    for invariant in Invariant::ALL {
        counts.tests += 1;
        let _ = write!(
            cases,
            "    <testcase classname=\"{class}\" name=\"{}\" file=\"{file}\">",
            invariant.id()
        );
        if let Some(err) = &r.setup_error {
            counts.errors += 1;
            let _ = write!(
                cases,
                "\n      <error message=\"{}\" type=\"setup\">{}</error>\n    ",
                attr(&format!(
                    "the target could not be run: {}",
                    err.lines().next().unwrap_or("")
                )),
                xml_escape(err)
            );
        } else if let Some(j) = r.judged.iter().find(|j| j.invariant == invariant) {
            case_body(&mut cases, &mut counts, r, j);
        } else {
            counts.errors += 1;
            cases.push_str(
                "\n      <error message=\"the invariant was not judged\" type=\"missing\"/>\n    ",
            );
        }
        cases.push_str("</testcase>\n");
    }
    let mut properties = format!(
        "    <properties>\n      <property name=\"requirement\" value=\"{}\"/>\n",
        attr(&r.requirement)
    );
    if let Some(rec) = &r.record {
        let _ = writeln!(
            properties,
            "      <property name=\"seed\" value=\"{}\"/>",
            rec.seed
        );
    }
    properties.push_str("    </properties>\n");
    let suite = format!(
        "  <testsuite name=\"{}\" {} file=\"{file}\">\n{properties}{cases}  </testsuite>\n",
        attr(name),
        counts.attributes()
    );
    (suite, counts)
}

/// What goes inside one judged testcase.
fn case_body(out: &mut String, counts: &mut Counts, r: &ScenarioResult, j: &Judged) {
    let (summary, evidence): (&str, &[String]) = match &j.verdict {
        Verdict::Pass { summary } => (summary, &[]),
        Verdict::Fail { summary, evidence } => (summary, evidence),
        Verdict::Unknown { reason } => (reason, &[]),
    };
    let actual = format!("{}: {summary}", j.verdict.label());
    if j.expected == Expected::Nothing {
        counts.skipped += 1;
        let _ = write!(
            out,
            "\n      <skipped message=\"{}\"/>\n    ",
            attr(&format!("nothing expected; {actual}"))
        );
        return;
    }
    if j.as_expected {
        let mut text = actual;
        for line in evidence {
            let _ = write!(text, "\n  {line}");
        }
        let _ = write!(
            out,
            "\n      <system-out>{}</system-out>\n    ",
            xml_escape(&text)
        );
        return;
    }
    counts.failures += 1;
    let mut message = format!("expected {}, got {actual}", j.expected.label());
    for line in evidence.iter().take(MESSAGE_EVIDENCE_LINES) {
        let _ = write!(message, "\n  {line}");
    }
    if evidence.len() > MESSAGE_EVIDENCE_LINES {
        let _ = write!(
            message,
            "\n  ... {} more line(s) of evidence in the text",
            evidence.len() - MESSAGE_EVIDENCE_LINES
        );
    }
    let mut text = format!(
        "Requirement: {}\nExpected:    {}\nActual:      {actual}",
        r.requirement,
        j.expected.label()
    );
    for line in evidence {
        let _ = write!(text, "\n  {line}");
    }
    if matches!(j.verdict, Verdict::Unknown { .. }) {
        text.push_str("\n(an expected verdict that could not be decided is not as expected)");
    }
    if let Some(rec) = &r.record {
        let _ = write!(
            text,
            "\nThe load's seed was {0} (`seed = {0}` under `[load]` replays its draws).",
            rec.seed
        );
    }
    let _ = write!(
        out,
        "\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    ",
        attr(&message),
        j.verdict.label().to_lowercase(),
        xml_escape(&text)
    );
}

/// An attribute value: as [`xml_escape`], and line breaks and tabs as character references,
/// since a parser turns a raw one in an attribute into a space.
fn attr(s: &str) -> String {
    xml_escape(s)
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::{add_failure, clean_run, conn, scenario};
    use crate::checkers::judge;
    use crate::model::Outcome;

    #[test]
    fn one_testcase_per_invariant_with_the_evidence_in_the_failure_message() {
        let mut s = scenario();
        s.id = "x/<odd>&\"id\"".into();
        s.expect.pass = vec![Invariant::NoDropped, Invariant::Rollback];
        let mut rec = clean_run();
        add_failure(
            &mut rec,
            conn(7, 500, Some(510), 600, Outcome::Reset, Some(100)),
        );
        let r = judge(&s, rec);
        let xml = render(&[r.clone(), r]);
        let doc = roxml(&xml);
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        // 2 runs x 8 invariants; per run: no-dropped fails, rollback is unknown (not as
        // expected), 6 are skipped (nothing expected).
        assert_eq!(root.attribute("tests"), Some("16"), "{xml}");
        assert_eq!(root.attribute("failures"), Some("4"), "{xml}");
        assert_eq!(root.attribute("skipped"), Some("12"), "{xml}");
        let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
        assert_eq!(suites[0].attribute("name"), Some("x/<odd>&\"id\""));
        assert_eq!(suites[1].attribute("name"), Some("x/<odd>&\"id\" #2"));
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .expect("a failure");
        let message = failure.attribute("message").expect("a message");
        assert!(
            message.starts_with("expected pass, got FAIL: "),
            "{message}"
        );
        assert!(
            message.contains("\n  ") && message.contains("reset"),
            "the evidence is in the message, line by line: {message}"
        );
        let text = failure.text().unwrap_or("");
        assert!(
            text.starts_with("Requirement: MUST\nExpected:    pass\n"),
            "{text}"
        );
    }

    #[test]
    fn a_target_that_could_not_run_errors_every_testcase() {
        let s = scenario();
        let r = ScenarioResult::setup_failed(&s, "target exited 1 before it was ready\nlog");
        let xml = render(&[r]);
        let doc = roxml(&xml);
        let errors = doc
            .descendants()
            .filter(|n| n.has_tag_name("error"))
            .count();
        assert_eq!(errors, Invariant::ALL.len(), "{xml}");
        assert_eq!(doc.root_element().attribute("errors"), Some("8"));
    }

    fn roxml(xml: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}\n{xml}"))
    }
}
