//! The disk actions (the Go agent's `agent/action/*_disk.go`): the director tells the agent where a newly attached disk is
//! (`add_persistent_disk`), has it mounted, migrated and unmounted, and asks which disks are mounted
//! (`list_disk`, which must match the director's own record or it raises `AgentDiskOutOfSync`). The
//! work happens in `platform::disks`; these types only bind arguments and pick the disk.

use super::{bind, Action, Call, Context};
use crate::error::Context as _;
use crate::platform::disks::{self, DiskOptions, DiskSettings};
use crate::settings::Effective;
use serde_json::{json, Value};

/// Re-reads settings the way the Go agent does before every disk action (the CPI may have put a new
/// disk into them); if the sources cannot be read, the settings in memory still describe the VM.
fn reloaded(ctx: &Context) -> Effective {
    ctx.settings.load().unwrap_or_else(|e| {
        log::warn!("reloading settings for a disk action: {e}; using the settings in memory");
        ctx.settings.get()
    })
}

/// `list_disk` → array of disk CIDs, from freshly reloaded settings: a CPI that detached a disk
/// removes it from the settings, and a stale answer would send bosh-cli to unmount a disk that is gone.
pub struct ListDisk;
impl Action for ListDisk {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| ListDisk)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let settings = reloaded(call.ctx);
        Ok(json!(call.ctx.platform.mounted_persistent_disks(&settings)?))
    }
}

/// `mount_disk [cid]`: partition and format a blank disk, mount it on store (or the migration target).
pub struct MountDisk {
    cid: String,
}
impl Action for MountDisk {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<(String,)>(args).map(|(cid,)| MountDisk { cid })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let settings = reloaded(call.ctx);
        let disk = disks::find_disk(&call.ctx.dirs, &settings, &self.cid)?;
        let opts = DiskOptions::for_disk(&disk, &settings)?;
        call.ctx.platform.disks().mount(&disk, &opts).context("Mounting persistent disk")?;
        Ok(json!({}))
    }
}

/// `unmount_disk [cid]` → `{"message": ...}` in the Go agent's words. It leaves
/// `managed_disk_settings.json` alone, as the Go agent does.
pub struct UnmountDisk {
    cid: String,
}
impl Action for UnmountDisk {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<(String,)>(args).map(|(cid,)| UnmountDisk { cid })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let settings = reloaded(call.ctx);
        let disk = disks::find_disk(&call.ctx.dirs, &settings, &self.cid)?;
        let was_mounted = call.ctx.platform.disks().unmount(&disk).context("Unmounting persistent disk")?;
        let message = if was_mounted {
            format!("Unmounted partition of {}", disk.go_format())
        } else {
            format!("Partition of {} is not mounted", disk.go_format())
        };
        Ok(json!({ "message": message }))
    }
}

/// `migrate_disk [old, new]` (the director's CIDs are ignored, as by the Go agent: the disks are
/// whatever is on store and on the migration target).
pub struct MigrateDisk;
impl Action for MigrateDisk {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(MigrateDisk)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let settings = reloaded(call.ctx);
        let known = disks::known_disks(&call.ctx.dirs, &settings);
        call.ctx.platform.disks().migrate(&known).context("Migrating persistent disk")?;
        Ok(json!({}))
    }
}

/// `add_persistent_disk [cid, hint]`: records where the disk is, in the hints file.
pub struct AddPersistentDisk {
    cid: String,
    hint: Value,
}
impl Action for AddPersistentDisk {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<(String, Value)>(args).map(|(cid, hint)| AddPersistentDisk { cid, hint })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        disks::check_cid(&self.cid)?;
        let settings = reloaded(call.ctx);
        let mut disk = DiskSettings::from_hint(&self.cid, &self.hint)?;
        let opts = DiskOptions::for_disk(&disk, &settings)?;
        disk.fs_type = opts.fs_type;
        disk.mount_options = Some(opts.mount_options);
        disks::save_hint(&call.ctx.dirs, disk)?;
        Ok(json!({}))
    }
}

/// `remove_persistent_disk [cid]`: forgets the hint.
pub struct RemovePersistentDisk {
    cid: String,
}
impl Action for RemovePersistentDisk {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<(String,)>(args).map(|(cid,)| RemovePersistentDisk { cid })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        disks::remove_hint(&call.ctx.dirs, &self.cid)?;
        Ok(json!({}))
    }
}

/// `add_dynamic_disk [cid, hint]`: links `data/dynamic_disks/<cid>` to the device.
pub struct AddDynamicDisk {
    cid: String,
    hint: Value,
}
impl Action for AddDynamicDisk {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<(String, Value)>(args).map(|(cid, hint)| AddDynamicDisk { cid, hint })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let disk = DiskSettings::from_hint(&self.cid, &self.hint)?;
        call.ctx.platform.disks().add_dynamic(&disk)?;
        Ok(json!({}))
    }
}

/// `remove_dynamic_disk [cid]`: removes that link.
pub struct RemoveDynamicDisk {
    cid: String,
}
impl Action for RemoveDynamicDisk {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<(String,)>(args).map(|(cid,)| RemoveDynamicDisk { cid })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        call.ctx.platform.disks().remove_dynamic(&self.cid)?;
        Ok(json!({}))
    }
}
