//! Listeners: which inherited socket a listener call adopts, the names that can travel in
//! `LISTEN_FDNAMES`, and how a fresh listener is bound ([`ListenOptions`]).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::activation::SocketInfo;
use crate::error::{Error, ErrorKind, Result};

/// How listeners that are bound fresh (not inherited) are set up; see
/// [`Builder::listen_options`](crate::Builder::listen_options). An inherited listener keeps
/// the options it was created with.
#[derive(Clone)]
pub struct ListenOptions {
    backlog: i32,
    reuse_address: bool,
    only_v6: bool,
    configure: Option<Arc<ConfigureFn>>,
}

type ConfigureFn = dyn Fn(&str, BorrowedFd<'_>) -> std::io::Result<()> + Send + Sync;

impl std::fmt::Debug for ListenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenOptions")
            .field("backlog", &self.backlog)
            .field("reuse_address", &self.reuse_address)
            .field("only_v6", &self.only_v6)
            .field("configure", &self.configure.is_some())
            .finish()
    }
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions::new()
    }
}

impl ListenOptions {
    /// Backlog 1024, `SO_REUSEADDR` on TCP listeners, `IPV6_V6ONLY` on IPv6 sockets, no hook.
    pub fn new() -> ListenOptions {
        ListenOptions {
            backlog: 1024,
            reuse_address: true,
            only_v6: true,
            configure: None,
        }
    }

    /// The `listen(2)` backlog of stream listeners (the kernel caps it at
    /// `net.core.somaxconn`).
    pub fn backlog(mut self, backlog: u32) -> ListenOptions {
        self.backlog = backlog.min(i32::MAX as u32) as i32;
        self
    }

    /// `SO_REUSEADDR` on TCP listeners, so a restart of the whole service (not a handover)
    /// can bind while old connections sit in `TIME_WAIT`.
    pub fn reuse_address(mut self, on: bool) -> ListenOptions {
        self.reuse_address = on;
        self
    }

    /// `IPV6_V6ONLY` on IPv6 sockets: `[::]:80` then takes IPv6 only, and `0.0.0.0:80` can be
    /// bound beside it. Off: one IPv6 socket takes IPv4 too (mapped addresses).
    pub fn only_v6(mut self, on: bool) -> ListenOptions {
        self.only_v6 = on;
        self
    }

    /// A hook called with the listener's name and its socket after the options above and
    /// before `bind(2)`, for anything else (`SO_REUSEPORT`, `TCP_DEFER_ACCEPT`, `SO_RCVBUF`,
    /// `TCP_FASTOPEN`, a `SO_BINDTODEVICE`, ...; see socket2's `SockRef::from(&fd)`). An error
    /// fails the listener call with [`ErrorKind::Listen`].
    pub fn configure(
        mut self,
        f: impl Fn(&str, BorrowedFd<'_>) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> ListenOptions {
        self.configure = Some(Arc::new(f));
        self
    }
}

/// What kind of socket a listener call wants, to match against inherited ones.
#[derive(Clone, Copy)]
pub(crate) enum Want<'a> {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(&'a Path),
}

impl Want<'_> {
    pub(crate) fn matches(&self, info: &SocketInfo) -> bool {
        match self {
            Want::Tcp(_) => {
                matches!(info.domain, Domain::IPV4 | Domain::IPV6)
                    && info.ty == Type::STREAM
                    && info.listening
            }
            Want::Udp(_) => {
                matches!(info.domain, Domain::IPV4 | Domain::IPV6) && info.ty == Type::DGRAM
            }
            Want::Unix(_) => {
                info.domain == Domain::UNIX && info.ty == Type::STREAM && info.listening
            }
        }
    }

    /// Whether an inherited socket of the right kind is bound where the configuration now asks.
    /// A changed address (configuration reload) means: bind the new one, let the old one go.
    /// A dual-stack IPv6 wildcard (`[::]:P` taking IPv4 too, systemd's `ListenStream=P`)
    /// serves either wildcard on its port, `0.0.0.0:P` as well as `[::]:P`.
    pub(crate) fn same_address(&self, info: &SocketInfo) -> bool {
        let local = info.local.as_ref();
        match self {
            Want::Tcp(addr) | Want::Udp(addr) => {
                addr.port() == 0
                    || local.and_then(SockAddr::as_socket).is_some_and(|l| {
                        l == *addr
                            || (info.dual_stack
                                && l.ip().is_unspecified()
                                && addr.ip().is_unspecified()
                                && l.port() == addr.port())
                    })
            }
            Want::Unix(path) => local
                .and_then(SockAddr::as_pathname)
                .is_some_and(|p| p == *path),
        }
    }

    /// Whether an inherited socket is bound to exactly the address asked for (a port-0 TCP
    /// or UDP request names no exact address).
    pub(crate) fn exact_address(&self, info: &SocketInfo) -> bool {
        !self.any_port() && self.same_address(info)
    }

    pub(crate) fn any_port(&self) -> bool {
        matches!(self, Want::Tcp(a) | Want::Udp(a) if a.port() == 0)
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Want::Tcp(a) => format!("TCP listener on {a}"),
            Want::Udp(a) => format!("UDP socket on {a}"),
            Want::Unix(p) => format!("unix listener at {}", p.display()),
        }
    }
}

/// Which inherited socket a listener call named `name` adopts, among `inherited` (each with
/// its name and what it is): `Ok(Some(i))` to adopt the `i`th, `Ok(None)` to bind a new one.
///
/// In order: one passed under `name` and bound where asked (several may share a name: a
/// socket unit's `FileDescriptorName=`); else one of the right kind bound to exactly the
/// address asked for, whatever its name (a socket unit names its sockets `<unit>.socket`,
/// `systemd-socket-activate` leaves them `unknown`, and a configuration may have swapped two
/// listeners' addresses); else, for a port-0 request, the first of the right kind that carries
/// no name of ours. One under `name` bound elsewhere is not adopted (the configuration
/// changed: a new one is bound and the old one closed at ready).
///
/// # Errors
/// [`ErrorKind::BadInheritedFd`] when sockets were passed under `name` and none is of the
/// kind asked for.
pub(crate) fn pick(
    name: &str,
    want: Want<'_>,
    inherited: &[(&str, &SocketInfo)],
) -> Result<Option<usize>> {
    let named = || {
        inherited
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n == name)
    };
    if let Some((_, (_, info))) = named().next()
        && !named().any(|(_, (_, i))| want.matches(i))
    {
        return Err(Error::new(
            ErrorKind::BadInheritedFd,
            format!(
                "inherited descriptor `{name}` is a {}, not a {}",
                info.describe(),
                want.describe()
            ),
        ));
    }
    let found = named()
        .find(|(_, (_, i))| want.matches(i) && want.same_address(i))
        .or_else(|| {
            inherited
                .iter()
                .enumerate()
                .find(|(_, (_, i))| want.matches(i) && want.exact_address(i))
        })
        .or_else(|| {
            inherited
                .iter()
                .enumerate()
                .find(|(_, (n, i))| want.any_port() && unnamed(n) && want.matches(i))
        });
    Ok(found.map(|(i, _)| i))
}

/// What `LISTEN_FDNAMES` can carry (systemd's `fdname_is_valid`): printable ASCII other than
/// `:` (the separator), at most 255 bytes; and not empty, which would read as "no name".
pub(crate) fn validate_name(name: &str) -> Result<()> {
    const FDNAME_MAX: usize = 255;
    let bad = name
        .bytes()
        .find(|b| !(b' '..=b'~').contains(b) || *b == b':');
    if name.is_empty() || name.len() > FDNAME_MAX || bad.is_some() {
        let why = match bad {
            Some(b':') => "`:` separates names in LISTEN_FDNAMES".to_string(),
            Some(b) => format!("byte {b:#04x} is not printable ASCII"),
            None if name.is_empty() => "it is empty".to_string(),
            None => format!("it is {} bytes long", name.len()),
        };
        return Err(Error::new(
            ErrorKind::InvalidName,
            format!(
                "listener name {name:?} cannot be passed to the next generation ({why}): use 1 to \
                 {FDNAME_MAX} printable ASCII characters other than `:`"
            ),
        ));
    }
    Ok(())
}

/// Whether an inherited descriptor's name is none of ours: systemd-socket-activate's
/// `unknown`, an empty name, or a socket unit's default `<unit>.socket`.
pub(crate) fn unnamed(name: &str) -> bool {
    name.is_empty() || name == "unknown" || name.ends_with(".socket")
}

/// Creates a fresh listener of the wanted kind (socket2 sets `SOCK_CLOEXEC` at creation),
/// configured by `options`.
pub(crate) fn bind(
    want: Want<'_>,
    name: &str,
    options: &ListenOptions,
) -> std::io::Result<OwnedFd> {
    let configure = |s: &Socket| match &options.configure {
        Some(f) => f(name, s.as_fd()),
        None => Ok(()),
    };
    let socket = match want {
        Want::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            s.set_reuse_address(options.reuse_address)?;
            if addr.is_ipv6() {
                s.set_only_v6(options.only_v6)?;
            }
            configure(&s)?;
            s.bind(&addr.into())?;
            s.listen(options.backlog)?;
            s
        }
        Want::Udp(addr) => {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
            if addr.is_ipv6() {
                s.set_only_v6(options.only_v6)?;
            }
            configure(&s)?;
            s.bind(&addr.into())?;
            s
        }
        Want::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            configure(&s)?;
            s.bind(&SockAddr::unix(path)?)?;
            s.listen(options.backlog)?;
            s
        }
    };
    Ok(socket.into())
}

/// A socket file nobody accepts on is left over from a crash; a live one belongs to someone.
fn remove_stale_unix_socket(path: &Path) -> std::io::Result<()> {
    match UnixStream::connect(path) {
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use by a live server", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str, dual_stack: bool) -> SocketInfo {
        let addr: SocketAddr = addr.parse().unwrap();
        SocketInfo {
            domain: Domain::for_address(addr),
            ty: Type::STREAM,
            listening: true,
            local: Some(addr.into()),
            dual_stack,
        }
    }

    fn want(addr: &str) -> Want<'static> {
        Want::Tcp(addr.parse().unwrap())
    }

    #[test]
    fn a_dual_stack_wildcard_serves_the_ipv4_wildcard_on_its_port() {
        // `ListenStream=8080`: one socket, [::]:8080, taking IPv4 too.
        let both = tcp("[::]:8080", true);
        let v6 = tcp("[::]:8080", false);
        let sockets = [("echo.socket", &both)];
        assert_eq!(
            pick("main", want("0.0.0.0:8080"), &sockets).unwrap(),
            Some(0)
        );
        assert_eq!(pick("main", want("[::]:8080"), &sockets).unwrap(), Some(0));
        assert_eq!(pick("main", want("0.0.0.0:8081"), &sockets).unwrap(), None);
        assert_eq!(
            pick("main", want("127.0.0.1:8080"), &sockets).unwrap(),
            None,
            "a specific address is not the wildcard"
        );
        assert_eq!(
            pick("main", want("0.0.0.0:8080"), &[("x", &v6)]).unwrap(),
            None,
            "an IPv6-only socket takes no IPv4"
        );
    }

    #[test]
    fn swapped_addresses_are_found_by_address() {
        // The configuration swapped the ports of `a` and `b`: each is bound where the other
        // now wants to be. Binding fresh would find the address in use.
        let a = tcp("127.0.0.1:2000", false);
        let b = tcp("127.0.0.1:1000", false);
        let sockets = [("a", &a), ("b", &b)];
        assert_eq!(
            pick("a", want("127.0.0.1:1000"), &sockets).unwrap(),
            Some(1)
        );
        assert_eq!(
            pick("b", want("127.0.0.1:2000"), &sockets).unwrap(),
            Some(0)
        );
        assert_eq!(
            pick("a", want("127.0.0.1:3000"), &sockets).unwrap(),
            None,
            "moved to a new address: bound fresh"
        );
    }

    #[test]
    fn among_sockets_sharing_a_name_the_one_at_the_address_is_adopted() {
        let one = tcp("127.0.0.1:1000", false);
        let two = tcp("127.0.0.1:2000", false);
        let sockets = [("http", &one), ("http", &two)];
        assert_eq!(
            pick("http", want("127.0.0.1:2000"), &sockets).unwrap(),
            Some(1)
        );
        assert_eq!(
            pick("http", want("127.0.0.1:1000"), &sockets).unwrap(),
            Some(0)
        );
        assert_eq!(
            pick("http", want("127.0.0.1:0"), &sockets).unwrap(),
            Some(0)
        );
    }

    #[test]
    fn a_name_passed_only_for_another_kind_of_socket_is_an_error() {
        let udp = SocketInfo {
            ty: Type::DGRAM,
            listening: false,
            ..tcp("127.0.0.1:1000", false)
        };
        let err = pick("main", want("127.0.0.1:1000"), &[("main", &udp)]).unwrap_err();
        assert_eq!(*err.kind(), ErrorKind::BadInheritedFd);
    }
}
