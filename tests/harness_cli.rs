//! The `handoff` command end to end: real scenario files, real reference servers, real exit
//! codes.
//!
//! The reference servers are binaries of this package, so cargo builds them beside the `handoff`
//! executable, where `{bin}` points.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use assert_cmd::Command as AssertCommand;

mod util;
use util::show;

/// Runs that launch targets are timing-sensitive on a small machine: one at a time.
static TARGETS: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    TARGETS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn handoff_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handoff"))
}

/// The directory of the `handoff` executable, where `{bin}` points: the reference servers are
/// binaries of this package too, so cargo builds them there for this test.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = handoff_exe()
            .parent()
            .expect("the handoff executable has a directory")
            .to_path_buf();
        for server in [
            env!("CARGO_BIN_EXE_handoff-echo"),
            env!("CARGO_BIN_EXE_handoff-http"),
        ] {
            assert_eq!(
                Path::new(server).parent(),
                Some(dir.as_path()),
                "`{server}` must sit beside the handoff executable, where `{{bin}}` points"
            );
        }
        dir
    })
}

fn handoff() -> AssertCommand {
    bin_dir();
    let mut cmd = AssertCommand::new(handoff_exe());
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn run(cmd: &mut AssertCommand) -> (i32, String, String, String) {
    let out = cmd.output().expect("running handoff");
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        show(&out),
    )
}

/// A scenario around handoff-echo with `events` and `expect` spliced in.
fn echo_scenario(id: &str, clients: &str, events: &str, expect: &str) -> String {
    format!(
        r#"id = "{id}"
description = "test"
requirement = "The server MUST keep serving."
duration-ms = 1500

[target]
command = ["{{bin}}/handoff-echo", "--listen", "127.0.0.1:{{port}}", "--drain-timeout-ms", "500", "--pid-file", "{{dir}}/pid"]
ready = {{ log-line = "ready pid=" }}
pid-file = "{{dir}}/pid"
restart = {{ signal = "SIGHUP", to = "pid-file" }}
stop = {{ signal = "SIGTERM", to = "pid-file" }}
drain-timeout-ms = 500

[load]
profile = "short"
clients = {clients}
{events}
[expect]
{expect}
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a scenario file");
    path
}

#[test]
fn a_passing_scenario_exits_zero() {
    let _guard = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let events = "\n[[events]]\nat-ms = 500\naction = \"restart\"\n";
    let path = write(
        dir.path(),
        "pass.toml",
        &echo_scenario(
            "test/pass",
            "4",
            events,
            r#"pass = ["no-refused", "no-dropped", "takes-over", "clean-stop"]"#,
        ),
    );
    let (code, stdout, _, all) = run(handoff().arg("check").arg(&path));
    assert_eq!(code, 0, "{all}");
    assert!(stdout.contains("1 as expected, 0 not as expected"), "{all}");
}

#[test]
fn killing_the_server_under_load_breaks_the_expectation() {
    let _guard = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let events =
        "\n[[events]]\nat-ms = 500\naction = \"kill\"\nsignal = \"SIGKILL\"\ngeneration = 1\n";
    let path = write(
        dir.path(),
        "kill.toml",
        &echo_scenario(
            "test/kill",
            "8",
            events,
            r#"pass = ["no-refused", "no-dropped"]"#,
        ),
    );
    let (code, stdout, stderr, all) = run(handoff().arg("check").arg(&path));
    assert_eq!(code, 1, "{all}");
    assert!(stdout.contains("test/kill"), "{all}");
    assert!(
        stdout.contains("Requirement: The server MUST keep serving."),
        "{all}"
    );
    assert!(stdout.contains("Expected:    pass"), "{all}");
    assert!(stdout.contains("Actual:      FAIL"), "{all}");
    assert!(stdout.contains("refused"), "{all}");
    assert!(stderr.contains("not as expected"), "{all}");
}

#[test]
fn bad_scenarios_exit_two_naming_file_line_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = echo_scenario("test/bad", "4", "", r#"pass = ["no-refused"]"#);
    let cases = [
        (
            "zero-clients.toml",
            base.clone(),
            "line 16",
            "`load.clients` must be between 1 and 100000, got 0",
            "clients = 4",
            "clients = 0",
        ),
        (
            "unknown-key.toml",
            base.clone(),
            "line 17",
            "`load.clientz`",
            "clients = 4",
            "clients = 4\nclientz = 1",
        ),
        (
            "late-event.toml",
            base.clone(),
            "line 19",
            "`events[0].at-ms` must be at least 0 and before the end of the run (`duration-ms` = 1500), got 1500",
            "clients = 4\n",
            "clients = 4\n\n[[events]]\nat-ms = 1500\naction = \"restart\"\n",
        ),
    ];
    for (name, text, line, message, from, to) in cases {
        let path = write(dir.path(), name, &text.replacen(from, to, 1));
        let (code, _, stderr, all) = run(handoff().arg("check").arg(&path));
        assert_eq!(code, 2, "{name}: {all}");
        let expected = format!("{} {line}: ", path.display());
        assert!(
            stderr.contains(&expected),
            "{name}: wanted `{expected}` in:\n{all}"
        );
        assert!(
            stderr.contains(message),
            "{name}: wanted `{message}` in:\n{all}"
        );
        assert!(stderr.contains("nothing was run"), "{name}: {all}");
    }
    let (code, _, stderr, all) = run(handoff().arg("check").arg(dir.path().join("missing.toml")));
    assert_eq!(code, 2, "{all}");
    assert!(stderr.contains("missing.toml` does not exist"), "{all}");
}

#[test]
fn a_target_that_never_becomes_ready_exits_two() {
    let _guard = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"id = "test/false"
description = "A target that exits at once."
requirement = "The target MUST start."
duration-ms = 1000

[target]
command = ["/bin/false"]
ready-timeout-ms = 2000

[expect]
pass = ["no-refused"]
"#;
    let path = write(dir.path(), "false.toml", text);
    let (code, stdout, stderr, all) = run(handoff().arg("check").arg(&path));
    assert_eq!(code, 2, "{all}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "the message must name the file:\n{all}"
    );
    assert!(stdout.contains("could not run"), "{all}");
}

#[test]
fn list_shows_ids_without_running() {
    let (code, stdout, _, all) = run(handoff().args(["list", "scenarios/reference"]));
    assert_eq!(code, 0, "{all}");
    assert!(stdout.contains("reference/echo/short-3-restarts"), "{all}");
    assert!(stdout.contains("MUST"), "{all}");
}

#[test]
fn the_reference_scenarios_pass_and_junit_parses() {
    let _guard = serial();
    // `scenarios/reference/{axum,hyper}` run the library's examples, which are another
    // package's: `cargo test --workspace` builds them under `{bin}/examples` (a narrower
    // build may not have).
    for example in ["axum", "hyper"] {
        let path = bin_dir().join("examples").join(example);
        assert!(
            path.exists(),
            "{} is missing: build the examples with `cargo build --workspace --examples` (or run \
             the whole `cargo test --workspace`)",
            path.display()
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let junit = dir.path().join("junit.xml");
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let (code, _, _, all) = run(handoff()
        .args(["check", "scenarios/reference", "--junit"])
        .arg(&junit)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html));
    assert_eq!(code, 0, "{all}");

    let xml = std::fs::read_to_string(&junit).expect("the JUnit file was written");
    let doc = roxmltree::Document::parse(&xml)
        .unwrap_or_else(|e| panic!("JUnit XML does not parse: {e}\n{xml}"));
    let suites = doc.root_element();
    assert_eq!(suites.tag_name().name(), "testsuites");
    assert_eq!(suites.attribute("failures"), Some("0"), "{xml}");
    assert_eq!(suites.attribute("errors"), Some("0"), "{xml}");
    let runs = suites
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .count();
    let cases = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .count();
    assert!(
        runs >= 10,
        "one testsuite per scenario run, got {runs}:\n{xml}"
    );
    assert_eq!(
        cases,
        runs * 8,
        "one testcase per scenario and invariant:\n{xml}"
    );
    assert_eq!(suites.attribute("tests"), Some(cases.to_string().as_str()));

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON file was written"))
            .expect("JSON parses");
    assert_eq!(report["exit_code"], 0);
    util::assert_matches_report_schema(&report);
    assert!(
        report["scenarios"]
            .as_array()
            .is_some_and(|s| s.len() >= 10),
        "{report}"
    );
}

#[test]
fn misused_reference_servers_are_caught() {
    let _guard = serial();
    let files = [
        "restart-ignored",
        "drain-deadline-overrun",
        "killed-under-load",
        "stop-ignored",
        "fail-next-not-wired",
    ]
    .map(|name| format!("scenarios/known-bad/{name}.toml"));
    let (code, stdout, _, all) = run(handoff().arg("check").args(&files));
    assert_eq!(
        code, 0,
        "each must fail exactly the invariants it lists:\n{all}"
    );
    assert!(stdout.contains("5 as expected"), "{all}");
}

#[test]
fn an_interrupt_stops_the_target_and_exits_130() {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    let _guard = serial();
    bin_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = echo_scenario("test/interrupt", "2", "", r#"pass = ["no-refused"]"#);
    text = text.replace("duration-ms = 1500", "duration-ms = 60000");
    let path = write(dir.path(), "long.toml", &text);
    let mut child = Command::new(handoff_exe())
        .args(["check", "-v"])
        .arg(&path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning handoff");
    let stderr = child.stderr.take().expect("piped stderr");
    // Read progress until the target is ready (the line names its pid), then interrupt.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut target = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(pid) = line
                .split("spawned pid ")
                .nth(1)
                .and_then(|r| r.split(':').next())
            {
                target = pid.trim().parse::<i32>().ok();
            }
            if line.ends_with(": ready") {
                let _ = tx.send(target);
            }
        }
    });
    let target = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the target became ready within 30 s")
        .expect("the progress output named the target's pid");
    let handoff = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    nix::sys::signal::kill(handoff, nix::sys::signal::Signal::SIGINT).expect("sending SIGINT");

    assert!(
        util::wait_gone(child.id(), Duration::from_secs(30)),
        "handoff did not exit within 30 s of SIGINT"
    );
    let status = child.wait().expect("waiting for handoff");
    assert_eq!(status.code(), Some(130), "{status}");
    // The target tree went down with the run (it may linger a moment as a zombie of init).
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    };
    assert!(
        util::wait_gone(target as u32, Duration::from_secs(10)) || gone(target),
        "target pid {target} is still running after the interrupt"
    );
}

/// `handoff ARGS` with stdout a pipe whose read end is already closed, so that its first write
/// fails with EPIPE (the Rust runtime ignores SIGPIPE): the status and stderr.
fn with_closed_stdout(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(handoff_exe())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("running handoff");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    for args in [
        &["list", "scenarios"][..],
        &["--help"],
        &[
            "explore",
            "--dry-run",
            "--seed",
            "1",
            "scenarios/reference/echo/short-3-restarts.toml",
        ],
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let (code, stderr) = with_closed_stdout(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert_eq!(
            stderr, "",
            "{args:?}: nothing on stderr: no panic, no error spew"
        );
    }

    // As a shell pipeline does it.
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "'{}' list scenarios | head -1",
            handoff_exe().display()
        ))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running bash");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(out.stderr.is_empty(), "{}", show(&out));
}

#[test]
fn a_check_whose_stdout_is_closed_still_judges_and_writes_its_reports() {
    let _guard = serial();
    bin_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "pass.toml",
        &echo_scenario("test/closed-stdout", "2", "", r#"pass = ["no-refused"]"#),
    );
    let json = dir.path().join("report.json");
    let (code, stderr) = with_closed_stdout(&[
        "check".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        path.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert!(
        stderr.contains("test/closed-stdout: as expected"),
        "the progress line goes to stderr: {stderr}"
    );
    let report = std::fs::read_to_string(&json).expect("the JSON report was written");
    assert!(report.contains("\"exit_code\": 0"), "{report}");
}

#[test]
fn a_one_line_check_runs_without_a_file_and_saves_one_that_runs_again() {
    let _guard = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = dir.path().join("saved.toml");
    let (code, stdout, _, all) = run(handoff()
        .args([
            "check",
            "--exec",
            "{bin}/handoff-echo --listen 127.0.0.1:{port} --pid-file '{dir}/pid'",
            "--pid-file",
            "{dir}/pid",
            "--restart",
            "SIGHUP",
            "--save",
        ])
        .arg(&saved));
    assert_eq!(code, 0, "{all}");
    assert!(stdout.contains("exec/handoff-echo"), "{all}");
    assert!(stdout.contains("restart p50"), "{all}");
    assert!(
        stdout.contains("(n=3)"),
        "three restarts were measured: {all}"
    );
    let text = std::fs::read_to_string(&saved).expect("the scenario was saved");
    assert!(
        text.contains("restart = { signal = \"SIGHUP\", to = \"pid-file\" }"),
        "{text}"
    );

    let (code, stdout, _, all) = run(handoff().arg("check").arg(&saved));
    assert_eq!(code, 0, "the saved scenario runs again: {all}");
    assert!(stdout.contains("1 as expected"), "{all}");

    // A server that ignores the restart signal is caught by the same default scenario.
    let (code, stdout, _, all) = run(handoff().args([
        "check",
        "--exec",
        "{bin}/handoff-echo --listen 127.0.0.1:{port}",
        "--restart",
        "SIGWINCH",
    ]));
    assert_eq!(code, 1, "{all}");
    assert!(
        stdout.contains("FAIL: a restart was not taken over"),
        "{all}"
    );
}
