//! The hand-over message: one versioned, self-describing packet that carries the listeners'
//! names, kinds and addresses beside their descriptors, and its validation on arrival.
//!
//! Layout (integers little-endian):
//! ```text
//! magic "HOFF" | version u16 | generation u32 | pid u32 | count u16
//! count x ( kind u8 | name length u16 | name | address length u16 | address )
//! ```
//! `generation` and `pid` are the sender's; `kind` is 1 (TCP listener), 2 (UDP socket) or 3
//! (unix stream listener); the address is the socket's own, as text (`127.0.0.1:8080`,
//! `[::1]:80`, a unix path, or `@name` for an abstract unix socket). Nothing may follow the
//! last listener. The descriptors come in the same packet, in the listeners' order.
//!
//! The other packets of the exchange are short text lines: `refused: <why>\n` instead of the
//! offer, `ready\n` from the new process, then `ok\n` (handed over) or `rolled-back: <why>\n`.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use socket2::{Domain, SockAddr, Type};

use crate::activation::{Inherited, SocketInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::listen::validate_name;

pub(crate) const MAGIC: &[u8; 4] = b"HOFF";
pub(crate) const VERSION: u16 = 1;
/// The largest message either side sends or accepts: a longer packet is refused, never
/// buffered.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;
/// More listeners than a server passes; a larger count is garbage.
pub(crate) const MAX_LISTENERS: usize = 64;

/// What a listener is, as the message names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp,
    Udp,
    Unix,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Tcp => 1,
            Kind::Udp => 2,
            Kind::Unix => 3,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Tcp),
            2 => Some(Kind::Udp),
            3 => Some(Kind::Unix),
            _ => None,
        }
    }

    /// The kind of socket the kernel says a descriptor is, if it is one a listener can be.
    pub(crate) fn of(info: &SocketInfo) -> Option<Kind> {
        let ip = info.domain == Domain::IPV4 || info.domain == Domain::IPV6;
        match (ip, info.domain == Domain::UNIX, info.ty) {
            (true, _, Type::STREAM) if info.listening => Some(Kind::Tcp),
            (true, _, Type::DGRAM) => Some(Kind::Udp),
            (_, true, Type::STREAM) if info.listening => Some(Kind::Unix),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "a TCP listener",
            Kind::Udp => "a UDP socket",
            Kind::Unix => "a unix stream listener",
        }
    }
}

/// One listener as the message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) address: String,
}

/// The whole offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) generation: u32,
    pub(crate) pid: u32,
    pub(crate) entries: Vec<Entry>,
}

/// A socket's own address as the message writes it.
pub(crate) fn address_text(addr: Option<&SockAddr>) -> String {
    let Some(addr) = addr else {
        return String::new();
    };
    if let Some(ip) = addr.as_socket() {
        return ip.to_string();
    }
    if let Some(path) = addr.as_pathname() {
        return String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned();
    }
    if let Some(name) = addr.as_abstract_namespace() {
        return format!("@{}", String::from_utf8_lossy(name));
    }
    String::new()
}

/// The entry that describes the listener `name` held in `fd`.
pub(crate) fn describe(name: &str, fd: &OwnedFd) -> std::io::Result<Entry> {
    let info = SocketInfo::of(fd)?;
    let kind = Kind::of(&info).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "listener `{name}` is a {}, which cannot be handed over",
                info.describe()
            ),
        )
    })?;
    Ok(Entry {
        kind,
        name: name.to_owned(),
        address: address_text(info.local.as_ref()),
    })
}

/// The offer as bytes.
pub(crate) fn encode(offer: &Offer) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&offer.generation.to_le_bytes());
    out.extend_from_slice(&offer.pid.to_le_bytes());
    out.extend_from_slice(&(offer.entries.len() as u16).to_le_bytes());
    for e in &offer.entries {
        out.push(e.kind.code());
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&(e.address.len() as u16).to_le_bytes());
        out.extend_from_slice(e.address.as_bytes());
    }
    out
}

/// Reads the message, field by field; what is wrong is said with where it is.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, the message has {}",
                self.at,
                self.bytes.len()
            ));
        };
        let got = &self.bytes[self.at..end];
        self.at = end;
        Ok(got)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn text(&mut self, what: &str) -> Result<String, String> {
        let len = self.u16(what)? as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

/// The offer in `bytes`, or what is wrong with it.
pub(crate) fn decode(bytes: &[u8]) -> Result<Offer, String> {
    let mut r = Reader { bytes, at: 0 };
    let magic = r.take(4, "the magic")?;
    if magic != MAGIC {
        return Err(format!(
            "not a hand-over message: it starts with {:?}, expected {:?}",
            String::from_utf8_lossy(magic),
            String::from_utf8_lossy(MAGIC)
        ));
    }
    let version = r.u16("the version")?;
    if version != VERSION {
        return Err(format!(
            "message version {version}, this process speaks version {VERSION} only: hand over \
             between releases that share a version"
        ));
    }
    let generation = r.u32("the generation")?;
    let pid = r.u32("the sender's pid")?;
    let count = r.u16("the listener count")? as usize;
    if count > MAX_LISTENERS {
        return Err(format!(
            "{count} listeners, more than the {MAX_LISTENERS} accepted"
        ));
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let code = r.take(1, &format!("listener {i}'s kind"))?[0];
        let kind = Kind::from_code(code).ok_or_else(|| {
            format!("listener {i} has kind {code}, expected 1 (tcp), 2 (udp) or 3 (unix)")
        })?;
        let name = r.text(&format!("listener {i}'s name"))?;
        validate_name(&name).map_err(|e| format!("listener {i}: {e}"))?;
        if entries.iter().any(|e: &Entry| e.name == name) {
            return Err(format!("listener name `{name}` appears twice"));
        }
        let address = r.text(&format!("listener `{name}`'s address"))?;
        entries.push(Entry {
            kind,
            name,
            address,
        });
    }
    if r.at != bytes.len() {
        return Err(format!(
            "{} bytes follow the last listener, expected none",
            bytes.len() - r.at
        ));
    }
    Ok(Offer {
        generation,
        pid,
        entries,
    })
}

/// Pairs the offer's entries with the descriptors that came with it, after checking each
/// descriptor is what its entry says (kind from `SO_TYPE`, `SO_ACCEPTCONN` and the family;
/// address from `getsockname`). On any mismatch every descriptor is dropped, so closed.
pub(crate) fn adopt(offer: &Offer, fds: Vec<OwnedFd>) -> Result<Vec<Inherited>> {
    let bad = |m: String| Error::new(ErrorKind::Handover, format!("refusing the hand-over: {m}"));
    if fds.len() != offer.entries.len() {
        return Err(bad(format!(
            "the message names {} listeners but {} descriptors came with it",
            offer.entries.len(),
            fds.len()
        )));
    }
    let mut out = Vec::with_capacity(fds.len());
    for (entry, fd) in offer.entries.iter().zip(fds) {
        let info = SocketInfo::of(&fd).map_err(|e| {
            bad(format!(
                "descriptor for `{}` is not a socket ({e})",
                entry.name
            ))
        })?;
        let kind = Kind::of(&info);
        if kind != Some(entry.kind) {
            return Err(bad(format!(
                "listener `{}` is said to be {}, but its descriptor is a {}",
                entry.name,
                entry.kind.name(),
                info.describe()
            )));
        }
        let address = address_text(info.local.as_ref());
        if address != entry.address {
            return Err(bad(format!(
                "listener `{}` is said to be bound to `{}`, but its descriptor is bound to `{}`",
                entry.name, entry.address, address
            )));
        }
        out.push(Inherited {
            name: entry.name.clone(),
            fd,
            info,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            generation: 3,
            pid: 42,
            entries: vec![
                Entry {
                    kind: Kind::Tcp,
                    name: "http".into(),
                    address: "127.0.0.1:8080".into(),
                },
                Entry {
                    kind: Kind::Unix,
                    name: "admin".into(),
                    address: "/run/x.sock".into(),
                },
            ],
        }
    }

    #[test]
    fn an_offer_reads_back_as_written() {
        assert_eq!(decode(&encode(&offer())), Ok(offer()));
    }

    #[test]
    fn every_cut_of_a_message_is_refused_as_truncated() {
        let bytes = encode(&offer());
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).unwrap_err();
            assert!(err.contains("truncated"), "cut at {len}: {err}");
        }
    }

    #[test]
    fn wrong_magic_version_kind_and_trailing_bytes_are_refused() {
        let bytes = encode(&offer());
        let mut v = bytes.clone();
        v[4] = 2;
        assert!(decode(&v).unwrap_err().contains("version 2"));
        let mut m = bytes.clone();
        m[0] = b'X';
        assert!(decode(&m).unwrap_err().contains("not a hand-over message"));
        let mut k = bytes.clone();
        k[4 + 2 + 4 + 4 + 2] = 9;
        assert!(decode(&k).unwrap_err().contains("kind 9"));
        let mut t = bytes.clone();
        t.push(0);
        assert!(decode(&t).unwrap_err().contains("1 bytes follow"));
    }

    #[test]
    fn bad_and_repeated_names_are_refused() {
        let mut o = offer();
        o.entries[1].name = "http".into();
        assert!(decode(&encode(&o)).unwrap_err().contains("appears twice"));
        o.entries[1].name = "a:b".into();
        assert!(decode(&encode(&o)).unwrap_err().contains("listener 1"));
    }
}
