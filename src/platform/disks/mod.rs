//! Persistent and dynamic disks (the Go agent's disk actions in `agent/action` and `platform/linux_platform.go`).
//!
//! The director attaches a disk through the CPI, tells the agent where to find it
//! (`add_persistent_disk`), then asks it to mount it (`mount_disk`), to move the data to a bigger disk
//! (`migrate_disk`) and to let go of it (`unmount_disk`). The one rule above all others here: a
//! persistent disk that holds anything is never partitioned or formatted — losing a customer's
//! persistent data is the one mistake an agent cannot take back. So `prepare` formats only a disk
//! that `blkid` finds nothing on *and* whose first and last MiB are zeros. The ephemeral disk is the
//! IaaS's scratch space and follows the Go agent's rules instead (`ephemeral`).
//!
//! How the agent finds, lays out and grows disks follows `agent.json`'s `Platform.Linux`
//! (`options`): the resolution type of each IaaS (`resolve`, `iscsi`), the ephemeral layout, the
//! root disk (`root`), warden's directory disks. Partition tables are read and written in one place
//! (`table`), growth in another (`grow`).
//!
//! The real work is in [`LinuxDisks`]; [`DummyDisks`] records the same decisions in a JSON file so the
//! director conversation runs on any machine (`-P dummy`). Both sit behind [`DiskManager`], which the
//! `Platform` trait hands out.

mod dummy;
pub mod ephemeral;
pub mod grow;
pub mod iscsi;
mod linux;
pub mod mount;
pub mod options;
pub mod prepare;
pub mod resolve;
pub mod root;
pub mod table;

pub use dummy::DummyDisks;
pub use linux::LinuxDisks;
pub use options::DiskConfig;

use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::settings::Effective;
use crate::sync::lock;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The iSCSI part of a disk hint, kept so the hints file round-trips with the Go agent's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IscsiSettings {
    /// Initiator IQN.
    #[serde(rename = "InitiatorName")]
    pub initiator_name: String,
    /// CHAP user.
    #[serde(rename = "Username")]
    pub username: String,
    /// Target portal.
    #[serde(rename = "Target")]
    pub target: String,
    /// CHAP secret; never shown in messages.
    #[serde(rename = "Password")]
    pub password: String,
}

/// One persistent disk as the agent knows it. The field names are the Go agent's, because
/// `persistent_disk_hints.json` must stay readable by either agent across a stemcell change.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiskSettings {
    /// The disk CID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The infrastructure's device id (the hint's `id`), looked up under `/dev/disk/by-id`.
    #[serde(rename = "DeviceID")]
    pub device_id: String,
    /// The infrastructure's volume id: the last (LUN) number of a SCSI address (see `resolve`).
    #[serde(rename = "VolumeID")]
    pub volume_id: String,
    /// SCSI LUN (Azure), matched like the volume id.
    #[serde(rename = "Lun")]
    pub lun: String,
    /// SCSI host device id (Azure): the controller the LUN must sit under.
    #[serde(rename = "HostDeviceID")]
    pub host_device_id: String,
    /// Device path, e.g. `/dev/sdc`.
    #[serde(rename = "Path")]
    pub path: String,
    /// iSCSI connection (`DevicePathResolutionType: iscsi`).
    #[serde(rename = "ISCSISettings")]
    pub iscsi: IscsiSettings,
    /// `ext4` (default) or `xfs`.
    #[serde(rename = "FileSystemType")]
    pub fs_type: String,
    /// Extra `mount -o` options.
    #[serde(rename = "MountOptions")]
    pub mount_options: Option<Vec<String>>,
    /// Partitioner name, recorded only.
    #[serde(rename = "Partitioner")]
    pub partitioner: String,
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

impl DiskSettings {
    /// Converts a hint (settings entry or `add_persistent_disk` argument) in any of the director's
    /// shapes: a bare path, `{"path","volume_id"}`, `{"lun","host_device_id"}` or
    /// `{"id","iscsi_settings"}`.
    pub fn from_hint(cid: &str, hint: &Value) -> Result<DiskSettings, String> {
        let mut d = DiskSettings { id: cid.to_string(), ..DiskSettings::default() };
        match hint {
            Value::String(path) => d.path = path.clone(),
            Value::Object(o) => {
                d.path = text(o.get("path"));
                d.volume_id = text(o.get("volume_id"));
                d.device_id = text(o.get("id"));
                d.lun = text(o.get("lun"));
                d.host_device_id = text(o.get("host_device_id"));
                if let Some(Value::Object(i)) = o.get("iscsi_settings") {
                    d.iscsi = IscsiSettings {
                        initiator_name: text(i.get("initiator_name")),
                        username: text(i.get("username")),
                        target: text(i.get("target")),
                        password: text(i.get("password")),
                    };
                }
            }
            other => return Err(format!("disk hint for '{cid}' must be a path or an object, got {other}")),
        }
        Ok(d)
    }

    /// The Go agent's `%+v` of its DiskSettings struct, which `unmount_disk` puts in its message and
    /// which clients have seen for years. Only the iSCSI password differs: it is never echoed.
    pub fn go_format(&self) -> String {
        let i = &self.iscsi;
        let password = if i.password.is_empty() { "" } else { "<redacted>" };
        format!(
            "{{ID:{} DeviceID:{} VolumeID:{} Lun:{} HostDeviceID:{} Path:{} ISCSISettings:{{InitiatorName:{} \
             Username:{} Target:{} Password:{password}}} FileSystemType:{} MountOptions:[{}] Partitioner:{}}}",
            self.id,
            self.device_id,
            self.volume_id,
            self.lun,
            self.host_device_id,
            self.path,
            i.initiator_name,
            i.username,
            i.target,
            self.fs_type,
            self.mount_options.as_deref().unwrap_or_default().join(" "),
            self.partitioner
        )
    }
}

/// Filesystem and mount options for one disk: the disk's own, else the VM's `env` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskOptions {
    /// `ext4` or `xfs`.
    pub fs_type: String,
    /// `mount -o` options.
    pub mount_options: Vec<String>,
}

impl DiskOptions {
    /// Picks the options for `disk` with `env.persistent_disk_fs` and `env.persistent_disk_mount_options`
    /// as defaults; an unsupported filesystem fails with the Go agent's message.
    pub fn for_disk(disk: &DiskSettings, settings: &Effective) -> Result<DiskOptions, String> {
        let env = &settings.settings.env;
        let env_value = |key: &str| env.extra.get(key).or_else(|| env.bosh.extra.get(key)).cloned();
        let fs_type = if disk.fs_type.is_empty() {
            env_value("persistent_disk_fs").and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        } else {
            disk.fs_type.clone()
        };
        let fs_type = if fs_type.is_empty() { "ext4".to_string() } else { fs_type };
        if fs_type != "ext4" && fs_type != "xfs" {
            return Err(format!("The filesystem type \"{fs_type}\" is not supported"));
        }
        let mount_options = match &disk.mount_options {
            Some(o) if !o.is_empty() => o.clone(),
            _ => env_value("persistent_disk_mount_options")
                .and_then(|v| Vec::<String>::deserialize(&v).ok())
                .unwrap_or_default(),
        };
        Ok(DiskOptions { fs_type, mount_options })
    }
}

/// Rejects CIDs that could escape a directory when used as a file name (dynamic disk links).
pub fn check_cid(cid: &str) -> Result<(), String> {
    if cid.is_empty() || cid == "." || cid == ".." || cid.contains('/') || cid.contains('\0') {
        return Err(format!("invalid disk CID '{cid}'"));
    }
    Ok(())
}

/// The CID in `managed_disk_settings.json` (a bare string, as the Go agent writes it; a JSON string is
/// accepted too). `None` when no disk was ever mounted.
pub fn last_mounted_cid(dirs: &Dirs) -> Result<Option<String>, String> {
    let path = dirs.managed_disk_settings_json();
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim();
            let cid = serde_json::from_str::<String>(s).unwrap_or_else(|_| s.to_string());
            Ok(if cid.is_empty() { None } else { Some(cid) })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Records `cid` as the disk to remount on store at boot.
pub fn record_mounted_cid(dirs: &Dirs, cid: &str) -> Result<(), String> {
    let path = dirs.managed_disk_settings_json();
    crate::fsutil::write_atomic(&path, cid.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

/// Serialises read-modify-write of the hints file between concurrent `add/remove_persistent_disk`.
static HINTS_LOCK: Mutex<()> = Mutex::new(());

fn read_hints(dirs: &Dirs) -> Result<BTreeMap<String, DiskSettings>, String> {
    let path = dirs.disk_hints_json();
    crate::fsutil::read_json::<Option<BTreeMap<String, DiskSettings>>>(&path)
        .map(|h| h.flatten().unwrap_or_default())
        .with_context(|| format!("reading {}", path.display()))
}

/// Saves `disk` in the hints file (atomically), replacing any earlier hint for its CID.
pub fn save_hint(dirs: &Dirs, disk: DiskSettings) -> Result<(), String> {
    let _g = lock(&HINTS_LOCK);
    let mut hints = read_hints(dirs)?;
    hints.insert(disk.id.clone(), disk);
    let path = dirs.disk_hints_json();
    crate::fsutil::write_json_atomic(&path, &hints, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// Drops the hint for `cid` (atomically); unknown CIDs are fine, as in the Go agent.
pub fn remove_hint(dirs: &Dirs, cid: &str) -> Result<(), String> {
    let _g = lock(&HINTS_LOCK);
    let mut hints = read_hints(dirs)?;
    if hints.remove(cid).is_none() {
        return Ok(());
    }
    let path = dirs.disk_hints_json();
    crate::fsutil::write_json_atomic(&path, &hints, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// Every persistent disk the agent knows: `settings.disks.persistent` overlaid with the hints file
/// (the hints win, as in the Go agent). A corrupt hints file is logged and ignored, so one bad write
/// by an older agent cannot hide the disks the settings name.
pub fn known_disks(dirs: &Dirs, settings: &Effective) -> BTreeMap<String, DiskSettings> {
    let mut out = BTreeMap::new();
    for (cid, hint) in &settings.settings.disks.persistent {
        match DiskSettings::from_hint(cid, hint) {
            Ok(d) => {
                out.insert(cid.clone(), d);
            }
            Err(e) => log::warn!("ignoring persistent disk setting: {e}"),
        }
    }
    match read_hints(dirs) {
        Ok(h) => out.extend(h),
        Err(e) => log::warn!("ignoring the persistent disk hints: {e}"),
    }
    out
}

/// The settings of disk `cid`, with the Go agent's error when it is unknown.
pub fn find_disk(dirs: &Dirs, settings: &Effective, cid: &str) -> Result<DiskSettings, String> {
    known_disks(dirs, settings)
        .remove(cid)
        .ok_or_else(|| format!("Persistent disk with volume id '{cid}' could not be found"))
}

/// What the platform does with disks; one implementation touches devices, the other records.
pub trait DiskManager: Send + Sync {
    /// Partitions and formats a blank disk, then mounts it on store, or on the migration target when
    /// store holds another disk, and records it as the disk to remount at boot.
    fn mount(&self, disk: &DiskSettings, opts: &DiskOptions) -> Result<(), String>;
    /// Unmounts the disk wherever it is mounted; `Ok(false)` when it was not mounted.
    fn unmount(&self, disk: &DiskSettings) -> Result<bool, String>;
    /// Copies store onto the migration target, unmounts the old disk and moves the new one onto store.
    fn migrate(&self, known: &BTreeMap<String, DiskSettings>) -> Result<(), String>;
    /// CIDs among `known` that are mounted.
    fn mounted(&self, known: &BTreeMap<String, DiskSettings>) -> Vec<String>;
    /// Mounts the recorded disk on store at boot if it is there and already holds a filesystem; never
    /// partitions or formats. `Ok(false)` when there was nothing to mount.
    fn remount(&self, disk: &DiskSettings, opts: &DiskOptions) -> Result<bool, String>;
    /// Links `data/dynamic_disks/<cid>` to the disk's device.
    fn add_dynamic(&self, disk: &DiskSettings) -> Result<(), String>;
    /// Removes that link.
    fn remove_dynamic(&self, cid: &str) -> Result<(), String>;
    /// Boot: raw ephemeral disks, swap and `data` on the ephemeral disk or the root disk's free
    /// space, the root partition grown (see `ephemeral`); `data` is at least a directory after it.
    fn setup_ephemeral(&self, settings: &Effective) -> Result<(), String>;
}

/// Boot step 21: remounts the disk named in `managed_disk_settings.json` on store.
///
/// Unlike the Go agent, which refuses to boot, a recorded disk that is unknown, detached or unreadable
/// is logged and skipped: an agent that cannot boot cannot be told to fix anything, while one that
/// boots answers `list_disk` truthfully (without the disk) and the director re-attaches it.
/// Returns the CID mounted, if any. app.rs calls it once, after settings load and before the bus
/// starts: `platform::disks::remount_last_disk(platform.as_ref(), &dirs, &effective)`.
pub fn remount_last_disk(
    platform: &dyn super::Platform,
    dirs: &Dirs,
    settings: &Effective,
) -> Option<String> {
    let cid = match last_mounted_cid(dirs) {
        Ok(Some(cid)) => cid,
        Ok(None) => return None,
        Err(e) => {
            log::warn!("Mounting last mounted disk: {e}; booting without it");
            return None;
        }
    };
    let outcome = find_disk(dirs, settings, &cid)
        .and_then(|disk| DiskOptions::for_disk(&disk, settings).map(|o| (disk, o)))
        .and_then(|(disk, opts)| platform.disks().remount(&disk, &opts));
    match outcome {
        Ok(true) => {
            log::info!("remounted persistent disk {cid} on store");
            Some(cid)
        }
        Ok(false) => {
            log::warn!("Mounting last mounted disk {cid}: nothing mountable found; booting without it");
            None
        }
        Err(e) => {
            log::warn!("Mounting last mounted disk {cid}: {e}; booting without it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hints_in_every_shape() {
        let d = DiskSettings::from_hint("disk-1", &json!("/dev/sdc")).unwrap();
        assert_eq!(d.path, "/dev/sdc");
        let d = DiskSettings::from_hint("disk-1", &json!({"path": "/dev/sdc", "volume_id": "3"})).unwrap();
        assert_eq!(
            d.go_format(),
            "{ID:disk-1 DeviceID: VolumeID:3 Lun: HostDeviceID: Path:/dev/sdc ISCSISettings:{InitiatorName: \
             Username: Target: Password:} FileSystemType: MountOptions:[] Partitioner:}"
        );
        let d = DiskSettings::from_hint("d", &json!({"lun": 0, "host_device_id": "h"})).unwrap();
        assert_eq!((d.lun.as_str(), d.host_device_id.as_str()), ("0", "h"));
        let d =
            DiskSettings::from_hint("d", &json!({"id": "x", "iscsi_settings": {"password": "p"}})).unwrap();
        assert_eq!(d.device_id, "x");
        assert!(!d.go_format().contains("Password:p"));
        assert!(DiskSettings::from_hint("d", &json!(3)).is_err());
    }

    #[test]
    fn hints_file_round_trips_and_wins_over_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(tmp.path(), "/");
        let mut s = Effective::default();
        s.settings.disks.persistent.insert("disk-1".into(), json!("/dev/sdc"));
        save_hint(&dirs, DiskSettings::from_hint("disk-1", &json!("/dev/sdd")).unwrap()).unwrap();
        save_hint(&dirs, DiskSettings::from_hint("disk-2", &json!("/dev/sde")).unwrap()).unwrap();
        let raw: Value = serde_json::from_slice(&std::fs::read(dirs.disk_hints_json()).unwrap()).unwrap();
        assert_eq!(raw["disk-2"]["Path"], "/dev/sde");
        assert_eq!(raw["disk-2"]["ISCSISettings"]["Target"], "");
        let known = known_disks(&dirs, &s);
        assert_eq!(known["disk-1"].path, "/dev/sdd");
        remove_hint(&dirs, "disk-1").unwrap();
        assert_eq!(find_disk(&dirs, &s, "disk-1").unwrap().path, "/dev/sdc");
        let e = find_disk(&dirs, &s, "nope").unwrap_err();
        assert_eq!(e, "Persistent disk with volume id 'nope' could not be found");
    }

    #[test]
    fn options_default_from_env_and_reject_unknown_filesystems() {
        let mut s = Effective::default();
        let d = DiskSettings::default();
        assert_eq!(DiskOptions::for_disk(&d, &s).unwrap().fs_type, "ext4");
        s.settings.env.extra.insert("persistent_disk_fs".into(), json!("btrfs"));
        let e = DiskOptions::for_disk(&d, &s).unwrap_err();
        assert_eq!(e, "The filesystem type \"btrfs\" is not supported");
        s.settings.env.extra.insert("persistent_disk_fs".into(), json!("xfs"));
        s.settings.env.extra.insert("persistent_disk_mount_options".into(), json!(["noatime"]));
        let o = DiskOptions::for_disk(&d, &s).unwrap();
        assert_eq!((o.fs_type.as_str(), o.mount_options), ("xfs", vec!["noatime".to_string()]));
    }

    #[test]
    fn managed_cid_is_a_bare_string() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(tmp.path(), "/");
        assert_eq!(last_mounted_cid(&dirs).unwrap(), None);
        record_mounted_cid(&dirs, "disk-1").unwrap();
        assert_eq!(std::fs::read_to_string(dirs.managed_disk_settings_json()).unwrap(), "disk-1");
        std::fs::write(dirs.managed_disk_settings_json(), "\"disk-2\"\n").unwrap();
        assert_eq!(last_mounted_cid(&dirs).unwrap().as_deref(), Some("disk-2"));
        assert!(check_cid("../x").is_err() && check_cid("disk-1").is_ok());
    }
}
