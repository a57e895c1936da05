//! The runner against the reference servers: a correct graceful-restart server must come out
//! of every profile with no failed connection, and the record must show each generation
//! listening, serving, handing over and exiting.
//!
//! The servers are looked up beside this test's own target directory (`target/debug/`), where
//! `cargo build --workspace` (or `cargo test --workspace`) puts them.

use std::path::PathBuf;
use std::time::Duration;

use handoff_harness::model::{
    Action, Event, Invariant, LoadSpec, Outcome, Profile, Protocol, Ready, RunRecord, Scenario,
    SignalTo, Trigger, Verdict, Which,
};
use handoff_harness::run::{RunOptions, run_scenario};
use handoff_harness::scenario;

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/debug/deps/runner-HASH -> target/debug
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf();
    for server in ["handoff-echo", "handoff-http"] {
        assert!(
            dir.join(server).exists(),
            "`{}` is not built; run `cargo build --workspace` (with the same target dir) first",
            dir.join(server).display()
        );
    }
    dir
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn scenario(server: &str, profile: Profile, protocol: Protocol, restarts: &[u64]) -> Scenario {
    let id = format!("inline/{server}/{profile:?}").to_lowercase();
    let bin = format!("{{bin}}/{server}");
    let command = [
        bin.as_str(),
        "--listen",
        "127.0.0.1:{port}",
        "--pid-file",
        "{dir}/pid",
        "--drain-timeout-ms",
        "2000",
        "--fail-next-file",
        "{dir}/fail-next",
    ];
    let mut s = scenario::inline(&id, &command, ms(1500));
    s.description = "reference server across restarts".into();
    s.requirement = "MUST NOT refuse or drop a connection across a restart".into();
    s.target.ready_timeout = Duration::from_secs(10);
    s.target.restart = Some(Trigger::signal("SIGHUP", SignalTo::PidFile));
    s.target.stop = Trigger::signal("SIGTERM", SignalTo::Newest);
    s.target.stop_graceful = true;
    s.target.stop_timeout = Duration::from_secs(5);
    s.target.drain_timeout = Duration::from_secs(2);
    s.target.fail_next_file = Some("{dir}/fail-next".into());
    s.target.pid_file = Some("{dir}/pid".into());
    s.load = LoadSpec {
        profile,
        protocol,
        clients: 8,
        requests_per_conn: 5,
        interval: ms(5),
        ramp: Duration::ZERO,
        connect_timeout: Duration::from_secs(2),
        reply_timeout: Duration::from_secs(3),
        burst_size: 50,
        ..s.load.clone()
    };
    // A correct server refuses a restart while its predecessor drains, which a loaded
    // machine can stretch: wait for the drain, so that every restart counts.
    s.events = restarts
        .iter()
        .map(|&at| Event {
            after_drain: true,
            ..Event::at(ms(at), Action::Restart)
        })
        .collect();
    s
}

fn run(s: &Scenario) -> RunRecord {
    let opts = RunOptions {
        bin_dir: bin_dir(),
        verbose: std::env::var_os("HANDOFF_TEST_VERBOSE").is_some(),
        watch: None,
    };
    let r = run_scenario(s, &opts).unwrap_or_else(|e| panic!("run of `{}` failed: {e}", s.id));
    if opts.verbose {
        let json = serde_json::to_string_pretty(&r).unwrap_or_else(|e| e.to_string());
        eprintln!("{json}");
    }
    r
}

/// Everything a clean run of a correct server shows.
fn assert_clean(r: &RunRecord, generations: usize) {
    let j = &r.journal;
    assert!(
        j.failures.is_empty() && j.connections == j.outcomes[Outcome::Ok.id()],
        "failed connections: {:#?}\noutcomes: {:?}",
        j.failures,
        j.outcomes
    );
    assert!(
        j.connections > 20,
        "too little load to mean anything: {j:#?}"
    );
    assert_eq!(j.harness_errors, 0, "{:?}", j.harness_error_example);
    assert_eq!(j.replies_without_pid, 0);
    assert_eq!(r.listeners.len(), generations, "{:#?}", r.listeners);
    // One process per generation, and no supervisor: each listener is a generation.
    let sets: Vec<Vec<u32>> = r
        .lineage
        .generations
        .iter()
        .map(|g| g.members.clone())
        .collect();
    let each: Vec<Vec<u32>> = r.listeners.iter().map(|l| vec![l.pid]).collect();
    assert_eq!(sets, each, "{:#?}", r.lineage);
    assert!(r.lineage.supervisors.is_empty(), "{:#?}", r.lineage);
    for g in &r.listeners {
        assert_eq!(g.status.as_deref(), Some("exit 0"), "{g:#?}");
        assert!(g.ready_at.is_some(), "{g:#?}");
        assert!(
            j.served_by.contains_key(&g.pid),
            "pid {} served nothing",
            g.pid
        );
    }
    for pair in r.listeners.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let stopped = old
            .stopped_listening
            .or(old.exited)
            .expect("old one stopped");
        // listening_since is an upper bound (the observer polls, and may be starved of CPU),
        // while an exit time from the reaper is exact: allow for that.
        assert!(
            new.listening_since <= stopped + ms(250),
            "{old:#?}\n{new:#?}"
        );
        assert_eq!(
            old.listen_inodes, new.listen_inodes,
            "the same socket is handed over"
        );
    }
    assert!(r.killed_at_end.is_empty(), "{:?}", r.killed_at_end);
    assert_eq!(
        r.injected.iter().filter(|i| i.error.is_some()).count(),
        0,
        "{:#?}",
        r.injected
    );
}

#[test]
fn echo_keepalive_across_three_restarts_loses_nothing() {
    let r = run(&scenario(
        "handoff-echo",
        Profile::Keepalive,
        Protocol::Line,
        &[300, 600, 900],
    ));
    assert_clean(&r, 4);
}

#[test]
fn echo_long_connections_across_two_restarts_lose_nothing() {
    let mut s = scenario("handoff-echo", Profile::Long, Protocol::Line, &[300, 800]);
    s.load.interval = ms(50);
    let r = run(&s);
    assert_clean(&r, 3);
}

#[test]
fn http_short_and_keepalive_across_restarts_lose_nothing() {
    let r = run(&scenario(
        "handoff-http",
        Profile::Short,
        Protocol::Http1,
        &[300, 700],
    ));
    assert_clean(&r, 3);
    let r = run(&scenario(
        "handoff-http",
        Profile::Keepalive,
        Protocol::Http1,
        &[300, 700],
    ));
    assert_clean(&r, 3);
}

#[test]
fn http_burst_at_the_restart_loses_nothing() {
    let r = run(&scenario(
        "handoff-http",
        Profile::Burst,
        Protocol::Http1,
        &[400],
    ));
    assert_clean(&r, 2);
    assert!(r.journal.connections > 50);
}

#[test]
fn echo_rollback_keeps_the_old_generation_serving() {
    let mut s = scenario("handoff-echo", Profile::Keepalive, Protocol::Line, &[]);
    s.events = vec![
        Event::at(
            ms(200),
            Action::FailNext {
                mode: "crash".into(),
            },
        ),
        Event::at(ms(300), Action::Restart),
    ];
    let r = run(&s);
    let j = &r.journal;
    assert!(j.failures.is_empty(), "{:#?}", j.failures);
    // The crashed child inherited the listener, so it was a generation that never served.
    let first = r.listeners.first().expect("generation 1");
    assert_eq!(first.status.as_deref(), Some("exit 0"), "{first:#?}");
    assert!(
        r.listeners.iter().skip(1).all(|g| g.ready_at.is_none()),
        "{:#?}",
        r.listeners
    );
    assert_eq!(
        j.served_by.len(),
        1,
        "only the first generation served: {:?}",
        j.served_by
    );
    assert!(j.served_by[&first.pid].last_reply > ms(300) + r.first_ready.unwrap_or_default());
}

#[test]
fn echo_over_a_unix_socket_across_restarts_loses_nothing() {
    let mut s = scenario(
        "handoff-echo",
        Profile::Keepalive,
        Protocol::Line,
        &[300, 1000],
    );
    s.duration = ms(1800);
    for arg in s.target.command.iter_mut() {
        if arg == "127.0.0.1:{port}" {
            *arg = "unix:{dir}/echo.sock".into();
        }
    }
    s.target.connect = "unix:{dir}/echo.sock".into();
    let r = run(&s);
    assert_clean(&r, 3);
}

#[test]
fn back_to_back_requests_on_draining_connections_are_not_counted_as_drops() {
    // No pause between requests, many clients, many restarts: the echo server closes each
    // connection right after its next reply while draining, which races the client's next
    // request. A correct server must still come out clean.
    let mut s = scenario(
        "handoff-echo",
        Profile::Keepalive,
        Protocol::Line,
        &[200, 400, 600, 800, 1000, 1200],
    );
    s.load.clients = 32;
    s.load.interval = Duration::ZERO;
    s.load.requests_per_conn = 50;
    let r = run(&s);
    assert_clean(&r, 7);
}

#[test]
fn killing_the_serving_generation_mid_request_is_seen_as_drops_then_refusals() {
    let mut s = scenario("handoff-echo", Profile::Slow, Protocol::Line, &[]);
    s.target
        .command
        .extend(["--delay-ms".to_string(), "300".to_string()]);
    s.load.reply_timeout = Duration::from_secs(2);
    s.events = vec![Event::at(
        ms(500),
        Action::Kill {
            signal: "SIGKILL".into(),
            generation: Which::Newest,
        },
    )];
    let r = run(&s);
    let j = &r.journal;
    let g = r.listeners.first().expect("generation 1");
    assert_eq!(g.status.as_deref(), Some("signal 9 (SIGKILL)"), "{g:#?}");
    assert_eq!(r.injected[0].pid, Some(g.pid));
    let dropped = j.outcomes[Outcome::Reset.id()] + j.outcomes[Outcome::Short.id()];
    assert!(
        dropped >= 1,
        "requests in flight at the kill were dropped: {:?}",
        j.outcomes
    );
    assert!(j.outcomes[Outcome::Refused.id()] >= 1, "{:?}", j.outcomes);
    let drop = j
        .failures
        .iter()
        .find(|c| matches!(c.outcome, Outcome::Reset | Outcome::Short))
        .expect("a dropped connection is kept in full");
    assert!(
        drop.connected.is_some() && drop.done >= r.injected[0].at,
        "{drop:#?}"
    );
    // The kill leaves no generation, so the final stop has nothing to signal.
    assert!(
        r.injected.last().is_some_and(|i| i.error.is_some()),
        "{:#?}",
        r.injected
    );
}

#[test]
fn a_restart_during_an_upgrade_in_flight_goes_to_the_serving_generation() {
    // The child hangs before it is ready, so the upgrade stays in flight until the parent's
    // ready timeout; the second restart must reach the parent (which refuses it), not the
    // starting child.
    let mut s = scenario("handoff-echo", Profile::Keepalive, Protocol::Line, &[]);
    s.target
        .command
        .extend(["--ready-timeout-ms".to_string(), "800".to_string()]);
    s.target.restart = Some(Trigger::Signal {
        signal: "SIGHUP".into(),
        to: SignalTo::Newest,
    });
    s.events = vec![
        Event::at(
            ms(100),
            Action::FailNext {
                mode: "hang".into(),
            },
        ),
        Event::at(ms(200), Action::Restart),
        Event::at(ms(500), Action::Restart),
    ];
    let r = run(&s);
    let first = r.listeners.first().expect("generation 1");
    assert_eq!(r.injected[1].pid, Some(first.pid), "{:#?}", r.injected);
    assert_eq!(r.injected[2].pid, Some(first.pid), "{:#?}", r.injected);
    assert_eq!(
        r.listeners.len(),
        2,
        "one hung child, no second one: {:#?}",
        r.listeners
    );
    assert!(r.listeners[1].ready_at.is_none());
    assert!(r.journal.failures.is_empty(), "{:#?}", r.journal.failures);
}

#[test]
fn load_switches_mid_run_lose_nothing() {
    let mut s = scenario("handoff-echo", Profile::Keepalive, Protocol::Line, &[]);
    s.events = vec![
        Event::at(
            ms(300),
            Action::Load {
                profile: Profile::Burst,
            },
        ),
        Event::at(ms(600), Action::Restart),
        Event::at(
            ms(900),
            Action::Load {
                profile: Profile::Long,
            },
        ),
    ];
    let r = run(&s);
    assert_clean(&r, 2);
}

#[test]
fn every_generation_a_restart_replaces_has_a_descriptor_sample_however_short_it_served() {
    // Each restart waits only for its predecessor's drain, so generations 2 and 3 serve for
    // a few milliseconds, less than the observer's sampling period: the sample taken right
    // before each restart signal is what lets fd-stable judge them.
    let mut s = scenario("handoff-echo", Profile::Short, Protocol::Line, &[0, 20, 40]);
    // The first restart goes to the pid in the PID file at once: wait for the file, which the
    // server writes a moment after it starts accepting.
    s.target.ready = Ready::PidFile;
    let r = run(&s);
    assert!(r.journal.failures.is_empty(), "{:#?}", r.journal.failures);
    assert_eq!(r.listeners.len(), 4, "{:#?}", r.listeners);
    for (g, next) in r.listeners.iter().zip(&r.listeners[1..]) {
        let from = g.ready_at.expect("ready");
        assert!(
            g.fd_samples
                .iter()
                .any(|(t, _)| *t >= from && *t <= next.listening_since),
            "no descriptor sample while pid {} served: {g:#?}",
            g.pid
        );
    }
    // A correct server's count does not climb.
    let v = handoff_harness::checkers::check(Invariant::FdStable, &s, &r);
    assert!(matches!(v, Verdict::Pass { .. }), "{v:?}");
}

/// Clients that start together on requests that all take the same time stay in lockstep: 16
/// clients on 200 ms requests connect at the same instants, about 210 ms apart, and a restart
/// that leaves the port closed for about 50 ms (`bad-rebind`) between two of those instants is
/// never seen. With a random phase (and jitter), the same load sees the refusals.
#[test]
fn a_random_phase_sees_a_short_outage_that_clients_in_lockstep_miss() {
    let bin = bin_dir();
    assert!(
        bin.join("bad-rebind").exists(),
        "`bad-rebind` is not built; run `cargo build --workspace` first"
    );
    let lockstep = |random: bool| {
        let command = [
            "{bin}/bad-rebind",
            "--listen",
            "127.0.0.1:{port}",
            "--delay-ms",
            "200",
            "--drain-timeout-ms",
            "1000",
            "--pid-file",
            "{dir}/pid",
        ];
        let mut s = scenario::inline("inline/lockstep", &command, ms(1000));
        s.target.ready_timeout = Duration::from_secs(10);
        s.target.pid_file = Some("{dir}/pid".into());
        s.target.restart = Some(Trigger::signal("SIGHUP", SignalTo::PidFile));
        s.target.stop = Trigger::signal("SIGTERM", SignalTo::PidFile);
        s.target.drain_timeout = ms(1000);
        s.load.clients = 16;
        // The lockstep connects come about 210 ms apart: at about 420 and 630 ms. The
        // outage starts when the restart signal arrives and lasts the rebind gap.
        s.events = vec![Event::at(ms(500), Action::Restart)];
        s.load.random_phase = random;
        s.load.jitter = if random { 0.5 } else { 0.0 };
        s.load.seed = Some(11);
        run(&s)
    };
    let in_step = lockstep(false);
    let phased = lockstep(true);
    let refused = |r: &RunRecord| r.journal.outcomes[Outcome::Refused.id()];
    let restarted = |r: &RunRecord| r.listeners.len() == 2 && r.injected[0].error.is_none();
    assert!(
        restarted(&in_step) && restarted(&phased),
        "{:#?}\n{:#?}",
        in_step.listeners,
        phased.listeners
    );
    assert_eq!(refused(&in_step), 0, "{:#?}", in_step.journal);
    assert!(refused(&phased) > 0, "{:#?}", phased.journal);
    eprintln!(
        "refused: {} in lockstep, {} with a random phase (seed {})",
        refused(&in_step),
        refused(&phased),
        phased.seed
    );
}
