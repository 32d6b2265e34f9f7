//! The ephemeral disk in the Linux bootstrap, on real loop devices: a blank disk gets swap + data and
//! `data` is mounted from it; a second bootstrap keeps everything; a disk holding anything else is
//! repartitioned as the Go agent repartitions it, never left half set up, and never while in use;
//! `PartitionerType`, `SkipDiskSetup` and raw ephemeral disks.
//!
//! These tests need root and loop devices. When those are missing they print a loud message and
//! return, except under `CI=true`, where they fail: a silent skip in CI would hide a broken feature.
//! The bootstrap runs against a scratch root (`-r`), so it skips `swapon` (the host's swap is not
//! the test's to change) but does everything else to the device.

use crate::common::loopdev::{sh, turn, LoopDevice};
use bosh_agent::config::LinuxOptions;
use bosh_agent::dirs::Dirs;
use bosh_agent::platform::disks::{mount, prepare};
use bosh_agent::platform::{self, PlatformKind};
use bosh_agent::settings::{Effective, Settings};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools these tests drive.
const TOOLS: &[&str] = &["sfdisk", "mkfs.ext4", "mkswap", "blkid", "partx", "wipefs"];

/// A scratch root and an ephemeral loop disk; on drop the bootstrap's mounts under the root are
/// undone before the device goes.
struct Fixture {
    root: tempfile::TempDir,
    disk: LoopDevice,
}

impl Fixture {
    fn new(mb: u64) -> Fixture {
        Fixture { root: tempfile::tempdir().expect("root"), disk: LoopDevice::new(mb) }
    }

    fn dev(&self) -> &Path {
        self.disk.path()
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
        self.bootstrap_with(swap_size, &LinuxOptions::default(), json!(self.dev()), json!(null))
    }

    fn bootstrap_with(
        &self,
        swap_size: Option<u64>,
        linux: &LinuxOptions,
        eph: Value,
        raw: Value,
    ) -> Result<(), String> {
        let mut bosh = json!({});
        if let Some(s) = swap_size {
            bosh["swap_size"] = json!(s);
        }
        let s: Settings = serde_json::from_value(json!({
            "agent_id": "agent-eph",
            "disks": {"ephemeral": eph, "raw_ephemeral": raw},
            "env": {"bosh": bosh}
        }))
        .expect("settings");
        let effective = Effective { settings: s, update: Default::default() };
        platform::with_options(PlatformKind::Linux, &self.dirs(), linux)?.bootstrap(&effective, false)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        crate::common::mounts::unmount_under(&[self.root.path()]);
        self.disk.unmount_all();
    }
}

pub fn blkid(dev: &Path, key: &str) -> String {
    let out = Command::new("blkid").args(["-p", "-o", "value", "-s", key]).arg(dev).output().expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `sfdisk -J`: the label and each partition's (type, name, size in bytes).
pub fn layout(dev: &Path) -> (String, Vec<(String, String, u64)>) {
    let out = Command::new("sfdisk").arg("-J").arg(dev).output().expect("sfdisk -J");
    if !out.status.success() {
        return (String::new(), Vec::new());
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("sfdisk -J json");
    let t = &v["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["type"].as_str().unwrap_or("").to_ascii_lowercase(),
                        p["name"].as_str().unwrap_or("").to_string(),
                        p["size"].as_u64().unwrap_or(0) * 512,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (t["label"].as_str().unwrap_or("").to_string(), parts)
}

fn names(dev: &Path) -> Vec<String> {
    layout(dev).1.into_iter().map(|(_, n, _)| n).collect()
}

fn mounted_at(dir: &Path) -> Option<(u64, u64)> {
    mount::device_at(&mount::mounts().expect("mounts"), dir)
}

/// An ext4 filesystem on `target` holding `hello.txt`.
fn put_file(target: &Path) {
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(target));
    let mnt = tempfile::tempdir().expect("mnt");
    sh(Command::new("mount").arg(target).arg(mnt.path()));
    std::fs::write(mnt.path().join("hello.txt"), "someone else's").expect("write");
    sh(Command::new("umount").arg(mnt.path()));
}

fn sfdisk_script(dev: &Path, script: &str) {
    sh(Command::new("sh").arg("-c").arg(format!("printf '{script}' | sfdisk -q {}", dev.display())));
    prepare::sync_partitions(dev).expect("sync");
}

const MIB: u64 = 1 << 20;

#[test]
fn blank_disk_gets_named_gpt_swap_and_data_and_a_second_boot_keeps_them() {
    let Some(_g) = turn("blank_disk_gets_named_gpt_swap_and_data_and_a_second_boot_keeps_them", TOOLS) else {
        return;
    };
    let f = Fixture::new(96);
    f.bootstrap(None).expect("first bootstrap");
    // The Go agent's parted layout: GPT, partitions named after the agent id.
    let (label, parts) = layout(f.dev());
    assert_eq!(label, "gpt");
    assert_eq!(names(f.dev()), ["bosh-partition-agent-eph-0", "bosh-partition-agent-eph-1"]);
    assert_eq!(blkid(&f.part(1), "TYPE"), "swap");
    assert_eq!(blkid(&f.part(2), "TYPE"), "ext4");
    // Swap is min(RAM, disk/2): 48 MiB on this disk (the test machine has more RAM than that).
    assert_eq!(parts[0].2, 48 * MIB);
    let data_dev = mount::device_number(&f.part(2)).expect("p2");
    assert_eq!(mounted_at(&f.data()), Some(data_dev), "data is not mounted from partition 2");
    // The data sub-directories live on the disk, not under its mount point.
    for sub in ["sys/log", "jobs", "packages", "blobs", "tmp"] {
        let m = std::fs::metadata(f.data().join(sub)).unwrap_or_else(|e| panic!("{sub}: {e}"));
        assert_eq!(mount::split_dev(m.dev()), data_dev, "{sub} is not on the ephemeral disk");
    }
    let (swap_uuid, uuid) = (blkid(&f.part(1), "UUID"), blkid(&f.part(2), "UUID"));
    assert!(!uuid.is_empty() && !swap_uuid.is_empty());
    std::fs::write(f.data().join("jobs/kept.txt"), "survives").expect("write");

    // Agent restart: mounted already, nothing changes (the binds of data/root_* over system paths
    // are the same filesystem at other mount points).
    let mounted = mount::mount_points_of(&mount::mounts().expect("mounts"), data_dev);
    f.bootstrap(None).expect("second bootstrap");
    assert_eq!((blkid(&f.part(1), "UUID"), blkid(&f.part(2), "UUID")), (swap_uuid.clone(), uuid.clone()));
    assert_eq!(mount::mount_points_of(&mount::mounts().expect("mounts"), data_dev), mounted);
    assert_eq!(mounted.iter().filter(|p| **p == f.data()).count(), 1, "{mounted:?}");

    // VM reboot: not mounted any more; the layout is kept and mounted again.
    f.disk.unmount_all();
    assert_eq!(mounted_at(&f.data()), None);
    f.bootstrap(None).expect("bootstrap after reboot");
    assert_eq!((blkid(&f.part(1), "UUID"), blkid(&f.part(2), "UUID")), (swap_uuid, uuid));
    assert_eq!(mounted_at(&f.data()), Some(data_dev));
    assert_eq!(std::fs::read_to_string(f.data().join("jobs/kept.txt")).expect("read"), "survives");
}

#[test]
fn swap_size_zero_gives_one_data_partition() {
    let Some(_g) = turn("swap_size_zero_gives_one_data_partition", TOOLS) else { return };
    let f = Fixture::new(64);
    f.bootstrap(Some(0)).expect("bootstrap");
    assert_eq!(names(f.dev()), ["bosh-partition-agent-eph-0"]);
    assert_eq!(blkid(&f.part(1), "TYPE"), "ext4");
    assert_eq!(mounted_at(&f.data()), Some(mount::device_number(&f.part(1)).expect("p1")));
    assert!(f.data().join("sys/run").is_dir());
}

#[test]
fn explicit_swap_size_is_honoured_and_too_big_a_swap_is_refused() {
    let Some(_g) = turn("explicit_swap_size_is_honoured_and_too_big_a_swap_is_refused", TOOLS) else {
        return;
    };
    let f = Fixture::new(64);
    let e = f.bootstrap(Some(60)).expect_err("swap leaves no room");
    assert!(e.contains("does not fit"), "{e}");
    assert_eq!(blkid(f.dev(), "PTTYPE"), "", "the disk was touched");
    f.bootstrap(Some(16)).expect("bootstrap");
    assert_eq!(layout(f.dev()).1[0].2, 16 * MIB);
    assert_eq!(prepare::size_of(&f.part(1)).expect("p1 size"), 16 * MIB);
}

#[test]
fn foreign_disks_are_repartitioned_as_the_go_agent_does() {
    let Some(_g) = turn("foreign_disks_are_repartitioned_as_the_go_agent_does", TOOLS) else { return };
    let check = |f: &Fixture, what: &str| {
        f.bootstrap(Some(16)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(names(f.dev()), ["bosh-partition-agent-eph-0", "bosh-partition-agent-eph-1"], "{what}");
        assert_eq!(blkid(&f.part(2), "TYPE"), "ext4", "{what}");
        assert_eq!(mounted_at(&f.data()), Some(mount::device_number(&f.part(2)).expect("p2")), "{what}");
        assert!(!f.data().join("hello.txt").exists(), "{what}: the old data shows through");
    };
    // A filesystem on the whole device (an instance store handed out formatted).
    let f = Fixture::new(64);
    put_file(f.dev());
    let old = blkid(f.dev(), "UUID");
    check(&f, "whole-disk ext4");
    assert_ne!(blkid(&f.part(2), "UUID"), old);
    drop(f);

    // Unrecognised bytes (no signature blkid knows).
    let f = Fixture::new(64);
    std::fs::write(f.dev(), vec![0xa5u8; 4096]).expect("scribble");
    check(&f, "unrecognised bytes");
    drop(f);

    // Someone else's partition table: three partitions.
    let f = Fixture::new(64);
    sfdisk_script(f.dev(), "label: gpt\\n,8MiB,L\\n,8MiB,L\\n,,L\\n");
    check(&f, "three partitions");
    drop(f);

    // Another agent's layout (a VM recreated with the same disk): the names carry its id.
    let f = Fixture::new(64);
    sfdisk_script(
        f.dev(),
        "label: gpt\\nsize=16MiB,type=S,name=bosh-partition-other-agent-0\\ntype=L,name=bosh-partition-other-agent-1\\n",
    );
    sh(Command::new("mkswap").arg(f.part(1)));
    put_file(&f.part(2));
    check(&f, "another agent's layout");
}

#[test]
fn an_old_filesystem_where_the_data_partition_starts_is_not_mounted_as_data() {
    let Some(_g) = turn("an_old_filesystem_where_the_data_partition_starts_is_not_mounted_as_data", TOOLS)
    else {
        return;
    };
    // An msdos disk whose second partition starts exactly where the new data partition will
    // (1 MiB + 16 MiB of swap): the Go agent would find that ext4 and mount it as data.
    let f = Fixture::new(64);
    sfdisk_script(f.dev(), "label: dos\\n,16MiB,L\\n,,L\\n");
    put_file(&f.part(2));
    assert_eq!(blkid(&f.part(2), "TYPE"), "ext4");
    f.bootstrap(Some(16)).expect("bootstrap");
    assert_eq!(layout(f.dev()).0, "gpt");
    assert!(!f.data().join("hello.txt").exists(), "the old filesystem was mounted as data");
    assert!(f.data().join("jobs").is_dir());
}

#[test]
fn a_half_set_up_disk_is_finished_not_redone() {
    let Some(_g) = turn("a_half_set_up_disk_is_finished_not_redone", TOOLS) else { return };
    // This agent's table was written and swap made, then the agent stopped before mkfs.
    let f = Fixture::new(64);
    sfdisk_script(
        f.dev(),
        "label: gpt\\nstart=1MiB,size=16MiB,type=S,name=bosh-partition-agent-eph-0\\n\
         start=17MiB,type=L,name=bosh-partition-agent-eph-1\\n",
    );
    sh(Command::new("mkswap").arg(f.part(1)));
    let swap_uuid = blkid(&f.part(1), "UUID");
    assert_eq!(blkid(&f.part(2), "TYPE"), "");
    f.bootstrap(Some(16)).expect("bootstrap");
    assert_eq!(blkid(&f.part(1), "UUID"), swap_uuid, "swap was made again");
    assert_eq!(blkid(&f.part(2), "TYPE"), "ext4");
    assert_eq!(mounted_at(&f.data()), Some(mount::device_number(&f.part(2)).expect("p2")));
}

#[test]
fn a_foreign_disk_in_use_is_refused_and_untouched() {
    let Some(_g) = turn("a_foreign_disk_in_use_is_refused_and_untouched", TOOLS) else { return };
    let f = Fixture::new(64);
    put_file(f.dev());
    let uuid = blkid(f.dev(), "UUID");
    let elsewhere = tempfile::tempdir().expect("mnt");
    sh(Command::new("mount").arg(f.dev()).arg(elsewhere.path()));
    let e = f.bootstrap(None).expect_err("must refuse");
    let _ = Command::new("umount").arg(elsewhere.path()).status();
    assert!(e.contains("in use") && e.contains(&format!("mounted on {}", elsewhere.path().display())), "{e}");
    assert_eq!(blkid(f.dev(), "UUID"), uuid);
    assert_eq!(blkid(f.dev(), "PTTYPE"), "");
}

#[test]
fn partitioner_type_sfdisk_makes_an_msdos_layout_and_keeps_it() {
    let Some(_g) = turn("partitioner_type_sfdisk_makes_an_msdos_layout_and_keeps_it", TOOLS) else { return };
    let sfdisk = LinuxOptions { partitioner_type: "sfdisk".into(), ..LinuxOptions::default() };
    let f = Fixture::new(96);
    // This agent's GPT layout is foreign to the sfdisk layout: repartitioned.
    f.bootstrap(Some(16)).expect("gpt bootstrap");
    assert_eq!(layout(f.dev()).0, "gpt");
    f.disk.unmount_all();
    f.bootstrap_with(Some(16), &sfdisk, json!(f.dev()), json!(null)).expect("sfdisk bootstrap");
    let (label, parts) = layout(f.dev());
    assert_eq!(label, "dos");
    assert_eq!(parts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["82", "83"]);
    assert_eq!(parts[0].2, 16 * MIB);
    assert_eq!(blkid(&f.part(1), "TYPE"), "swap");
    let uuid = blkid(&f.part(2), "UUID");
    assert_eq!(mounted_at(&f.data()), Some(mount::device_number(&f.part(2)).expect("p2")));
    f.disk.unmount_all();
    f.bootstrap_with(Some(16), &sfdisk, json!(f.dev()), json!(null)).expect("second sfdisk bootstrap");
    assert_eq!(blkid(&f.part(2), "UUID"), uuid, "the sfdisk layout was not kept");
    let bad = LinuxOptions { partitioner_type: "gdisk".into(), ..LinuxOptions::default() };
    let e = f.bootstrap_with(None, &bad, json!(f.dev()), json!(null)).expect_err("unknown partitioner");
    assert_eq!(e, "Unknown partitioner type 'gdisk'");
}

#[test]
fn skip_disk_setup_leaves_every_disk_alone() {
    let Some(_g) = turn("skip_disk_setup_leaves_every_disk_alone", TOOLS) else { return };
    let skip = LinuxOptions { skip_disk_setup: true, ..LinuxOptions::default() };
    let f = Fixture::new(64);
    let raw = LoopDevice::new(32);
    f.bootstrap_with(None, &skip, json!(f.dev()), json!([{"path": raw.path()}])).expect("bootstrap");
    assert_eq!(blkid(f.dev(), "PTTYPE"), "");
    assert_eq!(blkid(raw.path(), "PTTYPE"), "");
    assert_eq!(mounted_at(&f.data()), None);
    assert!(f.data().join("jobs").is_dir(), "data is a directory");
}

#[test]
fn raw_ephemeral_disks_get_one_named_partition_once() {
    let Some(_g) = turn("raw_ephemeral_disks_get_one_named_partition_once", TOOLS) else { return };
    let f = Fixture::new(64);
    let (a, b) = (LoopDevice::new(32), LoopDevice::new(32));
    put_file(b.path());
    let raw = json!([{"path": a.path()}, b.path()]);
    f.bootstrap_with(Some(0), &LinuxOptions::default(), json!(f.dev()), raw.clone()).expect("bootstrap");
    for (i, d) in [&a, &b].iter().enumerate() {
        let (label, parts) = layout(d.path());
        assert_eq!(label, "gpt");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].1, format!("raw-ephemeral-{i}"));
        assert_eq!(blkid(&d.part(1), "TYPE"), "", "a raw disk is left unformatted");
    }
    assert_eq!(blkid(b.path(), "TYPE"), "", "the old whole-disk filesystem is gone");
    // Jobs put data on them; the next boot leaves them alone.
    put_file(&a.part(1));
    let uuid = blkid(&a.part(1), "UUID");
    f.bootstrap_with(Some(0), &LinuxOptions::default(), json!(f.dev()), raw).expect("second bootstrap");
    assert_eq!(blkid(&a.part(1), "UUID"), uuid);
}

#[test]
fn no_ephemeral_disk_follows_the_go_agent_unless_none_was_named() {
    // No devices needed: the disk named does not exist, and the root dir is no mount point.
    let root = tempfile::tempdir().expect("root");
    let dirs = Dirs::new(root.path().join("var/vcap"), root.path());
    let settings = |eph: Value| {
        let s: Settings =
            serde_json::from_value(json!({"agent_id": "a", "disks": {"ephemeral": eph}})).unwrap();
        Effective { settings: s, update: Default::default() }
    };
    let run = |eph: Value, linux: &LinuxOptions| {
        platform::with_options(PlatformKind::Linux, &dirs, linux).unwrap().bootstrap(&settings(eph), false)
    };
    let off = LinuxOptions::default();
    let e = run(json!("/dev/no-such-ephemeral-disk"), &off).expect_err("named but missing");
    assert!(e.ends_with("No ephemeral disk found, cannot use root partition as ephemeral disk"), "{e}");
    run(json!(null), &off).expect("none named: data is a directory");
    assert!(dirs.data().join("jobs").is_dir());
    // With CreatePartitionIfNoEphemeralDisk and no root disk to partition: data stays a directory.
    let on = LinuxOptions { create_partition_if_no_ephemeral_disk: true, ..LinuxOptions::default() };
    run(json!("/dev/no-such-ephemeral-disk"), &on).expect("root dir is not a mount point");
}
