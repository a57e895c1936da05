//! `handoff explore`: random schedules find every known-bad server's flaw and shrink it to a
//! small scenario file that replays; against the reference server they find nothing.
//!
//! Every run here is real (processes, sockets, signals), so the case counts and shrink budgets
//! are kept small and the seeds fixed; `ci/explore` runs the same at larger counts.

use std::path::Path;
use std::process::{Command, Output};

mod util;
use util::show;

const SEED: &str = "0x5eed";

fn handoff() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handoff"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn fixtures_built() {
    let bin = Path::new(env!("CARGO_BIN_EXE_handoff")).parent().unwrap();
    assert!(
        bin.join("bad-no-guard").exists(),
        "the known-bad servers are missing: build them with `cargo build --workspace --bins` \
         (or run the whole `cargo test --workspace`)"
    );
}

/// Explores `base` and returns the output and the written file's text (if any).
fn explore(base: &str, cases: &str, shrink_runs: &str) -> (Output, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("found.toml");
    let out = handoff()
        .args(["explore", base, "--seed", SEED, "--cases", cases])
        .args(["--duration-ms", "1500", "--replays", "2"])
        .args(["--shrink-runs", shrink_runs])
        .arg("--out")
        .arg(&written)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&written).ok();
    (out, text)
}

/// The flaw behind `base` is found within the case bound, shrunk to at most 3 events, and the
/// written file names one of the invariants the flaw breaks (`breaks`: a flaw has consequences;
/// a server with no guard, say, also leaves an extra process behind at the stop).
fn finds(flaw: &str, breaks: &[&str]) -> String {
    finds_within(flaw, breaks, "24", 3)
}

fn finds_within(flaw: &str, breaks: &[&str], shrink_runs: &str, most_events: usize) -> String {
    fixtures_built();
    let base = format!("scenarios/known-bad/{flaw}/caught.toml");
    let (out, text) = explore(&base, "20", shrink_runs);
    let all = show(&out);
    assert_eq!(out.status.code(), Some(1), "a failure must be found\n{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("explore {base}: seed {SEED}")),
        "{all}"
    );
    let text = text.unwrap_or_else(|| panic!("no reproducible failure written\n{all}"));
    let events = text.matches("[[events]]").count();
    assert!(
        (1..=most_events).contains(&events),
        "shrunk to {events} events\n{all}"
    );
    assert!(
        breaks
            .iter()
            .any(|i| text.contains(&format!("fail = [\"{i}\"]"))),
        "expected one of {breaks:?} to fail\n{text}"
    );
    assert!(
        stdout.contains("reproducible: failed 2 of 2 replays"),
        "{all}"
    );
    text
}

#[test]
fn explore_finds_no_readiness_and_the_written_file_replays_the_same_failure() {
    // No readiness check: the old generation goes, the failed child never serves, so the
    // rollback fails, and connects are refused meanwhile.
    let text = finds("no-readiness", &["rollback", "no-refused"]);
    let invariant = if text.contains("fail = [\"rollback\"]") {
        "rollback"
    } else {
        "no-refused"
    };
    // The file stands alone: `handoff check` runs it and sees the same invariant fail.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("found.toml");
    std::fs::write(&file, &text).unwrap();
    let json = dir.path().join("replay.json");
    let out = handoff()
        .arg("check")
        .arg(&file)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let judged = &report["scenarios"][0]["judged"];
    let verdict = judged
        .as_array()
        .and_then(|all| all.iter().find(|j| j["invariant"] == invariant))
        .map(|j| j["verdict"]["verdict"].clone());
    assert_eq!(
        verdict,
        Some(serde_json::json!("fail")),
        "{invariant} on replay: {judged}"
    );
}

#[test]
fn explore_finds_no_guard() {
    // The flaw shows when a restart signal arrives while another's child is starting; signals
    // sent a millisecond apart may be delivered as one (a standard signal pending twice is
    // pending once), so the three-restart reproducer fails only in some runs and a shrink
    // attempt that happened to pass can leave four (seen once in CI).
    finds_within(
        "no-guard",
        &["single-upgrade", "clean-stop", "drains-then-exits"],
        "24",
        4,
    );
}

#[test]
fn explore_finds_rebind() {
    finds("rebind", &["no-refused", "no-dropped", "drains-then-exits"]);
}

#[test]
fn explore_finds_reuseport() {
    finds("reuseport", &["no-dropped", "drains-then-exits"]);
}

#[test]
fn explore_finds_kill_parent() {
    finds("kill-parent", &["no-dropped", "drains-then-exits"]);
}

#[test]
fn explore_finds_never_exits() {
    finds(
        "never-exits",
        &["drains-then-exits", "single-upgrade", "clean-stop"],
    );
}

#[test]
fn explore_finds_unbounded_drain() {
    finds("unbounded-drain", &["drains-then-exits", "clean-stop"]);
}

#[test]
fn explore_finds_ignores_restart() {
    finds("ignores-restart", &["takes-over"]);
}

#[test]
fn explore_finds_fd_leak() {
    // A leak of one descriptor per generation shows over three restarts, no fewer: the
    // minimal schedule is exactly 3 events. The harness samples the serving generation's
    // descriptors right before each restart, so even generations replaced within
    // milliseconds count.
    finds_within("fd-leak", &["fd-stable"], "48", 3);
}

#[test]
fn explore_finds_nothing_against_the_reference_server() {
    let (out, text) = explore(
        "scenarios/reference/rollback/hang-before-ready.toml",
        "12",
        "24",
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(text.is_none(), "nothing may be written: {text:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no reproducible failure in 12 cases"),
        "{}",
        show(&out)
    );
}

#[test]
fn the_same_seed_draws_the_same_schedules() {
    let dry = |seed: &str| {
        let out = handoff()
            .args([
                "explore",
                "scenarios/reference/rollback/hang-before-ready.toml",
            ])
            .args(["--dry-run", "--cases", "15", "--seed", seed])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = dry("42");
    assert!(
        first.starts_with("explore scenarios/reference/rollback/hang-before-ready.toml: seed 0x2a")
    );
    assert!(first.contains("case 15:"), "{first}");
    assert_eq!(first, dry("0x2a"));
    // Another seed, other schedules (the header names the seed, so compare past it).
    let body = |s: &str| s.split_once('\n').map(|(_, b)| b.to_string());
    assert_ne!(body(&first), body(&dry("43")));
}

#[test]
fn a_bad_base_or_seed_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("no-restart.toml");
    std::fs::write(
        &base,
        "id = \"x\"\ndescription = \"d\"\nrequirement = \"r\"\nduration-ms = 1000\n\n[target]\n\
         command = [\"{bin}/handoff-echo\", \"--listen\", \"127.0.0.1:{port}\"]\n\n\
         [expect]\npass = [\"no-refused\"]\n",
    )
    .unwrap();
    let out = handoff().arg("explore").arg(&base).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`target.restart` is missing"),
        "{}",
        show(&out)
    );
    let out = handoff()
        .args([
            "explore",
            "scenarios/reference/rollback/hang-before-ready.toml",
        ])
        .args(["--seed", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`soon` is not a seed"),
        "{}",
        show(&out)
    );
}
