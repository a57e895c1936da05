//! PID files, replaced atomically so a reader never sees a half-written one.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};

/// Writes `pid` to `path` by writing a temporary file beside it and renaming it over `path`:
/// a reader sees the old pid or the new one, never an empty or partial file.
pub(crate) fn write(path: &Path, pid: u32) -> Result<()> {
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
    let tmp = dir.join(format!(".{}.{pid}.tmp", name.to_string_lossy()));
    let mut f = fs::File::create(&tmp).map_err(|e| err("creating a temporary file for", e))?;
    f.write_all(format!("{pid}\n").as_bytes())
        .map_err(|e| err("writing", e))?;
    f.sync_all().map_err(|e| err("syncing", e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err("renaming into place", e)
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
    fn unwritable_directory_is_a_pid_file_error() {
        let err = write(Path::new("/nonexistent-dir/x.pid"), 1).unwrap_err();
        assert_eq!(*err.kind(), ErrorKind::PidFile);
        assert!(err.to_string().contains("/nonexistent-dir/x.pid"), "{err}");
    }
}
