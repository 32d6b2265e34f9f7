//! Disks on a real Linux VM: resolve (as `DevicePathResolutionType` says), prepare (see `prepare`),
//! mount, unmount and migrate, all behind one lock so a `migrate_disk` can never interleave with a
//! `mount_disk`.
//!
//! Warden (bosh-lite) disks are directories: with `BindMountPersistentDisk` a hint whose path is a
//! directory is bind-mounted on store, and found again by the directory's device and inode. With
//! `UsePreformattedPersistentDisk` the disk is mounted as given: never partitioned, formatted or
//! grown. Otherwise a disk the director resized is grown on mount: its partition before the mount,
//! an ext4 filesystem before it too (checked with `e2fsck -f` first), an xfs filesystem right after
//! (xfs grows only mounted).

use super::mount::{self, device_at, device_number, mount_points_of};
use super::options::DiskConfig;
use super::prepare::{self, partition_path, Prepared};
use super::resolve::Resolver;
use super::{record_mounted_cid, DiskManager, DiskOptions, DiskSettings};
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::exec;
use crate::settings::Effective;
use crate::sync::lock;
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
    config: DiskConfig,
    resolver: Resolver,
    /// The live system (root `/`): swap is turned on, udev and iSCSI services are run.
    live: bool,
    lock: Mutex<()>,
}

/// What a persistent disk is on this VM.
enum Source {
    /// A block device (resolved, canonical).
    Block(PathBuf),
    /// A directory, bind-mounted (warden).
    Dir(PathBuf),
}

impl LinuxDisks {
    /// Disk management under the agent's directories, as `config` says.
    pub fn new(dirs: Dirs, config: DiskConfig) -> LinuxDisks {
        let live = dirs.root == Path::new("/");
        let resolver = Resolver::new(&dirs, &config, live);
        LinuxDisks { dirs, config, resolver, live, lock: Mutex::new(()) }
    }

    /// The device of `disk`, as `DevicePathResolutionType` finds it (rescanning and waiting).
    pub fn device(&self, disk: &DiskSettings) -> Result<PathBuf, String> {
        self.resolver.resolve(disk)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.lock)
    }

    /// The disk's directory (bind mounts) or device; `patient` rescans and waits for a device.
    fn source(&self, disk: &DiskSettings, patient: bool) -> Result<Source, String> {
        if self.config.bind_mount && !disk.path.is_empty() && Path::new(&disk.path).is_dir() {
            return Ok(Source::Dir(PathBuf::from(&disk.path)));
        }
        let dev = if patient { self.resolver.resolve(disk)? } else { self.resolver.find(disk)? };
        Ok(Source::Block(dev))
    }

    /// Where the disk is mounted now; looks without waiting.
    fn mount_points(&self, disk: &DiskSettings) -> Result<Vec<PathBuf>, String> {
        let table = mount::mounts()?;
        Ok(match self.source(disk, false)? {
            Source::Dir(dir) => mount::bind_points_of(&table, &dir),
            Source::Block(dev) => mount_points_of(&table, device_number(&Self::mount_source(&dev))?),
        })
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

    /// Mounts `source` on store, or on the migration target when store holds another disk. Returns
    /// where it mounted it, or `None` when it was mounted already.
    fn mount_prepared(
        &self,
        cid: &str,
        source: &Source,
        opts: &DiskOptions,
    ) -> Result<Option<PathBuf>, String> {
        let table = mount::mounts()?;
        let store = self.dirs.store();
        let target = self.dirs.store_migration_target();
        let (path, mine, mut options) = match source {
            Source::Dir(dir) => (dir, mount::bind_points_of(&table, dir), vec!["bind".to_string()]),
            Source::Block(dev) => (dev, mount_points_of(&table, device_number(dev)?), Vec::new()),
        };
        options.extend(opts.mount_options.iter().cloned());
        if !mine.is_empty() {
            log::info!("disk {cid} ({}) is already mounted", path.display());
            if mine.iter().any(|p| p == &store || std::fs::canonicalize(&store).is_ok_and(|s| &s == p)) {
                record_mounted_cid(&self.dirs, cid)?;
            }
            return Ok(None);
        }
        if device_at(&table, &store).is_some() {
            if device_at(&table, &target).is_some() {
                return Err(format!(
                    "store and {} already hold other disks; unmount one before mounting disk {cid}",
                    target.display()
                ));
            }
            log::info!("store is taken: mounting disk {cid} on {}", target.display());
            mount::mount(path, &target, &options)?;
            return Ok(Some(target));
        }
        mount::mount(path, &store, &options)?;
        record_mounted_cid(&self.dirs, cid)?;
        Ok(Some(store))
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
        let source = match self.source(disk, true)? {
            Source::Dir(dir) => return self.mount_prepared(&disk.id, &Source::Dir(dir), opts).map(|_| ()),
            Source::Block(dev) if self.config.preformatted => {
                log::info!(
                    "disk {}: UsePreformattedPersistentDisk, mounting {} as it is",
                    disk.id,
                    dev.display()
                );
                return self.mount_prepared(&disk.id, &Source::Block(dev), opts).map(|_| ());
            }
            Source::Block(dev) => prepare::prepare(&dev, &opts.fs_type, self.live)?,
        };
        let node = source.source().to_path_buf();
        let fs = prepare::value(&prepare::probe(&node)?, "TYPE").unwrap_or_default().to_string();
        let mounted = !mount_points_of(&mount::mounts()?, device_number(&node)?).is_empty();
        if !mounted {
            super::grow::grow_unmounted(&node, &fs)?;
        }
        if let Some(at) = self.mount_prepared(&disk.id, &Source::Block(node.clone()), opts)? {
            if fs == "xfs" {
                super::grow::grow_mounted(&node, &at)?;
            }
        }
        Ok(())
    }

    fn unmount(&self, disk: &DiskSettings) -> Result<bool, String> {
        let _g = self.guard();
        let points = self.mount_points(disk)?;
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
        device_at(&table, &target)
            .ok_or("nothing is mounted on store_migration_target: mount the new disk before migrating")?;
        let new_cid = known
            .iter()
            .find(|(_, d)| self.mount_points(d).is_ok_and(|p| p.iter().any(|p| same_dir(p, &target))))
            .map(|(cid, _)| cid.clone());
        // A bind mount (warden) stays writable, as with the Go agent: remounting a bind read-only
        // needs privileges a container may lack.
        let read_only = !self.config.bind_mount;
        if read_only {
            mount::mount_args(&[OsStr::new("-o"), OsStr::new("remount,ro"), store.as_os_str()])?;
        }
        let writable_again = || {
            if read_only {
                let _ = mount::mount_args(&[OsStr::new("-o"), OsStr::new("remount,rw"), store.as_os_str()]);
            }
        };
        let copied = copy_tree(&store, &target).and_then(|_| sync_fs(&target));
        if let Err(e) = copied {
            writable_again();
            return Err(format!("copying store to the new disk: {e}"));
        }
        if let Err(e) = mount::unmount(&store) {
            writable_again();
            return Err(format!("letting go of the old disk: {e}"));
        }
        mount::mount_args(&[OsStr::new("--move"), target.as_os_str(), store.as_os_str()])?;
        match new_cid {
            Some(cid) => record_mounted_cid(&self.dirs, &cid)?,
            None => log::warn!("migrated to a disk whose CID is unknown; boot will not remount it"),
        }
        Ok(())
    }

    fn mounted(&self, known: &BTreeMap<String, DiskSettings>) -> Vec<String> {
        known
            .iter()
            .filter(|(_, d)| self.mount_points(d).is_ok_and(|p| !p.is_empty()))
            .map(|(cid, _)| cid.clone())
            .collect()
    }

    fn remount(&self, disk: &DiskSettings, opts: &DiskOptions) -> Result<bool, String> {
        let _g = self.guard();
        let source = match self.source(disk, true)? {
            Source::Dir(dir) => Source::Dir(dir),
            Source::Block(dev) => match prepare::existing_filesystem(&dev)? {
                None => return Ok(false),
                Some(Prepared::Partition(p) | Prepared::Device(p)) => Source::Block(p),
            },
        };
        self.mount_prepared(&disk.id, &source, opts).map(|_| true)
    }

    fn add_dynamic(&self, disk: &DiskSettings) -> Result<(), String> {
        super::check_cid(&disk.id)?;
        let dev = self.resolver.resolve(disk)?;
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

    fn setup_ephemeral(&self, settings: &Effective) -> Result<(), String> {
        let _g = self.guard();
        super::ephemeral::setup(&self.dirs, settings, &self.config, &self.resolver, self.live)
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || std::fs::canonicalize(b).is_ok_and(|c| c == a)
}
