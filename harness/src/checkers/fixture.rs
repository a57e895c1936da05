//! Hand-built records for the checkers' unit tests: a scenario, a clean run, and builders
//! for its generations, processes, injections and connections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::model::{
    Action, ConnRecord, Event, GenerationRecord, Injected, JournalSummary, Outcome, ProcessRecord,
    RunRecord, Scenario, ServedBy, SignalTo, Trigger,
};

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Echo target, drain 1000 ms, stop 2000 ms, slack 500 ms, takeover within 1000 ms.
pub fn scenario() -> Scenario {
    let mut s = crate::scenario::inline("fixture", &["{bin}/handoff-echo"], ms(3000));
    s.path = PathBuf::from("fixture.toml");
    s.description = "fixture".into();
    s.requirement = "MUST".into();
    s.target.restart = Some(Trigger::signal("SIGHUP", SignalTo::Main));
    s.target.stop_timeout = ms(2000);
    s.target.drain_timeout = ms(1000);
    s.target.fail_next_file = Some("{dir}/fail".into());
    s.events = vec![Event::at(ms(1000), Action::Restart)];
    s
}

pub fn generation(
    n: u32,
    pid: u32,
    listening: u64,
    ready: Option<u64>,
    exited: Option<u64>,
) -> GenerationRecord {
    GenerationRecord {
        generation: n,
        pid,
        listening_since: ms(listening),
        ready_at: ready.map(ms),
        stopped_listening: None,
        exited: exited.map(ms),
        status: exited.map(|_| "exit 0".into()),
        listen_inodes: vec![77],
        fd_samples: vec![],
    }
}

pub fn process(pid: u32, ppid: u32, first_seen: u64, exited: Option<u64>) -> ProcessRecord {
    ProcessRecord {
        pid,
        ppid,
        cmdline: "handoff-echo --listen 127.0.0.1:4000".into(),
        first_seen: ms(first_seen),
        exited: exited.map(ms),
        status: exited.map(|_| "exit 0".into()),
    }
}

pub fn injected(at: u64, action: Action) -> Injected {
    Injected {
        at: ms(at),
        action,
        pid: Some(100),
        error: None,
        open_connections: 0,
        command: None,
    }
}

pub fn conn(
    id: u64,
    started: u64,
    connected: Option<u64>,
    done: u64,
    outcome: Outcome,
    pid: Option<u32>,
) -> ConnRecord {
    ConnRecord {
        id,
        client: 1,
        started: ms(started),
        connected: connected.map(ms),
        first_byte: None,
        done: ms(done),
        outcome,
        replies: 0,
        pid,
        detail: String::new(),
    }
}

/// A clean run: gen 1 (pid 100) ready at 100 ms; a restart at 1000 ms; gen 2 (pid 200)
/// ready at 1050 ms; gen 1 exits at 1100 ms; final stop at 2500 ms; gen 2 exits at 2600 ms.
/// 1000 connections, all ok; both pids served.
pub fn clean_run() -> RunRecord {
    let mut outcomes: BTreeMap<String, u64> = Outcome::ALL
        .iter()
        .map(|o| (o.id().to_string(), 0))
        .collect();
    outcomes.insert("ok".into(), 1000);
    let mut served_by = BTreeMap::new();
    served_by.insert(
        100,
        ServedBy {
            replies: 500,
            first_reply: ms(110),
            last_reply: ms(1060),
        },
    );
    served_by.insert(
        200,
        ServedBy {
            replies: 500,
            first_reply: ms(1055),
            last_reply: ms(2490),
        },
    );
    RunRecord {
        first_ready: Some(ms(100)),
        final_stop: Some(ms(2500)),
        end: ms(2700),
        injected: vec![
            injected(1000, Action::Restart),
            injected(2500, Action::Stop),
        ],
        processes: vec![
            process(100, 1, 0, Some(1100)),
            process(200, 100, 1010, Some(2600)),
        ],
        generations: vec![
            generation(1, 100, 5, Some(100), Some(1100)),
            generation(2, 200, 1010, Some(1050), Some(2600)),
        ],
        journal: JournalSummary {
            connections: 1000,
            replies: 1000,
            outcomes,
            served_by,
            // A steady load: connections start in every 10 ms from 100 ms to 2500 ms.
            starts: (0..250).map(|b| u32::from(b >= 10)).collect(),
            ..JournalSummary::default()
        },
        killed_at_end: vec![],
        harness: Default::default(),
        seed: 0,
    }
}

/// A rollback-window resume: a restart at 500 ms starts gen 2 (pid 150), which the scenario
/// kills the moment it reports ready (525 ms); gen 1 takes the service back and serves on. A
/// second restart at 1800 ms starts gen 3 (pid 200, ready 1850 ms); gen 1 exits at 1900 ms.
pub fn killed_in_window() -> RunRecord {
    let mut r = clean_run();
    let mut kill = injected(
        525,
        Action::Kill {
            signal: "SIGKILL".into(),
            generation: crate::model::Which::NextReady,
        },
    );
    kill.pid = Some(150);
    r.injected = vec![
        injected(500, Action::Restart),
        kill,
        injected(1800, Action::Restart),
        injected(2500, Action::Stop),
    ];
    r.processes = vec![
        process(100, 1, 0, Some(1900)),
        process(150, 100, 510, Some(526)),
        process(200, 100, 1810, Some(2600)),
    ];
    r.generations = vec![
        generation(1, 100, 5, Some(100), Some(1900)),
        generation(2, 150, 510, Some(524), Some(526)),
        generation(3, 200, 1810, Some(1850), Some(2600)),
    ];
    r.journal.served_by.get_mut(&100).unwrap().last_reply = ms(1860);
    let by = r.journal.served_by.get_mut(&200).unwrap();
    by.first_reply = ms(1855);
    r
}

/// Record a failed connection, keeping `outcomes` consistent.
pub fn add_failure(r: &mut RunRecord, c: ConnRecord) {
    *r.journal
        .outcomes
        .entry(c.outcome.id().to_string())
        .or_insert(0) += 1;
    if let Some(ok) = r.journal.outcomes.get_mut("ok") {
        *ok = ok.saturating_sub(1);
    }
    r.journal.failures.push(c);
}

pub fn is_pass(v: &crate::model::Verdict) -> bool {
    matches!(v, crate::model::Verdict::Pass { .. })
}
pub fn is_fail(v: &crate::model::Verdict) -> bool {
    matches!(v, crate::model::Verdict::Fail { .. })
}
pub fn is_unknown(v: &crate::model::Verdict) -> bool {
    matches!(v, crate::model::Verdict::Unknown { .. })
}
/// The evidence of a failure, joined, for `contains` assertions.
pub fn evidence(v: &crate::model::Verdict) -> String {
    match v {
        crate::model::Verdict::Fail { summary, evidence } => {
            format!("{summary}\n{}", evidence.join("\n"))
        }
        crate::model::Verdict::Pass { summary } => summary.clone(),
        crate::model::Verdict::Unknown { reason } => reason.clone(),
    }
}

/// The run record of a recorded history, `harness/testdata/histories/<name>.json` (see its
/// README): what the checkers judge by, read back from the JSON report (times in seconds).
/// The journal keeps its replies per pid and its counts; its failures and its per-10-ms
/// connection starts are not read (the report does not carry the starts).
pub fn recorded(name: &str) -> RunRecord {
    use serde_json::Value;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/histories")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let fixture: Value = serde_json::from_str(&text).expect("a JSON fixture");
    let rec = &fixture["record"];
    let secs = |v: &Value| v.as_f64().map(Duration::from_secs_f64);
    let num = |v: &Value| v.as_u64().map(|n| n as u32);
    let text = |v: &Value| v.as_str().map(str::to_string);
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let action = |a: &Value| match a["kind"].as_str() {
        Some("restart") => Action::Restart,
        Some("stop") => Action::Stop,
        Some("kill") => Action::Kill {
            signal: text(&a["signal"]).unwrap_or_default(),
            generation: match a["generation"].as_str() {
                Some("starting") => crate::model::Which::Starting,
                _ => crate::model::Which::Newest,
            },
        },
        Some("fail-next") => Action::FailNext {
            mode: text(&a["mode"]).unwrap_or_default(),
        },
        other => panic!("{name}: an action the loader does not know: {other:?}"),
    };
    let mut r = RunRecord {
        first_ready: secs(&rec["first_ready"]),
        final_stop: secs(&rec["final_stop"]),
        end: secs(&rec["end"]).expect("end"),
        ..RunRecord::default()
    };
    r.injected = list(&rec["injected"])
        .iter()
        .map(|i| Injected {
            at: secs(&i["at"]).expect("at"),
            action: action(&i["action"]),
            pid: num(&i["pid"]),
            error: text(&i["error"]),
            open_connections: i["open_connections"].as_u64().unwrap_or(0),
            command: None,
        })
        .collect();
    r.processes = list(&rec["processes"])
        .iter()
        .map(|p| ProcessRecord {
            pid: num(&p["pid"]).expect("pid"),
            ppid: num(&p["ppid"]).expect("ppid"),
            cmdline: text(&p["cmdline"]).unwrap_or_default(),
            first_seen: secs(&p["first_seen"]).expect("first_seen"),
            exited: secs(&p["exited"]),
            status: text(&p["status"]),
        })
        .collect();
    r.generations = list(&rec["generations"])
        .iter()
        .map(|g| GenerationRecord {
            generation: num(&g["generation"]).expect("generation"),
            pid: num(&g["pid"]).expect("pid"),
            listening_since: secs(&g["listening_since"]).expect("listening_since"),
            ready_at: secs(&g["ready_at"]),
            stopped_listening: secs(&g["stopped_listening"]),
            exited: secs(&g["exited"]),
            status: text(&g["status"]),
            listen_inodes: list(&g["listen_inodes"])
                .iter()
                .filter_map(Value::as_u64)
                .collect(),
            fd_samples: list(&g["fd_samples"])
                .iter()
                .filter_map(|s| Some((secs(&s[0])?, num(&s[1])?)))
                .collect(),
        })
        .collect();
    let journal = &rec["journal"];
    r.journal.connections = journal["connections"].as_u64().unwrap_or(0);
    r.journal.replies = journal["replies"].as_u64().unwrap_or(0);
    r.journal.replies_without_pid = journal["replies_without_pid"].as_u64().unwrap_or(0);
    if let Some(outcomes) = journal["outcomes"].as_object() {
        r.journal.outcomes = outcomes
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
    }
    if let Some(served) = journal["served_by"].as_object() {
        r.journal.served_by = served
            .iter()
            .map(|(pid, by)| {
                let by = ServedBy {
                    replies: by["replies"].as_u64().unwrap_or(0),
                    first_reply: secs(&by["first_reply"]).expect("first_reply"),
                    last_reply: secs(&by["last_reply"]).expect("last_reply"),
                };
                (pid.parse().expect("a pid"), by)
            })
            .collect();
    }
    r
}
