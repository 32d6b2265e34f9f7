//! The applied spec (`spec.json`), which `get_state` and heartbeats report from.

use crate::dirs::Dirs;
use crate::fsutil;
use crate::vitals::DiskPaths;
use serde_json::{json, Value};

/// The applied spec, or an empty object before the first apply.
pub fn load(dirs: &Dirs) -> Result<Value, String> {
    match fsutil::read_json::<Value>(&dirs.spec_json()) {
        Ok(Some(v)) if v.is_object() => Ok(v),
        Ok(Some(_)) => Err("spec.json is not a JSON object".into()),
        Ok(None) => Ok(json!({})),
        Err(e) => Err(format!("reading spec.json: {e}")),
    }
}

/// Where the system, ephemeral and persistent disks are mounted, for vitals.
pub fn disk_paths(dirs: &Dirs) -> DiskPaths {
    DiskPaths { system: dirs.under_root("/"), ephemeral: dirs.data(), persistent: dirs.store() }
}
