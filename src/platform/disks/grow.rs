//! Growing a disk's last partition and its filesystem into space the disk gained: the root disk
//! that the IaaS made bigger than the image, and a persistent disk the director resized.
//!
//! What needs growing is measured, not remembered: the partition when the disk has room after it
//! (at least [`MIN_GAIN`]), the filesystem when its superblock says it is smaller than the partition
//! (or whole device) holding it. So an agent stopped between the two steps finishes the job on
//! its next run, and a disk that is already grown costs no command at all.
//!
//! | filesystem | mounted (the root disk) | not mounted (a persistent disk, before its mount) |
//! |---|---|---|
//! | ext4 | `resize2fs <device>` (online) | `e2fsck -f -p`, then `resize2fs <device>` |
//! | xfs | `xfs_growfs -d <mount point>` | grown right after the mount, as xfs can only grow mounted |

use super::table::{self, Table, MIB};
use crate::error::Context as _;
use crate::exec;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Less room than this after a partition is not worth a table write (the Go agent grows a
/// persistent disk's partition when it is 100 MiB short of the disk; growpart's threshold is 1 MiB).
pub const MIN_GAIN: u64 = 16 * MIB;
/// A filesystem this much smaller than its device is grown (ext4 and xfs leave a partial last
/// group or allocation group of less than this unused).
pub const FS_SLACK: u64 = 16 * MIB;
const FSCK_LIMIT: Duration = Duration::from_secs(3600);
const RESIZE_LIMIT: Duration = Duration::from_secs(3600);

/// The bytes the filesystem's superblock says it spans, for ext2/3/4 and xfs; `None` for anything else.
pub fn filesystem_size(dev: &Path) -> Result<Option<u64>, String> {
    let mut f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut head = vec![0u8; 2048];
    f.seek(SeekFrom::Start(0)).with_context(|| format!("seeking {}", dev.display()))?;
    f.read_exact(&mut head).with_context(|| format!("reading the superblock of {}", dev.display()))?;
    Ok(superblock_size(&head))
}

/// [`filesystem_size`] of the first 2 KiB of a device.
pub fn superblock_size(head: &[u8]) -> Option<u64> {
    let le32 = |at: usize| head.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
    let be32 = |at: usize| head.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64);
    if head.get(0..4) == Some(b"XFSB") {
        let block = be32(4)?;
        let blocks = head.get(8..16).map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))?;
        return blocks.checked_mul(block);
    }
    // ext2/3/4: the superblock sits at 1024; magic 0xEF53 at 0x38.
    let sb = 1024;
    if head.get(sb + 0x38..sb + 0x3a) == Some(&[0x53, 0xef]) {
        let block = 1024u64.checked_shl(le32(sb + 0x18)? as u32)?;
        let mut blocks = le32(sb + 0x04)?;
        let incompat = le32(sb + 0x60)?;
        if incompat & 0x80 != 0 {
            blocks |= le32(sb + 0x150)? << 32;
        }
        return blocks.checked_mul(block);
    }
    None
}

/// Grows partition `number` of `dev` to the disk's end when the disk has at least `min_gain` more
/// after it ([`MIN_GAIN`] for the root disk) and no partition follows it; tells the kernel. Returns
/// whether it grew.
pub fn grow_partition(dev: &Path, number: u32, min_gain: u64) -> Result<bool, String> {
    let Some(t) = table::read(dev)? else { return Ok(false) };
    let size = super::prepare::size_of(dev)?;
    match table::room_after(&t, size, number) {
        Some(room) if room >= min_gain => {
            log::info!("growing partition {number} of {} into {} MiB more", dev.display(), room / MIB);
            grow(dev, &t, number)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn grow(dev: &Path, t: &Table, number: u32) -> Result<(), String> {
    table::grow_to_end(dev, t, number)?;
    // The kernel learns the new size partition by partition (the disk may be in use).
    super::prepare::sync_partitions(dev).map(|_| ())
}

/// Whether the filesystem on `part` is smaller than `part` by more than [`FS_SLACK`].
pub fn filesystem_needs_growth(part: &Path) -> Result<bool, String> {
    let Some(fs) = filesystem_size(part)? else { return Ok(false) };
    Ok(fs + FS_SLACK < super::prepare::size_of(part)?)
}

/// Grows an unmounted filesystem to its device, when it is smaller: ext4 only (checked first, as
/// resize2fs wants); xfs is left for [`grow_mounted`]. Returns whether it grew.
pub fn grow_unmounted(part: &Path, fs_type: &str) -> Result<bool, String> {
    if fs_type != "ext4" || !filesystem_needs_growth(part)? {
        return Ok(false);
    }
    log::info!("growing the ext4 filesystem on {} to its device", part.display());
    let out = exec::output(Command::new("e2fsck").args(["-f", "-p"]).arg(part), None, Some(FSCK_LIMIT))?;
    // 0: clean, 1: errors corrected; anything else leaves a filesystem not safe to resize.
    if !matches!(out.code(), Some(0 | 1)) {
        return Err(format!(
            "checking {} before growing it failed ({}): {}",
            part.display(),
            out.status,
            out.stdout.trim()
        ));
    }
    exec::run(Command::new("resize2fs").arg(part), None, RESIZE_LIMIT)?;
    Ok(true)
}

/// Grows the filesystem on `part`, mounted on `mount_point`, when it is smaller than `part`.
/// Returns whether it grew.
pub fn grow_mounted(part: &Path, mount_point: &Path) -> Result<bool, String> {
    if !filesystem_needs_growth(part)? {
        return Ok(false);
    }
    let found = super::prepare::probe(part)?;
    let mut cmd = match super::prepare::value(&found, "TYPE") {
        Some("ext4") => {
            let mut c = Command::new("resize2fs");
            c.arg(part);
            c
        }
        Some("xfs") => {
            let mut c = Command::new("xfs_growfs");
            c.arg("-d").arg(mount_point);
            c
        }
        other => {
            return Err(format!(
                "cannot grow the {} filesystem on {}",
                other.unwrap_or("unknown"),
                part.display()
            ))
        }
    };
    log::info!("growing the filesystem on {} (mounted on {})", part.display(), mount_point.display());
    exec::run(&mut cmd, None, RESIZE_LIMIT)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sizes_from_ext4_and_xfs_superblocks() {
        let mut ext = vec![0u8; 2048];
        ext[1024 + 0x38..1024 + 0x3a].copy_from_slice(&[0x53, 0xef]);
        ext[1024 + 0x04..1024 + 0x08].copy_from_slice(&1000u32.to_le_bytes());
        ext[1024 + 0x18..1024 + 0x1c].copy_from_slice(&2u32.to_le_bytes()); // 4096-byte blocks
        assert_eq!(superblock_size(&ext), Some(4_096_000));
        ext[1024 + 0x60] = 0x80; // 64bit: the high word counts
        ext[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(superblock_size(&ext), Some(((1u64 << 32) + 1000) * 4096));
        let mut xfs = vec![0u8; 2048];
        xfs[0..4].copy_from_slice(b"XFSB");
        xfs[4..8].copy_from_slice(&4096u32.to_be_bytes());
        xfs[8..16].copy_from_slice(&76_800u64.to_be_bytes());
        assert_eq!(superblock_size(&xfs), Some(300 * MIB));
        assert_eq!(superblock_size(&[0u8; 2048]), None);
        assert_eq!(superblock_size(&[0u8; 10]), None);
    }

    #[test]
    fn measures_a_real_ext4_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(64 * MIB).unwrap();
        // e2fsprogs is a prerequisite of the test suite (scripts/prerequisites).
        let made = Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096"]).arg(&img).status().unwrap();
        assert!(made.success());
        assert_eq!(filesystem_size(&img).unwrap(), Some(64 * MIB));
        assert!(!filesystem_needs_growth(&img).unwrap());
        std::fs::File::options().write(true).open(&img).unwrap().set_len(128 * MIB).unwrap();
        assert!(filesystem_needs_growth(&img).unwrap());
        assert!(grow_unmounted(&img, "ext4").unwrap());
        assert_eq!(filesystem_size(&img).unwrap(), Some(128 * MIB));
        assert!(!grow_unmounted(&img, "ext4").unwrap(), "a grown filesystem is left alone");
    }
}
