//! Step "log dir" (the Go agent's `SetupLogDir`): `/var/log` moves onto the data disk, so system
//! logs cannot fill the small root disk. `data/root_log` is made as the official stemcells' rsyslog,
//! login accounting and chrony expect it, then bound over `/var/log` with `nodev,nosuid,noexec`
//! (the official rsyslog unit waits for that mount point; ours restarts rsyslog on it).
//!
//! | path under `data/root_log` | owner | mode |
//! |---|---|---|
//! | itself | `root:syslog` | 0771 (set every boot) |
//! | `audit` | `root:root` | 0750 |
//! | `sysstat` | `root:root` | 0755 |
//! | `btmp` | `root:utmp` | 0600 |
//! | `wtmp`, `lastlog` | `root:utmp` | 0664 |
//! | `chrony`, when a `_chrony` user exists | `_chrony:_chrony` | 0700 |
//!
//! Unlike the Go agent, which fails the boot, a missing `syslog` or `utmp` group is logged and the
//! path stays `root`'s group: a stemcell without rsyslog (or a scratch root in a test) still boots,
//! with the modes above.
//!
//! Only when `data` is a disk of its own: without one, the bind would only move `/var/log` within
//! the root disk and hide what the system logged before the agent started.

use super::mounts;
use super::Bootstrap;
use crate::error::Context as _;
use crate::owner::{self, Group};
use crate::platform::users;
use std::fs::OpenOptions;

impl Bootstrap<'_> {
    pub(super) fn log_dir(&self) -> Result<(), String> {
        if !self.devices || !self.data_is_disk()? {
            log::info!("bootstrap: /var/log stays on the root disk (data is not a disk of its own)");
            return Ok(());
        }
        let root_log = self.dirs.root_log();
        owner::ensure_dir(&root_log, 0o775)?;
        owner::set_mode(&root_log, 0o771)?;
        for (sub, mode) in [("audit", 0o750), ("sysstat", 0o755)] {
            let dir = root_log.join(sub);
            owner::ensure_dir(&dir, mode)?;
            owner::set_mode(&dir, mode)?;
        }
        Group::lookup(self.dirs, "syslog").give(&root_log)?;
        let utmp = Group::lookup(self.dirs, "utmp");
        for (file, mode) in [("btmp", 0o600), ("wtmp", 0o664), ("lastlog", 0o664)] {
            let path = root_log.join(file);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("touching {}", path.display()))?;
            utmp.give(&path)?;
            owner::set_mode(&path, mode)?;
        }
        if self.may_mount("the /var/log bind") {
            mounts::bind(&root_log, &self.dirs.under_root("/var/log"), mounts::NO_EXEC)?;
        }
        self.chrony_log_dir()
    }

    /// `root_log/chrony` for chronyd, which runs as `_chrony` and logs there, when that user exists.
    fn chrony_log_dir(&self) -> Result<(), String> {
        let passwd = users::read_passwd(&self.dirs.under_root(users::SYSTEM_PASSWD))?;
        let Some(chrony) = passwd.into_iter().find(|e| e.name == "_chrony") else { return Ok(()) };
        let dir = self.dirs.root_log().join("chrony");
        owner::ensure_dir(&dir, 0o700)?;
        owner::set_mode(&dir, 0o700)?;
        if owner::is_root() {
            let gid =
                owner::group_gid(&self.dirs.under_root(owner::GROUP_FILE), "_chrony").unwrap_or(chrony.gid);
            std::os::unix::fs::lchown(&dir, Some(chrony.uid), Some(gid))
                .with_context(|| format!("chown _chrony {}", dir.display()))?;
        }
        Ok(())
    }
}
