//! Finds the block device of a persistent disk from its settings. Only the two resolutions that work
//! everywhere are implemented — the device path as given and `/dev/disk/by-id/*<id>` (virtio, udev) —
//! and the others answer a clear "not supported" rather than guessing a device, because a wrong guess
//! here means formatting somebody else's disk.

use super::DiskSettings;
use crate::dirs::Dirs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

fn block_device(path: &Path, cid: &str) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path)
        .map_err(|e| format!("device {} of disk {cid} is not there: {e}", path.display()))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("reading {}: {e}", real.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{} (disk {cid}) is not a block device", real.display()));
    }
    Ok(real)
}

/// The canonical device path of `disk` (symlinks followed). The by-id directory is looked up under
/// the root dir so tests can stand in for udev.
pub fn resolve(disk: &DiskSettings, dirs: &Dirs) -> Result<PathBuf, String> {
    let cid = &disk.id;
    if !disk.path.is_empty() && (Path::new(&disk.path).exists() || disk.device_id.is_empty()) {
        return block_device(Path::new(&disk.path), cid);
    }
    if !disk.device_id.is_empty() {
        let by_id = dirs.under_root("/dev/disk/by-id");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&by_id)
            .map_err(|e| format!("listing {}: {e}", by_id.display()))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(disk.device_id.as_str()))
            .map(|e| e.path())
            .collect();
        names.sort();
        let first = names.first().ok_or_else(|| {
            format!("no device in {} matches id '{}' of disk {cid}", by_id.display(), disk.device_id)
        })?;
        return block_device(first, cid);
    }
    let kind = if !disk.iscsi.target.is_empty() || !disk.iscsi.initiator_name.is_empty() {
        "iSCSI"
    } else if !disk.lun.is_empty() || !disk.host_device_id.is_empty() {
        "SCSI LUN"
    } else if !disk.volume_id.is_empty() {
        "SCSI volume id"
    } else {
        return Err(format!("disk {cid} has neither a device path nor an id"));
    };
    Err(format!("resolving disk {cid}: {kind} device resolution is not supported (give a path or id hint)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolves_paths_and_by_id_links_and_refuses_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("base"), root.path());
        let by_id = root.path().join("dev/disk/by-id");
        std::fs::create_dir_all(&by_id).unwrap();
        std::os::unix::fs::symlink("/dev/null", by_id.join("virtio-abc123")).unwrap();
        let d = DiskSettings::from_hint("d", &json!({"id": "abc123"})).unwrap();
        // /dev/null is a character device: found, then rejected for what it is.
        assert!(resolve(&d, &dirs).unwrap_err().contains("not a block device"));
        let d = DiskSettings::from_hint("d", &json!({"id": "zzz"})).unwrap();
        assert!(resolve(&d, &dirs).unwrap_err().contains("matches id 'zzz'"));
        let d = DiskSettings::from_hint("d", &json!("/dev/does-not-exist")).unwrap();
        assert!(resolve(&d, &dirs).unwrap_err().contains("is not there"));
        let d = DiskSettings::from_hint("d", &json!({"lun": "0", "host_device_id": "x"})).unwrap();
        assert!(resolve(&d, &dirs).unwrap_err().contains("SCSI LUN device resolution is not supported"));
        let d = DiskSettings::from_hint("d", &json!({"volume_id": "3"})).unwrap();
        assert!(resolve(&d, &dirs).unwrap_err().contains("not supported"));
    }
}
