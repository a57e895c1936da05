//! The process observer: sees every process of the target tree start, exit, and hold (or let
//! go of) the target's listening sockets, and kills the whole tree at the end.
//!
//! Where exits come from: the target is started under a shim (see [`crate::target::spawn`])
//! that is a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`), so a generation orphaned by
//! its parent's exit is re-parented to the shim, which reaps it and reports its status. The
//! harness itself is deliberately *not* a subreaper: an orphan's `getppid()` names its
//! adopter, and servers that signal "their parent" racing that parent's exit would otherwise
//! signal (and with SIGKILL, end) the harness. The harness's own children (shims, trigger
//! commands) are reaped by one reaper thread ([`init`]: `waitpid(-1, WNOHANG)`), into the same
//! table of exits that observers and [`run_command`] read.
//!
//! An [`Observer`] polls `/proc` every few milliseconds for the processes of one target tree
//! (descendants of the spawned process; orphans adopted by its shim; and any process in the
//! target's process group or carrying the run's tag, which covers orphans that went to init
//! because their shim was killed, and daemons left by trigger commands), reads their
//! descriptors to find which of the target's listening sockets they hold: the evidence from
//! which [`crate::model::infer`] tells generations apart.
//!
//! Its parts: `reaper` (the exit table), `guard` (signals sent to the harness), `procfs` and
//! `sock_diag` (what `/proc` and netlink say), `scan` (one poll of a tree), and here the
//! [`Observer`] and what it answers.
//!
//! # Caveats
//! Once [`init`] ran, the reaper owns the exit status of every child of this process: code in
//! the same process must not `wait` for its own children (it would race the reaper and may get
//! `ECHILD`); run helper commands with [`run_command`], which reads the reaper's table.
//!
//! Polling sees a process only if it lives across one poll (a few milliseconds). A process that
//! forks, and whose child is orphaned, before the first poll sees either, is still recognised by
//! its process group or by the run tag in its environment; one that also cleared its
//! environment and left the group is missed. An orphan that went to init (its shim was killed)
//! has no exit status in the record, only the time it was seen gone.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::model::{ListenerRecord, ProcessRecord};
use crate::target::ConnectAddr;

mod guard;
mod procfs;
mod reaper;
mod scan;
mod sock_diag;

pub use guard::{enable_interrupts, interrupted, signals_from_targets};
pub use procfs::{
    Stat, TcpRow, parse_proc_net_tcp_line, parse_proc_net_unix_line, parse_socket_link, parse_stat,
    running,
};
pub use reaper::{Exit, exit_of, init, run_command};
pub(crate) use reaper::{record_exit, status_text};
use scan::{GONE_GRACE, POLL_INTERVAL, Shared, State};

/// Errors of the observer.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// A thread could not be started, or the signal guard could not be installed.
    #[error("starting the observer's {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

pub struct Observer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    finished: bool,
}

impl Observer {
    /// Starts watching the tree rooted at `main` (spawned in its own process group, by this
    /// process or by the `adopter` shim, which then adopts the tree's orphans), whose
    /// processes carry `tag` in [`crate::target::RUN_TAG_VAR`] and whose listening sockets
    /// are those bound to `connect`. Times are offsets from `t0`.
    ///
    /// # Errors
    /// [`init`] was not called or failed, or the polling thread could not start.
    pub fn start(
        main: u32,
        adopter: Option<u32>,
        tag: &str,
        connect: ConnectAddr,
        t0: Instant,
    ) -> Result<Observer, ObserverError> {
        init()?;
        // Before the first poll: the target may signal the harness at once.
        guard::register(main);
        let shared = Arc::new(Shared {
            t0,
            main,
            adopter,
            tag: tag.to_string(),
            connect,
            self_pid: std::process::id(),
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        shared.scan();
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("observer".into())
            .spawn(move || {
                while !for_thread.stop.load(Ordering::Relaxed) {
                    for_thread.scan();
                    std::thread::sleep(POLL_INTERVAL);
                }
            })
            .map_err(|source| ObserverError::Thread {
                what: "polling",
                source,
            })?;
        Ok(Observer {
            shared,
            thread: Some(thread),
            finished: false,
        })
    }

    /// Polls once now (the thread polls anyway; this gives a fresh view before a decision).
    pub fn scan(&self) {
        self.shared.scan();
    }

    /// Polls once now, reading the descriptor table of `pid` in full and recording a
    /// descriptor sample if it is the newest generation still listening, however recently it
    /// was last sampled (unless its table is large: those are read by their cost, see
    /// `FULL_SCAN_COST_FACTOR`). The harness calls this right before it signals a restart to
    /// a generation that is serving alone: a generation replaced within milliseconds may fall
    /// between two periodic samples, and then a leak of one descriptor per generation shows
    /// over more restarts than it takes.
    pub fn sample_now(&self, pid: u32) {
        self.shared.scan_sampling(Some(pid));
    }

    /// The spawned process's exit status, once it has exited.
    pub fn main_exit(&self) -> Option<String> {
        let state = self.shared.lock();
        state
            .procs
            .iter()
            .find(|p| p.pid == self.shared.main && p.exited.is_some())
            .map(|p| p.status.clone().unwrap_or_else(|| "exited".into()))
            .or_else(|| exit_of(self.shared.main).map(|e| e.status))
    }

    /// Connections waiting in the accept queues of the target's listening sockets (TCP only;
    /// `None` for a unix socket, whose queue `/proc` does not show, or when no listener is
    /// known).
    pub fn accept_queue(&self) -> Option<u64> {
        if !matches!(self.shared.connect, ConnectAddr::Tcp(_)) {
            return None;
        }
        let listen = self.shared.lock().listen.clone();
        if listen.is_empty() {
            return None;
        }
        Some(
            procfs::tcp_listeners()
                .into_iter()
                .filter(|r| listen.contains(&r.inode))
                .map(|r| r.rx_queue)
                .sum(),
        )
    }

    /// Pids of the processes of the tree that have not exited.
    pub fn live_pids(&self) -> Vec<u32> {
        let state = self.shared.lock();
        let mut pids: Vec<u32> = state
            .live
            .iter()
            .filter(|(_, i)| !state.procs[**i].zombie)
            .map(|(p, _)| *p)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// How many processes have been seen holding a listener so far, alive or not.
    pub fn listeners_seen(&self) -> usize {
        self.shared.lock().gens.len()
    }

    /// Waits until more than `seen` listeners have been seen or `pid` is gone, or `timeout`
    /// passes, or `abort` returns true; returns whether a successor or the exit was seen.
    pub fn wait_successor(
        &self,
        seen: usize,
        pid: u32,
        timeout: Duration,
        abort: impl Fn() -> bool,
    ) -> bool {
        self.wait_until(timeout, abort, || {
            self.listeners_seen() > seen || !self.live_pids().contains(&pid)
        })
    }

    /// Waits until no process of the tree is alive (zombies count as gone) or `timeout`
    /// passes, or `abort` returns true; returns whether the tree is gone.
    pub fn wait_gone(&self, timeout: Duration, abort: impl Fn() -> bool) -> bool {
        self.wait_until(timeout, abort, || self.live_pids().is_empty())
    }

    /// Scans until `reached` holds (true), `timeout` passes or `abort` returns true (false).
    pub fn wait_until(
        &self,
        timeout: Duration,
        abort: impl Fn() -> bool,
        reached: impl Fn() -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.shared.scan();
            if reached() {
                return true;
            }
            if Instant::now() >= deadline || abort() {
                return false;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the whole tree: SIGTERM to the process group and to every live process of the
    /// tree, up to `grace` for them to exit, then SIGKILL, and waits (bounded) until every one
    /// is reaped. Returns the pids that were still alive when this was called.
    pub fn kill_tree(&mut self, grace: Duration) -> Vec<u32> {
        self.shared.scan();
        let initially = self.live_pids();
        if !initially.is_empty() {
            self.signal_all(Signal::SIGTERM);
            if !self.wait_gone(grace, || false) {
                self.signal_all(Signal::SIGKILL);
                // Keep killing: a process may fork between our scan and the signal.
                let deadline = Instant::now() + Duration::from_secs(5);
                while !self.wait_gone(Duration::from_millis(100), || false)
                    && Instant::now() < deadline
                {
                    self.signal_all(Signal::SIGKILL);
                }
            }
        }
        // Give the reaper a moment to collect the last statuses of our own children, so that
        // the record carries them (bounded, as long as a gone process is looked up anyway; a
        // status normally arrives within milliseconds, but a loaded machine can delay a shim's
        // report; zombies of other parents are not ours to wait for).
        let deadline = Instant::now() + GONE_GRACE;
        while Instant::now() < deadline && self.shared.lock().live.values().next().is_some() {
            self.shared.scan();
            std::thread::sleep(POLL_INTERVAL);
        }
        self.finished = true;
        initially
    }

    fn signal_all(&self, sig: Signal) {
        // The group first (catches what the poll has not seen yet), then each known process
        // (catches those that left the group).
        let _ = killpg(Pid::from_raw(self.shared.main as i32), sig);
        for pid in self.live_pids() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// What was observed: every process in order of first sight, and the processes that held
    /// a listener. The listeners' `ready_at` is left `None` for the runner to fill from the
    /// journal and log.
    pub fn records(&self) -> (Vec<ProcessRecord>, Vec<ListenerRecord>) {
        self.snapshot(true)
    }

    /// [`Observer::records`] without the descriptor samples: what the generations are inferred
    /// from while the run goes on, cheap however long the run.
    pub fn records_unsampled(&self) -> (Vec<ProcessRecord>, Vec<ListenerRecord>) {
        self.snapshot(false)
    }

    fn snapshot(&self, with_samples: bool) -> (Vec<ProcessRecord>, Vec<ListenerRecord>) {
        let state = self.shared.lock();
        let procs = state
            .procs
            .iter()
            .map(|p| ProcessRecord {
                pid: p.pid,
                ppid: p.ppid,
                cmdline: p.cmdline.clone(),
                first_seen: p.first_seen,
                exited: p.exited,
                status: p.status.clone(),
            })
            .collect();
        let listeners = state
            .gens
            .iter()
            .map(|g| {
                let p = &state.procs[g.proc_index];
                ListenerRecord {
                    pid: p.pid,
                    listening_since: g.listening_since,
                    ready_at: None,
                    stopped_listening: g.stopped_listening,
                    exited: p.exited,
                    status: p.status.clone(),
                    listen_inodes: g.listen_inodes.iter().copied().collect(),
                    fd_samples: if with_samples {
                        g.fd_samples.clone()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        (procs, listeners)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if !self.finished {
            self.kill_tree(Duration::from_millis(500));
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for p in &self.shared.lock().procs {
            guard::unregister(p.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    // The observer's reaper collects the child's status, not a `wait` here.
    #[allow(clippy::zombie_processes)]
    fn dropping_the_observer_kills_the_whole_tree_including_orphans() {
        // The subshell exits at once, orphaning its `sleep` (to init: there is no shim here);
        // it stays in the target's process group, so it must still be counted and killed.
        let child = Command::new("sh")
            .args(["-c", "(sleep 30 &); sleep 31 & sleep 32"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let main = child.id();
        let t0 = Instant::now();
        let observer = Observer::start(
            main,
            None,
            "test-tag-drop",
            ConnectAddr::Tcp("127.0.0.1:9".parse().expect("addr")),
            t0,
        )
        .expect("observer");
        // Wait until the shape is settled: `sh` and three `sleep`s alive, the subshell gone
        // (the command lines are read afresh: one read at first sight may fall between a fork
        // and its exec).
        let sleeps = |pids: &[u32]| {
            pids.iter()
                .filter(|p| procfs::read_cmdline(**p).is_some_and(|c| c.starts_with("sleep")))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pids = Vec::new();
        while Instant::now() < deadline {
            observer.scan();
            pids = observer.live_pids();
            if pids.len() == 4 && sleeps(&pids) == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pids.len(), 4, "sh and three sleeps: {pids:?}");
        assert_eq!(sleeps(&pids), 3, "three sleeps: {pids:?}");
        let (procs, gens) = observer.records();
        assert!(gens.is_empty(), "nothing listens on port 9: {gens:?}");
        // The short-lived subshell may have been seen too.
        assert!((4..=5).contains(&procs.len()), "{procs:?}");
        drop(observer);
        for pid in pids {
            assert!(!running(pid), "pid {pid} survived the observer");
        }
    }

    /// The descendants of `pid` (itself included), from `/proc`.
    fn tree_of(pid: u32) -> Vec<u32> {
        let stats: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter_map(|p| Some((p, procfs::read_stat(p)?.ppid)))
            .collect();
        let mut tree = vec![pid];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(
                stats
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        tree
    }

    #[test]
    // The observer's reaper collects the child's status, not a `wait` here.
    #[allow(clippy::zombie_processes)]
    fn generations_first_seen_in_one_poll_are_numbered_parent_first() {
        // A chain of processes, each the child of the one before, all holding one listening
        // socket (as their stdin) before the observer's first poll: a burst of restarts
        // that completes between two polls looks like this. Each must be numbered after
        // its parent, whatever order the observer keeps its live processes in; with 7 of
        // them, a wrong order goes unnoticed by chance once in 5040 runs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = r#"if [ "$1" -gt 0 ]; then sh -c "$0" "$0" $(($1 - 1)); else sleep 30; fi"#;
        let child = Command::new("sh")
            .args(["-c", script, script, "5"])
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                listener,
            )))
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let main = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tree_of(main).len() < 7 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(tree_of(main).len(), 7, "six shells and a sleep");
        let observer = Observer::start(
            main,
            None,
            "test-tag-order",
            ConnectAddr::Tcp(addr),
            Instant::now(),
        )
        .expect("observer");
        observer.scan();
        let (procs, gens) = observer.records();
        drop(observer);
        assert_eq!(gens.len(), 7, "every process holds the listener: {gens:?}");
        assert!(
            gens.iter()
                .all(|g| g.listening_since == gens[0].listening_since),
            "all first seen listening in one poll: {gens:?}"
        );
        let parent = |pid: u32| procs.iter().find(|p| p.pid == pid).map(|p| p.ppid);
        assert_eq!(gens[0].pid, main);
        for w in gens.windows(2) {
            assert_eq!(
                parent(w[1].pid),
                Some(w[0].pid),
                "pid {} is not the child of pid {}, listed before it: {:?}",
                w[1].pid,
                w[0].pid,
                gens.iter().map(|g| g.pid).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    // The observer's reaper collects the child's status, not a `wait` here.
    #[allow(clippy::zombie_processes)]
    fn kill_tree_reports_exits_with_their_statuses() {
        let child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let mut observer = Observer::start(
            pid,
            None,
            "test-tag-kill",
            ConnectAddr::Tcp("127.0.0.1:9".parse().expect("addr")),
            Instant::now(),
        )
        .expect("observer");
        assert_eq!(observer.live_pids(), vec![pid]);
        assert_eq!(observer.kill_tree(Duration::from_secs(1)), vec![pid]);
        let (procs, _) = observer.records();
        assert_eq!(procs.len(), 1);
        assert_eq!(procs[0].status.as_deref(), Some("signal 15 (SIGTERM)"));
        assert!(procs[0].exited.is_some());
        assert_eq!(observer.main_exit().as_deref(), Some("signal 15 (SIGTERM)"));
    }
}
