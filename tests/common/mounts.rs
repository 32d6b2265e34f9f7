//! Mounts under a scratch root: read back from `/proc/self/mountinfo` with their options (so a test
//! asserts what the kernel has, not what the agent meant), and undone when a test ends, even when it
//! fails: the Linux bootstrap mounts a tmpfs on `data/sys/run` and binds system paths, and a leaked
//! mount would outlive the test's temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug)]
pub struct MountInfo {
    /// The directory of the filesystem that is mounted (`/` for a whole filesystem, the source
    /// directory's path inside it for a bind).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The mount point's own flags (`rw`, `nodev`, `noexec`, ...).
    pub options: Vec<String>,
    /// The filesystem type.
    pub fs_type: String,
    /// The filesystem's options (`size=16384k` for a tmpfs).
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Whether the mount point has flag `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.options.iter().any(|o| o == flag)
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// The current mount table.
pub fn mount_info() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                root: unescape(f.get(3)?),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                options: f.get(5)?.split(',').map(String::from).collect(),
                fs_type: r.first()?.to_string(),
                super_options: r.get(2).map(|o| o.split(',').map(String::from).collect()).unwrap_or_default(),
            })
        })
        .collect()
}

/// The topmost mount at `dir`, if any.
pub fn at(dir: &Path) -> Option<MountInfo> {
    mount_info().into_iter().rev().find(|m| m.mount_point == dir)
}

/// Every mount point at or below `dir`, in mount order.
pub fn under(dir: &Path) -> Vec<PathBuf> {
    mount_info().into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(dir)).collect()
}

/// Lazily unmounts everything at or below each of `dirs`, the last mounted first.
pub fn unmount_under(dirs: &[&Path]) {
    for dir in dirs {
        for p in under(dir).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).stderr(Stdio::null()).status();
        }
    }
}

/// Unmounts everything below its directories when dropped.
pub struct UnmountOnDrop(pub Vec<PathBuf>);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let dirs: Vec<&Path> = self.0.iter().map(PathBuf::as_path).collect();
        unmount_under(&dirs);
    }
}
