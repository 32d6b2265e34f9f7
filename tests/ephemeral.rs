//! The ephemeral disk in the Linux bootstrap, on real loop devices: a blank disk gets swap + data and
//! `data` is mounted from it; a second bootstrap keeps everything; a disk holding anything else is
//! refused and left untouched.
//!
//! These tests need root and loop devices. When those are missing they print a loud message and
//! return, except under `CI=true`, where they fail: a silent skip in CI would hide a broken feature.
//! The bootstrap runs against a scratch root (`-r`), so it skips `swapon` (the host's swap is not
//! the test's to change) but does everything else to the device.

use crate::common::loopdev::{devices_available, sh, LoopDevice, DEVICES};
use bosh_agent::dirs::Dirs;
use bosh_agent::platform::disks::{mount, prepare};
use bosh_agent::platform::{self, PlatformKind};
use bosh_agent::settings::{Effective, Settings};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools these tests drive.
const TOOLS: &[&str] = &["sfdisk", "mkfs.ext4", "mkswap", "blkid", "partx"];

/// A scratch root with a base dir and a loop device; on drop the bootstrap's mounts under the root
/// are undone before the device goes.
struct Fixture {
    root: tempfile::TempDir,
    disk: LoopDevice,
    dev: PathBuf,
}

impl Fixture {
    fn new(mb: u64) -> Fixture {
        let disk = LoopDevice::new(mb);
        let dev = disk.path().to_path_buf();
        Fixture { root: tempfile::tempdir().expect("root"), disk, dev }
    }

    fn dirs(&self) -> Dirs {
        Dirs::new(self.root.path().join("var/vcap"), self.root.path())
    }

    fn data(&self) -> PathBuf {
        self.dirs().data()
    }

    fn part(&self, n: usize) -> PathBuf {
        self.disk.part(n)
    }

    fn bootstrap(&self, swap_size: Option<u64>) -> Result<(), String> {
        let mut bosh = json!({});
        if let Some(s) = swap_size {
            bosh["swap_size"] = json!(s);
        }
        let s: Settings = serde_json::from_value(json!({
            "agent_id": "agent-eph",
            "disks": {"ephemeral": self.dev.to_string_lossy()},
            "env": {"bosh": bosh}
        }))
        .expect("settings");
        let effective = Effective { settings: s, update: Default::default() };
        platform::new(PlatformKind::Linux, &self.dirs()).bootstrap(&effective, false)
    }

    fn unmount_all(&self) {
        self.disk.unmount_all();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        crate::common::mounts::unmount_under(&[self.root.path()]);
        self.unmount_all();
    }
}

fn blkid(dev: &Path, key: &str) -> String {
    let out = Command::new("blkid").args(["-p", "-o", "value", "-s", key]).arg(dev).output().expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn partition_count(dev: &Path) -> usize {
    let v: Value = serde_json::from_str(&sh(Command::new("sfdisk").arg("-J").arg(dev))).expect("sfdisk -J");
    v["partitiontable"]["partitions"].as_array().map(Vec::len).unwrap_or(0)
}

fn mounted_at(dir: &Path) -> Option<(u64, u64)> {
    mount::device_at(&mount::mounts().expect("mounts"), dir)
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    DEVICES.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn blank_disk_gets_swap_and_data_and_a_second_boot_keeps_them() {
    let _g = lock();
    if !devices_available("blank_disk_gets_swap_and_data_and_a_second_boot_keeps_them", TOOLS) {
        return;
    }
    let f = Fixture::new(96);
    f.bootstrap(None).expect("first bootstrap");
    assert_eq!(partition_count(&f.dev), 2);
    assert_eq!(blkid(&f.part(1), "TYPE"), "swap");
    assert_eq!(blkid(&f.part(2), "TYPE"), "ext4");
    let data_dev = mount::device_number(&f.part(2)).expect("p2");
    assert_eq!(mounted_at(&f.data()), Some(data_dev), "data is not mounted from partition 2");
    // Swap is min(RAM, disk/2): 48 MiB on this disk (the test machine has more RAM than that).
    let p1_size = prepare::size_of(&f.part(1)).expect("p1 size");
    assert_eq!(p1_size, 48 << 20);
    // The data sub-directories live on the disk, not under its mount point.
    for sub in ["sys/log", "jobs", "packages", "blobs", "tmp"] {
        let m = std::fs::metadata(f.data().join(sub)).unwrap_or_else(|e| panic!("{sub}: {e}"));
        assert_eq!(mount::split_dev(m.dev()), data_dev, "{sub} is not on the ephemeral disk");
    }
    let uuid = blkid(&f.part(2), "UUID");
    assert!(!uuid.is_empty());
    std::fs::write(f.data().join("jobs/kept.txt"), "survives").expect("write");

    // Agent restart: mounted already, nothing changes (the binds of data/root_* over system paths
    // are the same filesystem at other mount points).
    let mounted = mount::mount_points_of(&mount::mounts().expect("mounts"), data_dev);
    f.bootstrap(None).expect("second bootstrap");
    assert_eq!(blkid(&f.part(2), "UUID"), uuid);
    assert_eq!(mount::mount_points_of(&mount::mounts().expect("mounts"), data_dev), mounted);
    assert_eq!(mounted.iter().filter(|p| **p == f.data()).count(), 1, "{mounted:?}");

    // VM reboot: not mounted any more; the layout is kept and mounted again.
    f.unmount_all();
    assert_eq!(mounted_at(&f.data()), None);
    f.bootstrap(None).expect("bootstrap after reboot");
    assert_eq!(blkid(&f.part(2), "UUID"), uuid);
    assert_eq!(mounted_at(&f.data()), Some(data_dev));
    assert_eq!(std::fs::read_to_string(f.data().join("jobs/kept.txt")).expect("read"), "survives");
}

#[test]
fn swap_size_zero_gives_one_data_partition() {
    let _g = lock();
    if !devices_available("swap_size_zero_gives_one_data_partition", TOOLS) {
        return;
    }
    let f = Fixture::new(64);
    f.bootstrap(Some(0)).expect("bootstrap");
    assert_eq!(partition_count(&f.dev), 1);
    assert_eq!(blkid(&f.part(1), "TYPE"), "ext4");
    assert_eq!(mounted_at(&f.data()), Some(mount::device_number(&f.part(1)).expect("p1")));
    assert!(f.data().join("sys/run").is_dir());
}

#[test]
fn explicit_swap_size_is_honoured_and_too_big_a_swap_is_refused() {
    let _g = lock();
    if !devices_available("explicit_swap_size_is_honoured_and_too_big_a_swap_is_refused", TOOLS) {
        return;
    }
    let f = Fixture::new(64);
    let e = f.bootstrap(Some(60)).expect_err("swap leaves no room");
    assert!(e.contains("does not fit"), "{e}");
    assert_eq!(blkid(&f.dev, "PTTYPE"), "", "the disk was touched");
    f.bootstrap(Some(16)).expect("bootstrap");
    assert_eq!(prepare::size_of(&f.part(1)).expect("p1 size"), 16 << 20);
}

#[test]
fn a_disk_with_foreign_data_is_refused_and_untouched() {
    let _g = lock();
    if !devices_available("a_disk_with_foreign_data_is_refused_and_untouched", TOOLS) {
        return;
    }
    // A filesystem on the whole device.
    let f = Fixture::new(64);
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&f.dev));
    let uuid = blkid(&f.dev, "UUID");
    let e = f.bootstrap(None).expect_err("must refuse");
    assert!(e.contains("ephemeral disk") && e.contains("ext4 filesystem on the whole device"), "{e}");
    assert_eq!(blkid(&f.dev, "UUID"), uuid);
    assert_eq!(blkid(&f.dev, "PTTYPE"), "");
    assert_eq!(mounted_at(&f.data()), None);
    drop(f);

    // Unrecognised bytes (no signature blkid knows).
    let f = Fixture::new(64);
    std::fs::write(&f.dev, vec![0xa5u8; 4096]).expect("scribble");
    let e = f.bootstrap(None).expect_err("must refuse");
    assert!(e.contains("not blank"), "{e}");
    assert_eq!(blkid(&f.dev, "PTTYPE"), "");
    drop(f);

    // Someone else's partition table: three partitions.
    let f = Fixture::new(64);
    sh(Command::new("sh")
        .arg("-c")
        .arg(format!("printf 'label: gpt\\n,8MiB,L\\n,8MiB,L\\n,,L\\n' | sfdisk -q {}", f.dev.display())));
    let e = f.bootstrap(None).expect_err("must refuse");
    assert!(e.contains("3 partitions"), "{e}");
    assert_eq!(partition_count(&f.dev), 3);
    drop(f);

    // Two partitions where partition 2 holds swap instead of ext4: the layout is not ours.
    let f = Fixture::new(64);
    sh(Command::new("sh")
        .arg("-c")
        .arg(format!("printf 'label: gpt\\n,16MiB,S\\n,,L\\n' | sfdisk -q {}", f.dev.display())));
    assert_eq!(prepare::sync_partitions(&f.dev).expect("sync"), 2);
    sh(Command::new("mkswap").arg(f.part(2)));
    let e = f.bootstrap(None).expect_err("must refuse");
    assert!(e.contains("holds swap where this agent's layout has ext4"), "{e}");
    assert_eq!(blkid(&f.part(1), "TYPE"), "", "partition 1 was formatted before the refusal");
}
