//! One poll of a target tree: which processes exited (and how), which joined the tree, and
//! which of the target's listening sockets each live one holds, from which the generations and
//! their descriptor samples follow.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::guard;
use super::procfs::{
    FdDir, Stat, environ_has, listening_inodes, read_cmdline, read_stat, scan_fds, thread_cpu_time,
};
use super::reaper::exit_of;
use crate::target::{ConnectAddr, RUN_TAG_VAR};

/// Time between two polls of `/proc`.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(4);
/// A generation's full descriptor table is re-read at least this often, so that even one that
/// serves for a fraction of a second is sampled (in between, only the descriptors known to
/// hold a listener are checked, which stays cheap with thousands of connections).
const FULL_FD_SCAN_EVERY: Duration = Duration::from_millis(20);
/// A large descriptor table (at least [`LARGE_FD_TABLE`] descriptors) is read in full again
/// only after this many times the CPU time its last full read took (see [`super::procfs::scan_fds`]): at most
/// about a tenth of a core goes to one large table. Smaller tables are read as before.
pub(super) const FULL_SCAN_COST_FACTOR: u32 = 10;
const LARGE_FD_TABLE: u32 = 1024;
/// Descriptor-count samples of the serving generation are taken this often (or as often as
/// its table is read in full, when that is less often).
const FD_SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The listening-socket table is re-read at most this often when unknown sockets appear. For
/// TCP a re-read is cheap (only the listeners are read, see [`super::procfs::tcp_listeners`]), so it happens
/// on every poll that needs it; `/proc/net/unix` lists every unix socket, so it is read less often.
const LISTEN_REFRESH_MIN_TCP: Duration = Duration::ZERO;
const LISTEN_REFRESH_MIN_UNIX: Duration = Duration::from_millis(25);
/// A socket found not listening is re-checked after this long: it may have been caught
/// between `bind` and `listen`.
const NOT_LISTEN_TTL: Duration = Duration::from_millis(250);
/// ... and at least this often regardless.
const LISTEN_REFRESH_MAX: Duration = Duration::from_millis(500);
/// How long a process whose /proc entry is gone is still checked for a status from the reaper.
/// A shim's report of an exit it reaped can lag by tens of milliseconds on a loaded machine
/// (more when the process closed thousands of connections as it exited), so this is generous;
/// a process in this state already counts as gone for every wait.
pub(super) const GONE_GRACE: Duration = Duration::from_millis(1000);
/// The cache of sockets known not to be listeners is pruned past this size.
const NOT_LISTEN_CACHE_MAX: usize = 100_000;

#[derive(Debug)]
pub(super) struct Proc {
    pub(super) pid: u32,
    pub(super) ppid: u32,
    pub(super) starttime: u64,
    pub(super) cmdline: String,
    pub(super) first_seen: Duration,
    pub(super) exited: Option<Duration>,
    pub(super) status: Option<String>,
    /// Seen dead: a zombie waiting for its parent to collect the status, or gone.
    pub(super) zombie: bool,
    /// When its /proc entry was first found gone.
    pub(super) gone_at: Option<Duration>,
    /// Descriptors that held a listening socket at the last scan.
    pub(super) listen_fds: Vec<(i32, u64)>,
    pub(super) last_full_scan: Option<Instant>,
    /// The CPU time the last full scan of its descriptors took, when its table was large (at
    /// least [`LARGE_FD_TABLE`] descriptors); zero otherwise.
    pub(super) full_scan_cost: Duration,
    pub(super) generation: Option<usize>,
}

#[derive(Debug)]
pub(super) struct Gen {
    pub(super) proc_index: usize,
    pub(super) listening_since: Duration,
    pub(super) stopped_listening: Option<Duration>,
    pub(super) listen_inodes: BTreeSet<u64>,
    pub(super) fd_samples: Vec<(Duration, u32)>,
    pub(super) last_sample: Option<Instant>,
}

pub(super) struct Shared {
    pub(super) t0: Instant,
    pub(super) main: u32,
    /// The shim that spawned `main` and adopts the tree's orphans: every process it adopts
    /// belongs to the tree.
    pub(super) adopter: Option<u32>,
    pub(super) tag: String,
    pub(super) connect: ConnectAddr,
    pub(super) self_pid: u32,
    pub(super) stop: AtomicBool,
    pub(super) state: Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) procs: Vec<Proc>,
    /// pid -> index in `procs`, for processes not yet known to have exited.
    pub(super) live: HashMap<u32, usize>,
    pub(super) gens: Vec<Gen>,
    pub(super) listen: HashSet<u64>,
    /// Sockets found not listening, and when.
    pub(super) not_listen: HashMap<u64, Instant>,
    pub(super) last_refresh: Option<Instant>,
    pub(super) previous_listing: HashSet<u32>,
    /// Descendants of the harness not (yet) in the tree, re-examined on every poll: a child
    /// of the harness has the run's tag in its environment only after its `execve`, and a
    /// trigger command's daemon joins the tree only once it is orphaned to the harness.
    pub(super) watch: HashSet<u32>,
    /// A process whose descriptors the next scan reads in full and samples (see
    /// [`super::Observer::sample_now`]).
    pub(super) sample_now: Option<u32>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn scan(&self) {
        self.scan_sampling(None);
    }

    /// A scan that also samples the descriptors of `sample_now` (see [`super::Observer::sample_now`]).
    pub(super) fn scan_sampling(&self, sample_now: Option<u32>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let now_instant = Instant::now();
        let now = now_instant.duration_since(self.t0);
        state.sample_now = sample_now;
        self.scan_exits(state, now);
        self.discover(state, now);
        self.scan_listeners(state, now_instant, now);
        state.sample_now = None;
    }

    /// Marks exited processes: by the reaper's table (exact status), a zombie state, or the
    /// disappearance (or reuse) of the pid.
    fn scan_exits(&self, state: &mut State, now: Duration) {
        let pids: Vec<(u32, usize)> = state.live.iter().map(|(p, i)| (*p, *i)).collect();
        for (pid, i) in pids {
            let stat = read_stat(pid);
            let reaped =
                exit_of(pid).filter(|e| e.at.duration_since(self.t0) >= state.procs[i].first_seen);
            let p = &mut state.procs[i];
            if let Some(exit) = reaped {
                let at = exit.at.duration_since(self.t0);
                p.exited = Some(p.exited.map_or(at, |z| z.min(at)));
                p.status = Some(exit.status);
                state.live.remove(&pid);
                continue;
            }
            match stat {
                // Alive. Its ppid may have changed (re-parented to the harness when its parent
                // exited); the record keeps the parent that forked it, which says more. A
                // zombie leader with threads left is alive too (see `Stat::exited`): a server
                // whose exit is that far along still holds its descriptors, and its successor
                // rightly still sees it, so a restart sent now may be refused.
                Some(s) if s.starttime == p.starttime && !s.exited() => {}
                Some(s) if s.starttime == p.starttime => {
                    // A zombie: dead, not yet collected. It stays on the watch list until
                    // it is gone: if it is (or becomes, when its parent dies) a child of the
                    // harness, the reaper reports its status on a later poll.
                    if !p.zombie {
                        p.zombie = true;
                        p.exited = Some(now);
                    }
                }
                _ => {
                    // Gone: collected by another parent, or by the reaper, which removes the
                    // /proc entry (in waitpid) a moment before it records the status; or the
                    // pid was reused. Keep looking for the reaper's record a little while.
                    if p.exited.is_none() {
                        p.exited = Some(now);
                    }
                    p.zombie = true;
                    let gone_at = *p.gone_at.get_or_insert(now);
                    if now.saturating_sub(gone_at) >= GONE_GRACE {
                        state.live.remove(&pid);
                    }
                }
            }
        }
    }

    /// Finds new processes of the tree: new pids in `/proc` whose parent is in the tree, or
    /// that were re-parented to the harness and carry the run's process group or tag.
    fn discover(&self, state: &mut State, now: Duration) {
        let Ok(dir) = fs::read_dir("/proc") else {
            return;
        };
        let listing: HashSet<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let mut candidates: Vec<(u32, Stat)> = listing
            .iter()
            .filter(|pid| {
                (!state.previous_listing.contains(pid) || state.watch.contains(pid))
                    && !state.live.contains_key(pid)
            })
            .filter_map(|&pid| Some((pid, read_stat(pid)?)))
            .filter(|(_, s)| !s.exited())
            .collect();
        state.previous_listing = listing;
        // Oldest first, so that a parent found in the same poll as its child is recorded
        // before it ("in order of first sight" then also reads as the order of birth).
        candidates.sort_by_key(|(pid, s)| (s.starttime, *pid));
        let watched = std::mem::take(&mut state.watch);
        // Orphans whose adopter (the shim) was killed go to init: the process group or the
        // run's tag (inherited from the spawned process) still names them.
        let in_tree = |live: &HashMap<u32, usize>, pid: u32, s: &Stat| {
            pid == self.main
                || live.contains_key(&s.ppid)
                || Some(s.ppid) == self.adopter
                || s.pgid == self.main
                || environ_has(pid, RUN_TAG_VAR, &self.tag)
        };
        // Parents may be among the new pids themselves: add until nothing more joins. A child
        // waits for a parent that joins in this poll, even when it sorts first (start times tie
        // within a clock tick, and pids wrap, at 32768 on many machines).
        loop {
            let before = candidates.len();
            let mut i = 0;
            while i < candidates.len() {
                let (pid, s) = candidates[i];
                let parent_joins = candidates
                    .iter()
                    .any(|(p, ps)| *p == s.ppid && in_tree(&state.live, *p, ps));
                if !parent_joins && in_tree(&state.live, pid, &s) {
                    candidates.remove(i);
                    let index = state.procs.len();
                    state.procs.push(Proc {
                        pid,
                        ppid: s.ppid,
                        starttime: s.starttime,
                        cmdline: read_cmdline(pid).unwrap_or_default(),
                        first_seen: now,
                        exited: None,
                        status: None,
                        zombie: false,
                        gone_at: None,
                        listen_fds: Vec::new(),
                        last_full_scan: None,
                        full_scan_cost: Duration::ZERO,
                        generation: None,
                    });
                    state.live.insert(pid, index);
                    guard::register(pid);
                } else {
                    i += 1;
                }
            }
            if candidates.len() == before {
                break;
            }
        }
        // What is left is not in the tree now; keep watching the harness's own descendants.
        let mut watch: HashSet<u32> = HashSet::new();
        loop {
            let before = watch.len();
            for (pid, s) in &candidates {
                if Some(*pid) != self.adopter
                    && (s.ppid == self.self_pid
                        || watch.contains(&s.ppid)
                        || watched.contains(&s.ppid))
                {
                    watch.insert(*pid);
                }
            }
            if watch.len() == before {
                break;
            }
        }
        state.watch = watch;
    }

    /// For every live process: which listening sockets of the target it holds.
    fn scan_listeners(&self, state: &mut State, now_instant: Instant, now: Duration) {
        let mut live: Vec<usize> = state
            .live
            .values()
            .copied()
            .filter(|&i| !state.procs[i].zombie)
            .collect();
        // In order of first sight (and, within one poll, of birth: see `discover`), not the
        // map's: processes first seen listening in the same poll become generations in this
        // order, and a child (the next generation) must never be numbered before its parent.
        live.sort_unstable();
        if state
            .last_refresh
            .is_none_or(|t| now_instant.duration_since(t) >= LISTEN_REFRESH_MAX)
        {
            self.refresh_listeners(state, now_instant);
        }
        for i in live {
            let pid = state.procs[i].pid;
            // A process exec'ing a new program changes its command line: keep it current
            // during the first second.
            let mut exec_seen = false;
            if now.saturating_sub(state.procs[i].first_seen) < Duration::from_secs(1)
                && let Some(c) = read_cmdline(pid)
                && c != state.procs[i].cmdline
            {
                exec_seen = true;
                state.procs[i].cmdline = c;
            }
            let p = &state.procs[i];
            let knows_listener = p.generation.is_some() && !p.listen_fds.is_empty();
            // A full scan reads every descriptor: a process holding thousands of connections
            // is re-read only after FULL_SCAN_COST_FACTOR times the CPU time its last full scan
            // took, so that the observer stays a small share of a core whatever the load. In
            // between, a generation's known listeners are checked on every poll (cheap), and a
            // new program (exec) is read in full at once.
            let min_gap = if knows_listener {
                FULL_FD_SCAN_EVERY
            } else {
                Duration::ZERO
            }
            .max(p.full_scan_cost.saturating_mul(FULL_SCAN_COST_FACTOR));
            let forced = state.sample_now == Some(pid) && p.full_scan_cost.is_zero();
            let due = exec_seen
                || forced
                || p.last_full_scan
                    .is_none_or(|t| now_instant.duration_since(t) >= min_gap);
            let mut held: Vec<(i32, u64)> = Vec::new();
            let mut full_count = None;
            if knows_listener && !due {
                let Some(dir) = FdDir::open(Path::new(&format!("/proc/{pid}/fd"))) else {
                    continue; // Gone since the exit scan; the next poll records it.
                };
                held = p
                    .listen_fds
                    .iter()
                    .filter(|(fd, inode)| dir.socket_inode(*fd) == Some(*inode))
                    .copied()
                    .collect();
            } else if !due {
                // Not holding a listener, and read in full a moment ago: nothing to learn.
                continue;
            }
            // Read in full when due, and at once when the known listeners are no longer where
            // they were: they may have moved to other descriptors, or the process stopped
            // listening (that moment is recorded).
            if due || held.is_empty() {
                let started = thread_cpu_time();
                let Some((sockets, count)) = scan_fds(pid) else {
                    continue; // Gone since the exit scan; the next poll records it.
                };
                state.procs[i].full_scan_cost = if count >= LARGE_FD_TABLE {
                    thread_cpu_time().saturating_sub(started)
                } else {
                    Duration::ZERO
                };
                let unknown = sockets.iter().any(|(_, inode)| {
                    !state.listen.contains(inode)
                        && state
                            .not_listen
                            .get(inode)
                            .is_none_or(|t| now_instant.duration_since(*t) >= NOT_LISTEN_TTL)
                });
                let min_gap = match self.connect {
                    ConnectAddr::Tcp(_) => LISTEN_REFRESH_MIN_TCP,
                    ConnectAddr::Unix(_) => LISTEN_REFRESH_MIN_UNIX,
                };
                if unknown
                    && state
                        .last_refresh
                        .is_none_or(|t| now_instant.duration_since(t) >= min_gap)
                {
                    self.refresh_listeners(state, now_instant);
                    if state.not_listen.len() > NOT_LISTEN_CACHE_MAX {
                        state
                            .not_listen
                            .retain(|_, t| now_instant.duration_since(*t) < NOT_LISTEN_TTL);
                    }
                    for (_, inode) in &sockets {
                        if !state.listen.contains(inode) {
                            state.not_listen.insert(*inode, now_instant);
                        }
                    }
                }
                held = sockets
                    .iter()
                    .filter(|(_, inode)| state.listen.contains(inode))
                    .copied()
                    .collect();
                state.procs[i].last_full_scan = Some(now_instant);
                // Connections come and go with the load; counted, they drown a leak of one
                // descriptor per generation in noise. So the sample is every descriptor but
                // the sockets that are not listeners (see `ListenerRecord::fd_samples`).
                let connections = (sockets.len() - held.len()) as u32;
                full_count = Some(count - connections);
            }
            state.procs[i].listen_fds = held.clone();
            self.update_generation(state, i, &held, now_instant, now, full_count);
        }
    }

    fn refresh_listeners(&self, state: &mut State, now_instant: Instant) {
        let fresh = listening_inodes(&self.connect);
        // A socket once seen listening stays known: an old generation still holding the same
        // (inherited) socket is still holding a listener, even if the table is re-read while
        // the socket is being handed over.
        state.listen.extend(fresh);
        state.last_refresh = Some(now_instant);
    }

    fn update_generation(
        &self,
        state: &mut State,
        i: usize,
        held: &[(i32, u64)],
        now_instant: Instant,
        now: Duration,
        full_count: Option<u32>,
    ) {
        match state.procs[i].generation {
            None if !held.is_empty() => {
                state.procs[i].generation = Some(state.gens.len());
                state.gens.push(Gen {
                    proc_index: i,
                    listening_since: now,
                    stopped_listening: None,
                    listen_inodes: held.iter().map(|(_, n)| *n).collect(),
                    fd_samples: Vec::new(),
                    last_sample: None,
                });
            }
            None => return,
            Some(g) => {
                let record = &mut state.gens[g];
                if held.is_empty() {
                    if record.stopped_listening.is_none() {
                        record.stopped_listening = Some(now);
                    }
                } else {
                    record.listen_inodes.extend(held.iter().map(|(_, n)| *n));
                }
            }
        }
        // Descriptor samples, for every process still listening: the members of a generation
        // and its supervisors are summed by `fd-stable`.
        let Some(count) = full_count else { return };
        if let Some(g) = state.procs[i].generation
            && state.gens[g].stopped_listening.is_none()
            && state.procs[i].exited.is_none()
        {
            let record = &mut state.gens[g];
            if state.sample_now == Some(state.procs[i].pid)
                || record
                    .last_sample
                    .is_none_or(|t| now_instant.duration_since(t) >= FD_SAMPLE_EVERY)
            {
                record.fd_samples.push((now, count));
                record.last_sample = Some(now_instant);
            }
        }
    }
}
