//! The VM's network interfaces as the agent configures them: every entry of `/sys/class/net` that
//! is a device (has a `device` link: virtio, ENA, vmxnet3, ...) or that someone marked for the agent
//! with an `ifalias` starting `bosh-interface` (veths and other virtual NICs have no `device`), minus
//! those Azure's udev rules mark `AZURE_UNMANAGED_SRIOV=1` (the accelerated-networking VF that shares
//! the synthetic NIC's MAC). The Go agent's detection, looked up under the root dir so tests can
//! build a fake sysfs.

use crate::dirs::Dirs;
use std::path::Path;

/// The `ifalias` prefix that makes a virtual interface one of the agent's.
pub const ALIAS_PREFIX: &str = "bosh-interface";

/// One interface the agent may configure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The kernel's name (`eth0`, `ens4`).
    pub name: String,
    /// Its MAC address, lower case.
    pub mac: String,
}

/// The interfaces under `<root>/sys/class/net`, sorted by name; none when there is no such
/// directory (a scratch root without a fake sysfs).
pub fn detect(dirs: &Dirs) -> Result<Vec<Nic>, String> {
    let class = dirs.under_root("/sys/class/net");
    let entries = match std::fs::read_dir(&class) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("listing {}: {e}", class.display())),
    };
    let mut nics = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string());
        let physical = std::fs::symlink_metadata(dir.join("device")).is_ok();
        let marked = read("ifalias").is_ok_and(|a| a.starts_with(ALIAS_PREFIX));
        if !physical && !marked {
            continue;
        }
        if let Ok(index) = read("ifindex") {
            if unmanaged_sriov(&dirs.under_root(&format!("/run/udev/data/n{index}"))) {
                log::info!("network interface {name}: udev marks it AZURE_UNMANAGED_SRIOV; left alone");
                continue;
            }
        }
        match read("address") {
            Ok(mac) if !mac.is_empty() => nics.push(Nic { name, mac: mac.to_ascii_lowercase() }),
            _ => log::info!("network interface {name}: no MAC address in sysfs; left alone"),
        }
    }
    crate::order::sort_by(&mut nics, |a, b| a.name.cmp(&b.name));
    Ok(nics)
}

fn unmanaged_sriov(udev_db: &Path) -> bool {
    std::fs::read_to_string(udev_db).is_ok_and(|t| t.lines().any(|l| l.trim() == "E:AZURE_UNMANAGED_SRIOV=1"))
}

/// Builds a fake `/sys/class/net/<name>` under `root` (tests): `address`, `ifindex`, and a
/// `device` link when `physical`, else an `ifalias` starting `bosh-interface`.
#[cfg(any(test, feature = "internals"))]
pub fn fake(root: &Path, name: &str, mac: &str, index: u32, physical: bool) -> std::io::Result<()> {
    let dir = root.join("sys/class/net").join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("address"), format!("{mac}\n"))?;
    std::fs::write(dir.join("ifindex"), format!("{index}\n"))?;
    if physical {
        std::os::unix::fs::symlink("../../../devices/pci0000:00/virtio0", dir.join("device"))
    } else {
        std::fs::write(dir.join("ifalias"), format!("{ALIAS_PREFIX}-{index}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_devices_and_marked_interfaces_only() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("base"), root.path());
        assert_eq!(detect(&dirs).unwrap(), vec![], "no sysfs: no interfaces");
        fake(root.path(), "eth1", "AA:BB:CC:DD:EE:02", 3, true).unwrap();
        fake(root.path(), "eth0", "aa:bb:cc:dd:ee:01", 2, true).unwrap();
        fake(root.path(), "veth7", "aa:bb:cc:dd:ee:07", 7, false).unwrap();
        fake(root.path(), "vf0", "aa:bb:cc:dd:ee:01", 9, true).unwrap();
        let lo = root.path().join("sys/class/net/lo");
        std::fs::create_dir_all(&lo).unwrap();
        std::fs::write(lo.join("address"), "00:00:00:00:00:00\n").unwrap();
        let db = root.path().join("run/udev/data");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("n9"), "I:1\nE:AZURE_UNMANAGED_SRIOV=1\n").unwrap();
        let names: Vec<(String, String)> =
            detect(&dirs).unwrap().into_iter().map(|n| (n.name, n.mac)).collect();
        assert_eq!(
            names,
            vec![
                ("eth0".into(), "aa:bb:cc:dd:ee:01".into()),
                ("eth1".into(), "aa:bb:cc:dd:ee:02".into()),
                ("veth7".into(), "aa:bb:cc:dd:ee:07".into()),
            ]
        );
    }
}
