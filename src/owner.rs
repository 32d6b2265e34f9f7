//! Who owns the paths jobs use. Job processes run as `vcap` (monit start programs drop to it, bpm
//! runs them as it), so what they read, write or execute belongs to `root:vcap`, as the Go agent
//! chowns it: bundles, the jobs' log, run and data directories, the layout above them, the DNS
//! records and `/tmp`.
//!
//! Groups are looked up by name in the root dir's group file (`<root>/etc/group`: the live one on a
//! VM, a copy in a scratch-root test) and owners change only when the agent runs as root; a non-root
//! test run leaves them alone. A missing group is logged and skipped rather than failing the boot:
//! the directories still exist, only their group is root's.

use crate::dirs::Dirs;
use crate::error::Context as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The group database under the root dir.
pub const GROUP_FILE: &str = "/etc/group";

/// The gid of group `name` in a group file, `None` when absent or unreadable.
pub fn group_gid(path: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Whether this process runs as root, and so may give paths away.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `root:<group>` for the paths a group must reach, or nothing to change (not root, or no such
/// group in the root's group file; also the `Default`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Group {
    gid: Option<u32>,
}

impl Group {
    /// Looks `name` up under the root dir; a missing group is logged once per lookup.
    pub fn lookup(dirs: &Dirs, name: &str) -> Group {
        if !is_root() {
            return Group { gid: None };
        }
        let file = dirs.under_root(GROUP_FILE);
        let gid = group_gid(&file, name);
        if gid.is_none() {
            log::warn!("no group '{name}' in {}: paths meant for it stay root's", file.display());
        }
        Group { gid }
    }

    /// `root:vcap`, the owner of everything jobs use.
    pub fn vcap(dirs: &Dirs) -> Group {
        Group::lookup(dirs, "vcap")
    }

    /// The gid, when paths are given to the group.
    pub fn gid(&self) -> Option<u32> {
        self.gid
    }

    /// `chown root:<group> path`, not following a symlink at `path`; nothing without a group.
    pub fn give(&self, path: &Path) -> Result<(), String> {
        match self.gid {
            Some(gid) => std::os::unix::fs::lchown(path, Some(0), Some(gid))
                .with_context(|| format!("chown root:{gid} {}", path.display())),
            None => Ok(()),
        }
    }

    /// The Go agent's `MkdirAll(dir, mode)` then `chown root:<group>`: creates `dir` (and parents)
    /// with `mode` when missing, leaves an existing directory's mode alone, and gives it to the group
    /// every time.
    pub fn dir(&self, dir: &Path, mode: u32) -> Result<(), String> {
        ensure_dir(dir, mode)?;
        self.give(dir)
    }

    /// A job's own directory: created with `mode` and given to the group only when missing, so what
    /// the job (or an operator) did to it since is kept. Returns whether it was created.
    pub fn new_dir(&self, dir: &Path, mode: u32) -> Result<bool, String> {
        if dir.is_dir() {
            return Ok(false);
        }
        ensure_dir(dir, mode)?;
        self.give(dir)?;
        Ok(true)
    }
}

/// Creates `dir` (and parents) when missing and sets `mode` on it, which `mkdir` alone leaves to the
/// umask; an existing directory is left as it is.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, mode)
}

/// `chmod mode path` (following a symlink, as chmod does).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_groups_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("group");
        std::fs::write(&g, "root:x:0:\nvcap:x:1000:\nadmin:x:abc:\n").unwrap();
        assert_eq!(group_gid(&g, "vcap"), Some(1000));
        assert_eq!(group_gid(&g, "admin"), None);
        assert_eq!(group_gid(&g, "nope"), None);
        assert_eq!(group_gid(&dir.path().join("missing"), "vcap"), None);
    }

    #[test]
    fn new_dirs_keep_what_was_done_to_them_and_dirs_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("sys/log/web");
        assert!(Group::default().new_dir(&job, 0o770).unwrap());
        assert_eq!(std::fs::metadata(&job).unwrap().permissions().mode() & 0o7777, 0o770);
        set_mode(&job, 0o700).unwrap();
        assert!(!Group::default().new_dir(&job, 0o770).unwrap());
        assert_eq!(std::fs::metadata(&job).unwrap().permissions().mode() & 0o7777, 0o700);
        Group::default().dir(&job, 0o750).unwrap();
        assert_eq!(std::fs::metadata(&job).unwrap().permissions().mode() & 0o7777, 0o700);
    }
}
