//! Tests of the generation inference: hand-built process histories of each shape, and the
//! recorded histories of real servers against the truth about them.

use super::*;
use crate::model::recorded;
use crate::model::{Injected, ProcessRecord, ServedBy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A record built from `(pid, ppid, appeared, exited)` listeners, restarts and serving pids.
struct Run(RunRecord);

impl Run {
    fn new(end: u64) -> Run {
        Run(RunRecord {
            first_ready: Some(ms(10)),
            final_stop: Some(ms(end)),
            end: ms(end + 100),
            ..RunRecord::default()
        })
    }

    /// A process that holds the listener from `appeared` until `exited`.
    fn listener(mut self, pid: u32, ppid: u32, appeared: u64, exited: Option<u64>) -> Run {
        self = self.process(pid, ppid, appeared, exited);
        self.0.listeners.push(ListenerRecord {
            pid,
            listening_since: ms(appeared),
            ready_at: None,
            stopped_listening: None,
            exited: exited.map(ms),
            status: None,
            listen_inodes: vec![1],
            fd_samples: Vec::new(),
        });
        self
    }

    /// A process that never holds the listener (a trigger command, a start script's child).
    fn process(mut self, pid: u32, ppid: u32, appeared: u64, exited: Option<u64>) -> Run {
        self.0.processes.push(ProcessRecord {
            pid,
            ppid,
            cmdline: String::new(),
            first_seen: ms(appeared),
            exited: exited.map(ms),
            status: None,
        });
        self
    }

    fn restart(mut self, at: u64) -> Run {
        self.0.injected.push(Injected {
            at: ms(at),
            action: Action::Restart,
            pid: None,
            error: None,
            open_connections: 0,
            command: None,
        });
        self
    }

    /// `pid` answered requests sent from `sent` on; its listener is ready then.
    fn served(mut self, pid: u32, sent: u64) -> Run {
        self.0.journal.served_by.insert(
            pid,
            ServedBy {
                replies: 1,
                first_sent: ms(sent),
                first_reply: ms(sent + 1),
                last_reply: ms(sent + 1),
            },
        );
        if let Some(l) = self.0.listeners.iter_mut().find(|l| l.pid == pid) {
            l.ready_at = Some(ms(sent));
        }
        self
    }

    fn infer(&self, shape: Option<Shape>) -> Lineage {
        infer(&self.0, shape)
    }
}

fn sets(l: &Lineage) -> Vec<Vec<u32>> {
    l.generations.iter().map(|g| sorted(&g.members)).collect()
}

fn sorted(pids: &[u32]) -> Vec<u32> {
    let mut pids = pids.to_vec();
    pids.sort_unstable();
    pids
}

#[test]
fn every_recorded_history_is_inferred_as_its_truth() {
    let mut wrong = Vec::new();
    for h in recorded::all() {
        for pids_known in [true, false] {
            let mut record = h.record.clone();
            if !pids_known {
                forget_pids(&mut record);
            }
            let got = infer(&record, None);
            let truth: Vec<Vec<u32>> = h.truth.generations.iter().map(|g| sorted(g)).collect();
            let supervisors: Vec<u32> = h.truth.supervisor.into_iter().collect();
            if sets(&got) != truth
                || got.supervisors != supervisors
                || got.launcher != h.truth.launcher
            {
                wrong.push(format!(
                    "{} (pids known: {pids_known}): got {:?}, supervisors {:?}, launcher {:?}; truth {truth:?}, supervisor {:?}, launcher {:?}",
                    h.file,
                    sets(&got),
                    got.supervisors,
                    got.launcher,
                    h.truth.supervisor,
                    h.truth.launcher
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `r` as if no reply had named its server: no pid served, and no listener ready by a reply
/// (a readiness from a `ready pid=` line stays: it is not the first reply's send time).
fn forget_pids(r: &mut RunRecord) {
    let served_by = std::mem::take(&mut r.journal.served_by);
    for l in &mut r.listeners {
        if served_by.get(&l.pid).map(|s| Some(s.first_sent)) == Some(l.ready_at) {
            l.ready_at = None;
        }
    }
}

#[test]
fn one_process_per_generation() {
    // Each process forks its successor on a restart and exits once it is ready.
    let run = Run::new(3000)
        .listener(100, 1, 0, Some(1100))
        .served(100, 20)
        .restart(1000)
        .listener(200, 100, 1005, Some(2100))
        .served(200, 1050)
        .restart(2000)
        .listener(300, 200, 2005, None)
        .served(300, 2040);
    let got = run.infer(None);
    assert_eq!(sets(&got), vec![vec![100], vec![200], vec![300]]);
    assert!(got.supervisors.is_empty());
    assert_eq!(got.generations[1].ready_at, Some(ms(1050)));
    assert_eq!(got.generations[0].exited, Some(ms(1100)));
    assert_eq!(got.generations[2].exited, None);
}

#[test]
fn a_child_forked_on_a_signal_to_its_parent_begins_a_generation_however_soon() {
    // Two restarts 10 ms apart, each to the pid file: the second reached generation 2 a few
    // milliseconds after it was first seen, so by time alone it could have started it.
    let mut run = Run::new(1500)
        .listener(100, 1, 0, Some(141))
        .served(100, 20)
        .restart(130)
        .listener(200, 100, 135, Some(160))
        .served(200, 138)
        .restart(140)
        .listener(300, 200, 148, None)
        .served(300, 150);
    run.0.injected[0].pid = Some(100);
    run.0.injected[1].pid = Some(200);
    assert_eq!(
        sets(&run.infer(None)),
        vec![vec![100], vec![200], vec![300]]
    );
    // Signals to another process (a supervisor, the main process) 4 ms after generation 2
    // was seen: by time alone the second could have started it, so its child joins it.
    run.0.injected.iter_mut().for_each(|i| i.pid = Some(1));
    assert_eq!(sets(&run.infer(None)), vec![vec![100], vec![200, 300]]);
    // Commands: one started at 140 ms cannot have started a process seen at 135 ms.
    run.0.injected.iter_mut().for_each(|i| i.pid = None);
    assert_eq!(
        sets(&run.infer(None)),
        vec![vec![100], vec![200], vec![300]]
    );
}

#[test]
fn a_master_that_replaces_its_workers_is_a_supervisor() {
    let run = Run::new(3000)
        .listener(10, 1, 0, Some(3050))
        .listener(11, 10, 5, Some(1200))
        .listener(12, 10, 5, Some(1250))
        .served(11, 20)
        .served(12, 30)
        .restart(1000)
        .process(13, 1, 1001, Some(1010))
        .listener(21, 10, 1100, Some(3040))
        .listener(22, 10, 1100, Some(3040))
        .served(21, 1120);
    let got = run.infer(None);
    assert_eq!(got.supervisors, vec![10]);
    assert_eq!(sets(&got), vec![vec![11, 12], vec![21, 22]]);
    assert_eq!(got.generations[0].exited, Some(ms(1250)));
    assert_eq!(got.generations[1].ready_at, Some(ms(1120)));
    assert_eq!(got.generations[1].name(), "gen 2 (pids 21, 22)");
}

#[test]
fn a_new_master_with_its_workers_replaces_the_old_master_and_its_workers() {
    let run = Run::new(3000)
        .listener(10, 1, 0, Some(1300))
        .listener(11, 10, 5, Some(1250))
        .served(11, 20)
        .restart(1000)
        .listener(20, 10, 1010, Some(3050))
        .listener(21, 20, 1020, Some(3040))
        .listener(22, 20, 1020, Some(3040))
        .served(21, 1030)
        .restart(2000)
        .listener(30, 20, 2010, None)
        .listener(31, 30, 2020, None)
        .served(31, 2030);
    let got = run.infer(None);
    assert!(got.supervisors.is_empty(), "{got:?}");
    assert_eq!(
        sets(&got),
        vec![vec![10, 11], vec![20, 21, 22], vec![30, 31]]
    );
    assert_eq!(got.generations[0].members[0], 10, "the master first");
}

#[test]
fn a_new_masters_first_workers_are_its_own_even_after_the_next_restart() {
    // Under load the new master took 700 ms to start its workers; the next restart came
    // meanwhile. It served nothing before they appeared, so it started no successor.
    let run = Run::new(4000)
        .listener(10, 1, 0, Some(2300))
        .listener(11, 10, 5, Some(2250))
        .served(11, 20)
        .restart(1000)
        .listener(20, 10, 1210, None)
        .restart(1700)
        .listener(21, 20, 1890, None)
        .listener(22, 20, 1980, None)
        .served(21, 1900)
        .served(22, 1990);
    assert_eq!(sets(&run.infer(None)), vec![vec![10, 11], vec![20, 21, 22]]);
    // Its first worker answered a request sent 50 ms after that restart, before the second
    // worker appeared: still its own first workers.
    let run = Run::new(4000)
        .listener(10, 1, 0, Some(2300))
        .listener(11, 10, 5, Some(2250))
        .served(11, 20)
        .restart(1000)
        .listener(20, 10, 1210, None)
        .restart(1700)
        .listener(21, 20, 1740, None)
        .served(21, 1749)
        .listener(22, 20, 1800, None)
        .served(22, 1810);
    assert_eq!(sets(&run.infer(None)), vec![vec![10, 11], vec![20, 21, 22]]);
    // Its second worker appeared 11 ms after the next upgrade command, once the first one
    // served: a sibling of a worker is a worker.
    let run = Run::new(4000)
        .listener(10, 1, 0, Some(2300))
        .listener(11, 10, 5, Some(2250))
        .served(11, 20)
        .restart(1000)
        .listener(20, 10, 1210, None)
        .listener(21, 20, 1300, None)
        .served(21, 1310)
        .restart(1700)
        .listener(22, 20, 1711, None)
        .served(22, 1720);
    assert_eq!(sets(&run.infer(None)), vec![vec![10, 11], vec![20, 21, 22]]);
}

#[test]
fn a_new_master_that_dies_before_forking_workers_is_a_generation_of_its_own() {
    // A failed upgrade (the new master exits before it forks a worker), then a good one: the
    // failed master is no sibling of the old master's workers.
    let run = Run::new(3000)
        .listener(10, 1, 0, Some(2300))
        .listener(11, 10, 5, Some(2250))
        .served(11, 20)
        .restart(1000)
        .listener(20, 10, 1005, Some(1010))
        .restart(2000)
        .listener(30, 10, 2005, None)
        .listener(31, 30, 2010, None)
        .served(31, 2020);
    let got = run.infer(None);
    assert_eq!(sets(&got), vec![vec![10, 11], vec![20], vec![30, 31]]);
    assert_eq!(got.generations[1].ready_at, None);
    // Live (the old master alive, so told the shape), before its first worker is seen, the
    // new master is already the next generation.
    let run = Run::new(3000)
        .listener(10, 1, 0, None)
        .listener(11, 10, 5, None)
        .served(11, 20)
        .restart(1000)
        .listener(20, 10, 1005, None);
    let got = run.infer(Some(Shape::NewMaster));
    assert_eq!(sets(&got), vec![vec![10, 11], vec![20]]);
}

#[test]
fn a_supervisor_that_starts_one_worker_per_restart() {
    let run = Run::new(3000)
        .listener(10, 1, 0, None)
        .listener(11, 10, 5, Some(1500))
        .served(11, 20)
        .restart(1000)
        .listener(12, 10, 1010, Some(2500))
        .served(12, 1030)
        .restart(2000)
        .listener(13, 10, 2010, None)
        .served(13, 2030);
    let got = run.infer(None);
    assert_eq!(got.supervisors, vec![10]);
    assert_eq!(sets(&got), vec![vec![11], vec![12], vec![13]]);
}

#[test]
fn sibling_workers_without_a_restart_are_one_generation() {
    let run = Run::new(2000)
        .listener(10, 1, 0, Some(2050))
        .listener(11, 10, 5, Some(2040))
        .listener(12, 10, 60, Some(2040))
        .served(11, 20)
        .served(12, 70);
    let got = run.infer(None);
    assert_eq!(got.supervisors, vec![10]);
    assert_eq!(sets(&got), vec![vec![11, 12]]);
}

#[test]
fn a_worker_respawned_inside_a_generation_is_not_an_upgrade() {
    let run = Run::new(2000)
        .listener(10, 1, 0, Some(2050))
        .listener(11, 10, 5, Some(800))
        .listener(12, 10, 5, Some(2040))
        .served(11, 20)
        .listener(13, 10, 820, Some(2040))
        .served(13, 830);
    let got = run.infer(None);
    assert_eq!(sets(&got), vec![vec![11, 12, 13]]);
    // The same under a new master: the respawned worker joins its master's generation.
    let run = Run::new(3000)
        .listener(10, 1, 0, Some(1300))
        .listener(11, 10, 5, Some(600))
        .served(11, 20)
        .listener(12, 10, 620, Some(1250))
        .restart(1000)
        .listener(20, 10, 1010, None)
        .listener(21, 20, 1020, None)
        .served(21, 1030);
    assert_eq!(sets(&run.infer(None)), vec![vec![10, 11, 12], vec![20, 21]]);
}

#[test]
fn a_launcher_that_exits_without_serving_stands_apart() {
    // The spawned process opens the socket, starts the daemon master (reparented at once) and
    // exits; the master's workers serve.
    let run = Run::new(2000)
        .listener(5, 1, 0, Some(20))
        .listener(10, 1, 18, Some(2050))
        .listener(11, 10, 22, Some(2040))
        .served(11, 30);
    let got = run.infer(None);
    assert_eq!(got.launcher, Some(5));
    assert_eq!(got.supervisors, vec![10]);
    assert_eq!(sets(&got), vec![vec![11]]);
    // The master seen before the launcher exited, so recorded as its child: still a launcher,
    // and a reload's workers under the master are the next generation.
    let run = Run::new(2000)
        .listener(5, 1, 0, Some(20))
        .listener(10, 5, 15, Some(2050))
        .listener(11, 10, 22, Some(1100))
        .served(11, 30)
        .restart(1000)
        .listener(21, 10, 1010, Some(2040))
        .listener(22, 10, 1010, Some(2040))
        .served(21, 1020);
    let got = run.infer(None);
    assert_eq!(got.launcher, Some(5));
    assert_eq!(got.supervisors, vec![10]);
    assert_eq!(sets(&got), vec![vec![11], vec![21, 22]]);
    // A first process that served is no launcher, even if it is gone early.
    let run = Run::new(2000)
        .listener(5, 1, 0, Some(20))
        .served(5, 2)
        .listener(10, 1, 18, Some(2050))
        .served(10, 25);
    let got = run.infer(None);
    assert_eq!(got.launcher, None);
    assert_eq!(sets(&got), vec![vec![5], vec![10]]);
}

#[test]
fn a_failed_successor_is_a_generation_that_never_became_ready() {
    let run = Run::new(3000)
        .listener(100, 1, 0, None)
        .served(100, 20)
        .restart(1000)
        .listener(200, 100, 1005, Some(1010));
    let got = run.infer(None);
    assert_eq!(sets(&got), vec![vec![100], vec![200]]);
    assert_eq!(got.generations[1].ready_at, None);
    assert!(got.supervisors.is_empty());
}

#[test]
fn readiness_is_the_first_answered_request_but_not_before_the_member_that_answered_it() {
    // A request queued before the generation existed and answered by it: ready when it began
    // to hold the listener, not before.
    let run = Run::new(3000)
        .listener(100, 1, 0, Some(1100))
        .served(100, 20)
        .restart(1000)
        .listener(200, 100, 1005, None)
        .served(200, 990);
    assert_eq!(run.infer(None).generations[1].ready_at, Some(ms(1005)));
    // The same under a new master whose workers came later: ready when the worker that
    // answered began to hold the listener, not when its master did.
    let run = Run::new(3000)
        .listener(10, 1, 0, Some(1300))
        .listener(11, 10, 5, Some(1250))
        .served(11, 20)
        .restart(1000)
        .listener(20, 10, 1010, None)
        .listener(21, 20, 1400, None)
        .listener(22, 20, 1400, None)
        .served(21, 1020)
        .served(22, 1450);
    let got = run.infer(None);
    assert_eq!(sets(&got), vec![vec![10, 11], vec![20, 21, 22]]);
    assert_eq!(got.generations[1].ready_at, Some(ms(1400)));
}

#[test]
fn the_shape_overrides_the_supervisor_rule() {
    // A master that answers some requests itself and workers it replaces: inference takes the
    // replying master for a generation; the scenario says it is a master.
    let run = Run::new(3000)
        .listener(10, 1, 0, None)
        .served(10, 15)
        .listener(11, 10, 5, Some(1200))
        .served(11, 20)
        .restart(1000)
        .listener(21, 10, 1100, None)
        .served(21, 1120);
    assert!(run.infer(None).supervisors.is_empty());
    let got = run.infer(Some(Shape::MasterWorkers));
    assert_eq!(got.supervisors, vec![10]);
    assert_eq!(sets(&got), vec![vec![11], vec![21]]);
    // Told one process each: no process joins another's generation.
    let got = run.infer(Some(Shape::OneProcess));
    assert_eq!(sets(&got), vec![vec![10], vec![11], vec![21]]);
    // Told new-master: a master that lives to the stop is still no supervisor.
    let run = Run::new(2000)
        .listener(10, 1, 0, None)
        .listener(11, 10, 5, None)
        .served(11, 20);
    assert_eq!(run.infer(None).supervisors, vec![10]);
    let got = run.infer(Some(Shape::NewMaster));
    assert!(got.supervisors.is_empty());
    assert_eq!(sets(&got), vec![vec![10, 11]]);
}

#[test]
fn shapes_parse_by_name_and_say_what_would_be_right() {
    for shape in Shape::ALL {
        assert_eq!(shape.name().parse::<Shape>(), Ok(shape));
    }
    let err = "master-worker".parse::<Shape>().unwrap_err();
    assert!(
        err.contains("one-process, master-workers, new-master, supervisor"),
        "{err}"
    );
}

#[test]
fn serving_at_is_the_newest_ready_generation_alive() {
    let run = Run::new(3000)
        .listener(100, 1, 0, Some(1100))
        .served(100, 20)
        .restart(1000)
        .listener(200, 100, 1005, None)
        .served(200, 1050);
    let got = run.infer(None);
    assert_eq!(got.serving_at(ms(500)).map(|g| g.number), Some(1));
    assert_eq!(got.serving_at(ms(1049)).map(|g| g.number), Some(1));
    assert_eq!(got.serving_at(ms(1060)).map(|g| g.number), Some(2));
    assert_eq!(got.of(200).map(|g| g.number), Some(2));
}
