//! Reading files from a config drive or CD-ROM that may be a directory, a block device or an image
//! file: directories are read in place; devices and images are mounted read-only (`mount -o ro`,
//! plus `loop` for an image) on a fresh directory under `<base>/bosh` and unmounted afterwards.
//!
//! Why shell out to mount(8): it probes the filesystem type (iso9660 on real drives, vfat on some
//! clouds) and sets up loop devices, which would otherwise mean re-implementing both. Every call is
//! bounded by the attempt's deadline, since a CD-ROM that is not ready can block a mount for long.

use super::Failure;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static MOUNTS: AtomicUsize = AtomicUsize::new(0);

/// Runs `read` on a directory holding `source`'s files: `source` itself when it is a directory,
/// otherwise a read-only mount of it under `scratch`, which is unmounted and removed afterwards.
pub(crate) fn read_from<T>(
    source: &Path,
    scratch: &Path,
    deadline: Instant,
    read: impl FnOnce(&Path) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let meta = match std::fs::metadata(source) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::Permanent(format!("{} does not exist", source.display())))
        }
        Err(e) => return Err(Failure::Transient(format!("{}: {e}", source.display()))),
    };
    if meta.is_dir() {
        return read(source);
    }
    let options = if meta.file_type().is_block_device() {
        "ro"
    } else if meta.is_file() {
        "ro,loop"
    } else {
        return Err(Failure::Permanent(format!(
            "{} is neither a directory, a block device nor an image file",
            source.display()
        )));
    };
    let dir = mount_point(scratch)?;
    if let Err(e) = run(Command::new("mount").args(["-o", options]).arg(source).arg(&dir), deadline) {
        let _ = std::fs::remove_dir(&dir);
        return Err(Failure::Transient(format!("mount -o {options} {}: {e}", source.display())));
    }
    let result = read(&dir);
    let unmount_by = Instant::now() + Duration::from_secs(10);
    match run(Command::new("umount").arg(&dir), unmount_by) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&dir);
        }
        Err(e) => log::warn!("umount {}: {e}", dir.display()),
    }
    result
}

fn mount_point(scratch: &Path) -> Result<PathBuf, Failure> {
    let n = MOUNTS.fetch_add(1, Ordering::Relaxed);
    let dir = scratch.join(format!("settings-mnt-{}-{n}", std::process::id()));
    std::fs::create_dir_all(scratch)
        .and_then(|()| std::fs::DirBuilder::new().mode(0o700).create(&dir))
        .map_err(|e| Failure::Transient(format!("creating mount point {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Runs `cmd` to completion by `deadline`; the error names the command and carries its stderr.
fn run(cmd: &mut Command, deadline: Instant) -> Result<(), String> {
    crate::exec::run(cmd, None, deadline.saturating_duration_since(Instant::now())).map(|_| ())
}

/// Reads `name` (a relative path) under `dir`, refusing paths that climb out of it.
pub(crate) fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>, Failure> {
    let rel = Path::new(name.trim_start_matches('/'));
    if rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(Failure::Permanent(format!("'{name}' leaves the drive")));
    }
    std::fs::read(dir.join(rel)).map_err(|e| Failure::Permanent(format!("reading {name}: {e}")))
}
