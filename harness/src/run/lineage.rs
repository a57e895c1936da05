//! The generations as the runner sees them while the run goes on: the record so far through
//! the same inference the checkers use at the end ([`crate::model::infer`]), for the events
//! that name a generation and for the waits on a drain.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Run, interrupted};
use crate::model::{Generation, Lineage, ListenerRecord, RunRecord, ServedBy};

impl Run<'_> {
    /// `listeners` with their readiness: its `ready pid=` line if it printed one, else the send
    /// time of the first request the process answered.
    pub(super) fn with_readiness(
        &self,
        mut listeners: Vec<ListenerRecord>,
        served_by: &BTreeMap<u32, ServedBy>,
    ) -> Vec<ListenerRecord> {
        let ready_lines = self.spawned.output.lock().ready_lines.clone();
        for l in &mut listeners {
            let by_reply = served_by.get(&l.pid).map(|s| s.first_sent);
            let by_line = ready_lines
                .iter()
                .filter(|(pid, _, _)| *pid == l.pid)
                .map(|(_, _, at)| *at)
                .min();
            // A target that says when it is ready is taken at its word; otherwise a request
            // queued before the process existed may be the first it answered, and the
            // process's readiness is then its appearance (see `model::infer`).
            l.ready_at = by_line.or(by_reply);
        }
        listeners
    }

    /// The generations as of the observer's last poll.
    pub(super) fn lineage_now(&self) -> Lineage {
        let served_by = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .served_by()
            .clone();
        let (processes, listeners) = self.observer.records_unsampled();
        let mut r = RunRecord {
            end: self.t0.elapsed(),
            injected: self.injected.clone(),
            processes,
            listeners: self.with_readiness(listeners, &served_by),
            ..RunRecord::default()
        };
        r.journal.served_by = served_by;
        crate::model::infer(&r, self.s.target.shape)
    }

    /// The generations alive now (a member not exited), oldest first.
    pub(super) fn live_generations(&self) -> Vec<Generation> {
        self.observer.scan();
        let lineage = self.lineage_now();
        live(&lineage, &self.observer.live_pids())
            .into_iter()
            .cloned()
            .collect()
    }

    /// Waits (bounded by `timeout`, or an interrupt) until at most one generation is alive: no
    /// superseded one still draining. Supervisors do not count.
    pub(super) fn wait_settled(&self, timeout: Duration) -> bool {
        self.observer.wait_until(timeout, interrupted, || {
            live(&self.lineage_now(), &self.observer.live_pids()).len() <= 1
        })
    }
}

/// The generations of `lineage` with a member among the `live` pids, oldest first.
pub(super) fn live<'l>(lineage: &'l Lineage, live: &[u32]) -> Vec<&'l Generation> {
    lineage
        .generations
        .iter()
        .filter(|g| g.members.iter().any(|pid| live.contains(pid)))
        .collect()
}
