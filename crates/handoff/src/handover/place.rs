//! Where a hand-over or control socket lives, and its protections: a directory only its
//! owner can enter (created 0700, or checked to be so), the socket file 0600, or an abstract
//! socket (`@name`); the same checks again at each connection, and the peer's uid.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// A socket's place: a path in the filesystem, or a name in the abstract namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Path(PathBuf),
    Abstract(String),
}

impl Place {
    /// `@name` is an abstract socket; anything else a path.
    pub(crate) fn parse(spec: &Path) -> Place {
        let text = spec.to_string_lossy();
        match text.strip_prefix('@') {
            Some(name) => Place::Abstract(name.to_owned()),
            None => Place::Path(spec.to_path_buf()),
        }
    }

    fn address(&self) -> std::io::Result<SockAddr> {
        match self {
            Place::Path(p) => SockAddr::unix(p),
            Place::Abstract(name) => {
                let mut bytes = vec![0u8];
                bytes.extend_from_slice(name.as_bytes());
                SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))
            }
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Place::Path(p) => p.display().to_string(),
            Place::Abstract(name) => format!("@{name}"),
        }
    }
}

/// A listening socket at its place, with what is needed to check at each connection that
/// nobody has loosened its protections.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) place: Place,
    pub(crate) socket: Socket,
    /// The socket file's inode, for a path: another file there is not ours.
    ino: Option<(u64, u64)>,
    /// Replaced by a new socket at the same place: its accept loop is to end.
    retired: AtomicBool,
}

/// Binds a listening socket of type `ty` at `place`. For a path, the directory is created
/// 0700 if it is missing, else it must be a real directory (not a symlink) of this user with
/// no access for group or others; a socket file already there (a predecessor's, or a stale
/// one) is replaced; the new one is made 0600.
pub(crate) fn bind(place: &Place, ty: Type) -> Result<Bound> {
    let what = |m: String| Error::new(ErrorKind::Listen, m);
    let io = |m: String, e| Error::io(ErrorKind::Listen, m, e);
    let mut ino = None;
    if let Place::Path(path) = place {
        prepare(place)?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
                .map_err(|e| io(format!("replacing the old socket {}", path.display()), e))?,
            Ok(_) => {
                return Err(what(format!(
                    "{} exists and is not a socket: refusing to replace it",
                    path.display()
                )));
            }
            Err(_) => {}
        }
    }
    let socket =
        Socket::new(Domain::UNIX, ty, None).map_err(|e| io("creating a unix socket".into(), e))?;
    let addr = place
        .address()
        .map_err(|e| io(format!("the socket address {}", place.describe()), e))?;
    socket
        .bind(&addr)
        .map_err(|e| io(format!("binding {}", place.describe()), e))?;
    if let Place::Path(path) = place {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io(format!("making {} 0600", path.display()), e))?;
        let m = std::fs::symlink_metadata(path)
            .map_err(|e| io(format!("checking {}", path.display()), e))?;
        ino = Some((m.dev(), m.ino()));
    }
    socket
        .listen(16)
        .map_err(|e| io(format!("listening on {}", place.describe()), e))?;
    Ok(Bound {
        place: place.clone(),
        socket,
        ino,
        retired: AtomicBool::new(false),
    })
}

/// Makes sure a path socket's directory is there and only this user can enter it: created
/// 0700 if it is missing, else checked (see [`bind`]). An abstract socket needs nothing.
pub(crate) fn prepare(place: &Place) -> Result<()> {
    let Place::Path(path) = place else {
        return Ok(());
    };
    let dir = parent(path);
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    Error::io(
                        ErrorKind::Listen,
                        format!("creating the socket directory {}", dir.display()),
                        e,
                    )
                })?;
        }
        Err(e) => {
            return Err(Error::io(
                ErrorKind::Listen,
                format!("checking the socket directory {}", dir.display()),
                e,
            ));
        }
        Ok(_) => {}
    }
    check_dir(dir).map_err(|m| Error::new(ErrorKind::Listen, m))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The directory must be a real directory (not a symlink), owned by this user, with no
/// access for group or others.
fn check_dir(dir: &Path) -> Result<(), String> {
    let m = std::fs::symlink_metadata(dir).map_err(|e| {
        format!(
            "the socket directory {} cannot be checked: {e}",
            dir.display()
        )
    })?;
    if m.file_type().is_symlink() || !m.is_dir() {
        return Err(format!(
            "the socket directory {} is not a directory (a symlink is not accepted)",
            dir.display()
        ));
    }
    let euid = sys::geteuid();
    if m.uid() != euid {
        return Err(format!(
            "the socket directory {} belongs to uid {}, not to this process's uid {euid}",
            dir.display(),
            m.uid()
        ));
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the socket directory {} is mode {mode:03o}: others could reach the socket; it must \
             be 0700 (chmod 700 {})",
            dir.display(),
            dir.display()
        ));
    }
    Ok(())
}

impl Bound {
    /// Whether the socket is still as protected as it was made: checked at each connection,
    /// before anything is answered. An abstract socket has no file to check.
    pub(crate) fn check(&self) -> Result<(), String> {
        let Place::Path(path) = &self.place else {
            return Ok(());
        };
        check_dir(parent(path))?;
        let m = std::fs::symlink_metadata(path)
            .map_err(|e| format!("the socket {} cannot be checked: {e}", path.display()))?;
        if !m.file_type().is_socket() || self.ino != Some((m.dev(), m.ino())) {
            return Err(format!(
                "{} is no longer this process's socket (replaced, or a symlink)",
                path.display()
            ));
        }
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the socket {} is mode {mode:03o}: it must be 0600 (chmod 600 {})",
                path.display(),
                path.display()
            ));
        }
        Ok(())
    }

    /// Ends the accept loop on this socket (`shutdown(SHUT_RD)` wakes a blocked `accept`,
    /// which then fails), once a new socket took its place.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(std::net::Shutdown::Read);
    }

    /// The next connection on this socket, or `None` when the accept loop is to end: the
    /// socket was retired, or accepting failed (logged, naming `what` is no longer served).
    pub(crate) fn accept(&self, what: &str) -> Option<OwnedFd> {
        loop {
            match self.socket.accept() {
                Ok((conn, _)) => return Some(OwnedFd::from(conn)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) if self.retired() => return None,
                Err(e) => {
                    tracing::error!(error = %e, "accepting on the {what} socket failed; it is no longer served");
                    return None;
                }
            }
        }
    }

    /// Whether [`retire`](Bound::retire) was called.
    pub(crate) fn retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Removes the socket file if it is still this one (a successor may have bound its own
    /// there since).
    pub(crate) fn remove(&self) {
        if let Place::Path(path) = &self.place
            && let Ok(m) = std::fs::symlink_metadata(path)
            && self.ino == Some((m.dev(), m.ino()))
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether `error` from [`bind`] says the address is in use (an abstract name another
/// process holds).
pub(crate) fn in_use(error: &Error) -> bool {
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

/// The peer of an accepted connection, if it may be served: its uid must be this process's
/// effective uid or one of `allowed`.
pub(crate) fn check_peer(conn: &OwnedFd, allowed: &[u32]) -> Result<sys::PeerCred, String> {
    let cred = sys::peer_cred(conn.as_fd())
        .map_err(|e| format!("the peer's credentials cannot be read: {e}"))?;
    let euid = sys::geteuid();
    if cred.uid != euid && !allowed.contains(&cred.uid) {
        return Err(format!(
            "peer pid {} runs as uid {}, which is neither this process's uid {euid} nor an \
             allowed one",
            cred.pid, cred.uid
        ));
    }
    Ok(cred)
}

/// Connects a socket of type `ty` to `place` (close-on-exec).
pub(crate) fn connect(place: &Place, ty: Type) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::UNIX, ty, None)?;
    socket.connect(&place.address()?)?;
    Ok(socket.into())
}
