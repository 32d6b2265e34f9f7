//! Step "tmp dir" (the Go agent's `SetupTmpDir`): `/tmp` and `/var/tmp` become `root:vcap` 1777 on
//! every boot (the official stemcells harden them to 0770, which jobs running as vcap cannot use),
//! and, when `data` is a disk of its own and `agent.json` does not say `UseDefaultTmpDir`, both are
//! bound to one shared `data/root_tmp` (`root:vcap` 1777) with `nodev,nosuid,noexec`, so temp files
//! cannot fill the root disk nor be run.
//!
//! `data/tmp` itself (`root:root` 0755) is made with the data dirs; the agent's children get it as
//! `TMPDIR` (`exec::set_child_tmpdir`, called by the boot once bootstrap is done).

use super::mounts;
use super::Bootstrap;
use crate::owner::{self, Group};

impl Bootstrap<'_> {
    pub(super) fn tmp_dir(&self) -> Result<(), String> {
        if !self.devices {
            return Ok(());
        }
        let vcap = Group::vcap(self.dirs);
        let system = [self.dirs.under_root("/tmp"), self.dirs.under_root("/var/tmp")];
        for dir in &system {
            owner::ensure_dir(dir, 0o1777)?;
            vcap.give(dir)?;
            owner::set_mode(dir, 0o1777)?;
        }
        if self.default_tmp_dir {
            log::info!("bootstrap: /tmp and /var/tmp stay where they are (UseDefaultTmpDir)");
            return Ok(());
        }
        if !self.data_is_disk()? {
            log::info!("bootstrap: /tmp and /var/tmp stay on the root disk (data is not a disk of its own)");
            return Ok(());
        }
        let shared = self.dirs.root_tmp();
        owner::ensure_dir(&shared, 0o1777)?;
        vcap.give(&shared)?;
        owner::set_mode(&shared, 0o1777)?;
        if self.may_mount("the /tmp and /var/tmp binds") {
            for dir in &system {
                mounts::bind(&shared, dir, mounts::NO_EXEC)?;
            }
        }
        Ok(())
    }
}
