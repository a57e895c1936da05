//! The inheritance protocol: systemd's socket activation (`sd_listen_fds(3)`) for the
//! listeners, plus two variables of our own for the upgrade handshake.
//!
//! - `LISTEN_PID`: the pid the descriptors are meant for. Absent, or another pid, means "not
//!   for this process" (a grandchild that kept the environment), exactly as systemd reads it.
//! - `LISTEN_FDS`: how many descriptors, starting at 3.
//! - `LISTEN_FDNAMES`: colon-separated names, one per descriptor (optional).
//! - `HANDOFF_READY_FD`: the write end of the parent's readiness pipe, above the listeners.
//! - `HANDOFF_GEN`: this process's generation number (the first start is 1).
//! - `HANDOFF_PARENT_PID`: the previous generation, which drains while this one serves.
//! - `HANDOFF_LINK_FD`: this process's end of a unix socket pair whose other end the previous
//!   generation holds (close-on-exec) for as long as it lives; each side sees the other's end
//!   close when its process is gone, pidfds or not. Above the readiness pipe.
//!
//! The `HANDOFF_*` variables count only together with a `LISTEN_PID` that names this process.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, SockAddr, SockRef, Type};

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

pub(crate) const LISTEN_FDS_START: RawFd = 3;
pub(crate) const VAR_LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const VAR_LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const VAR_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
pub(crate) const VAR_READY_FD: &str = "HANDOFF_READY_FD";
pub(crate) const VAR_GEN: &str = "HANDOFF_GEN";
pub(crate) const VAR_PARENT: &str = "HANDOFF_PARENT_PID";
pub(crate) const VAR_LINK_FD: &str = "HANDOFF_LINK_FD";
/// Variables of this protocol that a process must never pass on as they are.
pub(crate) const PROTOCOL_VARS: [&str; 7] = [
    VAR_PARENT,
    VAR_LINK_FD,
    VAR_LISTEN_PID,
    VAR_LISTEN_FDS,
    VAR_LISTEN_FDNAMES,
    VAR_READY_FD,
    VAR_GEN,
];

/// More descriptors than any sane server passes; a larger count is garbage, not a plan.
const MAX_FDS: usize = 64;

/// What the environment says, before any descriptor is touched.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub names: Vec<String>,
    pub ready_fd: Option<RawFd>,
    pub link_fd: Option<RawFd>,
    pub generation: u32,
    pub parent: Option<u32>,
}

fn var<'a>(env: &'a HashMap<OsString, OsString>, name: &str) -> Option<Result<&'a str>> {
    env.get(OsStr::new(name)).map(|v| {
        v.to_str().ok_or_else(|| {
            Error::new(
                ErrorKind::BadEnvironment,
                format!("{name} is not valid UTF-8: {v:?}"),
            )
        })
    })
}

fn number<T: std::str::FromStr>(name: &str, value: &str, what: &str) -> Result<T> {
    value.parse().map_err(|_| {
        Error::new(
            ErrorKind::BadEnvironment,
            format!("{name}={value:?} is not {what}"),
        )
    })
}

/// Reads the protocol variables for the process `own_pid`. Pure, so it can be tested on
/// made-up environments.
pub(crate) fn parse(env: &HashMap<OsString, OsString>, own_pid: u32) -> Result<Plan> {
    let empty = Plan {
        names: Vec::new(),
        ready_fd: None,
        link_fd: None,
        generation: 1,
        parent: None,
    };
    let Some(pid) = var(env, VAR_LISTEN_PID).transpose()? else {
        return Ok(empty);
    };
    let pid: u32 = number(VAR_LISTEN_PID, pid, "a process id")?;
    if pid != own_pid {
        // Meant for another process (we kept an ancestor's environment): not ours to take,
        // and neither is the generation number that came with it.
        return Ok(empty);
    }
    let generation = match var(env, VAR_GEN).transpose()? {
        None => 1,
        Some(v) => match number::<u32>(VAR_GEN, v, "a generation number (1 or more)")? {
            0 => {
                return Err(Error::new(
                    ErrorKind::BadEnvironment,
                    format!("{VAR_GEN}=0: generations count from 1"),
                ));
            }
            n => n,
        },
    };
    let parent = match var(env, VAR_PARENT).transpose()? {
        None => None,
        Some(v) => Some(number::<u32>(VAR_PARENT, v, "a process id")?),
    };
    let count = match var(env, VAR_LISTEN_FDS).transpose()? {
        None => 0,
        Some(v) => number::<usize>(VAR_LISTEN_FDS, v, "a descriptor count")?,
    };
    if count > MAX_FDS {
        return Err(Error::new(
            ErrorKind::BadEnvironment,
            format!(
                "{VAR_LISTEN_FDS}={count} is more than the {MAX_FDS} descriptors this library accepts"
            ),
        ));
    }
    let names = match var(env, VAR_LISTEN_FDNAMES).transpose()? {
        None => vec![String::from("unknown"); count],
        Some(v) => {
            let names: Vec<String> = if v.is_empty() {
                Vec::new()
            } else {
                v.split(':').map(String::from).collect()
            };
            if names.len() != count {
                return Err(Error::new(
                    ErrorKind::BadEnvironment,
                    format!(
                        "{VAR_LISTEN_FDNAMES}={v:?} names {} descriptors but {VAR_LISTEN_FDS}={count}",
                        names.len()
                    ),
                ));
            }
            names
        }
    };
    let ready_fd = match var(env, VAR_READY_FD).transpose()? {
        None => None,
        Some(v) => {
            let fd: RawFd = number(VAR_READY_FD, v, "a descriptor number")?;
            let first_free = LISTEN_FDS_START + count as RawFd;
            if fd < first_free {
                return Err(Error::new(
                    ErrorKind::BadEnvironment,
                    format!(
                        "{VAR_READY_FD}={fd} overlaps stdio or the {count} listeners at 3..{first_free}"
                    ),
                ));
            }
            Some(fd)
        }
    };
    let link_fd = match var(env, VAR_LINK_FD).transpose()? {
        None => None,
        Some(v) => {
            let fd: RawFd = number(VAR_LINK_FD, v, "a descriptor number")?;
            let first_free = LISTEN_FDS_START + count as RawFd;
            if fd < first_free || Some(fd) == ready_fd {
                return Err(Error::new(
                    ErrorKind::BadEnvironment,
                    format!(
                        "{VAR_LINK_FD}={fd} overlaps stdio, the {count} listeners at 3..{first_free} or {VAR_READY_FD}"
                    ),
                ));
            }
            Some(fd)
        }
    };
    Ok(Plan {
        names,
        ready_fd,
        link_fd,
        generation,
        parent,
    })
}

/// The kind of an inherited socket, read from the kernel rather than trusted from the
/// environment.
#[derive(Clone, Debug)]
pub(crate) struct SocketInfo {
    pub domain: Domain,
    pub ty: Type,
    pub listening: bool,
    pub local: Option<SockAddr>,
    /// An IPv6 socket that takes IPv4 too (`IPV6_V6ONLY` off): what systemd's
    /// `ListenStream=8080` makes, `[::]:8080` for both families.
    pub dual_stack: bool,
}

impl SocketInfo {
    pub(crate) fn of(fd: &OwnedFd) -> std::io::Result<SocketInfo> {
        let sock = SockRef::from(fd);
        let ty = sock.r#type()?;
        let listening = if ty == Type::STREAM || ty == Type::SEQPACKET {
            sock.is_listener()?
        } else {
            false
        };
        let domain = sock.domain()?;
        let dual_stack = domain == Domain::IPV6 && !sock.only_v6().unwrap_or(true);
        Ok(SocketInfo {
            domain,
            ty,
            listening,
            local: sock.local_addr().ok(),
            dual_stack,
        })
    }

    pub(crate) fn describe(&self) -> String {
        let domain = match self.domain {
            Domain::IPV4 => "IPv4",
            Domain::IPV6 => "IPv6",
            Domain::UNIX => "unix",
            _ => "other-family",
        };
        let ty = match self.ty {
            Type::STREAM if self.listening => "listening stream",
            Type::STREAM => "non-listening stream",
            Type::DGRAM => "datagram",
            _ => "other-type",
        };
        format!("{domain} {ty} socket")
    }
}

/// A descriptor inherited from the previous generation (or systemd), validated.
#[derive(Debug)]
pub(crate) struct Inherited {
    pub name: String,
    pub fd: OwnedFd,
    pub info: SocketInfo,
}

/// What this process inherited.
#[derive(Debug, Default)]
pub(crate) struct Activation {
    pub listeners: Vec<Inherited>,
    pub ready_pipe: Option<OwnedFd>,
    /// Our end of the link to the previous generation, with the readiness pipe.
    pub link: Option<OwnedFd>,
    pub generation: u32,
    /// The previous generation's pid, with the readiness pipe.
    pub parent: Option<u32>,
    /// Held for as long as the upgrader built on this activation lives.
    pub claim: Option<Claim>,
}

/// An upgrader built in this process is alive.
static LIVE: AtomicBool = AtomicBool::new(false);
/// A build took the descriptors this process inherited; they cannot be taken twice.
static CONSUMED: AtomicBool = AtomicBool::new(false);

/// This process's one live upgrader: dropping it lets another be built (one that inherits
/// nothing, if this one inherited descriptors: see [`take`]).
#[derive(Debug)]
pub(crate) struct Claim(());

impl Drop for Claim {
    fn drop(&mut self) {
        LIVE.store(false, Ordering::SeqCst);
    }
}

/// Claims the inherited descriptors named by `env`, for the one upgrader of this process.
///
/// Descriptor numbers are process-wide, so they can have only one owner: a second build while
/// an upgrader is alive is an error, and so is any build after one that took inherited
/// descriptors (it would silently have none), rather than a second upgrader with no listeners.
pub(crate) fn take(env: &HashMap<OsString, OsString>) -> Result<Activation> {
    if LIVE.swap(true, Ordering::SeqCst) {
        return Err(Error::new(
            ErrorKind::Usage,
            "Builder::build called while an Upgrader built earlier in this process is alive: \
             a process has one upgrader (clone it to share it)",
        ));
    }
    let claim = Claim(());
    if CONSUMED.load(Ordering::SeqCst) {
        return Err(Error::new(
            ErrorKind::Usage,
            "Builder::build called again: an Upgrader built earlier in this process took the \
             descriptors it inherited, and a second one would have no listeners; build once \
             per process",
        ));
    }
    let plan = parse(env, sys::getpid())?;
    if !plan.names.is_empty() || plan.ready_fd.is_some() || plan.link_fd.is_some() {
        CONSUMED.store(true, Ordering::SeqCst);
    }
    let mut listeners = Vec::with_capacity(plan.names.len());
    for (i, name) in plan.names.into_iter().enumerate() {
        listeners.push(claim_listener(LISTEN_FDS_START + i as RawFd, name)?);
    }
    let ready_pipe = plan.ready_fd.map(claim_ready_pipe).transpose()?;
    let link = plan.link_fd.map(claim_link).transpose()?;
    Ok(Activation {
        parent: ready_pipe.as_ref().and(plan.parent),
        link: ready_pipe.as_ref().and(link),
        listeners,
        ready_pipe,
        generation: plan.generation,
        claim: Some(claim),
    })
}

/// The inherited listener `name` at descriptor `num`, checked to be an open socket.
fn claim_listener(num: RawFd, name: String) -> Result<Inherited> {
    let fd = sys::claim_inherited(num)
        .map_err(|e| {
            Error::io(
                ErrorKind::BadInheritedFd,
                format!("checking inherited descriptor {num} ({name})"),
                e,
            )
        })?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadInheritedFd,
                format!("{VAR_LISTEN_FDS} promises descriptor {num} ({name}) but it is not open"),
            )
        })?;
    let kind = sys::file_kind(fd.as_fd()).map_err(|e| {
        Error::io(
            ErrorKind::BadInheritedFd,
            format!("fstat of inherited descriptor {num}"),
            e,
        )
    })?;
    if kind != sys::FileKind::Socket {
        return Err(Error::new(
            ErrorKind::BadInheritedFd,
            format!("inherited descriptor {num} ({name}) is not a socket ({kind:?})"),
        ));
    }
    let info = SocketInfo::of(&fd).map_err(|e| {
        Error::io(
            ErrorKind::BadInheritedFd,
            format!("inspecting inherited socket {num} ({name})"),
            e,
        )
    })?;
    Ok(Inherited { name, fd, info })
}

/// The readiness pipe at descriptor `num`, checked to be an open pipe.
fn claim_ready_pipe(num: RawFd) -> Result<OwnedFd> {
    let fd = sys::claim_inherited(num)
        .map_err(|e| {
            Error::io(
                ErrorKind::BadInheritedFd,
                format!("checking {VAR_READY_FD}={num}"),
                e,
            )
        })?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadInheritedFd,
                format!("{VAR_READY_FD}={num} is not an open descriptor"),
            )
        })?;
    let kind = sys::file_kind(fd.as_fd()).map_err(|e| {
        Error::io(
            ErrorKind::BadInheritedFd,
            format!("fstat of {VAR_READY_FD}={num}"),
            e,
        )
    })?;
    if kind != sys::FileKind::Fifo {
        return Err(Error::new(
            ErrorKind::BadInheritedFd,
            format!("{VAR_READY_FD}={num} is not a pipe ({kind:?})"),
        ));
    }
    Ok(fd)
}

/// The link to the previous generation at descriptor `num`, checked to be a connected unix
/// stream socket.
fn claim_link(num: RawFd) -> Result<OwnedFd> {
    let fd = sys::claim_inherited(num)
        .map_err(|e| {
            Error::io(
                ErrorKind::BadInheritedFd,
                format!("checking {VAR_LINK_FD}={num}"),
                e,
            )
        })?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BadInheritedFd,
                format!("{VAR_LINK_FD}={num} is not an open descriptor"),
            )
        })?;
    let info = SocketInfo::of(&fd).map_err(|e| {
        Error::io(
            ErrorKind::BadInheritedFd,
            format!("{VAR_LINK_FD}={num} is not a socket"),
            e,
        )
    })?;
    if info.domain != Domain::UNIX || info.ty != Type::STREAM || info.listening {
        return Err(Error::new(
            ErrorKind::BadInheritedFd,
            format!(
                "{VAR_LINK_FD}={num} is a {}, not a connected unix stream socket",
                info.describe()
            ),
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<OsString, OsString> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn absent_variables_mean_first_start() {
        let plan = parse(&env(&[]), 42).unwrap();
        assert_eq!(
            plan,
            Plan {
                names: vec![],
                ready_fd: None,
                link_fd: None,
                generation: 1,
                parent: None,
            }
        );
    }

    #[test]
    fn names_and_ready_fd_are_read() {
        let e = env(&[
            ("LISTEN_PID", "42"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "http:admin"),
            ("HANDOFF_READY_FD", "5"),
            ("HANDOFF_GEN", "7"),
        ]);
        let plan = parse(&e, 42).unwrap();
        assert_eq!(plan.names, ["http", "admin"]);
        assert_eq!(plan.ready_fd, Some(5));
        assert_eq!(plan.generation, 7);
    }

    #[test]
    fn another_pids_descriptors_are_ignored() {
        let e = env(&[
            ("LISTEN_PID", "41"),
            ("LISTEN_FDS", "2"),
            ("HANDOFF_READY_FD", "5"),
            ("HANDOFF_GEN", "3"),
            ("HANDOFF_PARENT_PID", "40"),
        ]);
        let plan = parse(&e, 42).unwrap();
        assert!(plan.names.is_empty());
        assert_eq!(
            (plan.ready_fd, plan.generation, plan.parent),
            (None, 1, None)
        );
    }

    #[test]
    fn unnamed_descriptors_are_unknown() {
        let plan = parse(&env(&[("LISTEN_PID", "42"), ("LISTEN_FDS", "2")]), 42).unwrap();
        assert_eq!(plan.names, ["unknown", "unknown"]);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("LISTEN_PID", "abc"), ("LISTEN_FDS", "1")],
                "LISTEN_PID=\"abc\" is not a process id",
            ),
            (
                &[("LISTEN_PID", "42"), ("LISTEN_FDS", "-1")],
                "LISTEN_FDS=\"-1\" is not a descriptor count",
            ),
            (
                &[("LISTEN_PID", "42"), ("LISTEN_FDS", "100000")],
                "more than the 64",
            ),
            (
                &[
                    ("LISTEN_PID", "42"),
                    ("LISTEN_FDS", "2"),
                    ("LISTEN_FDNAMES", "a"),
                ],
                "names 1 descriptors but LISTEN_FDS=2",
            ),
            (
                &[
                    ("LISTEN_PID", "42"),
                    ("LISTEN_FDS", "2"),
                    ("HANDOFF_READY_FD", "4"),
                ],
                "overlaps",
            ),
            (
                &[("LISTEN_PID", "42"), ("HANDOFF_GEN", "0")],
                "generations count from 1",
            ),
            (
                &[("LISTEN_PID", "42"), ("HANDOFF_GEN", "x")],
                "HANDOFF_GEN=\"x\"",
            ),
            (
                &[("LISTEN_PID", "42"), ("HANDOFF_PARENT_PID", "me")],
                "HANDOFF_PARENT_PID=\"me\"",
            ),
        ];
        for (vars, want) in cases {
            let err = parse(&env(vars), 42).unwrap_err();
            assert_eq!(*err.kind(), ErrorKind::BadEnvironment, "{vars:?}");
            assert!(
                err.to_string().contains(want),
                "{vars:?}: {err} should contain {want:?}"
            );
        }
    }
}
