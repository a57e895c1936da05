//! The lanes of a run's timeline: what the page draws for the target's processes, built in
//! one function ([`lanes`]) from the record's generations, so a change in how generations are
//! modelled changes only that function.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::RunRecord;

/// One lane: a generation (its processes together), or a process of the target that belongs to
/// none (a supervisor, a helper).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    /// E.g. `gen 2`, or `pid 4242` for a process of no generation.
    pub label: String,
    /// Its processes, the first the one that holds the listener (or the process itself).
    pub pids: Vec<u32>,
    /// Since when it is drawn: when it first held the listener (a generation) or was first
    /// seen (another process).
    pub from: Duration,
    /// When its last process exited; `None` if one was alive at the end of the run.
    pub to: Option<Duration>,
    /// When it was first seen ready.
    pub ready: Option<Duration>,
    /// When it stopped holding the listener.
    pub stopped_listening: Option<Duration>,
    /// Whether it is a generation of the server.
    pub generation: bool,
    /// What hovering it shows: its processes with their command lines and exits.
    pub detail: String,
}

/// The lanes of `r`: one per generation, with each process of no generation joined to the
/// generation it descends from (a worker of that generation), then one per process that
/// descends from none (a supervisor, a wrapper script), in order of first sight.
pub fn lanes(r: &RunRecord) -> Vec<Lane> {
    let generation_of: BTreeMap<u32, usize> = r
        .generations
        .iter()
        .enumerate()
        .map(|(k, g)| (g.pid, k))
        .collect();
    let parent: BTreeMap<u32, u32> = r.processes.iter().map(|p| (p.pid, p.ppid)).collect();
    // The generation a process descends from, through processes of no generation.
    let owner = |pid: u32| -> Option<usize> {
        let mut at = parent.get(&pid).copied();
        for _ in 0..r.processes.len() {
            let p = at?;
            if let Some(k) = generation_of.get(&p) {
                return Some(*k);
            }
            at = parent.get(&p).copied();
        }
        None
    };
    let mut lanes: Vec<Lane> = r
        .generations
        .iter()
        .map(|g| Lane {
            label: format!("gen {}", g.generation),
            pids: vec![g.pid],
            from: g.listening_since,
            to: g.exited,
            ready: g.ready_at,
            stopped_listening: g.stopped_listening,
            generation: true,
            detail: format!(
                "gen {}: pid {} listening {}, ready {}, stopped listening {}, exited {} {}",
                g.generation,
                g.pid,
                secs(Some(g.listening_since)),
                secs(g.ready_at),
                secs(g.stopped_listening),
                secs(g.exited),
                g.status.as_deref().unwrap_or("")
            ),
        })
        .collect();
    for p in r
        .processes
        .iter()
        .filter(|p| !generation_of.contains_key(&p.pid))
    {
        let line = format!(
            "pid {} (parent {}) {}: first seen {}, exited {} {}",
            p.pid,
            p.ppid,
            p.cmdline,
            secs(Some(p.first_seen)),
            secs(p.exited),
            p.status.as_deref().unwrap_or("")
        );
        match owner(p.pid) {
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
            None => lanes.push(Lane {
                label: format!("pid {}", p.pid),
                pids: vec![p.pid],
                from: p.first_seen,
                to: p.exited,
                ready: None,
                stopped_listening: None,
                generation: false,
                detail: line,
            }),
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
    use crate::checkers::fixture::{clean_run, ms, process};

    #[test]
    fn a_generation_and_its_workers_share_a_lane_and_a_supervisor_has_its_own() {
        let mut r = clean_run();
        // pid 50 supervises gen 1 (pid 100); 101 is a worker of gen 1, 102 a worker's child.
        r.processes.insert(0, process(50, 1, 0, Some(2650)));
        r.processes[1].ppid = 50;
        r.processes.push(process(101, 100, 20, Some(1200)));
        r.processes.push(process(102, 101, 30, None));
        let l = lanes(&r);
        let labels: Vec<&str> = l.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["gen 1", "gen 2", "pid 50"]);
        assert_eq!(l[0].pids, [100, 101, 102]);
        assert_eq!(l[0].to, None, "a worker was alive at the end");
        assert_eq!(l[1].pids, [200]);
        assert_eq!((l[1].from, l[1].to), (ms(1010), Some(ms(2600))));
        assert_eq!(l[1].ready, Some(ms(1050)));
        assert!(
            l[0].detail.contains("pid 101 (parent 100)"),
            "{}",
            l[0].detail
        );
        assert!(!l[2].generation);
    }
}
