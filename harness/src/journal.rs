//! The connection journal: every connection the load makes is folded into a
//! [`JournalSummary`] as it ends, so a long run stays in bounded memory.
//!
//! Histograms and counters are kept for everything, and over time in a bounded number of
//! buckets ([`Series`], for the HTML timeline); a full [`ConnRecord`] is kept only for a
//! failed connection, and only for the first [`Journal::failures_cap`] of them (the rest are
//! counted in `failures_dropped`).
//!
//! Connections that *start* after the final stop was triggered are not judged: the server is
//! allowed to refuse them. They are counted in `connections_after_stop` and nowhere else (not in
//! `connections`, `outcomes` or `failures`). Replies they got are still credited to `served_by`,
//! because who served a reply is a fact whenever it happened.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::model::{ConnRecord, JournalSummary, LatencySummary, Outcome, START_BUCKET, ServedBy};

mod series;

pub use series::{FIRST_WIDTH, LoadBucket, LoadSeries, MAX_BUCKETS, Series};

/// How many failed connections are kept in full by default.
pub const DEFAULT_FAILURES_CAP: usize = 1000;

/// Latencies above this are clamped into the top bucket (an hour is far beyond any timeout).
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// The aggregating journal. Not thread-safe by itself: the load shares it behind a mutex.
#[derive(Debug)]
pub struct Journal {
    summary: JournalSummary,
    failures_cap: usize,
    latency: Histogram<u64>,
    connect: Histogram<u64>,
    /// Connections established and not yet ended.
    open: u64,
    /// The load over time.
    series: Series,
}

impl Journal {
    /// An empty journal that keeps at most `failures_cap` failed connections in full.
    pub fn new(failures_cap: usize) -> Journal {
        let mut summary = JournalSummary::default();
        for outcome in Outcome::ALL {
            summary.outcomes.insert(outcome.id().to_string(), 0);
        }
        Journal {
            summary,
            failures_cap,
            latency: new_histogram(),
            connect: new_histogram(),
            open: 0,
            series: Series::default(),
        }
    }

    /// How many failed connections are kept in full.
    pub fn failures_cap(&self) -> usize {
        self.failures_cap
    }

    /// The load started its clients at `at` (offset from the run's t0). The first call counts.
    pub fn record_load_started(&mut self, at: Duration) {
        self.summary.load_started.get_or_insert(at);
    }

    /// The load was told to stop at `at` (offset from the run's t0). The first call counts.
    /// Replies completed after it are also counted in `replies_after_stop`.
    pub fn record_load_stopped(&mut self, at: Duration) {
        self.summary.load_stopped.get_or_insert(at);
    }

    /// A complete reply arrived at `at` (offset from the run's t0), `latency` after its request
    /// was sent, naming `pid` as its server (if it named one).
    pub fn record_reply(&mut self, at: Duration, latency: Duration, pid: Option<u32>) {
        self.summary.replies += 1;
        if self.summary.load_stopped.is_some_and(|stop| at > stop) {
            self.summary.replies_after_stop += 1;
        }
        self.latency.saturating_record(micros(latency));
        self.series.replied(at, latency);
        match pid {
            Some(pid) => {
                let sent = at.saturating_sub(latency);
                let entry = self.summary.served_by.entry(pid).or_insert(ServedBy {
                    replies: 0,
                    first_sent: sent,
                    first_reply: at,
                    last_reply: at,
                });
                entry.replies += 1;
                entry.first_sent = entry.first_sent.min(sent);
                entry.first_reply = entry.first_reply.min(at);
                entry.last_reply = entry.last_reply.max(at);
            }
            None => self.summary.replies_without_pid += 1,
        }
    }

    /// Per pid that served so far, its replies.
    pub fn served_by(&self) -> &BTreeMap<u32, ServedBy> {
        &self.summary.served_by
    }

    /// A connect completed at `at` (offset from the run's t0) after `latency`: the connection
    /// is open until its [`Journal::record_conn`].
    pub fn record_connect(&mut self, at: Duration, latency: Duration) {
        self.connect.saturating_record(micros(latency));
        self.series.connected(at, latency);
        self.open += 1;
        self.summary.open_peak = self.summary.open_peak.max(self.open);
    }

    /// Connections established (see [`Journal::record_connect`]) and not ended yet.
    pub fn open_connections(&self) -> u64 {
        self.open
    }

    /// The load could not even try a connection because of a problem on the harness's side
    /// (out of local ports, out of descriptors): not the server's fault, so it is not an
    /// outcome, but it is counted so that checkers can say the evidence is incomplete.
    pub fn record_harness_error(&mut self, detail: String) {
        self.summary.harness_errors += 1;
        if self.summary.harness_error_example.is_none() {
            self.summary.harness_error_example = Some(detail);
        }
    }

    /// A connection ended. `after_stop` is true when it started after the final stop was
    /// triggered (see the module docs: then it is only counted).
    pub fn record_conn(&mut self, conn: ConnRecord, after_stop: bool) {
        if conn.connected.is_some() {
            self.open = self.open.saturating_sub(1);
        }
        self.series.ended(
            conn.done,
            conn.outcome,
            conn.connected.is_some(),
            !after_stop,
        );
        if after_stop {
            self.summary.connections_after_stop += 1;
            return;
        }
        self.summary.connections += 1;
        self.series.started(conn.started);
        let bucket = (conn.started.as_nanos() / START_BUCKET.as_nanos()) as usize;
        if bucket >= self.summary.starts.len() {
            self.summary.starts.resize(bucket + 1, 0);
        }
        self.summary.starts[bucket] += 1;
        *self
            .summary
            .outcomes
            .entry(conn.outcome.id().to_string())
            .or_insert(0) += 1;
        if conn.outcome != Outcome::Ok {
            if self.summary.failures.len() < self.failures_cap {
                self.summary.failures.push(conn);
            } else {
                self.summary.failures_dropped += 1;
            }
        }
    }

    /// Connections ended so far (not counting those started after the final stop), and how
    /// many of them failed: cheap, for progress lines.
    pub fn counts(&self) -> (u64, u64) {
        let ok = self.summary.outcomes.get(Outcome::Ok.id()).copied();
        let connections = self.summary.connections;
        (connections, connections - ok.unwrap_or(0))
    }

    /// The summary so far; failures sorted by start time (earliest first).
    pub fn summary(&self) -> JournalSummary {
        let mut summary = self.summary.clone();
        summary.failures.sort_by_key(|c| (c.started, c.id));
        summary.latency_us = latency_summary(&self.latency);
        summary.connect_us = latency_summary(&self.connect);
        summary.series = self.series.summary();
        summary
    }
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants within what hdrhistogram accepts (low >= 1, high >= 2 * low,
    // sigfig <= 5), so this cannot fail.
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn latency_summary(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64, outcome: Outcome, started_ms: u64) -> ConnRecord {
        ConnRecord {
            id,
            client: 0,
            started: Duration::from_millis(started_ms),
            connected: None,
            first_byte: None,
            done: Duration::from_millis(started_ms + 1),
            outcome,
            replies: 0,
            pid: None,
            detail: String::new(),
        }
    }

    #[test]
    fn every_outcome_is_present_even_when_zero() {
        let j = Journal::new(10);
        let s = j.summary();
        for o in Outcome::ALL {
            assert_eq!(s.outcomes.get(o.id()), Some(&0), "{}", o.id());
        }
        assert_eq!(s.latency_us.count, 0);
    }

    #[test]
    fn failures_are_capped_and_the_rest_counted() {
        let mut j = Journal::new(3);
        for i in 0..10 {
            j.record_conn(conn(i, Outcome::Reset, 100 - i), false);
        }
        j.record_conn(conn(10, Outcome::Ok, 5), false);
        let s = j.summary();
        assert_eq!(s.connections, 11);
        assert_eq!(s.outcomes["reset"], 10);
        assert_eq!(s.outcomes["ok"], 1);
        assert_eq!(s.failures.len(), 3);
        assert_eq!(s.failures_dropped, 7);
        // Kept in the order they were recorded, reported earliest start first.
        let ids: Vec<u64> = s.failures.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![2, 1, 0]);
    }

    #[test]
    fn connections_after_the_stop_are_only_counted() {
        let mut j = Journal::new(3);
        j.record_conn(conn(0, Outcome::Refused, 1), true);
        j.record_conn(conn(1, Outcome::Ok, 1), true);
        let s = j.summary();
        assert_eq!(s.connections, 0);
        assert_eq!(s.connections_after_stop, 2);
        assert_eq!(s.outcomes["refused"], 0);
        assert!(s.failures.is_empty());
    }

    #[test]
    fn replies_are_credited_per_pid_with_first_and_last() {
        let mut j = Journal::new(3);
        let ms = Duration::from_millis;
        j.record_reply(ms(30), ms(2), Some(7));
        j.record_reply(ms(10), ms(4), Some(7));
        j.record_reply(ms(20), ms(6), Some(8));
        j.record_reply(ms(25), ms(8), None);
        let s = j.summary();
        assert_eq!(s.replies, 4);
        assert_eq!(s.replies_without_pid, 1);
        assert_eq!(s.served_by[&7].replies, 2);
        assert_eq!(s.served_by[&7].first_reply, ms(10));
        // The earliest request answered was sent at 30 - 2 = 28 or 10 - 4 = 6.
        assert_eq!(s.served_by[&7].first_sent, ms(6));
        assert_eq!(s.served_by[&8].first_sent, ms(14));
        assert_eq!(s.served_by[&7].last_reply, ms(30));
        assert_eq!(s.served_by[&8].replies, 1);
        assert_eq!(s.latency_us.count, 4);
        assert!(s.latency_us.p50 >= 3_990 && s.latency_us.p50 <= 4_010);
        assert!(s.latency_us.max >= 7_990 && s.latency_us.max <= 8_010);
    }

    #[test]
    fn the_load_window_is_kept_and_replies_after_it_are_counted_apart() {
        let mut j = Journal::new(3);
        let ms = Duration::from_millis;
        j.record_load_started(ms(5));
        j.record_load_started(ms(9));
        j.record_reply(ms(10), ms(1), Some(7));
        j.record_load_stopped(ms(20));
        j.record_load_stopped(ms(30));
        j.record_reply(ms(20), ms(1), Some(7));
        j.record_reply(ms(21), ms(1), Some(7));
        let s = j.summary();
        assert_eq!(
            (s.load_started, s.load_stopped),
            (Some(ms(5)), Some(ms(20)))
        );
        assert_eq!(s.replies, 3);
        assert_eq!(s.replies_after_stop, 1);
    }

    #[test]
    fn open_connections_are_counted_with_their_peak() {
        let mut j = Journal::new(3);
        let ms = Duration::from_millis;
        for _ in 0..3 {
            j.record_connect(ms(1), ms(1));
        }
        let mut c = conn(0, Outcome::Ok, 1);
        c.connected = Some(ms(2));
        j.record_conn(c.clone(), false);
        j.record_conn(c.clone(), true);
        // Never connected: not open, so not closed either.
        j.record_conn(conn(1, Outcome::Refused, 1), false);
        assert_eq!(j.open_connections(), 1);
        j.record_connect(ms(1), ms(1));
        assert_eq!(j.open_connections(), 2);
        assert_eq!(j.summary().open_peak, 3);
    }

    #[test]
    fn harness_errors_keep_the_first_example() {
        let mut j = Journal::new(3);
        j.record_harness_error("first".into());
        j.record_harness_error("second".into());
        let s = j.summary();
        assert_eq!(s.harness_errors, 2);
        assert_eq!(s.harness_error_example.as_deref(), Some("first"));
        assert_eq!(s.connections, 0);
    }
}
