//! The reference servers, built on the `handoff` library: `handoff-echo` (a line protocol over
//! TCP or a unix socket) and `handoff-http` (minimal HTTP/1.1). Every reply names the process
//! and generation that served it, so a client can tell generations apart across a restart.
//!
//! Both share one lifecycle ([`run`]): inherit or bind the listener, install the signal
//! triggers (SIGHUP upgrades, SIGTERM/SIGINT stop), report ready, accept until handed over or
//! stopped, then drain and exit. They print one event line per step on stdout, which tests
//! and the conformance harness read:
//!
//! ```text
//! ready pid=<pid> gen=<n> listen=<addr>
//! upgrade started pid=<pid> child=<cpid>
//! upgrade ok pid=<pid> child=<cpid>
//! upgrade failed pid=<pid> child=<cpid> reason=<text>
//! upgrade refused pid=<pid> reason=<text>
//! upgrade resumed pid=<pid> child=<cpid> reason=<text>   (the child died in the rollback window)
//! draining pid=<pid> gen=<n> connections=<k>
//! resumed pid=<pid> gen=<n> listen=<addr>                (serving again after that)
//! exit pid=<pid> gen=<n> remaining=<k>
//! ballast pid=<pid> mb=<n>                               (with --ballast-mb, once touched)
//! ```

pub mod cli;
pub mod ctl;
mod echo;
mod fail;
mod http;
mod serve;

pub use fail::FailMode;
pub use serve::{Config, Listen, Protocol, ServerError, run};
