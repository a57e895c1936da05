//! What a run observed ([`RunRecord`]): produced by the runner (`run.rs`), consumed by the
//! checkers and the reports.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{Action, Generation, Lineage};
use crate::usage::HarnessUsage;

/// Everything the checkers may use. Fields are evidence; a checker that needs evidence that is
/// absent answers Unknown.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunRecord {
    /// The first time the target was seen ready; `None` if it never was (then the run is a
    /// setup error and checkers are not run).
    pub first_ready: Option<Duration>,
    /// When the final stop was triggered (an explicit stop event, or the end of the run).
    pub final_stop: Option<Duration>,
    /// When the run ended (all processes gone or killed).
    pub end: Duration,
    /// What the harness did, in order.
    pub injected: Vec<Injected>,
    /// Every process of the target tree the observer saw, in order of first sight.
    pub processes: Vec<ProcessRecord>,
    /// The processes that held a listening socket of the target, in order of the first time
    /// they held one: the evidence the generations are inferred from.
    pub listeners: Vec<ListenerRecord>,
    /// The generations, supervisors and launcher inferred from the rest of the record by
    /// [`super::infer`] at the end of the run (the checkers infer them again from the same
    /// evidence, so a record built by hand needs none).
    pub lineage: Lineage,
    /// The load's journal, aggregated.
    pub journal: JournalSummary,
    /// Processes the harness had to kill at the end because they outlived the stop deadline.
    pub killed_at_end: Vec<u32>,
    /// What the run cost the harness itself: peak memory, CPU time, descriptor limit.
    pub harness: HarnessUsage,
    /// The seed of the load's random draws (`load.seed` replays them).
    pub seed: u64,
}

impl RunRecord {
    /// What the observer recorded of each member of `g`.
    pub fn listeners_of<'a>(
        &'a self,
        g: &'a Generation,
    ) -> impl Iterator<Item = &'a ListenerRecord> {
        self.listeners.iter().filter(|x| g.contains(x.pid))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Injected {
    pub at: Duration,
    pub action: Action,
    /// The pid a signal was sent to, if any.
    pub pid: Option<u32>,
    /// Set when the injection could not be made (e.g. no pid file yet).
    pub error: Option<String>,
    /// Connections the load held established at that moment.
    pub open_connections: u64,
    /// A trigger command's run: restart commands run in the background, so `at` is when it
    /// started; a command that failed is an injection error (`error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandRun>,
}

/// How a trigger command went.
#[derive(Clone, Debug, Serialize)]
pub struct CommandRun {
    /// When it ended, or was killed (past its timeout, or still running when the run ended);
    /// `None` if that could not be told.
    pub ended: Option<Duration>,
    /// It exited 0. Otherwise [`Injected::error`] says how it ended, with its output.
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub ppid: u32,
    /// `/proc/PID/cmdline`, space-joined, possibly truncated.
    pub cmdline: String,
    /// First seen (an upper bound on the start time: the observer polls).
    pub first_seen: Duration,
    /// Exit time as reaped by the subreaper; `None` if still alive at the end.
    pub exited: Option<Duration>,
    /// `exit 0`, `exit 1`, `signal 9 (SIGKILL)`, ...
    pub status: Option<String>,
}

/// A process that held a listening socket of the target: a member of a generation, a
/// supervisor, or a launcher (see [`super::infer`]).
#[derive(Clone, Debug, Serialize)]
pub struct ListenerRecord {
    pub pid: u32,
    /// When it was first seen holding a listening socket of the target.
    pub listening_since: Duration,
    /// When it was first seen ready: its `ready ... pid=` log line if it printed one, else the
    /// send time of the first request it answered.
    pub ready_at: Option<Duration>,
    /// When it stopped holding the listening socket (stopped accepting), if seen.
    pub stopped_listening: Option<Duration>,
    pub exited: Option<Duration>,
    pub status: Option<String>,
    /// Socket inodes of the target's listening sockets it held.
    pub listen_inodes: Vec<u64>,
    /// Open descriptor count samples `(at, count)` while it was the serving generation. Sockets
    /// other than the target's listeners are left out of the count: they are mostly the
    /// connections the load holds at that instant, whose number says nothing about a leak.
    /// (A leaked socket is therefore not seen by `fd-stable`; leaked files, pipes, event and
    /// timer descriptors are.) Taken every 20 ms or so, and right before each restart signal
    /// sent to it while it served alone.
    pub fd_samples: Vec<(Duration, u32)>,
}

/// Connection outcomes, as journaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// The connect was refused (ECONNREFUSED, or ENOENT/ECONNREFUSED on a unix path).
    Refused,
    /// Reset by the peer after it was established.
    Reset,
    /// No connect or no complete reply within the timeout.
    Timeout,
    /// EOF before a complete reply.
    Short,
    /// A reply that does not match the protocol.
    BadReply,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::Reset,
        Outcome::Timeout,
        Outcome::Short,
        Outcome::BadReply,
    ];
    pub fn id(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Short => "short",
            Outcome::BadReply => "bad-reply",
        }
    }
}

/// One connection (kept in full only when it failed).
#[derive(Clone, Debug, Serialize)]
pub struct ConnRecord {
    /// Sequence number of the connection within the run.
    pub id: u64,
    pub client: u32,
    pub started: Duration,
    pub connected: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub done: Duration,
    pub outcome: Outcome,
    /// Requests that got a complete reply on this connection before it ended.
    pub replies: u32,
    /// The pid that served the last reply (or the partial one), when the reply named it.
    pub pid: Option<u32>,
    /// The OS error or protocol detail, e.g. `Connection reset by peer (os error 104)`.
    pub detail: String,
}

/// Per serving pid, from the replies.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServedBy {
    pub replies: u64,
    /// When the earliest request it answered was sent (the reply's end less its latency).
    pub first_sent: Duration,
    pub first_reply: Duration,
    pub last_reply: Duration,
}

/// The resolution of [`JournalSummary::starts`].
pub const START_BUCKET: Duration = Duration::from_millis(10);

impl JournalSummary {
    /// Whether a connection started within `from..to`, judged conservatively: only buckets
    /// wholly inside count, so a start just before `from` never does.
    pub fn started_within(&self, from: Duration, to: Duration) -> bool {
        let bucket = START_BUCKET.as_nanos();
        let first = from.as_nanos().div_ceil(bucket) as usize;
        let last = (to.as_nanos() / bucket) as usize;
        (first..last).any(|b| self.starts.get(b).is_some_and(|n| *n > 0))
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct JournalSummary {
    /// Connections attempted.
    pub connections: u64,
    /// The most connections the load held established at the same time.
    pub open_peak: u64,
    /// Requests with a complete reply.
    pub replies: u64,
    /// Per outcome id (`ok`, `refused`, ...), every outcome present with 0 if none.
    pub outcomes: BTreeMap<String, u64>,
    /// Replies that carried no pid (the target does not name its server).
    pub replies_without_pid: u64,
    pub served_by: BTreeMap<u32, ServedBy>,
    /// Full records of failed connections, at most `failures_cap`, earliest first.
    pub failures: Vec<ConnRecord>,
    /// Failed connections that were not kept because the cap was reached.
    pub failures_dropped: u64,
    /// Reply latency (request sent to reply complete), microseconds: p50, p99, max.
    pub latency_us: LatencySummary,
    /// Connect latency, microseconds.
    pub connect_us: LatencySummary,
    /// Connections that started after the final stop was triggered: the server may refuse
    /// them, so they are only counted here (not in `connections`, `outcomes` or `failures`).
    pub connections_after_stop: u64,
    /// Connections the load could not attempt because of the harness's own limits (no local
    /// port, no descriptor): not outcomes of the server, but evidence is incomplete when > 0.
    pub harness_errors: u64,
    /// The first such harness-side error, for the report.
    pub harness_error_example: Option<String>,
    /// Connections started (before the final stop) per [`START_BUCKET`] since the run's start:
    /// whether the load asked anything new at a given moment, in memory bounded by the run's
    /// length.
    #[serde(skip)]
    pub starts: Vec<u32>,
    /// When the load started its clients; `None` if it never ran.
    pub load_started: Option<Duration>,
    /// When the load was told to stop (the final stop, or an interrupt): every connection in
    /// `connections` started before it. From `load_started` to here is the window the load
    /// ran in, the honest denominator of a rate.
    pub load_stopped: Option<Duration>,
    /// Of `replies`, those completed after `load_stopped`: requests in flight at the stop that
    /// the load let finish, and replies on connections started after the stop.
    pub replies_after_stop: u64,
    /// The load over time, in a bounded number of buckets (for the HTML timeline).
    pub series: crate::journal::LoadSeries,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}
