//! Step "data dir" (the Go agent's `SetupDataDir` and `SetupBlobsDir`): the layout on the data disk
//! that jobs and the agent use, its owners, the tmpfs on `data/sys/run` (pid files must not survive
//! a reboot) and, with `env.bosh.job_dir.tmpfs`, on `data/jobs` and `data/sensitive_blobs`, and the
//! `sys` link.
//!
//! Directories are made with their mode when missing and given to `root:vcap` on every boot, as the
//! Go agent's `MkdirAll` and `chown` do; an existing directory keeps its mode, and the data disk's
//! own root is never touched (mkfs leaves it 0755, which every job needs to reach its packages).
//! The `data/sys/run` tmpfs keeps the kernel's 1777 for its root, as on the Go agent's VMs; the job
//! dirs' tmpfs get their directories' modes (the Go agent leaves them 1777 as well).

use super::mounts;
use super::Bootstrap;
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::owner::{self, Group};
use std::path::PathBuf;

/// The size of the `data/sys/run` tmpfs when `env.bosh.run_dir.tmpfs_size` is empty.
const RUN_DIR_SIZE: &str = "16m";
/// The size of the `data/jobs` and `data/sensitive_blobs` tmpfs when `env.bosh.job_dir.tmpfs_size`
/// is empty.
const JOB_DIR_SIZE: &str = "100m";

/// What a directory of the data layout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A plain directory.
    Plain,
    /// Always a tmpfs (`data/sys/run`).
    RunTmpfs,
    /// A tmpfs with `env.bosh.job_dir.tmpfs` (`data/jobs`, `data/sensitive_blobs`).
    JobTmpfs,
}

/// The data directory layout in the order it is made: each directory, its mode, whether it belongs
/// to `root:vcap` (so job processes, group vcap, can reach it) and what it is. `data/tmp` stays
/// `root:root` 0755, as the Go agent leaves it.
fn data_dirs(dirs: &Dirs) -> [(PathBuf, u32, bool, Kind); 9] {
    [
        (dirs.data_sys(), 0o750, true, Kind::Plain),
        (dirs.data_sys_log(), 0o750, true, Kind::Plain),
        (dirs.data_sys_run(), 0o750, true, Kind::RunTmpfs),
        (dirs.data_jobs(), 0o750, true, Kind::JobTmpfs),
        (dirs.data_packages(), 0o755, true, Kind::Plain),
        (dirs.sensitive_blobs(), 0o700, true, Kind::JobTmpfs),
        (dirs.dynamic_disks(), 0o750, true, Kind::Plain),
        (dirs.blobs(), 0o700, true, Kind::Plain),
        (dirs.data_tmp(), 0o755, false, Kind::Plain),
    ]
}

impl Bootstrap<'_> {
    pub(super) fn data_dirs(&self) -> Result<(), String> {
        let env = &self.settings.settings.env.bosh;
        let run_size =
            mounts::tmpfs_size(&env.run_dir.tmpfs_size, RUN_DIR_SIZE, "env.bosh.run_dir.tmpfs_size")?;
        let job_size =
            mounts::tmpfs_size(&env.job_dir.tmpfs_size, JOB_DIR_SIZE, "env.bosh.job_dir.tmpfs_size")?;
        let vcap = Group::vcap(self.dirs);
        for (path, mode, vcap_group, kind) in data_dirs(self.dirs) {
            owner::ensure_dir(&path, mode)?;
            // The run dir's tmpfs keeps the kernel's 1777, as on the Go agent's VMs (data/sys above
            // it is 0750 root:vcap). The job dirs' keep their own mode: the Go agent leaves them 1777
            // too, which would open rendered templates and sensitive blobs to every user.
            let tmpfs = match kind {
                Kind::RunTmpfs => Some((run_size, None)),
                Kind::JobTmpfs if env.job_dir.tmpfs => Some((job_size, Some(mode))),
                _ => None,
            };
            if let Some((size, mode)) = tmpfs.filter(|_| self.may_mount("a tmpfs on the data dirs")) {
                mounts::tmpfs(&path, size, mode)?;
            }
            if vcap_group {
                vcap.give(&path)?;
            }
        }
        let link = self.dirs.sys();
        let target = self.dirs.data_sys();
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
                    return Ok(());
                }
                std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
            }
            Ok(_) => return Err(format!("{} exists and is not a symlink", link.display())),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))
    }
}
