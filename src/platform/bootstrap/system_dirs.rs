//! Steps "shared memory", "opt dir" and "home dir" (the Go agent's `SetupSharedMemory`,
//! `SetupOptDir` and `SetupHomeDir`): what stays writable on the root disk loses device files,
//! setuid and (for shared memory) exec, and `/opt` and `/var/opt` move onto the data disk.
//!
//! - `/dev/shm` and `/run/shm`, where each is a mount point: `nodev,nosuid,noexec`.
//! - `data/root_var_opt` and `data/root_opt` (`root:root` 0755) bound over `/var/opt` and `/opt`
//!   with `nodev` (software installed there runs), when `data` is a disk of its own.
//! - `/home` bound onto itself unless it is a mount point already, then `nodev,nosuid`.

use super::mounts;
use super::Bootstrap;
use crate::owner;

impl Bootstrap<'_> {
    pub(super) fn shared_memory(&self) -> Result<(), String> {
        if !self.may_mount("the shared memory remount") {
            return Ok(());
        }
        for dir in ["/dev/shm", "/run/shm"].map(|d| self.dirs.under_root(d)) {
            if mounts::is_mount_point(&dir)? {
                mounts::restrict(&dir, mounts::NO_EXEC)?;
            }
        }
        Ok(())
    }

    pub(super) fn opt_dir(&self) -> Result<(), String> {
        if !self.devices || !self.data_is_disk()? {
            return Ok(());
        }
        for (src, dst) in [(self.dirs.root_var_opt(), "/var/opt"), (self.dirs.root_opt(), "/opt")] {
            owner::ensure_dir(&src, 0o755)?;
            if owner::is_root() {
                std::os::unix::fs::lchown(&src, Some(0), Some(0))
                    .map_err(|e| format!("chown root:root {}: {e}", src.display()))?;
            }
            if self.may_mount("the /opt binds") {
                mounts::bind(&src, &self.dirs.under_root(dst), mounts::NO_DEV)?;
            }
        }
        Ok(())
    }

    pub(super) fn home_dir(&self) -> Result<(), String> {
        let home = self.dirs.under_root("/home");
        if !home.is_dir() || !self.may_mount("the /home remount") {
            return Ok(());
        }
        mounts::bind(&home, &home, mounts::NO_SUID)
    }
}
