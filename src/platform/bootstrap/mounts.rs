//! The bootstrap's mounts: tmpfs on run and job directories, binds of directories on the data disk
//! over system paths, and the remounts that take `exec`, `suid` and device files away from paths
//! every user may write. Each is idempotent, as the agent restarts often: a tmpfs or bind is made
//! only where nothing is mounted yet, and a remount is simply done again.
//!
//! The remounts are `remount,bind,<flags>`, which change the flags of that one mount point (what the
//! kernel checks on exec, setuid and device opens) without touching the filesystem underneath, so a
//! bind of the data disk never remounts the data disk itself. The Go agent runs a plain `remount`,
//! which gives the mount point the same flags.

use crate::platform::disks::mount;
use std::ffi::OsStr;
use std::path::Path;

/// `nodev,nosuid,noexec`: paths anyone may write (`/tmp`, `/var/log`, `/dev/shm`).
pub const NO_EXEC: &[&str] = &["nodev", "nosuid", "noexec"];
/// `nodev,nosuid`: `/home`, where users keep their own programs.
pub const NO_SUID: &[&str] = &["nodev", "nosuid"];
/// `nodev`: `/opt` and `/var/opt`, where installed software runs from.
pub const NO_DEV: &[&str] = &["nodev"];

/// Whether something is mounted at `dir`.
pub fn is_mount_point(dir: &Path) -> Result<bool, String> {
    Ok(mount::device_at(&mount::mounts()?, dir).is_some())
}

/// Mounts a tmpfs of `size` (already checked by [`tmpfs_size`]) on `dir` unless something is
/// mounted there; returns whether it mounted. Its root gets `mode`, or without one the kernel's 1777.
pub fn tmpfs(dir: &Path, size: &str, mode: Option<u32>) -> Result<bool, String> {
    if is_mount_point(dir)? {
        return Ok(false);
    }
    let mut option = format!("size={size}");
    if let Some(mode) = mode {
        option.push_str(&format!(",mode={mode:o}"));
    }
    let [t, fs, o] = ["-t", "tmpfs", "-o"].map(OsStr::new);
    mount::mount_args(&[t, fs, o, OsStr::new(&option), fs, dir.as_os_str()])?;
    log::info!("bootstrap: tmpfs ({option}) on {}", dir.display());
    Ok(true)
}

/// Binds `src` onto `dst` (made 0755 when missing) unless something is mounted at `dst` already (a
/// restart, or a `/tmp` the system made a tmpfs), then restricts `dst` to `flags` either way.
pub fn bind(src: &Path, dst: &Path, flags: &[&str]) -> Result<(), String> {
    crate::owner::ensure_dir(dst, 0o755)?;
    if !is_mount_point(dst)? {
        mount::mount_args(&[OsStr::new("--bind"), src.as_os_str(), dst.as_os_str()])?;
        log::info!("bootstrap: bound {} onto {}", src.display(), dst.display());
    }
    restrict(dst, flags)
}

/// Remounts the mount point `dir` with `flags` (see the module documentation).
pub fn restrict(dir: &Path, flags: &[&str]) -> Result<(), String> {
    let options = format!("remount,bind,{}", flags.join(","));
    mount::mount_args(&[OsStr::new("-o"), OsStr::new(&options), dir.as_os_str()])
}

/// A tmpfs size from the director (`env.bosh.*.tmpfs_size`), or `default` when empty: digits with
/// an optional `k`, `m`, `g` or `%`, as `mount -o size=` takes it. Anything else is refused, so no
/// mount option can ride along.
pub fn tmpfs_size<'a>(value: &'a str, default: &'a str, what: &str) -> Result<&'a str, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(default);
    }
    let digits = v.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
    if digits.is_empty() || digits.len() + 1 < v.len() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} '{}' is not a size (digits, then k, m, g or %)", v.escape_debug()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_sizes_are_plain_sizes() {
        assert_eq!(tmpfs_size("", "16m", "run_dir").unwrap(), "16m");
        for ok in ["16m", "100M", "1g", "524288", "50%", " 8k "] {
            assert_eq!(tmpfs_size(ok, "16m", "run_dir").unwrap(), ok.trim(), "{ok}");
        }
        for bad in ["16m,exec", "m", "1mm", "-1m", "1 m", "16m\nx", "0x10"] {
            let e = tmpfs_size(bad, "16m", "run_dir.tmpfs_size").unwrap_err();
            assert!(e.starts_with("run_dir.tmpfs_size '"), "{bad}: {e}");
        }
    }
}
