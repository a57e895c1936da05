//! The harness's verdicts are worth something only if every invariant can fail: the known-bad
//! servers (`harness/fixtures`) must each be caught by the invariant their flaw breaks, and the
//! reference server must pass the very same scenarios. `scenarios/known-bad` states all of that
//! in its `[expect]` sections, so `handoff check` exits 0 exactly when it holds.

use std::path::Path;
use std::process::Command;

#[test]
fn every_known_bad_server_is_caught_and_every_reference_twin_passes() {
    let handoff = Path::new(env!("CARGO_BIN_EXE_handoff"));
    let bin = handoff.parent().unwrap();
    // The fixtures are another package's binaries: `cargo test --workspace` builds them into
    // the same directory (their own tests need them); a narrower build may not have.
    for fixture in [
        "bad-rebind",
        "bad-reuseport",
        "bad-no-guard",
        "fixture-sound",
    ] {
        assert!(
            bin.join(fixture).exists(),
            "{} is missing: build the fixtures with `cargo build --workspace --bins` (or run the \
             whole `cargo test --workspace`)",
            bin.join(fixture).display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("known-bad.xml");
    let out = Command::new(handoff)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "scenarios/known-bad", "--junit"])
        .arg(&junit)
        .output()
        .unwrap();
    let shown = format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("the JUnit report is XML");
    let cases = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .count();
    assert!(
        cases >= 18,
        "one test case per expected verdict: {cases}\n{shown}"
    );
}
