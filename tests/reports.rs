//! The report files of real runs: the JSON matches `docs/report-schema.json`, the JUnit has
//! one testcase per scenario and invariant with the evidence in the failure's message, and the
//! HTML page has a section per scenario with its timeline, for a passing and a failing run.

use std::path::{Path, PathBuf};
use std::process::Command;

mod util;
use util::show;

fn handoff() -> Command {
    let exe = Path::new(env!("CARGO_BIN_EXE_handoff"));
    // `bad-kill-parent` is another package's binary: `cargo test --workspace` builds it
    // beside this one (its own tests need it); a narrower build may not have.
    let fixture = exe.with_file_name("bad-kill-parent");
    assert!(
        fixture.exists(),
        "{} is missing: build the fixtures with `cargo build --workspace --bins` (or run the \
         whole `cargo test --workspace`)",
        fixture.display()
    );
    let mut cmd = Command::new(exe);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// A scenario file around `server` (a binary beside `handoff`) with two restarts under slow
/// requests, expecting `expect` to pass.
fn scenario(dir: &Path, id: &str, server: &str, expect: &str) -> PathBuf {
    let text = format!(
        r#"id = "{id}"
description = "two restarts under slow requests"
requirement = "A superseded generation MUST finish the requests it accepted before it exits."
duration-ms = 2000

[target]
command = ["{{bin}}/{server}", "--listen", "127.0.0.1:{{port}}", "--drain-timeout-ms", "1000", "--delay-ms", "200", "--pid-file", "{{dir}}/pid"]
ready = {{ log-line = "ready pid=" }}
pid-file = "{{dir}}/pid"
restart = {{ signal = "SIGHUP", to = "pid-file" }}
stop = {{ signal = "SIGTERM", to = "pid-file", graceful = true }}
drain-timeout-ms = 1000

[load]
profile = "slow"
clients = 4
requests-per-conn = 2

[[events]]
at-ms = 500
action = "restart"

[[events]]
at-ms = 1200
action = "restart"
after-drain = true

[expect]
pass = [{expect}]
"#
    );
    let path = dir.join(format!("{}.toml", id.replace('/', "-")));
    std::fs::write(&path, text).expect("writing a scenario");
    path
}

#[test]
fn reports_of_a_passing_and_a_failing_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = scenario(dir.path(), "test/pass", "handoff-echo", r#""no-dropped""#);
    let fail = scenario(
        dir.path(),
        "test/fail",
        "bad-kill-parent",
        r#""no-dropped""#,
    );
    let (json, junit, html) = (
        dir.path().join("r.json"),
        dir.path().join("r.xml"),
        dir.path().join("r.html"),
    );
    let out = handoff()
        .arg("check")
        .arg(&pass)
        .arg(&fail)
        .arg("--json")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("running handoff");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("the JSON parses");
    util::assert_matches_report_schema(&report);
    assert_eq!(report["version"], 2);
    // The schema has teeth: another version, a verdict of another kind, an outcome it does not
    // know are each refused.
    for (pointer, value) in [
        ("/version", serde_json::json!(1)),
        (
            "/scenarios/1/judged/1/verdict/verdict",
            serde_json::json!("maybe"),
        ),
        (
            "/scenarios/1/record/journal/failures/0/outcome",
            serde_json::json!("lost"),
        ),
    ] {
        let mut bad = report.clone();
        *bad.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer} in {report}")) = value;
        assert!(
            !util::report_schema_errors(&bad).is_empty(),
            "{pointer} changed, still valid"
        );
    }
    assert_eq!(report["exit_code"], 1);
    let series = &report["scenarios"][0]["record"]["journal"]["series"]["buckets"];
    assert!(
        series.as_array().is_some_and(|b| !b.is_empty()),
        "the load over time is in the journal: {series}"
    );

    let xml = std::fs::read_to_string(&junit).expect("JUnit written");
    let doc = roxmltree::Document::parse(&xml).expect("the JUnit parses");
    let suites: Vec<_> = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    assert_eq!(suites.len(), 2, "{xml}");
    for s in &suites {
        let cases = s.children().filter(|n| n.has_tag_name("testcase")).count();
        assert_eq!(cases, 8, "one testcase per invariant:\n{xml}");
    }
    let failure = suites[1]
        .descendants()
        .find(|n| n.has_tag_name("failure"))
        .unwrap_or_else(|| panic!("the failing run has a failure:\n{xml}"));
    let message = failure.attribute("message").unwrap_or("");
    assert!(
        message.starts_with("expected pass, got FAIL: ") && message.contains("\n  "),
        "the evidence is in the message: {message}"
    );
    assert!(
        suites[0].descendants().all(|n| !n.has_tag_name("failure")),
        "{xml}"
    );

    let page = std::fs::read_to_string(&html).expect("HTML written");
    check_page(&page);
}

/// The page's structure: self-contained, a summary linking to each run's section, and in each
/// a timeline with lanes, the load over time, latency with the restarts marked, and, for the
/// failing run only, a hoverable mark per failed connection.
fn check_page(page: &str) {
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    for external in ["<script", "src=", "href=\"http", "@import", "url("] {
        assert!(
            !page.contains(external),
            "the page must be self-contained: `{external}`"
        );
    }
    assert!(
        page.contains("<table class=\"summary\">"),
        "a summary table"
    );
    for (k, id) in ["test/pass", "test/fail"].iter().enumerate() {
        let link = format!("<a href=\"#run-{}\">{id}</a>", k + 1);
        assert!(page.contains(&link), "the summary links to {id}'s section");
    }
    let sections: Vec<&str> = page.split("<section id=\"run-").skip(1).collect();
    assert_eq!(sections.len(), 2, "a section per run");
    for section in &sections {
        assert_eq!(section.matches("<svg class=\"timeline\"").count(), 1);
        assert!(
            section.contains("<g class=\"lane ready\">"),
            "the generations' lanes"
        );
        assert!(
            section.contains("<g class=\"bucket\"><title>"),
            "the load over time"
        );
        assert_eq!(
            section.matches("<g class=\"latency\"").count(),
            4,
            "p50 and p99 lines"
        );
        assert_eq!(
            section.matches("<g class=\"event restart\">").count(),
            2,
            "both restarts marked"
        );
    }
    assert!(
        !sections[0].contains("<g class=\"conn\">"),
        "the passing run failed nothing"
    );
    assert!(
        sections[1].contains("<g class=\"conn\"><title>connection #"),
        "each failed connection is a mark showing its record on hover"
    );
    assert!(
        page.contains(">NOT as expected<"),
        "the summary marks the failing run"
    );
}

#[test]
fn the_report_of_a_target_that_could_not_run_matches_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("never.toml");
    std::fs::write(
        &path,
        r#"id = "test/never-ready"
description = "a target that exits at once"
requirement = "The target MUST start."
duration-ms = 1000

[target]
command = ["/bin/false"]

[expect]
pass = ["no-refused"]
"#,
    )
    .expect("writing a scenario");
    let json = dir.path().join("r.json");
    let out = handoff()
        .arg("check")
        .arg(&path)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running handoff");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("the JSON parses");
    util::assert_matches_report_schema(&report);
    assert!(
        report["scenarios"][0]["setup_error"].is_string(),
        "{report}"
    );
}
