//! Scenario files as written: the TOML tables serde reads (unknown keys rejected), every value
//! with its byte span for the error messages.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawScenario {
    pub(super) id: Spanned<String>,
    pub(super) description: Spanned<String>,
    pub(super) requirement: Spanned<String>,
    pub(super) duration_ms: Spanned<i64>,
    pub(super) target: Spanned<RawTarget>,
    pub(super) load: Option<Spanned<RawLoad>>,
    #[serde(default)]
    pub(super) events: Vec<Spanned<RawEvent>>,
    pub(super) expect: Spanned<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTarget {
    pub(super) command: Spanned<Vec<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) connect: Option<Spanned<String>>,
    /// `"connect"`, `"pid-file"` or `{ log-line = "..." }`.
    pub(super) ready: Option<Spanned<toml::Value>>,
    pub(super) ready_timeout_ms: Option<Spanned<i64>>,
    pub(super) restart: Option<Spanned<RawTrigger>>,
    pub(super) stop: Option<Spanned<RawTrigger>>,
    pub(super) stop_timeout_ms: Option<Spanned<i64>>,
    pub(super) drain_timeout_ms: Option<Spanned<i64>>,
    pub(super) pid_file: Option<Spanned<String>>,
    pub(super) fail_next_file: Option<Spanned<String>>,
    /// `"one-process"`, `"master-workers"`, `"new-master"` or `"supervisor"`.
    pub(super) shape: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTrigger {
    pub(super) signal: Option<Spanned<String>>,
    pub(super) to: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    /// `target.restart` only: a new process the harness starts, not the server.
    pub(super) spawn: Option<Spanned<Vec<String>>>,
    /// `target.stop` only: the stop finishes what the server holds.
    pub(super) graceful: Option<Spanned<bool>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLoad {
    pub(super) profile: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) clients: Option<Spanned<i64>>,
    pub(super) requests_per_conn: Option<Spanned<i64>>,
    pub(super) interval_ms: Option<Spanned<i64>>,
    pub(super) ramp_ms: Option<Spanned<i64>>,
    pub(super) connect_timeout_ms: Option<Spanned<i64>>,
    pub(super) reply_timeout_ms: Option<Spanned<i64>>,
    pub(super) burst_size: Option<Spanned<i64>>,
    pub(super) seed: Option<Spanned<i64>>,
    pub(super) random_phase: Option<Spanned<bool>>,
    pub(super) jitter: Option<Spanned<f64>>,
    pub(super) send: Option<Spanned<String>>,
    /// `"line"` or `{ pattern = "..." }`.
    pub(super) reply_end: Option<Spanned<toml::Value>>,
    pub(super) reply_match: Option<Spanned<String>>,
    pub(super) pid_header: Option<Spanned<String>>,
    pub(super) pid_pattern: Option<Spanned<String>>,
    pub(super) http: Option<Spanned<RawHttp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawHttp {
    pub(super) method: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    /// Header name to value, in file order.
    pub(super) headers: Option<Spanned<toml::Table>>,
    pub(super) body: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawEvent {
    pub(super) at_ms: Spanned<i64>,
    pub(super) action: Spanned<String>,
    pub(super) signal: Option<Spanned<String>>,
    /// A 1-based generation number, `"newest"` or `"starting"`.
    pub(super) generation: Option<Spanned<toml::Value>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) profile: Option<Spanned<String>>,
    pub(super) after_drain: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawExpect {
    #[serde(default)]
    pub(super) pass: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) fail: Vec<Spanned<String>>,
    pub(super) drain_slack_ms: Option<Spanned<i64>>,
    pub(super) takeover_within_ms: Option<Spanned<i64>>,
}
