//! `sd_notify(3)`: status messages to the service manager over `NOTIFY_SOCKET`.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to send notifications, read once from `NOTIFY_SOCKET`.
#[derive(Debug)]
pub(crate) struct Notifier {
    addr: SocketAddr,
}

impl Notifier {
    /// `None` when the variable is absent or empty (no service manager is listening).
    pub(crate) fn from_var(value: Option<&OsStr>) -> Option<Notifier> {
        let value = value?.as_bytes();
        let addr = match value.first()? {
            b'@' => SocketAddr::from_abstract_name(&value[1..]).ok()?,
            b'/' => SocketAddr::from_pathname(OsStr::from_bytes(value)).ok()?,
            _ => {
                tracing::warn!(socket = ?OsStr::from_bytes(value), "NOTIFY_SOCKET is neither a path nor @abstract; not notifying");
                return None;
            }
        };
        Some(Notifier { addr })
    }

    /// Sends one datagram. Failures are logged, not returned: a service manager that went away
    /// must not stop the server from serving.
    pub(crate) fn send(&self, message: &str) {
        let sent =
            UnixDatagram::unbound().and_then(|s| s.send_to_addr(message.as_bytes(), &self.addr));
        if let Err(e) = sent {
            tracing::warn!(error = %e, message, "sd_notify failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_var(Some(path.as_os_str())).unwrap();
        n.send("READY=1\nMAINPID=42");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nMAINPID=42");
    }

    #[test]
    fn absent_or_odd_values_disable_notification() {
        assert!(Notifier::from_var(None).is_none());
        assert!(Notifier::from_var(Some(OsStr::new(""))).is_none());
        assert!(Notifier::from_var(Some(OsStr::new("relative"))).is_none());
    }
}
