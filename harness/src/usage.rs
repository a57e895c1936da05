//! The harness's own resources: its descriptor limit, and what a run cost it (peak resident
//! memory, CPU time), so that a report can say how heavy a scenario was for the harness
//! itself, not only for the target.

use std::fs;
use std::io;
use std::time::Duration;

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use nix::sys::time::TimeVal;
use serde::Serialize;

/// The descriptor limit (`RLIMIT_NOFILE`) before and after [`raise_fd_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at startup.
    pub was: u64,
    /// The soft limit now (the hard limit, when raising it succeeded).
    pub now: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises this process's soft descriptor limit to its hard limit, as a demanding user expects
/// of a load generator: every connection the load holds is a descriptor, and the default soft
/// limit (often 1024) is far below what a scale scenario needs.
///
/// The target inherits the raised limit (a child inherits its parent's limits), so a server
/// under test can hold as many connections as the load opens, up to the same hard limit.
///
/// # Errors
/// `getrlimit` or `setrlimit` failed; the limit is then unchanged.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        // Raising the soft limit up to the hard one needs no privilege.
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(FdLimit {
        was: soft,
        now: if soft < hard { hard } else { soft },
        hard,
    })
}

/// The current soft descriptor limit, if it can be read.
pub fn fd_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// What one run cost the harness process (the load, the observer, the runner together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HarnessUsage {
    /// Peak resident set size of the harness process, KiB. With `peak_rss_scope = "run"` the
    /// peak during this run (the kernel's high-water mark was reset when it began); with
    /// `"process"` the peak since the harness started (the reset was not possible), which
    /// includes earlier runs of the same invocation.
    pub peak_rss_kib: u64,
    pub peak_rss_scope: RssScope,
    /// Resident set size when the run ended, KiB.
    pub end_rss_kib: u64,
    /// CPU time the harness process spent during the run, user and system.
    pub cpu_user: Duration,
    pub cpu_system: Duration,
    /// The soft descriptor limit the harness (and so the target) ran with.
    pub fd_limit: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RssScope {
    Run,
    #[default]
    Process,
}

/// Taken when a run starts; [`UsageMeter::finish`] gives the run's [`HarnessUsage`].
#[derive(Debug)]
pub struct UsageMeter {
    scope: RssScope,
    cpu: Option<(Duration, Duration)>,
}

impl UsageMeter {
    /// Resets the kernel's peak-RSS mark of this process (`/proc/self/clear_refs`, "5") so that
    /// the peak is this run's, and notes the CPU time so far.
    pub fn start() -> UsageMeter {
        let scope = match fs::write("/proc/self/clear_refs", "5") {
            Ok(()) => RssScope::Run,
            Err(_) => RssScope::Process,
        };
        UsageMeter {
            scope,
            cpu: cpu_times(),
        }
    }

    /// The run's usage so far.
    pub fn finish(&self) -> HarnessUsage {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| status_kib(&status, name);
        let peak = field("VmHWM:").or_else(max_rss_kib).unwrap_or(0);
        let (cpu_user, cpu_system) = match (self.cpu, cpu_times()) {
            (Some((u0, s0)), Some((u1, s1))) => (u1.saturating_sub(u0), s1.saturating_sub(s0)),
            _ => (Duration::ZERO, Duration::ZERO),
        };
        HarnessUsage {
            peak_rss_kib: peak,
            peak_rss_scope: self.scope,
            end_rss_kib: field("VmRSS:").unwrap_or(0),
            cpu_user,
            cpu_system,
            fd_limit: fd_limit(),
        }
    }
}

/// A `Name:   1234 kB` line of `/proc/self/status`, in KiB.
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `getrusage(RUSAGE_SELF).ru_maxrss`: the process's lifetime peak, KiB.
fn max_rss_kib() -> Option<u64> {
    getrusage(UsageWho::RUSAGE_SELF)
        .ok()
        .map(|ru| ru.max_rss().max(0) as u64)
}

fn cpu_times() -> Option<(Duration, Duration)> {
    let tv = |t: TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    getrusage(UsageWho::RUSAGE_SELF)
        .ok()
        .map(|ru| (tv(ru.user_time()), tv(ru.system_time())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields_in_kib() {
        let status = "Name:\tx\nVmHWM:\t  97276 kB\nVmRSS:\t   5120 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(97276));
        assert_eq!(status_kib(status, "VmRSS:"), Some(5120));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn a_run_sees_its_own_peak_and_cpu() {
        let meter = UsageMeter::start();
        let mut v = vec![0u8; 32 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        let u = meter.finish();
        assert!(u.peak_rss_kib >= 32 << 10, "{u:?}");
        assert!(u.end_rss_kib > 0, "{u:?}");
        assert!(u.fd_limit.is_some_and(|n| n > 0), "{u:?}");
    }

    #[test]
    fn raising_the_descriptor_limit_reaches_the_hard_limit() {
        let lim = raise_fd_limit().expect("getrlimit/setrlimit");
        assert_eq!(lim.now, lim.hard);
        assert!(lim.now >= lim.was);
        assert_eq!(fd_limit(), Some(lim.now));
    }
}
