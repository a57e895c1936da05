//! Hand-built records for the checkers' unit tests: a scenario, a clean run, and builders
//! for its generations, processes, injections and connections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::model::{
    Action, ConnRecord, Event, Injected, JournalSummary, Lineage, ListenerRecord, Outcome,
    ProcessRecord, RunRecord, Scenario, ServedBy, SignalTo, Trigger,
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

/// A process holding the listener from `listening`, ready at `ready`, gone at `exited`.
pub fn listener(
    pid: u32,
    listening: u64,
    ready: Option<u64>,
    exited: Option<u64>,
) -> ListenerRecord {
    ListenerRecord {
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
            first_sent: ms(100),
            first_reply: ms(110),
            last_reply: ms(1060),
        },
    );
    served_by.insert(
        200,
        ServedBy {
            replies: 500,
            first_sent: ms(1050),
            first_reply: ms(1055),
            last_reply: ms(2490),
        },
    );
    let mut r = RunRecord {
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
        listeners: vec![
            listener(100, 5, Some(100), Some(1100)),
            listener(200, 1010, Some(1050), Some(2600)),
        ],
        lineage: Lineage::default(),
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
    };
    r.lineage = crate::model::infer(&r, None);
    r
}

/// The generations of `r`, inferred with no shape stated.
pub fn lineage_of(r: &RunRecord) -> Lineage {
    crate::model::infer(r, None)
}

/// A master (pid 10, the supervisor) whose workers 11 and 12 serve until a reload at 1000 ms
/// starts workers 21 and 22; worker 12 is respawned as 13 at 600 ms.
pub fn reload_run() -> RunRecord {
    let mut r = clean_run();
    r.processes = vec![
        process(10, 1, 0, Some(2550)),
        process(11, 10, 5, Some(1100)),
        process(12, 10, 5, Some(600)),
        process(13, 10, 610, Some(1100)),
        process(21, 10, 1010, Some(2540)),
        process(22, 10, 1010, Some(2540)),
    ];
    r.listeners = vec![
        listener(10, 2, None, Some(2550)),
        listener(11, 5, Some(100), Some(1100)),
        listener(12, 5, Some(100), Some(600)),
        listener(13, 610, Some(620), Some(1100)),
        listener(21, 1010, Some(1050), Some(2540)),
        listener(22, 1010, Some(1060), Some(2540)),
    ];
    r.journal.served_by = [(11, 100), (12, 100), (13, 620), (21, 1050), (22, 1060)]
        .into_iter()
        .map(|(pid, at)| (pid, served(at, if pid < 20 { 1000 } else { 2490 })))
        .collect();
    r
}

/// Ten replies, the first to a request sent at `first_sent` ms (answered 5 ms later), the last
/// at `last_reply` ms.
pub fn served(first_sent: u64, last_reply: u64) -> ServedBy {
    ServedBy {
        replies: 10,
        first_sent: ms(first_sent),
        first_reply: ms(first_sent + 5),
        last_reply: ms(last_reply),
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
    r.listeners = vec![
        listener(100, 5, Some(100), Some(1900)),
        listener(150, 510, Some(524), Some(526)),
        listener(200, 1810, Some(1850), Some(2600)),
    ];
    r.journal.served_by.get_mut(&100).unwrap().last_reply = ms(1860);
    let by = r.journal.served_by.get_mut(&200).unwrap();
    by.first_sent = ms(1850);
    by.first_reply = ms(1855);
    r.lineage = crate::model::infer(&r, None);
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
/// README), read back as the generation model's tests read it.
pub fn recorded(name: &str) -> RunRecord {
    let path = crate::model::recorded::dir().join(format!("{name}.json"));
    crate::model::recorded::load(&path).record
}
