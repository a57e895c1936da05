//! What a run tells whoever watches it (a progress line): where it stands, at each of its
//! steps and every [`WATCH_EVERY`] in between.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::journal::Journal;

/// A receiver of a run's [`RunProgress`], called on the runner's thread (so it must be quick).
pub type Watch = Arc<dyn Fn(&RunProgress) + Send + Sync>;

/// How often a [`Watch`] is told, at most, between the run's steps.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Where a run stands.
#[derive(Clone, Debug, Default)]
pub struct RunProgress {
    /// Since the target was spawned.
    pub elapsed: Duration,
    /// Connections ended so far (judged ones; not those started after the final stop).
    pub connections: u64,
    /// Of those, the ones that did not end `ok`.
    pub failures: u64,
    /// The runner's last step, e.g. `ready`, `Restart -> pid 4242 (120 connections open)`.
    pub last_event: String,
}

/// The runner's side: the watch, the last step, and when it was last told.
pub(super) struct Watcher {
    watch: Option<Watch>,
    t0: Instant,
    last_event: RefCell<String>,
    told: Cell<Instant>,
}

impl Watcher {
    pub(super) fn new(watch: Option<Watch>, t0: Instant) -> Watcher {
        Watcher {
            watch,
            t0,
            last_event: RefCell::new(String::new()),
            told: Cell::new(t0),
        }
    }

    /// The run took a step: tell the watch at once.
    pub(super) fn step(&self, msg: std::fmt::Arguments<'_>, journal: &Mutex<Journal>) {
        if self.watch.is_some() {
            *self.last_event.borrow_mut() = msg.to_string();
            self.tell(journal);
        }
    }

    /// The run is waiting at `now`: tell the watch if it was not told for [`WATCH_EVERY`].
    pub(super) fn tick(&self, now: Instant, journal: &Mutex<Journal>) {
        if self.watch.is_some() && now.duration_since(self.told.get()) >= WATCH_EVERY {
            self.tell(journal);
        }
    }

    fn tell(&self, journal: &Mutex<Journal>) {
        let Some(watch) = &self.watch else {
            return;
        };
        let (connections, failures) = journal.lock().unwrap_or_else(|p| p.into_inner()).counts();
        self.told.set(Instant::now());
        watch(&RunProgress {
            elapsed: self.t0.elapsed(),
            connections,
            failures,
            last_event: self.last_event.borrow().clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_told_at_once_and_a_wait_at_most_every_interval() {
        let seen: Arc<Mutex<Vec<RunProgress>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let t0 = Instant::now();
        let w = Watcher::new(
            Some(Arc::new(move |p: &RunProgress| {
                sink.lock().unwrap().push(p.clone())
            })),
            t0,
        );
        let journal = Mutex::new(Journal::new(10));
        w.step(format_args!("ready"), &journal);
        let told = w.told.get();
        w.tick(told + WATCH_EVERY / 2, &journal);
        assert_eq!(seen.lock().unwrap().len(), 1, "not again so soon");
        w.tick(told + WATCH_EVERY, &journal);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|p| p.last_event == "ready"));
    }
}
