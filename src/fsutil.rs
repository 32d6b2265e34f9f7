//! The one way the agent changes state on disk: write a sibling temp file, fsync it, rename it over the
//! target and fsync the directory. A crash at any point leaves either the old or the new file, never a
//! torn one, which is what lets settings, specs and persisted tasks survive power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Atomically replaces `path` with `data`, creating parent directories; `mode` applies to the new file
/// (0600 for anything that may hold secrets).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, data, mode, None)
}

/// [`write_atomic`] for a file that belongs to `owner` (uid, gid): the temp file is chowned before
/// the rename, so the file never exists under the wrong owner (a job reading it mid-write sees the
/// old or the new file, both readable to it).
pub fn write_atomic_owned(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), crate::ids::uuid_v4()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Points the symlink `link` at `target` atomically (a new link renamed over the old one, parents
/// created), so nothing ever sees a missing link mid-switch; nothing happens when it already points
/// there. Whatever else stood at `link` is replaced, except a directory, which the rename refuses.
pub fn switch_link(link: &Path, target: &Path) -> Result<(), String> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let tmp = link.with_file_name(format!(
        ".{}.link-{}",
        link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        crate::ids::uuid_v4()
    ));
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| format!("linking {}: {e}", link.display()))?;
    fs::rename(&tmp, link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("switching {}: {e}", link.display())
    })
}

/// Serialises `value` as JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let data = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_atomic(path, &data, mode)
}

/// Reads a JSON file; `Ok(None)` when it does not exist, so callers can tell "never written" from
/// "unreadable". The text is parsed into a `Value` first and typed from that, the one way the agent
/// types JSON (`T::deserialize(&Value)`), so each type links one deserializer, not one per source.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let invalid =
        |e: serde_json::Error| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()));
    match fs::read(path) {
        Ok(data) => {
            let value: serde_json::Value = serde_json::from_slice(&data).map_err(invalid)?;
            T::deserialize(&value).map(Some).map_err(invalid)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A file that is removed when dropped unless kept: temp files on the data disk (downloads, bundles)
/// that an error path anywhere in a caller must not leak.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
    what: &'static str,
}

impl TempFile {
    /// Takes charge of `path`; `what` names it in the log line when removing it fails.
    pub fn new(path: PathBuf, what: &'static str) -> TempFile {
        TempFile { path, armed: true, what }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the file in place and returns its path; the caller now owns its removal.
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("removing {} {}: {e}", self.what, self.path.display());
                }
            }
        }
    }
}

/// Space on the filesystem holding `file`: (bytes an unprivileged writer may still use, total bytes).
pub fn space(file: &File) -> io::Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    // SAFETY: statvfs is plain old data, so all-zero is a valid value; the call only writes into it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call's duration and `st` is valid and writable.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok(((st.f_bavail as u64).saturating_mul(unit), (st.f_blocks as u64).saturating_mul(unit)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp files left behind");
    }

    #[test]
    fn read_json_tells_missing_from_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        assert!(read_json::<serde_json::Value>(&p).unwrap().is_none());
        fs::write(&p, b"{nope").unwrap();
        assert!(read_json::<serde_json::Value>(&p).is_err());
    }
}
