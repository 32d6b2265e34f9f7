//! Finds the block device of a persistent (or the ephemeral) disk from its settings: the device path
//! as given, `/dev/disk/by-id/*<id>` (virtio, udev), or a SCSI address under `/sys/bus/scsi`
//! (volume id or LUN). iSCSI answers a clear "not supported" rather than guessing a device, because
//! a wrong guess here means formatting somebody else's disk — for the same reason a SCSI hint that
//! matches more than one device is refused instead of picking one.
//!
//! SCSI rule (kept deliberately simple): the kernel names each SCSI device `H:C:T:L` in
//! `/sys/bus/scsi/devices`. A `volume_id` hint `N` (vSphere) selects `H:0:N:0`, the SCSI target, as
//! the Ruby and Go agents look it up; a `lun` hint `N` (Azure) selects the entries whose last number
//! is `N`, and a `host_device_id` additionally requires that id to be a component of the entry's real sysfs
//! path (on Azure the VMBus id of the SCSI controller sits above `hostX/`), which tells the data-disk
//! controller from the OS disk's. The entry's `block/<name>` gives `/dev/<name>`. Both directories are
//! looked up under the root dir so tests can build a fake sysfs. No SCSI rescan is triggered: the
//! director attaches the disk before it tells the agent, and the kernel announces hot-added disks.

use crate::error::Context as _;
use super::DiskSettings;
use crate::dirs::Dirs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

fn block_device(path: &Path, cid: &str) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("device {} of disk {cid} is not there", path.display()))?;
    let meta = std::fs::metadata(&real).with_context(|| format!("reading {}", real.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{} (disk {cid}) is not a block device", real.display()));
    }
    Ok(real)
}

/// The canonical device path of `disk` (symlinks followed). The by-id directory and the SCSI sysfs
/// tree are looked up under the root dir so tests can stand in for udev and the kernel.
pub fn resolve(disk: &DiskSettings, dirs: &Dirs) -> Result<PathBuf, String> {
    let cid = &disk.id;
    let scsi = !disk.lun.is_empty() || !disk.volume_id.is_empty();
    if !disk.path.is_empty() && (Path::new(&disk.path).exists() || (disk.device_id.is_empty() && !scsi)) {
        let path = Path::new(&disk.path);
        if let Some(renamed) = renamed_device(path, |p| p.exists()) {
            log::info!("disk {cid}: {} is not there; using {}", path.display(), renamed.display());
            return block_device(&renamed, cid);
        }
        return block_device(path, cid);
    }
    if !disk.device_id.is_empty() {
        let by_id = dirs.under_root("/dev/disk/by-id");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&by_id)
            .with_context(|| format!("listing {}", by_id.display()))?
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
    if scsi {
        let name = scsi_block_name(disk, dirs)?;
        return block_device(&dirs.under_root(&format!("/dev/{name}")), cid);
    }
    if !disk.iscsi.target.is_empty() || !disk.iscsi.initiator_name.is_empty() {
        return Err(format!(
            "resolving disk {cid}: iSCSI device resolution is not supported (give a path or id hint)"
        ));
    }
    if !disk.host_device_id.is_empty() {
        return Err(format!("disk {cid} names SCSI host {} but no LUN", disk.host_device_id));
    }
    Err(format!("disk {cid} has neither a device path nor an id"))
}

/// The same disk under the name another disk driver gives it, when `path` itself is missing: CPIs
/// name disks `/dev/sdX` while a KVM guest calls them `/dev/vdX` and a Xen guest `/dev/xvdX` (the Go
/// agent's virtio resolver maps them alike). Only a name that exists is returned; letters and
/// partition digits are kept.
fn renamed_device(path: &Path, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if exists(path) {
        return None;
    }
    let name = path.strip_prefix("/dev").ok()?.to_str()?;
    let rest = ["xvd", "sd", "vd"].iter().find_map(|p| name.strip_prefix(p))?;
    let shape = rest.starts_with(|c: char| c.is_ascii_lowercase())
        && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !shape {
        return None;
    }
    ["vd", "xvd", "sd"]
        .iter()
        .map(|p| PathBuf::from(format!("/dev/{p}{rest}")))
        .find(|p| p != path && exists(p))
}

/// The kernel's block device name (`sdc`) of the SCSI disk `disk` names; see the module doc.
pub fn scsi_block_name(disk: &DiskSettings, dirs: &Dirs) -> Result<String, String> {
    let cid = &disk.id;
    let (unit, what) = if disk.lun.is_empty() { (&disk.volume_id, "volume id") } else { (&disk.lun, "LUN") };
    if unit.is_empty() || !unit.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} '{unit}' of disk {cid} is not a SCSI unit number"));
    }
    let bus = dirs.under_root("/sys/bus/scsi/devices");
    let host = disk.host_device_id.to_ascii_lowercase();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&bus).with_context(|| format!("listing {}", bus.display()))?.flatten() {
        let addr = entry.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = addr.split(':').collect();
        let numeric =
            parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        // A vSphere volume id is the SCSI target (`H:0:<id>:0`, as the Ruby and Go agents look it
        // up); an Azure LUN is the last number, under the controller named by the host device id.
        let same = |a: &str, b: &str| a.trim_start_matches('0') == b.trim_start_matches('0');
        let matches = if disk.lun.is_empty() {
            same(parts.get(1).copied().unwrap_or(""), "0")
                && same(parts.get(2).copied().unwrap_or(""), unit)
                && same(parts.get(3).copied().unwrap_or(""), "0")
        } else {
            same(parts.get(3).copied().unwrap_or(""), unit)
        };
        if !numeric || !matches {
            continue;
        }
        if !host.is_empty() {
            let real = std::fs::canonicalize(entry.path()).unwrap_or_default();
            if !real.iter().any(|c| c.to_string_lossy().to_ascii_lowercase() == host) {
                continue;
            }
        }
        if let Ok(blocks) = std::fs::read_dir(entry.path().join("block")) {
            for b in blocks.flatten() {
                found.push((addr.clone(), b.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    found.sort();
    let under = if host.is_empty() { String::new() } else { format!(" under host {}", disk.host_device_id) };
    match found.as_slice() {
        [(_, name)] => Ok(name.clone()),
        [] => Err(format!("no SCSI disk with {what} {unit}{under} in {} (disk {cid})", bus.display())),
        many => Err(format!(
            "{what} {unit}{under} matches several SCSI disks ({}); refusing to guess for disk {cid}",
            many.iter().map(|(a, n)| format!("{a}={n}")).collect::<Vec<_>>().join(", ")
        )),
    }
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
        let d = DiskSettings::from_hint("d", &json!({"id": "x", "iscsi_settings": {"target": "t"}})).unwrap();
        assert!(resolve(&d, &dirs).unwrap_err().contains("matches id 'x'"));
        let d = DiskSettings::from_hint("d", &json!({"iscsi_settings": {"target": "t"}})).unwrap();
        assert!(resolve(&d, &dirs).unwrap_err().contains("iSCSI device resolution is not supported"));
    }

    #[test]
    fn maps_cpi_disk_names_to_the_guest_driver_names_that_exist() {
        let present = ["/dev/vdb", "/dev/vdb1", "/dev/xvdc"];
        let exists = |p: &Path| present.iter().any(|q| Path::new(q) == p);
        let renamed = |p: &str| renamed_device(Path::new(p), exists);
        assert_eq!(renamed("/dev/sdb"), Some(PathBuf::from("/dev/vdb")));
        assert_eq!(renamed("/dev/sdb1"), Some(PathBuf::from("/dev/vdb1")));
        assert_eq!(renamed("/dev/sdc"), Some(PathBuf::from("/dev/xvdc")));
        assert_eq!(renamed("/dev/vdb"), None, "an existing path is used as is");
        assert_eq!(renamed("/dev/sdd"), None, "no such disk under any name");
        assert_eq!(renamed("/dev/sd"), None);
        assert_eq!(renamed("/dev/sdb/../vdb"), None);
        assert_eq!(renamed("/dev/nvme0n1"), None);
    }

    /// A fake sysfs: `devices/<path>/<addr>/block/<name>` plus the bus link, as the kernel lays it out.
    fn scsi_device(root: &Path, parent: &str, addr: &str, name: &str) {
        let real = root.join("sys/devices").join(parent).join(addr);
        std::fs::create_dir_all(real.join("block").join(name)).unwrap();
        let bus = root.join("sys/bus/scsi/devices");
        std::fs::create_dir_all(&bus).unwrap();
        std::os::unix::fs::symlink(&real, bus.join(addr)).unwrap();
    }

    #[test]
    fn resolves_scsi_volume_ids_and_luns_in_a_fake_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("base"), root.path());
        let hint = |v| DiskSettings::from_hint("d", &v).unwrap();
        // No bus at all: a clear error, not a panic.
        assert!(scsi_block_name(&hint(json!({"volume_id": "3"})), &dirs).unwrap_err().contains("listing"));
        scsi_device(root.path(), "pci0/host0/target0:0:0", "0:0:0:0", "sda");
        scsi_device(root.path(), "pci0/host2/target2:0:3", "2:0:3:0", "sdd");
        scsi_device(root.path(), "pci0/host2/target2:0:0", "2:0:0:3", "sdc");
        scsi_device(
            root.path(),
            "vmbus/F8B3781B-1E82-4818-A1C3-63D806EC15BB/host3/target3:0:0",
            "3:0:0:1",
            "sde",
        );
        scsi_device(
            root.path(),
            "vmbus/00000000-0000-8899-0000-000000000000/host5/target5:0:0",
            "5:0:0:1",
            "sdf",
        );
        std::fs::create_dir_all(root.path().join("sys/bus/scsi/devices/host2")).unwrap();
        // vSphere: the volume id is the target number (2:0:3:0), not the LUN (2:0:0:3).
        assert_eq!(scsi_block_name(&hint(json!({"volume_id": "3"})), &dirs).unwrap(), "sdd");
        assert_eq!(scsi_block_name(&hint(json!({"volume_id": 3})), &dirs).unwrap(), "sdd");
        let d = hint(json!({"lun": "1", "host_device_id": "f8b3781b-1e82-4818-a1c3-63d806ec15bb"}));
        assert_eq!(scsi_block_name(&d, &dirs).unwrap(), "sde");
        let e = scsi_block_name(&hint(json!({"lun": "1"})), &dirs).unwrap_err();
        assert!(e.contains("several") && e.contains("3:0:0:1=sde") && e.contains("5:0:0:1=sdf"), "{e}");
        let e = scsi_block_name(&hint(json!({"lun": "7", "host_device_id": "h"})), &dirs).unwrap_err();
        assert!(e.contains("no SCSI disk with LUN 7 under host h"), "{e}");
        assert!(scsi_block_name(&hint(json!({"lun": "*"})), &dirs).unwrap_err().contains("not a SCSI unit"));
        // The name leads to /dev under the root; a non-device there is rejected for what it is.
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/sdd"), "").unwrap();
        let e = resolve(&hint(json!({"path": "/dev/nonexistent-x", "volume_id": "3"})), &dirs).unwrap_err();
        assert!(
            e.contains(&format!("{}/dev/sdd", root.path().display())) && e.contains("not a block device"),
            "{e}"
        );
        let e = resolve(&hint(json!({"host_device_id": "h"})), &dirs).unwrap_err();
        assert!(e.contains("no LUN"), "{e}");
    }
}
