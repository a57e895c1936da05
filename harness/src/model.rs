//! The vocabulary shared by the three stages of a run: what a scenario asks for
//! ([`Scenario`]), what a run observed ([`RunRecord`]), and what the checkers concluded
//! ([`Verdict`]).
//!
//! Times inside a run are offsets from the run's own start (`t0`, taken just before the target
//! is spawned), so a record is self-contained and can be serialised, replayed into checkers, or
//! built by hand in a checker's unit test.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

pub(crate) mod infer;
mod record;
#[cfg(test)]
pub(crate) mod recorded;

pub use infer::{Generation, Lineage, Shape, infer};
pub use record::{
    CommandRun, ConnRecord, Injected, JournalSummary, LatencySummary, ListenerRecord, Outcome,
    ProcessRecord, RunRecord, START_BUCKET, ServedBy,
};

/// A stable invariant id. The string form (`no-refused`, ...) is what scenario files,
/// reports and the JSON output use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// No connect is refused between the first readiness and the final stop.
    NoRefused,
    /// Every established connection gets its complete reply.
    NoDropped,
    /// Each superseded generation exits after its last connection finished and within its drain
    /// deadline (plus slack) of its successor's readiness.
    DrainsThenExits,
    /// A restart signal while an upgrade is in flight starts no other generation; never more
    /// than two generations alive at once.
    SingleUpgrade,
    /// After each restart, new connections are served by the new generation within a stated time.
    TakesOver,
    /// When the new generation fails before it is ready, the old one keeps serving.
    Rollback,
    /// After the final stop, every process of the target is gone within its deadline.
    CleanStop,
    /// The serving generation's open descriptor count does not grow across restarts.
    FdStable,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Invariant; 8] = [
        Invariant::NoRefused,
        Invariant::NoDropped,
        Invariant::DrainsThenExits,
        Invariant::SingleUpgrade,
        Invariant::TakesOver,
        Invariant::Rollback,
        Invariant::CleanStop,
        Invariant::FdStable,
    ];

    /// The stable id, as written in scenario files.
    pub fn id(self) -> &'static str {
        match self {
            Invariant::NoRefused => "no-refused",
            Invariant::NoDropped => "no-dropped",
            Invariant::DrainsThenExits => "drains-then-exits",
            Invariant::SingleUpgrade => "single-upgrade",
            Invariant::TakesOver => "takes-over",
            Invariant::Rollback => "rollback",
            Invariant::CleanStop => "clean-stop",
            Invariant::FdStable => "fd-stable",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for Invariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Invariant::ALL
            .into_iter()
            .find(|i| i.id() == s)
            .ok_or_else(|| {
                let ids: Vec<_> = Invariant::ALL.iter().map(|i| i.id()).collect();
                format!(
                    "unknown invariant `{s}`, expected one of: {}",
                    ids.join(", ")
                )
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: what to run. Built by `scenario.rs` from a TOML file, already validated, with
// durations as `Duration` and placeholders (`{port}`, `{dir}`, `{bin}`) still unsubstituted.
// ---------------------------------------------------------------------------------------------

/// A validated scenario file.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// The file it came from.
    pub path: PathBuf,
    /// Stable hierarchical id, e.g. `reference/echo/short-3-restarts`.
    pub id: String,
    /// One line.
    pub description: String,
    /// MUST-style requirement, quoted in failure reports.
    pub requirement: String,
    pub target: TargetSpec,
    pub load: LoadSpec,
    /// Sorted by `at`.
    pub events: Vec<Event>,
    pub expect: Expect,
    /// Total run length, from the first readiness; every event is strictly before it. If no
    /// `stop` event is given the harness stops the target at the end with `target.stop`.
    pub duration: Duration,
}

/// How to launch, recognise, restart and stop the server under test.
#[derive(Clone, Debug, Serialize)]
pub struct TargetSpec {
    /// argv; `command[0]` may use `{bin}`.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Where the load connects: `127.0.0.1:{port}` by default, or `unix:{dir}/sock`.
    pub connect: String,
    pub ready: Ready,
    /// Bounded wait for the first readiness; exceeding it is a setup error (exit 2).
    pub ready_timeout: Duration,
    pub restart: Option<Trigger>,
    pub stop: Trigger,
    /// The scenario says `target.stop` is graceful (the server finishes what it holds before it
    /// exits), so a connection it cuts is judged as a drop; otherwise it is only counted.
    pub stop_graceful: bool,
    /// After the final stop, how long the target may take to be gone (clean-stop).
    pub stop_timeout: Duration,
    /// The target's own drain deadline, as configured on its command line (drains-then-exits).
    pub drain_timeout: Duration,
    /// A file the reference servers read at the start of a new generation to fail on purpose
    /// (`crash`, `exit`, `hang`); needed by `fail-next` events.
    pub fail_next_file: Option<String>,
    /// A PID file the target maintains (for `signal.to = "pid-file"` and readiness by pid file).
    pub pid_file: Option<String>,
    /// What the server does on restart, where the generations cannot be inferred (see
    /// [`infer`]); `None`: inferred.
    pub shape: Option<Shape>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Ready {
    /// A TCP (or unix) connect to `target.connect` succeeds.
    Connect,
    /// A line on the target's stdout or stderr contains this text.
    LogLine { contains: String },
    /// The PID file exists and names a live process.
    PidFile,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Trigger {
    /// Send `signal` (e.g. `SIGHUP`) to the process named by `to`.
    Signal { signal: String, to: SignalTo },
    /// Run a command (e.g. `nginx -s reload`); placeholders substituted.
    Command { argv: Vec<String> },
    /// Start a new process that is not a child of the running server (e.g. one that takes
    /// its listeners over through a hand-over socket), as part of the target: its output is
    /// read like the first process's, the observer watches it, and it is killed with the
    /// tree at the end. `target.restart` only.
    Spawn { argv: Vec<String> },
}

impl Trigger {
    /// `signal` (e.g. `SIGHUP`) to the process named by `to`.
    pub fn signal(signal: &str, to: SignalTo) -> Trigger {
        Trigger::Signal {
            signal: signal.to_string(),
            to,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalTo {
    /// The process the harness spawned.
    Main,
    /// The pid currently written in `target.pid_file`.
    PidFile,
    /// The newest live generation the observer knows of. The runner prefers the newest one
    /// that has shown it is ready (a `ready pid=` line or a reply naming it), so that a signal
    /// during an upgrade reaches the serving generation rather than the starting child.
    Newest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Connect, one request, close.
    Short,
    /// `requests_per_conn` requests on one connection, then close.
    Keepalive,
    /// Connections held for the whole run, one request every `interval`.
    Long,
    /// Each request takes long on the server (the target is started with a delay), so requests
    /// are in flight across the restart.
    Slow,
    /// Like `short`, plus `burst_size` simultaneous connects at every restart event.
    Burst,
}

impl Profile {
    /// Every profile, in the order the scenario format lists them.
    pub const ALL: [Profile; 5] = [
        Profile::Short,
        Profile::Keepalive,
        Profile::Long,
        Profile::Slow,
        Profile::Burst,
    ];

    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Short => "short",
            Profile::Keepalive => "keepalive",
            Profile::Long => "long",
            Profile::Slow => "slow",
            Profile::Burst => "burst",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Send `<token>\n` (or [`Exchange::send`]), expect one line containing `<token>` and
    /// `pid=<n>` (or what the [`Exchange`] says).
    Line,
    /// An HTTP/1.1 request ([`HttpRequest`]), expect a 200 with a complete body; pid from
    /// `X-Handoff-Pid` (or [`Exchange::pid_header`]) or the body.
    Http1,
    /// The server speaks first: connect, send [`Exchange::send`] if any, read one reply (the
    /// banner), close. One exchange per connection.
    Banner,
}

impl Protocol {
    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Line => "line",
            Protocol::Http1 => "http1",
            Protocol::Banner => "banner",
        }
    }
}

/// How the load talks to the target beyond the protocol's framing: what each request sends,
/// when a reply is complete, what it must say, and where it names its pid. Every `None` is the
/// protocol's default (`scenarios/README.md`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Exchange {
    /// http1: the request.
    pub http: HttpRequest,
    /// line and banner: the bytes sent for each request, `{token}` replaced by the request's
    /// token; `None`: `{token}\n` for line, nothing for banner.
    pub send: Option<String>,
    /// line and banner: when a reply is complete.
    pub reply_end: ReplyEnd,
    /// A regex every complete reply (http1: its body) must match, else it is a bad reply;
    /// `{token}` in it stands for the request's token. `None`: a line reply must carry the
    /// token as a word; any complete http1 body or banner will do.
    pub reply_match: Option<String>,
    /// http1: the response header that names the serving pid; `None`: `X-Handoff-Pid`.
    pub pid_header: Option<String>,
    /// A regex with one capture group, the pid, searched in the reply (http1: its body);
    /// `None`: a `pid=<n>` word.
    pub pid_pattern: Option<String>,
}

/// When a line-protocol reply or a banner is complete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "pattern", rename_all = "kebab-case")]
pub enum ReplyEnd {
    /// At the first newline.
    #[default]
    Line,
    /// As soon as this regex matches the bytes received; the reply ends where the match ends.
    Pattern(String),
}

/// The HTTP request of the http1 protocol; `{token}` in the path, a header value or the body
/// is replaced by the request's token.
#[derive(Clone, Debug, Serialize)]
pub struct HttpRequest {
    pub method: String,
    /// The request target, from `/`.
    pub path: String,
    /// The `Host` header; `None`: the address the load connects to.
    pub host: Option<String>,
    /// More request headers, in order.
    pub headers: Vec<(String, String)>,
    /// A request body, sent with its `Content-Length`.
    pub body: Option<String>,
}

impl Default for HttpRequest {
    fn default() -> HttpRequest {
        HttpRequest {
            method: "GET".to_string(),
            path: "/?{token}".to_string(),
            host: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadSpec {
    pub profile: Profile,
    pub protocol: Protocol,
    /// Concurrent client tasks.
    pub clients: u32,
    /// For keepalive and long.
    pub requests_per_conn: u32,
    /// Pause between requests of one client (long: between periodic messages).
    pub interval: Duration,
    /// The clients start evenly spread over this long from the first readiness (zero: all at
    /// once), so that thousands of connects do not overflow the target's accept queue.
    pub ramp: Duration,
    pub connect_timeout: Duration,
    /// Longest a reply may take before the connection counts as `timeout`.
    pub reply_timeout: Duration,
    /// For burst.
    pub burst_size: u32,
    /// What the requests and replies look like beyond the protocol's defaults.
    pub exchange: Exchange,
    /// The seed of the clients' random draws (phase, jitter); `None`: a fresh one each run,
    /// recorded in [`RunRecord::seed`].
    pub seed: Option<u64>,
    /// Each client starts at a random phase of its own cycle (see `load.rs`).
    pub random_phase: bool,
    /// Each pause between requests is drawn from `interval * [1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl LoadSpec {
    /// This load with another profile. What only the new profile uses takes its default when
    /// this load did not set it: a keep-alive connection carries several requests, a burst has
    /// connects to fire.
    pub fn switched(&self, profile: Profile) -> LoadSpec {
        let mut spec = self.clone();
        spec.profile = profile;
        if matches!(profile, Profile::Keepalive | Profile::Slow) && spec.requests_per_conn <= 1 {
            spec.requests_per_conn = crate::scenario::DEFAULT_KEEPALIVE_REQUESTS as u32;
        }
        if profile == Profile::Burst && spec.burst_size == 0 {
            spec.burst_size = crate::scenario::DEFAULT_BURST_SIZE as u32;
        }
        spec
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Offset from the first readiness.
    pub at: Duration,
    pub action: Action,
    /// Fire at `at` or once no superseded generation is alive, whichever is later (bounded by
    /// the drain deadline plus its slack). For a restart whose point is not the timing: a
    /// correct server refuses an upgrade while its predecessor still drains.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub after_drain: bool,
}

impl Event {
    /// An event at `at` with no condition.
    pub fn at(at: Duration, action: Action) -> Event {
        Event {
            at,
            action,
            after_drain: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// Trigger `target.restart`.
    Restart,
    /// Trigger `target.stop`; the final stop (nothing after it but waiting).
    Stop,
    /// Send `signal` to a generation (see [`Which`]).
    Kill { signal: String, generation: Which },
    /// Arm the next restart to fail: `mode` (`crash`, `exit`, `hang`) is written into
    /// `target.fail_next_file` right before that restart's signal, so that no generation still
    /// starting from an earlier restart can read it instead.
    FailNext { mode: String },
    /// Switch the load to `profile`: the running clients finish the request they have in
    /// flight and end, and as many new ones start with the new profile (see
    /// [`LoadSpec::switched`]).
    Load { profile: Profile },
}

/// Which generation a `kill` event signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Which {
    /// The newest generation seen ready (replying, or its ready line), else the newest alive.
    Newest,
    /// The newest generation not seen ready: a new generation still starting.
    Starting,
    /// Generation `n`, 1-based in order of appearance.
    Number(u32),
    /// The next generation to report ready (a `ready pid=N` line) after the event, signalled
    /// as soon as its line is read: a crash right after readiness, inside the old
    /// generation's rollback window if it has one.
    NextReady,
}

#[derive(Clone, Debug, Serialize)]
pub struct Expect {
    /// Invariants that must pass.
    pub pass: Vec<Invariant>,
    /// Invariants that must fail (a known-bad target).
    pub fail: Vec<Invariant>,
    /// Added to `target.drain_timeout` by drains-then-exits.
    pub drain_slack: Duration,
    /// takes-over: the new generation must serve a new connection within this of the restart.
    pub takeover_within: Duration,
}

// ---------------------------------------------------------------------------------------------
// Verdicts.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Pass {
        summary: String,
    },
    /// `evidence`: one line per fact (which connection, when, what outcome, which pid).
    Fail {
        summary: String,
        evidence: Vec<String>,
    },
    /// The evidence needed is absent; never counts as a pass.
    Unknown {
        reason: String,
    },
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass { .. } => "pass",
            Verdict::Fail { .. } => "FAIL",
            Verdict::Unknown { .. } => "unknown",
        }
    }
}
