//! When each client acts: its start, its random phase and the jitter of its pauses, all drawn
//! from the run's seed, so that no fixed-period gap can hide between the clients and a seed
//! replays every draw.
//!
//! Clients that start together and meet the same latency stay in lockstep: 16 clients on
//! 200 ms requests all connect at the same instants, 210 ms apart, and a 50 ms outage that
//! falls between two of those instants is never seen. So each client, unless the scenario
//! turns it off (`random-phase = false`):
//! - starts at a random point of its ramp slot (client k of n: within `[k, k + 1) * ramp / n`);
//! - ends its first connection after a random number of requests (1 ..= `requests-per-conn`),
//!   so that the connects of keep-alive clients spread over the connection's cycle;
//! - once it has its first reply, it knows its own cycle (that reply's latency plus the
//!   interval) and pauses, once, a random part of it, so that its requests spread over the
//!   cycle, whatever the server's latency, which is not known in advance.
//!
//! And every pause between requests is drawn from `interval * [1 - jitter, 1 + jitter]`, so
//! that clients do not fall back into step.
//!
//! The draws are splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", 2014), seeded from the run's seed and the client's number: each client's draws
//! do not depend on how the tasks are scheduled.

use std::time::Duration;

use crate::model::LoadSpec;

/// A client's stream of random draws.
#[derive(Clone, Debug)]
struct Draws {
    state: u64,
}

impl Draws {
    fn new(seed: u64, client: u32) -> Draws {
        let mut d = Draws {
            state: seed ^ u64::from(client).wrapping_mul(0xD1B5_4A32_D192_ED03),
        };
        // Mix once, so that neighbouring clients' streams do not start alike.
        d.next();
        d
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `1 ..= n`.
    fn one_to(&mut self, n: u32) -> u32 {
        1 + (self.unit() * f64::from(n)) as u32
    }
}

/// The phase shift a client takes once, after its first reply.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shift {
    /// Not known yet: no reply so far.
    Waiting,
    /// Its cycle is known: the next pause is longer by a random part of it.
    Due(Duration),
    /// Taken, or not wanted.
    Done,
}

/// One client's pacing (see the module docs).
#[derive(Clone, Debug)]
pub(super) struct Pacing {
    draws: Draws,
    jitter: f64,
    shift: Shift,
}

impl Pacing {
    /// The pacing of client `client` of `spec`, from `seed`.
    pub(super) fn new(seed: u64, client: u32, spec: &LoadSpec) -> Pacing {
        Pacing {
            draws: Draws::new(seed, client),
            jitter: spec.jitter,
            shift: if spec.random_phase {
                Shift::Waiting
            } else {
                Shift::Done
            },
        }
    }

    /// Exact pauses and no phase: a burst's connections, which are meant to go together.
    pub(super) fn fixed() -> Pacing {
        Pacing {
            draws: Draws::new(0, 0),
            jitter: 0.0,
            shift: Shift::Done,
        }
    }

    /// When client `client` of `spec` starts, counted from the start of the load: its ramp
    /// slot's start, or a random point of its slot.
    pub(super) fn start(&mut self, client: u32, spec: &LoadSpec) -> Duration {
        let n = spec.clients.max(1);
        let slot_start = spec.ramp.checked_mul(client).map_or(spec.ramp, |d| d / n);
        if !spec.random_phase {
            return slot_start;
        }
        let slot = spec.ramp / n;
        (slot_start + slot.mul_f64(self.draws.unit())).min(spec.ramp)
    }

    /// How many requests the client's first connection carries, of `per_conn`: all of them,
    /// or with a random phase a random number from 1 (so that keep-alive clients do not all
    /// reconnect at once).
    pub(super) fn first_connection(&mut self, per_conn: u32) -> u32 {
        if self.shift == Shift::Done || per_conn <= 1 || per_conn == u32::MAX {
            return per_conn;
        }
        self.draws.one_to(per_conn)
    }

    /// A reply came `latency` after its request: the first one tells the client's cycle.
    pub(super) fn replied(&mut self, latency: Duration, interval: Duration) {
        if self.shift == Shift::Waiting {
            self.shift = Shift::Due(latency + interval);
        }
    }

    /// The next pause between two requests (or connections) of the client: `interval`,
    /// jittered, and once, after the first reply, longer by a random part of the cycle.
    pub(super) fn pause(&mut self, interval: Duration) -> Duration {
        let mut pause = if self.jitter > 0.0 && !interval.is_zero() {
            interval.mul_f64(1.0 + self.jitter * (2.0 * self.draws.unit() - 1.0))
        } else {
            interval
        };
        if let Shift::Due(cycle) = self.shift {
            pause += cycle.mul_f64(self.draws.unit());
            self.shift = Shift::Done;
        }
        pause
    }
}

/// A seed for a run that names none: different from run to run (the time and the process),
/// and recorded, so that the run can be replayed.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut d = Draws::new(
        nanos ^ (u64::from(std::process::id()) << 32),
        COUNTER.fetch_add(1, Ordering::Relaxed) as u32,
    );
    // Scenario files hold integers up to i64::MAX: keep the seed writable there.
    d.next() >> 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Profile;
    use crate::scenario;

    fn spec(clients: u32, ramp_ms: u64) -> LoadSpec {
        let mut s = scenario::inline("t", &["x"], Duration::from_secs(1)).load;
        s.clients = clients;
        s.ramp = Duration::from_millis(ramp_ms);
        s.profile = Profile::Slow;
        s
    }

    #[test]
    fn the_same_seed_draws_the_same_and_another_seed_not() {
        let s = spec(4, 400);
        let draw = |seed: u64| {
            (0..4)
                .map(|c| {
                    let mut p = Pacing::new(seed, c, &s);
                    let start = p.start(c, &s);
                    let first = p.first_connection(5);
                    p.replied(Duration::from_millis(200), Duration::from_millis(10));
                    (start, first, p.pause(Duration::from_millis(10)))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn starts_fall_in_their_ramp_slots() {
        let s = spec(4, 400);
        for seed in 0..50 {
            for c in 0..4u32 {
                let at = Pacing::new(seed, c, &s).start(c, &s).as_millis() as u32;
                assert!((c * 100..(c + 1) * 100).contains(&at), "client {c} at {at}");
            }
        }
        let mut fixed = s.clone();
        fixed.random_phase = false;
        assert_eq!(
            Pacing::new(3, 2, &fixed).start(2, &fixed),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn the_phase_shift_spreads_over_the_cycle_once() {
        let s = spec(1, 0);
        let cycle = Duration::from_millis(210);
        let mut shifts = Vec::new();
        for seed in 0..200 {
            let mut p = Pacing::new(seed, 0, &s);
            // No shift before the first reply: the cycle is not known.
            assert!(p.pause(Duration::from_millis(10)) <= Duration::from_millis(15));
            p.replied(Duration::from_millis(200), Duration::from_millis(10));
            let shifted = p.pause(Duration::from_millis(10));
            assert!(shifted <= cycle + Duration::from_millis(15), "{shifted:?}");
            shifts.push(shifted);
            // Once only.
            p.replied(Duration::from_millis(200), Duration::from_millis(10));
            assert!(p.pause(Duration::from_millis(10)) <= Duration::from_millis(15));
        }
        // Every fifth of the cycle gets some of the 200 clients.
        for fifth in 0..5u32 {
            let (lo, hi) = (cycle * fifth / 5, cycle * (fifth + 1) / 5);
            assert!(
                shifts.iter().any(|d| (lo..hi).contains(d)),
                "none in {lo:?}..{hi:?}: {shifts:?}"
            );
        }
    }

    #[test]
    fn jitter_keeps_pauses_within_bounds_and_zero_keeps_them_exact() {
        let mut s = spec(1, 0);
        s.random_phase = false;
        s.jitter = 0.5;
        let mut p = Pacing::new(1, 0, &s);
        let pauses: Vec<Duration> = (0..100)
            .map(|_| p.pause(Duration::from_millis(10)))
            .collect();
        assert!(
            pauses
                .iter()
                .all(|d| (Duration::from_millis(5)..=Duration::from_millis(15)).contains(d))
        );
        assert!(pauses.iter().any(|d| *d != pauses[0]), "{pauses:?}");
        s.jitter = 0.0;
        let mut p = Pacing::new(1, 0, &s);
        assert_eq!(
            p.pause(Duration::from_millis(10)),
            Duration::from_millis(10)
        );
        assert_eq!(p.first_connection(5), 5);
    }

    #[test]
    fn first_connections_vary_in_length() {
        let s = spec(1, 0);
        let lengths: std::collections::BTreeSet<u32> = (0..100)
            .map(|seed| Pacing::new(seed, 0, &s).first_connection(5))
            .collect();
        assert_eq!(lengths, (1..=5).collect());
        assert_eq!(Pacing::new(1, 0, &s).first_connection(u32::MAX), u32::MAX);
        assert_eq!(Pacing::new(1, 0, &s).first_connection(1), 1);
    }

    #[test]
    fn fresh_seeds_differ_and_fit_a_scenario_file() {
        let (a, b) = (fresh_seed(), fresh_seed());
        assert_ne!(a, b);
        assert!(i64::try_from(a).is_ok() && i64::try_from(b).is_ok());
    }
}
