//! Disks on a real Linux VM: resolve, prepare (see `prepare`), mount, unmount and migrate, all behind
//! one lock so a `migrate_disk` can never interleave with a `mount_disk`.

use crate::error::Context as _;
use crate::sync::lock;
use super::mount::{self, device_at, device_number, mount_points_of};
use super::prepare::{self, partition_path, Prepared};
use super::resolve::resolve;
use crate::exec;
use super::{record_mounted_cid, DiskManager, DiskOptions, DiskSettings};
use crate::dirs::Dirs;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Device-touching disk management.
pub struct LinuxDisks {
    dirs: Dirs,
    lock: Mutex<()>,
}

impl LinuxDisks {
    /// Disk management under the agent's directories.
    pub fn new(dirs: Dirs) -> LinuxDisks {
        LinuxDisks { dirs, lock: Mutex::new(()) }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.lock)
    }

    /// The node that is (or would be) mounted for `dev`: partition 1 when it exists, else the device.
    fn mount_source(dev: &Path) -> PathBuf {
        let p1 = partition_path(dev);
        if p1.exists() {
            p1
        } else {
            dev.to_path_buf()
        }
    }

    fn mount_prepared(&self, cid: &str, source: &Path, opts: &DiskOptions) -> Result<(), String> {
        let number = device_number(source)?;
        let table = mount::mounts()?;
        let store = self.dirs.store();
        let target = self.dirs.store_migration_target();
        if !mount_points_of(&table, number).is_empty() {
            log::info!("disk {cid} ({}) is already mounted", source.display());
            if device_at(&table, &store) == Some(number) {
                record_mounted_cid(&self.dirs, cid)?;
            }
            return Ok(());
        }
        if device_at(&table, &store).is_some() {
            if device_at(&table, &target).is_some() {
                return Err(format!(
                    "store and {} already hold other disks; unmount one before mounting disk {cid}",
                    target.display()
                ));
            }
            log::info!("store is taken: mounting disk {cid} on {}", target.display());
            return mount::mount(source, &target, &opts.mount_options);
        }
        mount::mount(source, &store, &opts.mount_options)?;
        record_mounted_cid(&self.dirs, cid)
    }
}

/// Upper bound for copying `bytes`: generous (10 MB/s plus ten minutes) but finite, so a hung copy
/// cannot hold the disk lock forever.
fn copy_limit(bytes: u64) -> Duration {
    Duration::from_secs(600 + bytes / 10_000_000)
}

fn used_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return 0 };
    // SAFETY: statvfs(3) writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return 0;
        }
        (s.f_blocks - s.f_bfree) * s.f_frsize
    }
}

/// Flushes the filesystem holding `dir` to its device, so the copy is on the new disk before the old
/// one is let go of.
fn sync_fs(dir: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: syncfs(2) on a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(format!("syncing {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Copies the contents of `from` into `to` with owners, modes, times, links, hard links, xattrs and
/// holes intact, staying on one filesystem. `cp -a` does all of that in one pass and needs no pipe;
/// the Go agent's two-`tar` pipe does the same work twice.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let mut src = from.as_os_str().to_os_string();
    src.push("/.");
    let limit = copy_limit(used_bytes(from));
    exec::run(
        Command::new("cp")
            .args(["--archive", "--sparse=auto", "--one-file-system", "--no-target-directory"])
            .arg(src)
            .arg(to),
        None,
        limit,
    )
    .map(|_| ())
}

impl DiskManager for LinuxDisks {
    fn mount(&self, disk: &DiskSettings, opts: &DiskOptions) -> Result<(), String> {
        let _g = self.guard();
        let dev = resolve(disk, &self.dirs)?;
        let source = prepare::prepare(&dev, &opts.fs_type)?;
        self.mount_prepared(&disk.id, source.source(), opts)
    }

    fn unmount(&self, disk: &DiskSettings) -> Result<bool, String> {
        let _g = self.guard();
        let dev = resolve(disk, &self.dirs)?;
        let number = device_number(&Self::mount_source(&dev))?;
        let points = mount_points_of(&mount::mounts()?, number);
        for p in points.iter().rev() {
            mount::unmount(p)?;
        }
        Ok(!points.is_empty())
    }

    fn migrate(&self, known: &BTreeMap<String, DiskSettings>) -> Result<(), String> {
        let _g = self.guard();
        let store = self.dirs.store();
        let target = self.dirs.store_migration_target();
        let table = mount::mounts()?;
        device_at(&table, &store).ok_or("no persistent disk is mounted on store: nothing to migrate")?;
        let new = device_at(&table, &target)
            .ok_or("nothing is mounted on store_migration_target: mount the new disk before migrating")?;
        mount::mount_args(&[OsStr::new("-o"), OsStr::new("remount,ro"), store.as_os_str()])?;
        let copied = copy_tree(&store, &target).and_then(|_| sync_fs(&target));
        if let Err(e) = copied {
            let _ = mount::mount_args(&[OsStr::new("-o"), OsStr::new("remount,rw"), store.as_os_str()]);
            return Err(format!("copying store to the new disk: {e}"));
        }
        if let Err(e) = mount::unmount(&store) {
            let _ = mount::mount_args(&[OsStr::new("-o"), OsStr::new("remount,rw"), store.as_os_str()]);
            return Err(format!("letting go of the old disk: {e}"));
        }
        mount::mount_args(&[OsStr::new("--move"), target.as_os_str(), store.as_os_str()])?;
        let new_cid = known.iter().find(|(_, d)| {
            resolve(d, &self.dirs).ok().and_then(|dev| device_number(&Self::mount_source(&dev)).ok())
                == Some(new)
        });
        match new_cid {
            Some((cid, _)) => record_mounted_cid(&self.dirs, cid)?,
            None => log::warn!("migrated to a disk whose CID is unknown; boot will not remount it"),
        }
        Ok(())
    }

    fn mounted(&self, known: &BTreeMap<String, DiskSettings>) -> Vec<String> {
        let Ok(table) = mount::mounts() else { return Vec::new() };
        known
            .iter()
            .filter(|(_, d)| {
                resolve(d, &self.dirs)
                    .and_then(|dev| device_number(&Self::mount_source(&dev)))
                    .is_ok_and(|n| !mount_points_of(&table, n).is_empty())
            })
            .map(|(cid, _)| cid.clone())
            .collect()
    }

    fn remount(&self, disk: &DiskSettings, opts: &DiskOptions) -> Result<bool, String> {
        let _g = self.guard();
        let dev = resolve(disk, &self.dirs)?;
        match prepare::existing_filesystem(&dev)? {
            None => Ok(false),
            Some(Prepared::Partition(p) | Prepared::Device(p)) => {
                self.mount_prepared(&disk.id, &p, opts).map(|_| true)
            }
        }
    }

    fn add_dynamic(&self, disk: &DiskSettings) -> Result<(), String> {
        super::check_cid(&disk.id)?;
        let dev = resolve(disk, &self.dirs)?;
        let dir = self.dirs.dynamic_disks();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let link = dir.join(&disk.id);
        let tmp = dir.join(format!(".{}.tmp-{}", disk.id, crate::ids::uuid_v4()));
        std::os::unix::fs::symlink(&dev, &tmp).with_context(|| format!("linking {}", tmp.display()))?;
        std::fs::rename(&tmp, &link).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("linking {}: {e}", link.display())
        })
    }

    fn remove_dynamic(&self, cid: &str) -> Result<(), String> {
        super::check_cid(cid)?;
        let link = self.dirs.dynamic_disks().join(cid);
        match std::fs::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", link.display())),
        }
    }
}
