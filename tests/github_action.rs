//! `ci/github-action.yml` is a workflow users copy: what it asks of `handoff` (the package and
//! binary it installs, the flags it runs with) must exist, so that a rename here breaks this
//! test rather than their CI.

use std::process::Command;

fn workflow() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ci/github-action.yml"))
        .expect("ci/github-action.yml is there")
}

#[test]
fn the_workflow_installs_a_package_and_binary_that_exist() {
    let text = workflow();
    assert!(
        text.contains(&format!(
            "cargo install --locked --git \"$HANDOFF_GIT\" --branch \"$HANDOFF_REV\" {} --bin handoff",
            env!("CARGO_PKG_NAME")
        )),
        "the workflow installs this package's `handoff` binary"
    );
    // The binary this package builds under that name.
    assert!(env!("CARGO_BIN_EXE_handoff").ends_with("/handoff"));
}

#[test]
fn every_flag_the_workflow_gives_handoff_check_exists() {
    let text = workflow();
    let start = text
        .find("handoff check $SCENARIOS")
        .expect("the workflow runs handoff check on $SCENARIOS");
    let command: Vec<&str> = text[start..]
        .lines()
        .scan(true, |more, line| {
            let this = (*more).then_some(line);
            *more = line.trim_end().ends_with('\\');
            this
        })
        .collect();
    let mut flags: Vec<&str> = command
        .iter()
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("--"))
        .collect();
    assert_eq!(flags, ["--json", "--junit", "--html"], "{command:?}");
    // The one-line check the header suggests, too.
    flags.extend(["--exec", "--restart", "--save"]);
    assert!(text.contains("handoff check --exec '...' --restart SIGHUP --save restart.toml"));
    let help = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(["check", "--help"])
        .output()
        .expect("running handoff check --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} <")),
            "`handoff check` has no {flag}:\n{help}"
        );
    }
}
