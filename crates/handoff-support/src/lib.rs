//! What the reference servers, the known-bad servers, the tests and the bench share, outside
//! the `handoff` library (which keeps its own `sys` module and depends on none of this):
//!
//! - [`flags`]: the command line every server of this repository takes (`--listen`,
//!   `--delay-ms`, `--pid-file`, `--drain-timeout-ms`, `--ready-timeout-ms`,
//!   `--fail-next-file`), declared once;
//! - [`process`]: pidfds (wait for a process to exit, signal it without hitting a reused pid),
//!   waiting for a descriptor to be readable, close-on-exec pipes, and placing descriptors at
//!   fixed numbers in a child (the way a next generation is started).

pub mod flags;
pub mod process;

pub use flags::{Listen, ServerFlags};
pub use process::{Pidfd, pipe, place_fds, reap_until_none_left, wait_gone, wait_readable};
