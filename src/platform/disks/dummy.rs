//! Disks on the dummy platform: every decision `LinuxDisks` would make is recorded in
//! `bosh/dummy_mounts.json` instead of touching a device, so the director's disk conversation
//! (add, mount, list, migrate, unmount, remove) runs on a laptop and tests can read what happened.

use super::{record_mounted_cid, DiskManager, DiskOptions, DiskSettings};
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::sync::lock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// One simulated mount.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DummyMount {
    /// `<base>/store` or `<base>/store_migration_target`.
    #[serde(rename = "MountDir")]
    pub mount_dir: PathBuf,
    /// The options it would have been mounted with.
    #[serde(rename = "MountOptions")]
    pub mount_options: Vec<String>,
    /// The disk.
    #[serde(rename = "DiskCid")]
    pub disk_cid: String,
}

/// Everything the dummy platform remembers about disks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DummyState {
    /// Current mounts.
    pub mounts: Vec<DummyMount>,
    /// Disks "formatted" so far.
    pub formatted: Vec<String>,
    /// `[old, new]` CID pairs of each migration.
    pub migrations: Vec<[String; 2]>,
    /// Dynamic disks: CID → device path from the hint.
    pub dynamic: BTreeMap<String, String>,
}

/// Recording disk management.
pub struct DummyDisks {
    dirs: Dirs,
    lock: Mutex<()>,
}

impl DummyDisks {
    /// Records under the agent's base dir.
    pub fn new(dirs: Dirs) -> DummyDisks {
        DummyDisks { dirs, lock: Mutex::new(()) }
    }

    fn update<T>(&self, f: impl FnOnce(&mut DummyState) -> Result<T, String>) -> Result<T, String> {
        let _g = lock(&self.lock);
        let path = self.dirs.dummy_mounts_json();
        let mut state = crate::fsutil::read_json::<DummyState>(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .unwrap_or_default();
        let before = state.clone();
        let out = f(&mut state)?;
        if state != before {
            crate::fsutil::write_json_atomic(&path, &state, 0o644)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(out)
    }
}

impl DiskManager for DummyDisks {
    fn mount(&self, disk: &DiskSettings, opts: &DiskOptions) -> Result<(), String> {
        let store = self.dirs.store();
        let on_store = self.update(|s| {
            if let Some(m) = s.mounts.iter().find(|m| m.disk_cid == disk.id) {
                return Ok(m.mount_dir == store);
            }
            if !s.formatted.contains(&disk.id) {
                s.formatted.push(disk.id.clone());
            }
            let taken = s.mounts.iter().any(|m| m.mount_dir == store);
            let dir = if taken { self.dirs.store_migration_target() } else { store.clone() };
            s.mounts.push(DummyMount {
                mount_dir: dir,
                mount_options: opts.mount_options.clone(),
                disk_cid: disk.id.clone(),
            });
            Ok(!taken)
        })?;
        if on_store {
            record_mounted_cid(&self.dirs, &disk.id)?;
        }
        Ok(())
    }

    fn unmount(&self, disk: &DiskSettings) -> Result<bool, String> {
        self.update(|s| {
            let before = s.mounts.len();
            s.mounts.retain(|m| m.disk_cid != disk.id);
            Ok(s.mounts.len() != before)
        })
    }

    fn migrate(&self, _known: &BTreeMap<String, DiskSettings>) -> Result<(), String> {
        let store = self.dirs.store();
        let target = self.dirs.store_migration_target();
        let new = self.update(|s| {
            let old = s.mounts.iter().position(|m| m.mount_dir == store);
            let new = s.mounts.iter().position(|m| m.mount_dir == target);
            let (Some(old), Some(new)) = (old, new) else {
                return Err("migrating needs a disk on store and one on store_migration_target".to_string());
            };
            let pair = [s.mounts[old].disk_cid.clone(), s.mounts[new].disk_cid.clone()];
            s.mounts[new].mount_dir = store.clone();
            s.mounts.remove(old);
            s.migrations.push(pair.clone());
            Ok(pair[1].clone())
        })?;
        record_mounted_cid(&self.dirs, &new)
    }

    /// As on the Go dummy platform, every known disk counts as mounted: the director's integration
    /// tests attach disks through a dummy CPI and expect `list_disk` to name them.
    fn mounted(&self, known: &BTreeMap<String, DiskSettings>) -> Vec<String> {
        known.keys().cloned().collect()
    }

    fn remount(&self, disk: &DiskSettings, opts: &DiskOptions) -> Result<bool, String> {
        let formatted = self.update(|s| Ok(s.formatted.contains(&disk.id)))?;
        if formatted {
            self.mount(disk, opts)?;
        }
        Ok(formatted)
    }

    fn add_dynamic(&self, disk: &DiskSettings) -> Result<(), String> {
        super::check_cid(&disk.id)?;
        self.update(|s| {
            s.dynamic.insert(disk.id.clone(), disk.path.clone());
            Ok(())
        })
    }

    fn remove_dynamic(&self, cid: &str) -> Result<(), String> {
        self.update(|s| {
            s.dynamic.remove(cid);
            Ok(())
        })
    }

    /// No devices on the dummy platform: `data` is a directory.
    fn setup_ephemeral(&self, _settings: &crate::settings::Effective) -> Result<(), String> {
        let data = self.dirs.data();
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_mounts_migrations_and_unmounts() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(tmp.path(), "/");
        let d = DummyDisks::new(dirs.clone());
        let opts = DiskOptions { fs_type: "ext4".into(), mount_options: vec![] };
        let d1 = DiskSettings::from_hint("disk-1", &json!("/dev/sdc")).unwrap();
        let d2 = DiskSettings::from_hint("disk-2", &json!("/dev/sdd")).unwrap();
        d.mount(&d1, &opts).unwrap();
        d.mount(&d2, &opts).unwrap();
        let s: DummyState = crate::fsutil::read_json(&dirs.dummy_mounts_json()).unwrap().unwrap();
        assert_eq!(s.mounts[1].mount_dir, dirs.store_migration_target());
        assert_eq!(super::super::last_mounted_cid(&dirs).unwrap().as_deref(), Some("disk-1"));
        d.migrate(&BTreeMap::new()).unwrap();
        assert_eq!(super::super::last_mounted_cid(&dirs).unwrap().as_deref(), Some("disk-2"));
        assert!(d.unmount(&d2).unwrap());
        assert!(!d.unmount(&d2).unwrap());
        assert!(d.migrate(&BTreeMap::new()).is_err());
    }
}
