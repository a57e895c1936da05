//! The load over time: per time bucket, connections started and ended by outcome, the most
//! held open at once, and connect and reply latency; buckets widen as a run grows (pairs merge),
//! so a run of any length keeps at most [`MAX_BUCKETS`] of them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::model::{LatencySummary, Outcome};

/// The most buckets a series keeps: a run longer than this many bucket widths doubles the
/// width and merges the buckets in pairs.
pub const MAX_BUCKETS: usize = 200;

/// The width of the buckets of a series that never needed merging.
pub const FIRST_WIDTH: Duration = Duration::from_millis(10);

/// Latencies above this (an hour, beyond any timeout) are clamped.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// The series as reports see it (inside the journal's summary).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSeries {
    /// The width of every bucket: bucket `k` covers `k * bucket .. (k + 1) * bucket` from the
    /// run's start.
    pub bucket: Duration,
    /// From the run's start to the last thing journaled.
    pub buckets: Vec<LoadBucket>,
}

/// One bucket of a [`LoadSeries`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadBucket {
    /// Connections that started in it (judged ones: not those after the final stop).
    pub started: u64,
    /// Connections that ended in it, per outcome id; outcomes with none are left out.
    pub ended: BTreeMap<String, u64>,
    /// The most connections held established at once during it.
    pub open_peak: u64,
    /// Connect latency of the connects that completed in it, microseconds; left out when none
    /// did.
    #[serde(skip_serializing_if = "none")]
    pub connect_us: LatencySummary,
    /// Reply latency of the replies that completed in it, microseconds; left out when none did.
    #[serde(skip_serializing_if = "none")]
    pub reply_us: LatencySummary,
}

/// The series being recorded.
#[derive(Debug)]
pub struct Series {
    width: Duration,
    buckets: Vec<Bucket>,
    /// Connections established now: a bucket opened later starts from it.
    open: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    started: u64,
    ended: [u64; Outcome::ALL.len()],
    open_peak: u64,
    connect: Option<Histogram<u32>>,
    reply: Option<Histogram<u32>>,
}

impl Default for Series {
    fn default() -> Series {
        Series {
            width: FIRST_WIDTH,
            buckets: Vec::new(),
            open: 0,
        }
    }
}

impl Series {
    /// A connection started at `at`.
    pub fn started(&mut self, at: Duration) {
        self.bucket(at).started += 1;
    }

    /// A connect completed at `at` after `latency`; the connection is open until [`Series::ended`].
    pub fn connected(&mut self, at: Duration, latency: Duration) {
        self.open += 1;
        let open = self.open;
        let b = self.bucket(at);
        b.open_peak = b.open_peak.max(open);
        record(&mut b.connect, latency);
    }

    /// A reply completed at `at`, `latency` after its request.
    pub fn replied(&mut self, at: Duration, latency: Duration) {
        record(&mut self.bucket(at).reply, latency);
    }

    /// A connection ended at `done` with `outcome`; `was_open` if it had connected. `judged`
    /// is false for one started after the final stop: it only closes.
    pub fn ended(&mut self, done: Duration, outcome: Outcome, was_open: bool, judged: bool) {
        let b = self.bucket(done);
        if judged {
            let k = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
            b.ended[k] += 1;
        }
        if was_open {
            self.open = self.open.saturating_sub(1);
        }
    }

    /// The series as reports see it.
    pub fn summary(&self) -> LoadSeries {
        let buckets = self
            .buckets
            .iter()
            .map(|b| LoadBucket {
                started: b.started,
                ended: Outcome::ALL
                    .iter()
                    .zip(b.ended)
                    .filter(|(_, n)| *n > 0)
                    .map(|(o, n)| (o.id().to_string(), n))
                    .collect(),
                open_peak: b.open_peak,
                connect_us: percentiles(b.connect.as_ref()),
                reply_us: percentiles(b.reply.as_ref()),
            })
            .collect();
        LoadSeries {
            bucket: self.width,
            buckets,
        }
    }

    /// The bucket of `at`, widening the buckets first if `at` is past the last one the
    /// current width allows; buckets opened on the way start with the connections open now.
    fn bucket(&mut self, at: Duration) -> &mut Bucket {
        let mut k = index(at, self.width);
        while k >= MAX_BUCKETS {
            self.widen();
            k = index(at, self.width);
        }
        let open = self.open;
        while self.buckets.len() <= k {
            self.buckets.push(Bucket {
                open_peak: open,
                ..Bucket::default()
            });
        }
        &mut self.buckets[k]
    }

    /// Doubles the width: buckets `2i` and `2i + 1` become bucket `i`.
    fn widen(&mut self) {
        self.width *= 2;
        let old = std::mem::take(&mut self.buckets);
        let mut pairs = old.into_iter();
        while let Some(mut a) = pairs.next() {
            if let Some(b) = pairs.next() {
                a.started += b.started;
                for (x, y) in a.ended.iter_mut().zip(b.ended) {
                    *x += y;
                }
                a.open_peak = a.open_peak.max(b.open_peak);
                merge(&mut a.connect, b.connect);
                merge(&mut a.reply, b.reply);
            }
            self.buckets.push(a);
        }
    }
}

fn none(l: &LatencySummary) -> bool {
    l.count == 0
}

fn index(at: Duration, width: Duration) -> usize {
    usize::try_from(at.as_nanos() / width.as_nanos()).unwrap_or(usize::MAX)
}

/// One significant digit (within about 6%) is plenty for a chart, and keeps a bucket's two
/// histograms under 2 KiB each.
fn new_histogram() -> Histogram<u32> {
    // Constant bounds within what hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 1).expect("constant histogram bounds are valid")
}

fn record(h: &mut Option<Histogram<u32>>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    h.get_or_insert_with(new_histogram)
        .saturating_record(us.clamp(1, MAX_TRACKED_US));
}

fn merge(into: &mut Option<Histogram<u32>>, from: Option<Histogram<u32>>) {
    match (into.as_mut(), from) {
        (Some(a), Some(b)) => {
            // Same bounds on both sides, so adding cannot fail; saturate rather than panic.
            let _ = a.add(&b);
        }
        (None, Some(b)) => *into = Some(b),
        (_, None) => {}
    }
}

fn percentiles(h: Option<&Histogram<u32>>) -> LatencySummary {
    match h {
        Some(h) if !h.is_empty() => LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        },
        _ => LatencySummary::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_count_starts_ends_and_latency_where_they_happened() {
        let mut s = Series::default();
        s.started(ms(1));
        s.connected(ms(2), ms(1));
        s.replied(ms(25), ms(20));
        s.ended(ms(26), Outcome::Ok, true, true);
        s.started(ms(30));
        s.ended(ms(31), Outcome::Refused, false, true);
        let l = s.summary();
        assert_eq!(l.bucket, FIRST_WIDTH);
        assert_eq!(l.buckets.len(), 4);
        assert_eq!(l.buckets[0].started, 1);
        assert_eq!(l.buckets[0].open_peak, 1);
        assert_eq!(l.buckets[0].connect_us.count, 1);
        // The connection is still open in the bucket opened by its reply.
        assert_eq!(l.buckets[2].open_peak, 1);
        let p50 = l.buckets[2].reply_us.p50;
        assert!((19_000..=21_000).contains(&p50), "{p50}");
        assert_eq!(l.buckets[2].ended.get("ok"), Some(&1));
        assert_eq!(l.buckets[3].ended.get("refused"), Some(&1));
        assert_eq!(l.buckets[3].open_peak, 0);
    }

    #[test]
    fn a_long_run_stays_within_the_bucket_limit_and_keeps_every_count() {
        let mut s = Series::default();
        // An hour, a connection every 100 ms, each with a reply.
        let n = 36_000u64;
        for k in 0..n {
            let at = ms(k * 100);
            s.started(at);
            s.connected(at, Duration::from_micros(100 + k % 7));
            s.replied(at + ms(1), ms(1 + k % 3));
            s.ended(at + ms(2), Outcome::Ok, true, true);
        }
        let l = s.summary();
        assert!(l.buckets.len() <= MAX_BUCKETS, "{}", l.buckets.len());
        assert!(l.buckets.len() > MAX_BUCKETS / 2, "{}", l.buckets.len());
        assert!(l.bucket >= Duration::from_secs(3600) / MAX_BUCKETS as u32);
        let started: u64 = l.buckets.iter().map(|b| b.started).sum();
        let ended: u64 = l.buckets.iter().map(|b| b.ended["ok"]).sum();
        let replies: u64 = l.buckets.iter().map(|b| b.reply_us.count).sum();
        assert_eq!((started, ended, replies), (n, n, n));
        assert!(l.buckets.iter().all(|b| b.open_peak == 1));
    }

    #[test]
    fn connections_after_the_stop_only_close() {
        let mut s = Series::default();
        s.connected(ms(5), ms(1));
        s.ended(ms(6), Outcome::Reset, true, false);
        let l = s.summary();
        assert!(l.buckets[0].ended.is_empty());
        s.connected(ms(7), ms(1));
        assert_eq!(s.summary().buckets[0].open_peak, 1);
    }
}
