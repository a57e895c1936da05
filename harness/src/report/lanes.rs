//! The lanes of a run's timeline: what the page draws for the target's processes, built in
//! one function ([`lanes`]) from the record's generations (sets of processes, supervisors
//! apart), so a change in how generations are modelled changes only that function.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{ListenerRecord, ProcessRecord, RunRecord};

/// One lane: a generation (its members, and the helpers they forked), or a process of the
/// target that belongs to none (a supervisor, the launcher, a wrapper script).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    /// E.g. `gen 2`, `supervisor`, `launcher`, or `pid 4242` for another process of no
    /// generation.
    pub label: String,
    /// Its processes: a generation's members first (the first the one the others descend
    /// from), then the helpers they forked.
    pub pids: Vec<u32>,
    /// Since when it is drawn: when its first member held the listener (a generation) or when
    /// it was first seen (another process).
    pub from: Duration,
    /// When its last process exited; `None` if one was alive at the end of the run.
    pub to: Option<Duration>,
    /// When it was first seen ready.
    pub ready: Option<Duration>,
    /// When the last of its members stopped holding the listener (if all were seen to).
    pub stopped_listening: Option<Duration>,
    /// Whether it is a generation of the server.
    pub generation: bool,
    /// What hovering it shows: its processes with their command lines and exits.
    pub detail: String,
}

/// The lanes of `r`, from its generations as inferred ([`RunRecord::lineage`]): one per
/// generation, listing its members, with each other process that descends from a member (a
/// helper it forked that never held the listener) joined to it; then one per supervisor and
/// one for the launcher, and one per process that descends from no generation (a wrapper
/// script), in order of first sight.
pub fn lanes(r: &RunRecord) -> Vec<Lane> {
    let l = &r.lineage;
    let process: BTreeMap<u32, &ProcessRecord> = r.processes.iter().map(|p| (p.pid, p)).collect();
    let apart = |pid: u32| l.supervisors.contains(&pid) || l.launcher == Some(pid);
    // The generation a process descends from, through processes of no generation; a
    // supervisor or launcher on the way ends the search (their helpers are their own).
    let owner = |pid: u32| -> Option<usize> {
        let mut at = process.get(&pid).map(|p| p.ppid);
        for _ in 0..r.processes.len() {
            let p = at?;
            if let Some(k) = l.generations.iter().position(|g| g.contains(p)) {
                return Some(k);
            }
            if apart(p) {
                return None;
            }
            at = process.get(&p).map(|p| p.ppid);
        }
        None
    };
    let mut lanes: Vec<Lane> = l
        .generations
        .iter()
        .map(|g| {
            let members: Vec<&ListenerRecord> = r.listeners_of(g).collect();
            let mut detail = format!(
                "gen {}: started {}, ready {}, exited {}",
                g.number,
                secs(Some(g.started)),
                secs(g.ready_at),
                secs(g.exited)
            );
            for x in &members {
                detail.push_str(&format!(
                    "\nmember pid {}: listening {}, stopped listening {}, exited {} {}",
                    x.pid,
                    secs(Some(x.listening_since)),
                    secs(x.stopped_listening),
                    secs(x.exited),
                    x.status.as_deref().unwrap_or("")
                ));
            }
            Lane {
                label: format!("gen {}", g.number),
                pids: g.members.clone(),
                from: g.started,
                to: g.exited,
                ready: g.ready_at,
                stopped_listening: g.stopped_listening,
                generation: true,
                detail,
            }
        })
        .collect();
    for p in r.processes.iter().filter(|p| l.of(p.pid).is_none()) {
        let line = format!(
            "pid {} (parent {}) {}: first seen {}, exited {} {}",
            p.pid,
            p.ppid,
            p.cmdline,
            secs(Some(p.first_seen)),
            secs(p.exited),
            p.status.as_deref().unwrap_or("")
        );
        let owned = if apart(p.pid) { None } else { owner(p.pid) };
        match owned {
            Some(k) => {
                let lane = &mut lanes[k];
                lane.pids.push(p.pid);
                lane.to = match (lane.to, p.exited) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                lane.detail.push('\n');
                lane.detail.push_str(&line);
            }
            None => {
                let role = if l.supervisors.contains(&p.pid) {
                    "supervisor"
                } else if l.launcher == Some(p.pid) {
                    "launcher"
                } else {
                    "pid"
                };
                let label = match role {
                    "pid" => format!("pid {}", p.pid),
                    _ => role.to_string(),
                };
                lanes.push(Lane {
                    label,
                    pids: vec![p.pid],
                    from: p.first_seen,
                    to: p.exited,
                    ready: None,
                    stopped_listening: None,
                    generation: false,
                    detail: format!("{role}: {line}"),
                });
            }
        }
    }
    lanes
}

fn secs(t: Option<Duration>) -> String {
    t.map_or_else(|| "-".to_string(), |t| format!("{:.3}s", t.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::{clean_run, ms, process, reload_run};

    #[test]
    fn a_generation_lists_its_members_and_a_supervisor_has_its_own_lane() {
        // Master 10 supervises gen 1 (workers 11, 12, respawned 13) and gen 2 (21, 22); 30 is
        // a helper worker 21 forked, 40 a script the master ran.
        let mut r = reload_run();
        r.processes.push(process(30, 21, 1200, Some(1300)));
        r.processes.push(process(40, 10, 1500, Some(1510)));
        r.lineage = crate::model::infer(&r, None);
        let l = lanes(&r);
        let labels: Vec<&str> = l.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["gen 1", "gen 2", "supervisor", "pid 40"]);
        assert_eq!(l[0].pids, [11, 12, 13]);
        assert_eq!(l[1].pids, [21, 22, 30]);
        assert_eq!(l[2].pids, [10]);
        assert_eq!((l[1].from, l[1].to), (ms(1010), Some(ms(2540))));
        assert_eq!(l[1].ready, Some(ms(1050)));
        assert!(l[0].detail.contains("member pid 13"), "{}", l[0].detail);
        assert!(
            l[1].detail.contains("pid 30 (parent 21)"),
            "{}",
            l[1].detail
        );
        assert!(l[0].generation && !l[2].generation && !l[3].generation);
    }

    #[test]
    fn a_process_a_generation_forked_joins_its_lane_alive_or_not() {
        let mut r = clean_run();
        r.processes.push(process(101, 100, 20, Some(1200)));
        r.processes.push(process(102, 101, 30, None));
        r.lineage = crate::model::infer(&r, None);
        let l = lanes(&r);
        let labels: Vec<&str> = l.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["gen 1", "gen 2"]);
        assert_eq!(l[0].pids, [100, 101, 102]);
        assert_eq!(l[0].to, None, "a helper was alive at the end");
        assert_eq!(l[1].pids, [200]);
        assert_eq!((l[1].from, l[1].to), (ms(1010), Some(ms(2600))));
    }
}
