//! The conformance harness engine behind the `handoff` command.
//!
//! A scenario file ([`scenario`]) names a target server, a client load and a schedule of
//! restart/stop events. The runner ([`run`]) launches the target under a process observer
//! ([`observer`]), drives the load ([`load`]) and injects the events; the checkers ([`checkers`])
//! turn the resulting [`RunRecord`] into one [`Verdict`] per invariant and
//! [`checkers::judge`] sets each beside what the scenario expects; reports ([`report`]) print
//! them. [`explore`] draws random schedules and shrinks a failing one.
//!
//! [`cli`] is the `handoff` command line over all of it. Every libc call and `unsafe` block
//! is in the private `sys` module.
//!
//! This crate knows nothing of the `handoff` restart library: it reaches servers only through
//! the processes it launches.

pub mod checkers;
pub mod cli;
pub mod explore;
pub mod journal;
pub mod load;
pub mod model;
pub mod observer;
pub mod report;
pub mod run;
pub mod scenario;
mod sys;
pub mod target;
pub mod usage;

pub use model::{Invariant, Outcome, RunRecord, Scenario, Verdict};
