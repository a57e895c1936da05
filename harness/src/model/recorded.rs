//! The recorded process histories of `testdata/histories` (real runs of nginx, gunicorn,
//! uWSGI, haproxy, start_server and Go servers, each with the truth about its generations),
//! read back into [`RunRecord`]s for the tests of the generation model and the checkers.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{
    Action, ConnRecord, Injected, ListenerRecord, Outcome, ProcessRecord, RunRecord, ServedBy,
};

/// One recorded run and the truth about it.
pub(crate) struct History {
    pub file: String,
    pub record: RunRecord,
    /// The scenario file the run was made from, relative to the workspace root.
    pub scenario: PathBuf,
    pub truth: Truth,
}

/// Who is who, as established from what the server is known to do (see the README there).
pub(crate) struct Truth {
    pub supervisor: Option<u32>,
    pub launcher: Option<u32>,
    /// The members of each true generation, in order.
    pub generations: Vec<Vec<u32>>,
}

/// The directory of the recorded histories.
pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/histories")
}

/// Every recorded history, by file name.
pub(crate) fn all() -> Vec<History> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("the histories directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "too few histories: {files:?}");
    files.iter().map(|p| load(p)).collect()
}

pub(crate) fn load(path: &std::path::Path) -> History {
    let text = std::fs::read_to_string(path).expect("a history file");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let t = &v["truth"];
    let pids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(pid).collect() };
    History {
        file,
        record: record(&v["record"]),
        scenario: PathBuf::from(v["scenario"]["path"].as_str().unwrap()),
        truth: Truth {
            supervisor: t["supervisor"].as_u64().map(|p| p as u32),
            launcher: t["launcher"].as_u64().map(|p| p as u32),
            generations: t["generations"]
                .as_array()
                .unwrap()
                .iter()
                .map(pids)
                .collect(),
        },
    }
}

fn pid(v: &Value) -> u32 {
    v.as_u64().expect("a pid") as u32
}

fn at(v: &Value) -> Duration {
    Duration::from_secs_f64(v.as_f64().expect("seconds"))
}

fn at_opt(v: &Value) -> Option<Duration> {
    v.as_f64().map(Duration::from_secs_f64)
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn list(v: &Value) -> &Vec<Value> {
    v.as_array().expect("a list")
}

fn record(r: &Value) -> RunRecord {
    let mut rec = RunRecord {
        first_ready: at_opt(&r["first_ready"]),
        final_stop: at_opt(&r["final_stop"]),
        end: at(&r["end"]),
        killed_at_end: list(&r["killed_at_end"]).iter().map(pid).collect(),
        ..RunRecord::default()
    };
    rec.processes = list(&r["processes"])
        .iter()
        .map(|p| ProcessRecord {
            pid: pid(&p["pid"]),
            ppid: pid(&p["ppid"]),
            cmdline: text(&p["cmdline"]).unwrap_or_default(),
            first_seen: at(&p["first_seen"]),
            exited: at_opt(&p["exited"]),
            status: text(&p["status"]),
        })
        .collect();
    // `listeners` since report version 2; recorded before that, the per-process "generations".
    let held = match r["listeners"].is_array() {
        true => &r["listeners"],
        false => &r["generations"],
    };
    let mut listeners: Vec<ListenerRecord> = list(held)
        .iter()
        .map(|g| ListenerRecord {
            pid: pid(&g["pid"]),
            listening_since: at(&g["listening_since"]),
            ready_at: at_opt(&g["ready_at"]),
            stopped_listening: at_opt(&g["stopped_listening"]),
            exited: at_opt(&g["exited"]),
            status: text(&g["status"]),
            listen_inodes: list(&g["listen_inodes"])
                .iter()
                .map(|n| n.as_u64().unwrap())
                .collect(),
            fd_samples: list(&g["fd_samples"])
                .iter()
                .map(|s| (at(&s[0]), s[1].as_u64().unwrap() as u32))
                .collect(),
        })
        .collect();
    listeners.sort_by_key(|l| l.listening_since);
    rec.listeners = listeners;
    rec.injected = list(&r["injected"]).iter().filter_map(injected).collect();
    journal(&r["journal"], &mut rec);
    rec
}

fn injected(i: &Value) -> Option<Injected> {
    let action = match i["action"]["kind"].as_str()? {
        "restart" => Action::Restart,
        "stop" => Action::Stop,
        "kill" => Action::Kill {
            signal: text(&i["action"]["signal"])?,
            generation: crate::model::Which::Newest,
        },
        _ => return None,
    };
    Some(Injected {
        at: at(&i["at"]),
        action,
        pid: i["pid"].as_u64().map(|p| p as u32),
        error: text(&i["error"]),
        open_connections: i["open_connections"].as_u64().unwrap_or(0),
        command: None,
    })
}

fn journal(j: &Value, rec: &mut RunRecord) {
    let s = &mut rec.journal;
    s.connections = j["connections"].as_u64().unwrap_or(0);
    s.replies = j["replies"].as_u64().unwrap_or(0);
    s.replies_without_pid = j["replies_without_pid"].as_u64().unwrap_or(0);
    s.failures_dropped = j["failures_dropped"].as_u64().unwrap_or(0);
    s.load_started = at_opt(&j["load_started"]);
    s.load_stopped = at_opt(&j["load_stopped"]);
    if let Some(outcomes) = j["outcomes"].as_object() {
        for (k, n) in outcomes {
            s.outcomes.insert(k.clone(), n.as_u64().unwrap_or(0));
        }
    }
    if let Some(served) = j["served_by"].as_object() {
        for (k, by) in served {
            let first_reply = at(&by["first_reply"]);
            s.served_by.insert(
                k.parse().expect("a pid"),
                ServedBy {
                    replies: by["replies"].as_u64().unwrap_or(0),
                    // Recorded before send times were kept: the reply's end stands for it.
                    first_sent: at_opt(&by["first_sent"]).unwrap_or(first_reply),
                    first_reply,
                    last_reply: at(&by["last_reply"]),
                },
            );
        }
    }
    // A history keeps the first failures only; the rest are counted as not kept.
    let cut_from = j["failures_cut_from"].as_u64();
    s.failures = list(&j["failures"]).iter().map(conn).collect();
    if let Some(n) = cut_from {
        s.failures_dropped += n - s.failures.len() as u64;
    }
}

fn conn(c: &Value) -> ConnRecord {
    let outcome = Outcome::ALL
        .into_iter()
        .find(|o| Some(o.id()) == c["outcome"].as_str())
        .expect("a known outcome");
    ConnRecord {
        id: c["id"].as_u64().unwrap(),
        client: c["client"].as_u64().unwrap() as u32,
        started: at(&c["started"]),
        connected: at_opt(&c["connected"]),
        first_byte: at_opt(&c["first_byte"]),
        done: at(&c["done"]),
        outcome,
        replies: c["replies"].as_u64().unwrap_or(0) as u32,
        pid: c["pid"].as_u64().map(|p| p as u32),
        detail: text(&c["detail"]).unwrap_or_default(),
    }
}
