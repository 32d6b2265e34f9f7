//! Deciding what a disk holds and, only when it holds nothing, partitioning and formatting it.
//!
//! The decision table (the whole point of this module):
//!
//! | the device holds | action |
//! |---|---|
//! | a filesystem on the whole device | mount the device as it is (preformatted) |
//! | one partition with a filesystem | mount partition 1 |
//! | one partition with no signature and zeros at its start | format partition 1 (an earlier run stopped between partitioning and formatting) |
//! | no signature, zeros in the first and last MiB | partition (GPT, one Linux partition), format, mount partition 1 |
//! | anything else (several partitions, unknown data) | refuse, naming what was found |
//!
//! A partition that is smaller than its disk by 100 MiB or more (the director resized the disk) is
//! grown to the end of the disk before the mount, and its filesystem with it (see `grow`), unless
//! the disk is mounted as given (`UsePreformattedPersistentDisk`). A filesystem on the whole device
//! is grown the same way.
//!
//! Partition nodes: the kernel of some containers does not rescan a loop device's partition table,
//! and no udev runs there to create `/dev/loopNpM`. Whenever partitions are expected the code asks
//! the kernel with `partx -u`, then creates a missing node with mknod from
//! `/sys/class/block/<part>/dev`. A stale node with the wrong numbers is replaced. A multipath map
//! (iSCSI) has no kernel partitions: its partitions are the maps `<name>-partN` multipathd makes.

use super::mount::{device_number, split_dev};
use crate::error::Context as _;
use crate::exec;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PROBE_LIMIT: Duration = Duration::from_secs(60);
const MKFS_LIMIT: Duration = Duration::from_secs(1800);
const ZERO_CHECK: u64 = 1 << 20;
/// How long multipathd may take to make a new partition's map (the Go agent: 20 × 3 s).
const MAP_PARTITION_WAIT: Duration = Duration::from_secs(60);
/// A single partition this much smaller than its disk is grown (the Go agent's rule).
pub const RESIZE_THRESHOLD: u64 = 100 << 20;

/// The path of partition 1: `/dev/sdc1`, `/dev/loop0p1`, `/dev/nvme1n1p1`.
pub fn partition_path(dev: &Path) -> PathBuf {
    partition_path_n(dev, 1)
}

/// The path of partition `n`, named the way the kernel names it (a `p` after a trailing digit), or
/// multipathd names it (`<map>-partN`).
pub fn partition_path_n(dev: &Path, n: usize) -> PathBuf {
    let s = dev.to_string_lossy();
    if super::iscsi::is_map(dev) {
        PathBuf::from(format!("{s}-part{n}"))
    } else if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// What `blkid -p` (low-level probe, no cache) finds on a device: `TYPE`, `PTTYPE`, ... .
pub fn probe(dev: &Path) -> Result<Vec<(String, String)>, String> {
    let out =
        exec::output(Command::new("blkid").args(["-p", "-o", "export"]).arg(dev), None, Some(PROBE_LIMIT))?;
    match out.code() {
        Some(0) => Ok(out
            .stdout
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()),
        Some(2) => Ok(Vec::new()), // nothing recognised
        other => {
            Err(format!("probing {} with blkid failed ({other:?}): {}", dev.display(), out.stderr.trim()))
        }
    }
}

/// Whether a [`probe`] answer shows any content signature. `DEVNAME` and `PART_ENTRY_*` keys describe
/// the node and the partition table entry that holds a partition, not what is inside it, so a freshly
/// made partition counts as blank.
pub fn has_signature(found: &[(String, String)]) -> bool {
    found.iter().any(|(k, _)| k != "DEVNAME" && !k.starts_with("PART_ENTRY_"))
}

/// The value of `key` in a [`probe`] answer.
pub fn value<'a>(found: &'a [(String, String)], key: &str) -> Option<&'a str> {
    found.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The size of a block device (or file) in bytes.
pub fn size_of(dev: &Path) -> Result<u64, String> {
    let mut f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    f.seek(SeekFrom::End(0)).with_context(|| format!("sizing {}", dev.display()))
}

/// Whether the first and last MiB of `dev` are all zeros: the state a cloud hands out new disks in.
pub fn zero_edges(dev: &Path) -> Result<bool, String> {
    let size = size_of(dev)?;
    let mut f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let len = ZERO_CHECK.min(size);
    let mut buf = vec![0u8; len as usize];
    for start in [0, size - len] {
        f.seek(SeekFrom::Start(start)).with_context(|| format!("seeking {}", dev.display()))?;
        f.read_exact(&mut buf).with_context(|| format!("reading {}", dev.display()))?;
        if buf.iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn partitions_in_sysfs(dev: &Path) -> Vec<String> {
    let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = PathBuf::from("/sys/class/block").join(&name);
    let mut parts: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("partition").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    crate::order::sort(&mut parts);
    parts
}

/// Whether the kernel's partitions of `dev` (number, start and size in sysfs) are those of its table.
fn kernel_agrees(dev: &Path) -> Result<bool, String> {
    let mut table: Vec<(u32, u64, u64)> = super::table::read(dev)?
        .map(|t| t.parts.iter().map(|p| (p.number, p.start / 512, p.size / 512)).collect())
        .unwrap_or_default();
    let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = PathBuf::from("/sys/class/block").join(&name);
    let read = |p: &Path, f: &str| {
        std::fs::read_to_string(p.join(f)).ok().and_then(|v| v.trim().parse::<u64>().ok())
    };
    let mut kernel: Vec<(u32, u64, u64)> = partitions_in_sysfs(dev)
        .iter()
        .filter_map(|part| {
            let p = dir.join(part);
            Some((read(&p, "partition")? as u32, read(&p, "start")?, read(&p, "size")?))
        })
        .collect();
    crate::order::sort(&mut table);
    crate::order::sort(&mut kernel);
    Ok(table == kernel)
}

/// Makes the kernel and `/dev` agree with the partition table on `dev` (see the module doc), and
/// returns the number of partitions. Every partition the kernel knows gets a node next to `dev`, so
/// a two-partition layout (the ephemeral disk's swap + data) is reachable as well as a single one.
pub fn sync_partitions(dev: &Path) -> Result<usize, String> {
    if super::iscsi::is_map(dev) {
        return Ok((1..).take_while(|n| partition_path_n(dev, *n).exists()).count());
    }
    // When the kernel's partitions are not the table's, ask it to pick up the table partition by
    // partition (the disk may be in use); udev-less containers need it even with partscan. Only
    // then: partx re-adds every partition not in use, under new device numbers.
    if !kernel_agrees(dev)? {
        if let Err(e) = exec::run(Command::new("partx").arg("-u").arg(dev), None, PROBE_LIMIT) {
            log::info!("partx -u {}: {e}", dev.display());
        }
    }
    let parts = partitions_in_sysfs(dev);
    let parent = dev.parent().unwrap_or(Path::new("/dev"));
    for name in &parts {
        ensure_node(&parent.join(name), &PathBuf::from("/sys/class/block").join(name).join("dev"))?;
    }
    Ok(parts.len())
}

/// After a new table on `dev`: makes its partitions reachable — `sync_partitions`, and for a
/// multipath map the Go agent's wait for multipathd's `<name>-part1`. `live` restarts the iSCSI
/// services first.
pub fn settle_new_table(dev: &Path, live: bool) -> Result<usize, String> {
    if super::iscsi::is_map(dev) {
        super::iscsi::wait_for_partition(dev, live, MAP_PARTITION_WAIT)?;
    }
    sync_partitions(dev)
}

/// Makes `node` a block device node with the numbers in sysfs file `sys_dev`, unless it already is.
fn ensure_node(node: &Path, sys_dev: &Path) -> Result<(), String> {
    let Ok(numbers) = std::fs::read_to_string(sys_dev) else { return Ok(()) };
    let (maj, min) = numbers
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .ok_or_else(|| format!("unreadable {}: {numbers:?}", sys_dev.display()))?;
    // udev may be slow to make the node; give it a moment before making it ourselves.
    let deadline = Instant::now() + Duration::from_millis(500);
    while !node.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Ok(meta) = std::fs::symlink_metadata(node) {
        if meta.file_type().is_block_device() && split_dev(meta.rdev()) == (maj, min) {
            return Ok(());
        }
        log::warn!("replacing stale device node {}", node.display());
        std::fs::remove_file(node).with_context(|| format!("removing stale {}", node.display()))?;
    }
    make_block_node(node, maj, min)
}

fn make_block_node(path: &Path, maj: u64, min: u64) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    let dev = ((maj & 0xffff_f000) << 32) | ((maj & 0xfff) << 8) | ((min & 0xffff_ff00) << 12) | (min & 0xff);
    // SAFETY: mknod(2) with a valid NUL-terminated path; no memory is shared with the kernel beyond it.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o660, dev as libc::dev_t) };
    if rc != 0 {
        return Err(format!("mknod {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    log::info!("created device node {} ({maj}:{min})", path.display());
    Ok(())
}

/// What `mount_disk` will mount, after doing whatever the decision table allows.
#[derive(Debug, PartialEq)]
pub enum Prepared {
    /// Partition 1, which held (or now holds) a filesystem.
    Partition(PathBuf),
    /// The whole device, which already held a filesystem.
    Device(PathBuf),
}

impl Prepared {
    /// The path to hand to `mount`.
    pub fn source(&self) -> &Path {
        match self {
            Prepared::Partition(p) | Prepared::Device(p) => p,
        }
    }
}

/// Only looks: the mountable filesystem on `dev`, if there is one. Used at boot, where nothing may
/// be written to a disk.
pub fn existing_filesystem(dev: &Path) -> Result<Option<Prepared>, String> {
    let found = probe(dev)?;
    if value(&found, "TYPE").is_some() {
        return Ok(Some(Prepared::Device(dev.to_path_buf())));
    }
    if value(&found, "PTTYPE").is_some() && sync_partitions(dev)? >= 1 {
        let p1 = partition_path(dev);
        if p1.exists() && value(&probe(&p1)?, "TYPE").is_some() {
            return Ok(Some(Prepared::Partition(p1)));
        }
    }
    Ok(None)
}

/// Applies the decision table to `dev`, formatting with `fs_type` where it allows, and grows a
/// single partition the disk outgrew (module doc). `live` lets a multipath map's services restart.
pub fn prepare(dev: &Path, fs_type: &str, live: bool) -> Result<Prepared, String> {
    let d = dev.display();
    let found = probe(dev)?;
    if let Some(t) = value(&found, "TYPE") {
        log::info!("{d} already holds a {t} filesystem on the whole device: mounting it as it is");
        return Ok(Prepared::Device(dev.to_path_buf()));
    }
    if let Some(pt) = value(&found, "PTTYPE") {
        let count = sync_partitions(dev)?;
        let p1 = partition_path(dev);
        if count != 1 || !p1.exists() {
            return Err(format!(
                "{d} holds a {pt} partition table with {count} partitions, not the single partition this agent \
                 makes; refusing to touch it"
            ));
        }
        let inner = probe(&p1)?;
        if let Some(t) = value(&inner, "TYPE") {
            log::info!("{} already holds a {t} filesystem: mounting it without formatting", p1.display());
            grow_single_partition(dev)?;
            return Ok(Prepared::Partition(p1));
        }
        if has_signature(&inner) || !zero_edges(&p1)? {
            return Err(format!(
                "{} holds data blkid does not recognise as a filesystem; refusing to format it",
                p1.display()
            ));
        }
        format(&p1, fs_type)?;
        return Ok(Prepared::Partition(p1));
    }
    if !found.is_empty() || !zero_edges(dev)? {
        return Err(format!(
            "{d} is not blank (unrecognised data in its first or last MiB); refusing to format it"
        ));
    }
    log::info!("{d} is blank: partitioning it");
    exec::run(
        Command::new("sfdisk").args(["-q", "--wipe", "never"]).arg(dev),
        Some(b"label: gpt\n,,L\n"),
        PROBE_LIMIT,
    )?;
    if settle_new_table(dev, live)? != 1 {
        return Err(format!("partition 1 of {d} did not appear after partitioning"));
    }
    let p1 = partition_path(dev);
    let inner = probe(&p1)?;
    if value(&inner, "TYPE").is_some() {
        // The new partition starts where an old filesystem did: its data is there, keep it.
        log::warn!("{} already holds a filesystem after partitioning: not formatting", p1.display());
        return Ok(Prepared::Partition(p1));
    }
    format(&p1, fs_type)?;
    Ok(Prepared::Partition(p1))
}

/// Grows partition 1 of `dev`, its only partition, to the end of the disk when it is at least
/// [`RESIZE_THRESHOLD`] short of it (the director resized the disk). A multipath map's partition is
/// left alone: its map is multipathd's to resize.
fn grow_single_partition(dev: &Path) -> Result<bool, String> {
    if super::iscsi::is_map(dev) {
        return Ok(false);
    }
    super::grow::grow_partition(dev, 1, RESIZE_THRESHOLD)
}

/// Makes a `fs_type` (ext4 or xfs) filesystem on `part`; callers have checked it is blank.
pub fn format(part: &Path, fs_type: &str) -> Result<(), String> {
    log::info!("formatting {} as {fs_type}", part.display());
    let mut cmd = match fs_type {
        "xfs" => {
            let mut c = Command::new("mkfs.xfs");
            c.arg("-q");
            c
        }
        _ => {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F"]);
            c
        }
    };
    exec::run(cmd.arg(part), None, MKFS_LIMIT).map(|_| ())?;
    // Make sure the numbers still describe this partition before anyone mounts it.
    device_number(part).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_partition_one_like_the_kernel() {
        assert_eq!(partition_path(Path::new("/dev/sdc")), PathBuf::from("/dev/sdc1"));
        assert_eq!(partition_path(Path::new("/dev/loop3")), PathBuf::from("/dev/loop3p1"));
        assert_eq!(partition_path(Path::new("/dev/nvme1n1")), PathBuf::from("/dev/nvme1n1p1"));
    }

    #[test]
    fn zero_edges_sees_data_at_either_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(4 << 20).unwrap();
        assert!(zero_edges(&p).unwrap());
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"x", (4 << 20) - 10).unwrap();
        assert!(!zero_edges(&p).unwrap());
    }
}
