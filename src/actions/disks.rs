//! `list_disk`: the persistent disks that are mounted. The rest of the disk actions arrive with the
//! platform work; this one is needed from the first boot because both clients call it.

use super::{bind, Action, Call};
use serde_json::{json, Value};

/// `list_disk` → array of disk CIDs.
pub struct ListDisk;
impl Action for ListDisk {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| ListDisk)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let settings = call.ctx.settings.get();
        Ok(json!(call.ctx.platform.mounted_persistent_disks(&settings)?))
    }
}

/// `mount_disk [cid]` (being written on the disks branch).
pub struct MountDisk;
impl Action for MountDisk {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(MountDisk)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}

/// `unmount_disk [cid]`.
pub struct UnmountDisk;
impl Action for UnmountDisk {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(UnmountDisk)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}

/// `migrate_disk [old, new]`.
pub struct MigrateDisk;
impl Action for MigrateDisk {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(MigrateDisk)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}

/// `add_persistent_disk [cid, hint]`.
pub struct AddPersistentDisk;
impl Action for AddPersistentDisk {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(AddPersistentDisk)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}

/// `remove_persistent_disk [cid]`.
pub struct RemovePersistentDisk;
impl Action for RemovePersistentDisk {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(RemovePersistentDisk)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}

/// `add_dynamic_disk [cid, hint]`.
pub struct AddDynamicDisk;
impl Action for AddDynamicDisk {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(AddDynamicDisk)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}

/// `remove_dynamic_disk [cid]`.
pub struct RemoveDynamicDisk;
impl Action for RemoveDynamicDisk {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(RemoveDynamicDisk)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}
