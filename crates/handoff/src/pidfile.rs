//! PID files, replaced atomically so a reader never sees a half-written one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// Writes `pid` to `path` by writing a temporary file beside it and renaming it over `path`:
/// a reader sees the old pid or the new one, never an empty or partial file.
///
/// The temporary file is created exclusively (`O_EXCL`, never through a symlink or over a
/// file someone else made) under an unpredictable name, so another user who can write to the
/// directory cannot make us write where they chose.
pub(crate) fn write(path: &Path, pid: u32) -> Result<()> {
    write_with(path, |f| {
        f.write_all(format!("{pid}\n").as_bytes())
            .map_err(|e| ("writing", e))?;
        f.sync_all().map_err(|e| ("syncing", e))
    })
}

/// [`write`], with `fill` writing the temporary file (and saying what failed). The temporary
/// file is removed on every failure after it was created.
fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> std::result::Result<(), (&'static str, std::io::Error)>,
) -> Result<()> {
    let err = |what: &str, e| {
        Error::io(
            ErrorKind::PidFile,
            format!("{what} PID file {}", path.display()),
            e,
        )
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            ErrorKind::PidFile,
            format!("PID file path {} names no file", path.display()),
        )
    })?;
    let (tmp, mut f) = {
        let mut attempt = 0;
        loop {
            let nonce = sys::random_u64().map_err(|e| err("drawing a temporary name for", e))?;
            let tmp = dir.join(format!(".{}.{nonce:016x}.tmp", name.to_string_lossy()));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(e) => return Err(err("creating a temporary file for", e)),
            }
        }
    };
    let filled = fill(&mut f).and_then(|()| {
        drop(f);
        fs::rename(&tmp, path).map_err(|e| ("renaming into place", e))
    });
    filled.map_err(|(what, e)| {
        let _ = fs::remove_file(&tmp);
        err(what, e)
    })
}

/// Reads the pid in `path`, if it holds one.
pub(crate) fn read(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes `path` if it still names `pid` (a successor may already have replaced it).
pub(crate) fn remove_if_ours(path: &Path, pid: u32) {
    if read(path) == Some(pid) {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pid");
        write(&path, 41).unwrap();
        write(&path, 42).unwrap();
        assert_eq!(read(&path), Some(42));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        remove_if_ours(&path, 41);
        assert!(path.exists());
        remove_if_ours(&path, 42);
        assert!(!path.exists());
    }

    #[test]
    fn a_planted_symlink_at_a_guessable_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pid");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious\n").unwrap();
        // The name an attacker could predict from the pid (what the temporary once was).
        std::os::unix::fs::symlink(&victim, dir.path().join(".server.pid.42.tmp")).unwrap();
        write(&path, 42).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(read(&path), Some(42));
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_failed_write_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pid");
        for failing in ["writing", "syncing"] {
            let err = write_with(&path, |f| {
                f.write_all(b"4").unwrap();
                Err((failing, std::io::Error::from_raw_os_error(libc::ENOSPC)))
            })
            .unwrap_err();
            assert_eq!(*err.kind(), ErrorKind::PidFile);
            assert!(err.to_string().starts_with(failing), "{err}");
            assert_eq!(
                fs::read_dir(dir.path()).unwrap().count(),
                0,
                "the temporary file is gone after a failure {failing}"
            );
        }
    }

    #[test]
    fn unwritable_directory_is_a_pid_file_error() {
        let err = write(Path::new("/nonexistent-dir/x.pid"), 1).unwrap_err();
        assert_eq!(*err.kind(), ErrorKind::PidFile);
        assert!(err.to_string().contains("/nonexistent-dir/x.pid"), "{err}");
    }
}
