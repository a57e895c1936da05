//! The generations of a run, inferred from what the harness saw: which processes held the
//! listening socket, how they are parented, when each appeared relative to the restarts, and
//! which pids served replies. One pure function, [`infer`], used live by the runner and at the
//! end by the checkers and the reports.
//!
//! A generation is a set of processes that serve together. Apart from the generations stand
//! the supervisors (a long-lived master that outlives the generations it starts: the master of
//! nginx, gunicorn or uWSGI on a reload, haproxy's `-W` master, `start_server`) and a launcher
//! (a process that opens the socket, starts the server and exits without serving, like nginx
//! with `daemon on`). The rules, each from what a scenario written today lets the harness see:
//! - a **launcher** is a root listener (no listener among its ancestors) that served nothing,
//!   exited before the first restart and the final stop, and handed the socket to another
//!   listener (a root one, or its own child) that appeared by the time it exited; its children
//!   count as roots;
//! - a **supervisor** is a root listener with listeners among its children that served nothing
//!   and lived until the final stop: a master that outlived what it started;
//! - a child of a supervisor is a worker: the workers that appeared between two restarts are
//!   one generation (a worker respawned inside one is not an upgrade);
//! - any other root listener begins a generation, and a listener child of a member joins its
//!   parent's generation unless it appeared after a restart that came after its parent did (or
//!   after a restart signal sent to its parent) and its parent's generation was serving by
//!   then: then it begins the next one (a new master forked by the old one, or the next process
//!   of a server that execs its successor). A new master's first workers, however late after
//!   the next restart, are its own, and a childless process beside its parent's childless
//!   workers is one more of them if it served, or if no restart came between their
//!   generation's readiness and its appearance (else it may be a new master that died before
//!   forking any worker, and the rule above decides).
//!
//! `target.shape` ([`Shape`]) overrides the supervisor rule where this cannot decide.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use super::{Action, Injected, ListenerRecord, RunRecord};

/// How much earlier than the event that caused it the observer may stamp a process: it stamps
/// everything found in one poll with the poll's start, and a poll takes a few milliseconds.
pub const SEEN_SKEW: Duration = Duration::from_millis(10);

/// How far apart an exit and another moment must be for the harness to tell their order:
/// exits are stamped when the reaper gets to them, which drifts on a loaded machine.
pub const EXIT_SKEW: Duration = Duration::from_millis(50);

/// What a server does on restart, stated by a scenario (`target.shape`) where inference cannot
/// decide. Without it the shape is inferred (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Each process that holds the listener is a generation of its own; none is a supervisor.
    OneProcess,
    /// A master that stays and replaces its workers: a root listener with listener children is
    /// a supervisor, whether or not it replied or lived to the stop.
    MasterWorkers,
    /// A new master with its own workers replaces the old master and its workers: no
    /// supervisor; a master and its workers are one generation.
    NewMaster,
    /// A supervisor that starts one worker per restart: judged as [`Shape::MasterWorkers`].
    Supervisor,
}

impl Shape {
    /// Every shape, in the order the scenario format lists them.
    pub const ALL: [Shape; 4] = [
        Shape::OneProcess,
        Shape::MasterWorkers,
        Shape::NewMaster,
        Shape::Supervisor,
    ];

    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            Shape::OneProcess => "one-process",
            Shape::MasterWorkers => "master-workers",
            Shape::NewMaster => "new-master",
            Shape::Supervisor => "supervisor",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Shape, String> {
        Shape::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Shape::ALL.iter().map(|x| x.name()).collect();
                format!("unknown shape `{s}`, expected one of: {}", names.join(", "))
            })
    }
}

/// The generations of a run and the processes that stand apart from them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lineage {
    /// In order of appearance; `number` is the 1-based index.
    pub generations: Vec<Generation>,
    /// Long-lived masters that start generations and are never superseded themselves.
    pub supervisors: Vec<u32>,
    /// The process that opened the socket, started the server and exited without serving.
    pub launcher: Option<u32>,
}

/// A set of processes that serve together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Generation {
    /// 1-based, in order of appearance.
    pub number: u32,
    /// Its processes, in order of first sight; the first is the one the others descend from
    /// (a master, or the generation's only process), or the first worker of a supervisor's.
    pub members: Vec<u32>,
    /// When its first member was first seen holding the listener.
    pub started: Duration,
    /// When it was ready: its members' earliest readiness (a ready line where the target prints
    /// one, else the send time of the first request one of them answered), each counted from no
    /// earlier than that member was seen holding the listener.
    pub ready_at: Option<Duration>,
    /// When its last member stopped holding the listener; `None` while any holds it (or was
    /// not seen to stop).
    pub stopped_listening: Option<Duration>,
    /// When its last member exited; `None` while any lives.
    pub exited: Option<Duration>,
}

impl Generation {
    pub fn contains(&self, pid: u32) -> bool {
        self.members.contains(&pid)
    }

    /// Whether any member lived at `at`.
    pub fn alive_at(&self, at: Duration) -> bool {
        self.exited.is_none_or(|x| x > at)
    }

    /// `gen 2 (pid 42)`, `gen 2 (pids 42, 43, 44)`.
    pub fn name(&self) -> String {
        let pids: Vec<String> = self.members.iter().map(u32::to_string).collect();
        let noun = if pids.len() == 1 { "pid" } else { "pids" };
        format!("gen {} ({noun} {})", self.number, pids.join(", "))
    }
}

impl Lineage {
    /// The generation `pid` belongs to.
    pub fn of(&self, pid: u32) -> Option<&Generation> {
        self.generations.iter().find(|g| g.contains(pid))
    }

    /// The generation serving at `at`: the newest one that was ready by then and alive.
    pub fn serving_at(&self, at: Duration) -> Option<&Generation> {
        self.generations
            .iter()
            .filter(|g| g.ready_at.is_some_and(|t| t <= at) && g.alive_at(at))
            .max_by_key(|g| g.number)
    }
}

/// The listeners of a run with what inference needs about each.
struct View<'r> {
    r: &'r RunRecord,
    by_pid: HashMap<u32, &'r ListenerRecord>,
    ppid: HashMap<u32, u32>,
    first_seen: HashMap<u32, Duration>,
    /// The restarts, each with how long before it a process it started may be stamped: a
    /// poll's skew for a signal (its process may be forked at once), none for a command (it
    /// runs a while before it signals anything).
    restarts: Vec<(Duration, Duration)>,
    /// The restarts sent as a signal to a pid, with that pid.
    signalled: Vec<(Duration, u32)>,
}

impl<'r> View<'r> {
    fn new(r: &'r RunRecord) -> View<'r> {
        let injected = || {
            r.injected
                .iter()
                .filter(|i| i.action == Action::Restart && i.error.is_none())
        };
        let skew = |i: &Injected| {
            if i.pid.is_some() {
                SEEN_SKEW
            } else {
                Duration::ZERO
            }
        };
        let mut restarts: Vec<(Duration, Duration)> = injected().map(|i| (i.at, skew(i))).collect();
        restarts.sort();
        View {
            r,
            signalled: injected()
                .filter_map(|i| i.pid.map(|pid| (i.at, pid)))
                .collect(),
            by_pid: r.listeners.iter().map(|l| (l.pid, l)).collect(),
            ppid: r.processes.iter().map(|p| (p.pid, p.ppid)).collect(),
            first_seen: r.processes.iter().map(|p| (p.pid, p.first_seen)).collect(),
            restarts,
        }
    }

    /// When `pid` was first seen: as a process, or as a listener if the process was missed.
    fn seen(&self, l: &ListenerRecord) -> Duration {
        self.first_seen
            .get(&l.pid)
            .map_or(l.listening_since, |t| (*t).min(l.listening_since))
    }

    /// The nearest ancestor of `pid` that held the listener (through processes that did not).
    fn listener_parent(&self, pid: u32) -> Option<u32> {
        let mut at = *self.ppid.get(&pid)?;
        for _ in 0..self.ppid.len() {
            if self.by_pid.contains_key(&at) {
                return Some(at);
            }
            at = *self.ppid.get(&at)?;
        }
        None
    }

    fn served(&self, pid: u32) -> bool {
        self.r.journal.served_by.contains_key(&pid)
    }

    /// Whether any reply named its server: without that, "served nothing" is unknown.
    fn pids_known(&self) -> bool {
        !self.r.journal.served_by.is_empty()
    }

    /// How many restarts came before a process seen at `seen` (one forked by a restart signal
    /// may be stamped up to a poll before it).
    fn epoch(&self, seen: Duration) -> usize {
        self.restarts
            .iter()
            .filter(|(at, skew)| *at <= seen + *skew)
            .count()
    }

    /// Whether `child`, a listening child of `parent`, begins the generation after the one of
    /// `members` (its parent's): it appeared after a restart that came after its parent did, or
    /// after a restart signal sent to its parent (which the parent may have received a moment
    /// after it was seen: by time alone, that restart could have been the one that started
    /// it); and the parent's generation was serving when that restart came. A generation
    /// starts its successor once it serves, while a new master that serves nothing yet is still
    /// starting its own first workers, however late. Without any evidence of readiness in the
    /// run (no ready line, no pid in a reply), time alone decides.
    fn begins_next(
        &self,
        parent: &ListenerRecord,
        child: &ListenerRecord,
        members: &[&ListenerRecord],
    ) -> bool {
        let (from, seen) = (self.seen(parent), self.seen(child));
        let ready = members.iter().filter_map(|m| member_ready(m)).min();
        let evidence = self.r.listeners.iter().any(|l| l.ready_at.is_some());
        let serving_at = |at: Duration| !evidence || ready.is_some_and(|t| t <= at + SEEN_SKEW);
        let after_parent = self
            .restarts
            .iter()
            .filter(|(at, skew)| *at > from + *skew && *at <= seen + *skew)
            .map(|(at, _)| at);
        let to_parent = self
            .signalled
            .iter()
            .filter(|(at, pid)| {
                *pid == parent.pid && *at <= seen + SEEN_SKEW && *at + SEEN_SKEW >= from
            })
            .map(|(at, _)| at);
        after_parent.chain(to_parent).any(|at| serving_at(*at))
    }

    /// Whether a restart came between the readiness of the generation of `members` and the
    /// appearance of `l` (one it forked may be stamped up to a poll before it).
    fn restart_since(&self, members: &[&ListenerRecord], l: &ListenerRecord) -> bool {
        let Some(ready) = members.iter().filter_map(|m| member_ready(m)).min() else {
            return false;
        };
        let seen = self.seen(l);
        self.restarts
            .iter()
            .any(|(at, skew)| *at >= ready && *at <= seen + *skew)
    }

    fn alive_at_stop(&self, l: &ListenerRecord) -> bool {
        let stop = self.r.final_stop.unwrap_or(self.r.end);
        l.exited.is_none_or(|x| x + EXIT_SKEW >= stop)
    }
}

/// What inference made of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Launcher,
    Supervisor,
    /// A member of the generation of this index (in order of creation).
    Member(usize),
}

/// The generations, supervisors and launcher of `r` (see the module docs); `shape` is the
/// scenario's `target.shape`, if it states one.
pub fn infer(r: &RunRecord, shape: Option<Shape>) -> Lineage {
    let v = View::new(r);
    let mut order: Vec<&ListenerRecord> = r.listeners.iter().collect();
    order.sort_by_key(|l| (v.seen(l), l.pid));
    let launcher = find_launcher(&v, &order);
    let parent = |pid: u32| v.listener_parent(pid).filter(|p| Some(*p) != launcher);
    let has_children = |pid: u32| order.iter().any(|c| parent(c.pid) == Some(pid));

    let mut roles: HashMap<u32, Role> = HashMap::new();
    let mut members: Vec<Vec<&ListenerRecord>> = Vec::new();
    // A supervisor's workers, by (supervisor, restarts before them): one generation each.
    let mut worker_sets: BTreeMap<(u32, usize), usize> = BTreeMap::new();
    for l in &order {
        if Some(l.pid) == launcher {
            roles.insert(l.pid, Role::Launcher);
            continue;
        }
        let role = match parent(l.pid).and_then(|p| roles.get(&p).map(|role| (p, *role))) {
            None => {
                let supervises = match shape {
                    Some(Shape::OneProcess | Shape::NewMaster) => false,
                    Some(Shape::MasterWorkers | Shape::Supervisor) => has_children(l.pid),
                    None => {
                        has_children(l.pid)
                            && !(v.pids_known() && v.served(l.pid))
                            && v.alive_at_stop(l)
                    }
                };
                if supervises {
                    Role::Supervisor
                } else {
                    begin(&mut members, l)
                }
            }
            // (A launcher is never a parent here: see `parent`.)
            Some((p, Role::Supervisor | Role::Launcher)) => {
                let key = (p, v.epoch(v.seen(l)));
                match worker_sets.get(&key) {
                    Some(i) => {
                        members[*i].push(l);
                        Role::Member(*i)
                    }
                    None => {
                        let role = begin(&mut members, l);
                        if let Role::Member(i) = role {
                            worker_sets.insert(key, i);
                        }
                        role
                    }
                }
            }
            Some((p, Role::Member(i))) => {
                // A childless process beside its parent's childless workers is one more of
                // them (a master's late first worker, or one it respawned) if it served, or if
                // no restart came between its generation's readiness and its appearance: else
                // it may be a new master that died before it forked any worker.
                let worker = |pid: u32| parent(pid) == Some(p) && !has_children(pid);
                let sibling = worker(l.pid)
                    && members[i].iter().any(|m| worker(m.pid))
                    && ((v.pids_known() && v.served(l.pid)) || !v.restart_since(&members[i], l));
                let next = !sibling && v.begins_next(v.by_pid[&p], l, &members[i]);
                if shape == Some(Shape::OneProcess) || next {
                    begin(&mut members, l)
                } else {
                    members[i].push(l);
                    Role::Member(i)
                }
            }
        };
        roles.insert(l.pid, role);
    }
    let supervisors = order
        .iter()
        .filter(|l| roles.get(&l.pid) == Some(&Role::Supervisor))
        .map(|l| l.pid)
        .collect();
    Lineage {
        generations: generations(&v, members),
        supervisors,
        launcher,
    }
}

/// A new generation of one member, `l`.
fn begin<'r>(members: &mut Vec<Vec<&'r ListenerRecord>>, l: &'r ListenerRecord) -> Role {
    members.push(vec![l]);
    Role::Member(members.len() - 1)
}

/// The launcher, if any: a root listener that served nothing, exited before the first restart
/// (and before the final stop), and by then another listener, alive after its exit, had
/// appeared at the root or as its own child (a daemonised master the observer saw before its
/// launcher exited and it was reparented).
fn find_launcher(v: &View, order: &[&ListenerRecord]) -> Option<u32> {
    let root = |l: &ListenerRecord| v.listener_parent(l.pid).is_none();
    order
        .iter()
        .filter(|l| root(l) && !(v.pids_known() && v.served(l.pid)))
        .find(|l| {
            let Some(exited) = l.exited else {
                return false;
            };
            v.restarts.first().is_none_or(|(r, _)| exited < *r)
                && !v.alive_at_stop(l)
                && order.iter().any(|o| {
                    o.pid != l.pid
                        && (root(o) || v.listener_parent(o.pid) == Some(l.pid))
                        && v.seen(o) <= exited + EXIT_SKEW
                        && o.exited.is_none_or(|x| x > exited)
                })
        })
        .map(|l| l.pid)
}

/// When `l` was ready: its readiness, but not before it was seen holding the listener (a
/// request queued in the shared backlog before it existed may be the first it answered).
fn member_ready(l: &ListenerRecord) -> Option<Duration> {
    l.ready_at.map(|t| t.max(l.listening_since))
}

/// The generations from their members, numbered in order of their first member's listening.
fn generations(v: &View, sets: Vec<Vec<&ListenerRecord>>) -> Vec<Generation> {
    let mut out: Vec<Generation> = sets
        .into_iter()
        .map(|set| {
            let started = set
                .iter()
                .map(|l| l.listening_since)
                .min()
                .unwrap_or_default();
            let ready_at = set.iter().filter_map(|l| member_ready(l)).min();
            let last = |at: fn(&ListenerRecord) -> Option<Duration>| {
                set.iter()
                    .map(|l| at(l))
                    .try_fold(Duration::ZERO, |last, x| x.map(|x| last.max(x)))
            };
            Generation {
                number: 0,
                members: set.iter().map(|l| l.pid).collect(),
                started,
                ready_at,
                stopped_listening: last(|l| l.stopped_listening),
                exited: last(|l| l.exited),
            }
        })
        .collect();
    out.sort_by_key(|g| (g.started, g.members.first().map(|p| v.seen(v.by_pid[p]))));
    for (i, g) in out.iter_mut().enumerate() {
        g.number = i as u32 + 1;
    }
    out
}

#[cfg(test)]
mod tests;
