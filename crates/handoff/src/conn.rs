//! Counting the connections a generation still holds, so that it can drain before it exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::machine::{Drain, DrainStep, Tick};

/// Counts live connections. Cloning is cheap and every clone counts the same connections.
///
/// # Examples
/// ```
/// let tracker = handoff::ConnTracker::new();
/// let guard = tracker.guard(); // on accept
/// assert_eq!(tracker.active(), 1);
/// drop(guard); // when the connection is done
/// assert_eq!(tracker.wait_idle(std::time::Duration::from_secs(1)), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ConnTracker {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    active: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
    #[cfg(feature = "tokio")]
    idle_async: tokio::sync::Notify,
}

/// Held for as long as a connection is open; dropping it marks the connection done.
#[derive(Debug)]
#[must_use = "the connection counts as open only while the guard lives"]
pub struct ConnGuard {
    inner: Arc<Inner>,
}

impl ConnTracker {
    /// A tracker with no connections.
    pub fn new() -> ConnTracker {
        ConnTracker::default()
    }

    /// Counts one more connection until the guard is dropped. One atomic increment.
    pub fn guard(&self) -> ConnGuard {
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        ConnGuard {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Blocks until no connection is open or `timeout` has passed; returns how many are still
    /// open (0 means drained).
    pub fn wait_idle(&self, timeout: Duration) -> usize {
        let origin = Instant::now();
        self.wait_drained(Drain::new(Tick::ZERO, timeout), origin, || false)
    }

    /// Blocks until `drain`, whose clock starts at `origin`, says it is over, or `interrupted`
    /// says so (checked at every wake-up; [`wake`](ConnTracker::wake) wakes the waiters);
    /// returns how many connections are still open.
    pub(crate) fn wait_drained(
        &self,
        drain: Drain,
        origin: Instant,
        interrupted: impl Fn() -> bool,
    ) -> usize {
        let mut lock = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if interrupted() {
                return self.active();
            }
            let now = Tick::after_origin(origin.elapsed());
            let deadline = match drain.poll(now, self.active()) {
                DrainStep::Done => return 0,
                DrainStep::Cut { left } => return left,
                DrainStep::WaitUntil(deadline) => deadline,
            };
            lock = self
                .inner
                .idle
                .wait_timeout(lock, now.until(deadline))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Resolves when no connection is open or `timeout` has passed; returns how many are still
    /// open (0 means drained).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future has no effect on the count.
    #[cfg(feature = "tokio")]
    pub async fn idle(&self, timeout: Duration) -> usize {
        let origin = tokio::time::Instant::now();
        self.drained(Drain::new(Tick::ZERO, timeout), origin, || false)
            .await
    }

    /// Resolves when `drain`, whose clock starts at `origin`, says it is over; returns how many
    /// connections are still open.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future has no effect on the count.
    #[cfg(feature = "tokio")]
    pub(crate) async fn drained(
        &self,
        drain: Drain,
        origin: tokio::time::Instant,
        interrupted: impl Fn() -> bool,
    ) -> usize {
        loop {
            // Register interest before reading the count, so a guard dropped in between is not
            // missed.
            let notified = self.inner.idle_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if interrupted() {
                return self.active();
            }
            let now = Tick::after_origin(origin.elapsed());
            let deadline = match drain.poll(now, self.active()) {
                DrainStep::Done => return 0,
                DrainStep::Cut { left } => return left,
                DrainStep::WaitUntil(deadline) => deadline,
            };
            let _ = tokio::time::timeout(now.until(deadline), notified).await;
        }
    }
}

impl ConnTracker {
    /// Wakes every drain waiting on this tracker, so that it checks whether it was
    /// interrupted.
    pub(crate) fn wake(&self) {
        drop(self.inner.lock.lock().unwrap_or_else(|p| p.into_inner()));
        self.inner.idle.notify_all();
        #[cfg(feature = "tokio")]
        self.inner.idle_async.notify_waiters();
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Take the lock so a waiter between its count check and its wait cannot miss this.
            drop(self.inner.lock.lock().unwrap_or_else(|p| p.into_inner()));
            self.inner.idle.notify_all();
            #[cfg(feature = "tokio")]
            self.inner.idle_async.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_idle_returns_when_the_last_guard_drops() {
        let tracker = ConnTracker::new();
        let guards: Vec<_> = (0..3).map(|_| tracker.guard()).collect();
        let t = std::thread::spawn(move || drop(guards));
        assert_eq!(tracker.wait_idle(Duration::from_secs(10)), 0);
        t.join().unwrap();
    }

    #[test]
    fn wait_idle_gives_up_at_the_deadline() {
        let tracker = ConnTracker::new();
        let _g = tracker.guard();
        assert_eq!(tracker.wait_idle(Duration::from_millis(20)), 1);
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn idle_resolves_async() {
        let tracker = ConnTracker::new();
        let g = tracker.guard();
        let waiter = tokio::spawn({
            let t = tracker.clone();
            async move { t.idle(Duration::from_secs(10)).await }
        });
        drop(g);
        assert_eq!(waiter.await.unwrap(), 0);
        let _g = tracker.guard();
        assert_eq!(tracker.idle(Duration::from_millis(10)).await, 1);
    }
}
