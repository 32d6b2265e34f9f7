//! The mount table and the mount/unmount commands. Mounts are matched by device number (the
//! `major:minor` column of `/proc/self/mountinfo`), never by the device path, because the same disk is
//! reachable as `/dev/sdc1`, a by-id link or a node made with mknod.

use crate::error::Context as _;
use crate::exec;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long `unmount` keeps retrying a busy filesystem before it reports who holds it. The Go agent
/// retries for minutes; a director task that waits that long only hides the real problem.
pub const UNMOUNT_PATIENCE: Duration = Duration::from_secs(10);
const MOUNT_LIMIT: Duration = Duration::from_secs(300);

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq)]
pub struct MountEntry {
    /// Device number of the mounted filesystem.
    pub dev: (u64, u64),
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (_, _, dev, _, mp) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (maj, min) = dev.split_once(':')?;
            Some(MountEntry {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                mount_point: PathBuf::from(unescape(mp)),
            })
        })
        .collect()
}

/// The current mount table.
pub fn mounts() -> Result<Vec<MountEntry>, String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .context("reading /proc/self/mountinfo")
}

/// `(major, minor)` of a `dev_t`, as glibc's `gnu_dev_major/minor` split it.
pub fn split_dev(rdev: u64) -> (u64, u64) {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff), ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff))
}

/// The device number of a block device node.
pub fn device_number(dev: &Path) -> Result<(u64, u64), String> {
    std::fs::metadata(dev).map(|m| split_dev(m.rdev())).with_context(|| format!("reading {}", dev.display()))
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || std::fs::canonicalize(b).is_ok_and(|c| c == a)
}

/// The device mounted at `dir` (the topmost mount there), if any.
pub fn device_at(table: &[MountEntry], dir: &Path) -> Option<(u64, u64)> {
    table.iter().rev().find(|m| same_path(&m.mount_point, dir)).map(|m| m.dev)
}

/// Every mount point of device `dev`.
pub fn mount_points_of(table: &[MountEntry], dev: (u64, u64)) -> Vec<PathBuf> {
    table.iter().filter(|m| m.dev == dev).map(|m| m.mount_point.clone()).collect()
}

/// Where the directory `dir` is bind-mounted: the mount points whose root is `dir` itself (same
/// device and inode), other than `dir`.
pub fn bind_points_of(table: &[MountEntry], dir: &Path) -> Vec<PathBuf> {
    let Ok(want) = std::fs::metadata(dir) else { return Vec::new() };
    let dev = split_dev(want.dev());
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    table
        .iter()
        .filter(|m| m.dev == dev && m.mount_point != canonical)
        .filter(|m| {
            std::fs::metadata(&m.mount_point).is_ok_and(|md| md.dev() == want.dev() && md.ino() == want.ino())
        })
        .map(|m| m.mount_point.clone())
        .collect()
}

/// What holds the disk `dev` or one of its partitions: mounts and active swap, described for an
/// error message. Empty when nothing does, so the disk may be repartitioned.
pub fn in_use(dev: &Path) -> Result<Vec<String>, String> {
    let mut numbers = vec![(dev.to_path_buf(), device_number(dev)?)];
    let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(Path::new("/sys/class/block").join(&name)) {
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path().join("dev")) else { continue };
            if !e.path().join("partition").exists() {
                continue;
            }
            if let Some((a, b)) = text.trim().split_once(':') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    numbers.push((PathBuf::from(e.file_name()), (a, b)));
                }
            }
        }
    }
    let table = mounts()?;
    let mut uses = Vec::new();
    for (what, n) in &numbers {
        for p in mount_points_of(&table, *n) {
            uses.push(format!("{} is mounted on {}", what.display(), p.display()));
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for swap in swaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()) {
        let swap = unescape(swap);
        if let Ok(m) = std::fs::metadata(&swap) {
            if numbers.iter().any(|(_, n)| *n == split_dev(m.rdev())) {
                uses.push(format!("{swap} is in use as swap"));
            }
        }
    }
    Ok(uses)
}

/// Mounts `source` on `dir` (created 0700 if missing) with `options`.
pub fn mount(source: &Path, dir: &Path, options: &[String]) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Command::new("mount");
    if !options.is_empty() {
        cmd.arg("-o").arg(options.join(","));
    }
    cmd.arg(source).arg(dir);
    exec::run(&mut cmd, None, MOUNT_LIMIT).map(|_| ())
}

/// Runs `mount` with raw arguments (remount, move).
pub fn mount_args(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    exec::run(Command::new("mount").args(args), None, MOUNT_LIMIT).map(|_| ())
}

/// Unmounts `dir`, retrying a busy filesystem for [`UNMOUNT_PATIENCE`]; the error then names the
/// processes holding files under it, so the operator knows what to stop.
pub fn unmount(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + UNMOUNT_PATIENCE;
    loop {
        let err = match exec::run(Command::new("umount").arg(dir), None, MOUNT_LIMIT) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let holders = holders(dir);
            let who = if holders.is_empty() {
                String::new()
            } else {
                format!("; held open by {}", holders.join(", "))
            };
            return Err(format!("unmounting {}: {err}{who}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `pid (command)` of up to ten processes with an open file or working directory under `dir`.
pub fn holders(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let name = p.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || out.len() >= 10 {
            continue;
        }
        let under = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
        let mut holds = under(p.path().join("cwd"));
        if let Ok(fds) = std::fs::read_dir(p.path().join("fd")) {
            holds = holds || fds.flatten().any(|fd| under(fd.path()));
        }
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {name} ({})", comm.trim()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let t = "36 35 259:3 / /var/vcap/store rw,relatime shared:1 - ext4 /dev/loop0p1 rw\n\
                 37 35 0:22 / /a\\040b rw - tmpfs tmpfs rw\nbroken\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, (259, 3));
        assert_eq!(m[1].mount_point, PathBuf::from("/a b"));
        assert_eq!(device_at(&m, Path::new("/var/vcap/store")), Some((259, 3)));
        assert_eq!(mount_points_of(&m, (0, 22)), vec![PathBuf::from("/a b")]);
        assert_eq!(split_dev(libc_makedev(259, 3)), (259, 3));
        assert_eq!(split_dev(libc_makedev(7, 1048575)), (7, 1048575));
    }

    fn libc_makedev(maj: u64, min: u64) -> u64 {
        ((maj & 0xffff_f000) << 32) | ((maj & 0xfff) << 8) | ((min & 0xffff_ff00) << 12) | (min & 0xff)
    }
}
