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
