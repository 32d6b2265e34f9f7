//! The root disk: which disk and partition hold the root filesystem, swap and data on its free
//! space when there is no ephemeral disk (`CreatePartitionIfNoEphemeralDisk`), and the root
//! partition grown into space the IaaS gave the disk beyond the image.
//!
//! Which disk: the filesystem mounted exactly at the root dir (`/` on a VM; a scratch mount point
//! in tests), by its device number through `/sys/dev/block`, must be a partition; its parent is the
//! root disk. A root dir that is not itself a mount point, or whose filesystem is not on a
//! partition (LVM, a RAM disk, an overlay), has no root disk here: the agent then leaves the root
//! disk alone, and never works on a disk merely because the root dir lies somewhere inside it.
//!
//! Swap and data after the root partition, as the Go agent lays them out: the space after the
//! root partition (at least 1 GiB, else nothing is made) is split into swap (`swap_size`, or
//! min(RAM, space/2)) and data, appended after the last partition on 1 MiB boundaries, without
//! names, the first and last MiB of each zeroed first. On later boots partitions after the root one
//! that match those sizes within 20 MiB are used as they are. Nothing on the root disk is ever deleted or rewritten: other partitions after
//! the root partition are an error naming them.
//!
//! Growth: only when the root partition is the disk's last (no swap and data after it), so growing
//! root and using the free space for data never compete. Then the partition grows to the end of
//! the disk and the filesystem with it, online (`grow`).

use super::ephemeral::{Ephemeral, Plan};
use super::mount::{self, split_dev};
use super::table::{self, Label, NewPart, Part, MIB};
use crate::error::Context as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Less free space than this after the root partition makes no swap and data there (the Go
/// agent's minimum).
pub const MIN_SPACE: u64 = 1 << 30;
/// Partitions after root within this of the wanted sizes are taken as made by an earlier boot.
const SIZE_DELTA: u64 = 20 * MIB;

/// The disk and partition of the root filesystem.
#[derive(Clone, Debug, PartialEq)]
pub struct RootDisk {
    /// The whole disk, `/dev/sda`.
    pub disk: PathBuf,
    /// The root partition, `/dev/sda1`.
    pub partition: PathBuf,
    /// Its number.
    pub number: u32,
    /// Where it is mounted: the root dir.
    pub mount_point: PathBuf,
}

/// The root disk under `root_dir` (module doc); `Err` says why there is none.
pub fn find(root_dir: &Path) -> Result<RootDisk, String> {
    let canonical =
        std::fs::canonicalize(root_dir).with_context(|| format!("resolving {}", root_dir.display()))?;
    let table = mount::mounts()?;
    let (maj, min) = table
        .iter()
        .rev()
        .find(|m| m.mount_point == canonical)
        .map(|m| m.dev)
        .ok_or_else(|| format!("{} is not a mount point", canonical.display()))?;
    let sys = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    let real = std::fs::canonicalize(&sys).map_err(|_| {
        format!("the filesystem at {} is not on a block device ({maj}:{min})", canonical.display())
    })?;
    let number: u32 = std::fs::read_to_string(real.join("partition"))
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("the filesystem at {} is not on a partition", canonical.display()))?;
    let disk_sys = real.parent().ok_or("a partition without a disk in sysfs")?;
    let node = |dir: &Path| -> Result<PathBuf, String> {
        let uevent = std::fs::read_to_string(dir.join("uevent")).unwrap_or_default();
        let name = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .map(String::from)
            .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or("no device name in sysfs")?;
        let path = Path::new("/dev").join(name);
        let want = std::fs::read_to_string(dir.join("dev")).unwrap_or_default();
        let have = std::fs::metadata(&path).map(|m| split_dev(m.rdev())).ok();
        match have {
            Some((a, b)) if want.trim() == format!("{a}:{b}") => Ok(path),
            _ => Err(format!("{} is not the device {} ({})", path.display(), dir.display(), want.trim())),
        }
    };
    Ok(RootDisk { disk: node(disk_sys)?, partition: node(&real)?, number, mount_point: canonical })
}

/// The free space after the root partition, in bytes (what swap and data may use).
pub fn free_space(root: &RootDisk) -> Result<u64, String> {
    let t =
        table::read(&root.disk)?.ok_or_else(|| format!("{} has no partition table", root.disk.display()))?;
    let part = root_part(&t.parts, root)?;
    Ok(usable_end(&t, super::prepare::size_of(&root.disk)?).saturating_sub(part.end()))
}

/// Where partitions must end on a disk of `size` bytes: before GPT's backup (33 sectors at the
/// disk's end, where it will be once moved there), or the end itself.
fn usable_end(t: &table::Table, size: u64) -> u64 {
    match t.label {
        Label::Gpt => size.saturating_sub(33 * 512),
        _ => size,
    }
}

fn root_part<'a>(parts: &'a [Part], root: &RootDisk) -> Result<&'a Part, String> {
    parts
        .iter()
        .find(|p| p.number == root.number)
        .ok_or_else(|| format!("partition {} is not in the table of {}", root.number, root.disk.display()))
}

/// Swap and data on the root disk after the root partition (module doc).
pub fn prepare(root: &RootDisk, plan: &Plan) -> Result<Ephemeral, String> {
    let d = root.disk.display();
    let t = table::read(&root.disk)?.ok_or_else(|| format!("{d} has no partition table"))?;
    if t.label == Label::Other {
        return Err(format!("root disk {d} has a partition table this agent does not know"));
    }
    let rp = root_part(&t.parts, root)?.clone();
    let mut after: Vec<&Part> = t.parts.iter().filter(|p| p.start > rp.start).collect();
    crate::order::sort_by_key(&mut after, |p| p.start);
    let wanted = plan.sizes();
    let numbers: Vec<u32> = if after.is_empty() {
        if t.label == Label::Gpt {
            // A disk the IaaS made bigger than the image still has its GPT backup at the image's end.
            table::relocate_backup(&root.disk)?;
        }
        let mut start = table::round_up(rp.end(), MIB);
        let mut new = Vec::new();
        let end = usable_end(&t, super::prepare::size_of(&root.disk)?);
        for (i, (size, kind)) in wanted.iter().enumerate() {
            let last = i + 1 == wanted.len();
            // Whatever the image or an earlier life left in the free space must not show through
            // the new partitions (a stray superblock would be mounted as data).
            table::zero_edges_of(&root.disk, start, if last { end.saturating_sub(start) } else { *size })?;
            new.push(NewPart { start, size: (!last).then_some(*size), kind, name: String::new() });
            start += size;
        }
        log::info!("root disk {d}: adding {} after partition {}", plan.describe(), rp.number);
        table::append(&root.disk, &new)?;
        super::prepare::sync_partitions(&root.disk)?;
        let t = table::read(&root.disk)?.ok_or_else(|| format!("{d} lost its partition table"))?;
        let mut made: Vec<&Part> = t.parts.iter().filter(|p| p.start > rp.start).collect();
        crate::order::sort_by_key(&mut made, |p| p.start);
        if made.len() != wanted.len() {
            return Err(format!(
                "root disk {d} shows {} partitions after the root one, expected {}",
                made.len(),
                wanted.len()
            ));
        }
        made.iter().map(|p| p.number).collect()
    } else if after.len() == wanted.len()
        && after.iter().zip(&wanted).all(|(p, (size, _))| p.size.abs_diff(*size) <= SIZE_DELTA)
    {
        log::info!("root disk {d}: swap and data partitions from an earlier boot are kept");
        super::prepare::sync_partitions(&root.disk)?;
        after.iter().map(|p| p.number).collect()
    } else {
        return Err(format!(
            "root disk {d} has partitions after the root partition that are not the {} this agent makes ({}); \
             not touching them",
            plan.describe(),
            after.iter().map(|p| format!("{} of {} MiB", p.number, p.size / MIB)).collect::<Vec<_>>().join(", ")
        ));
    };
    let node = |n: u32| super::prepare::partition_path_n(&root.disk, n as usize);
    Ok(match numbers.as_slice() {
        [data] => Ephemeral { swap: None, data: node(*data) },
        [swap, data] => Ephemeral { swap: Some(node(*swap)), data: node(*data) },
        _ => return Err(format!("root disk {d}: unexpected partition layout")),
    })
}

/// Grows the root partition to the end of its disk and the root filesystem with it, when the root
/// partition is the last one and the disk has room. Returns whether anything grew.
pub fn grow(root: &RootDisk) -> Result<bool, String> {
    let part = super::grow::grow_partition(&root.disk, root.number, super::grow::MIN_GAIN)?;
    let fs = super::grow::grow_mounted(&root.partition, &root.mount_point)?;
    Ok(part || fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_a_mount_point_has_no_root_disk() {
        let dir = tempfile::tempdir().unwrap();
        let e = find(dir.path()).unwrap_err();
        assert!(e.contains("is not a mount point"), "{e}");
        // /proc is a mount point, but not of a block device.
        let e = find(Path::new("/proc")).unwrap_err();
        assert!(e.contains("not on a block device"), "{e}");
    }
}
