//! Configuring the VM at agent start (`-c`, and always on `-P ubuntu|linux`): the steps of the Go
//! agent's Linux bootstrap (`agent/bootstrap.go`) that a stemcell needs before jobs can run — vcap's keys
//! and passwords, hostname, network files, the ephemeral disk, the mounts and modes jobs expect
//! (shared memory, `/var/log`, `/opt`, the data directory layout, `/tmp`, `/home`: one module each
//! below), NTP servers, the agent log's rotation and trusted CAs, in the Go agent's order.
//!
//! Every step is idempotent (the agent restarts often; a second run must change nothing) and writes
//! only under the root dir (`-r`) or the base dir (`-b`), so tests run it against a scratch root.
//! Commands that change the live system (`hostname`, `usermod`, restarting networking, `sync-time`)
//! run only on the live system ([`Machine`]), which only the Linux platform with root `/` is. A failing step stops the bootstrap
//! with an error that names it, because an agent on a half-configured VM would mislead the director.

mod data_dir;
mod log_dir;
mod mounts;
mod system_dirs;
mod tmp_dir;

use super::{users, Platform};
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::exec;
use crate::owner;
use crate::settings::Effective;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What the bootstrap may touch besides files under the root and base dirs.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    /// Whether this is the live system (root `/` on Linux): only then do commands that change it run.
    pub live: bool,
    /// Whether block devices, mounts and system directories (`/tmp`, `/var/log`, ...) may be
    /// touched: never on the dummy platform, where `-c` writes files only. Mounts also need root.
    pub devices: bool,
    /// Leave `/tmp` and `/var/tmp` where they are (`agent.json`'s `UseDefaultTmpDir`, warden).
    pub default_tmp_dir: bool,
}

/// Runs every bootstrap step in the Go agent's order; the error names the failed step. The
/// platform decides whether it runs at all (see [`Platform::bootstrap`]).
pub fn run(
    dirs: &Dirs,
    settings: &Effective,
    platform: &dyn Platform,
    machine: Machine,
) -> Result<(), String> {
    let live = machine.live;
    let (devices, default_tmp_dir) = (machine.devices, machine.default_tmp_dir);
    let b = Bootstrap { dirs, settings, live, devices, default_tmp_dir };
    step("authorized keys", || b.authorized_keys())?;
    step("passwords", || b.passwords())?;
    step("ipv6", || b.ipv6())?;
    step("hostname", || b.hostname())?;
    step("networking", || b.networking())?;
    step("ephemeral disk", || b.ephemeral_disk(platform))?;
    step("shared memory", || b.shared_memory())?;
    step("log dir", || b.log_dir())?;
    step("opt dir", || b.opt_dir())?;
    step("ntp", || b.ntp())?;
    step("data dir", || b.data_dirs())?;
    step("tmp dir", || b.tmp_dir())?;
    step("home dir", || b.home_dir())?;
    step("agent log rotation", || b.agent_log_rotation())?;
    step("trusted certificates", || {
        let certs = &settings.update.trusted_certs;
        if certs.trim().is_empty() {
            return Ok(());
        }
        platform.update_trusted_certs(certs)
    })?;
    log::info!("bootstrap: done (live system: {live})");
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    log::debug!("bootstrap: {name}");
    f().with_context(|| format!("bootstrap step '{name}'"))
}

struct Bootstrap<'a> {
    dirs: &'a Dirs,
    settings: &'a Effective,
    live: bool,
    /// See [`Machine::devices`].
    devices: bool,
    /// See [`Machine::default_tmp_dir`].
    default_tmp_dir: bool,
}

/// Writes `data` unless the file already holds exactly that; returns whether it wrote.
pub(super) fn write_if_changed(path: &Path, data: &[u8], mode: u32) -> Result<bool, String> {
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(false);
    }
    crate::fsutil::write_atomic(path, data, mode).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// The crypted passwords to set: vcap always, root unless `keep_root_password`; `*` (no password
/// login) when the director sent none.
pub fn password_plan(settings: &Effective) -> Vec<(&'static str, String)> {
    let env = &settings.settings.env.bosh;
    let hash = env.password.as_deref().filter(|p| !p.is_empty()).unwrap_or("*");
    let mut plan = Vec::new();
    if !env.keep_root_password {
        plan.push(("root", hash.to_string()));
    }
    plan.push(("vcap", hash.to_string()));
    plan
}

impl Bootstrap<'_> {
    /// Whether this run may mount (`what` names the mount for the log line when it may not): on the
    /// Linux platform as root. A non-root run on a scratch root (a developer's test) makes the
    /// directories and modes only.
    fn may_mount(&self, what: &str) -> bool {
        if !self.devices {
            return false;
        }
        if !owner::is_root() {
            log::info!("bootstrap: {what} skipped (not root)");
            return false;
        }
        true
    }

    /// The agent's own log's rotation, on the Linux platform ([`super::logrotate`]).
    fn agent_log_rotation(&self) -> Result<(), String> {
        if !self.devices {
            return Ok(());
        }
        super::logrotate::write_agent_rotation(self.dirs)
    }

    /// Whether `data` is a disk of its own (mounted), so system paths may move onto it.
    fn data_is_disk(&self) -> Result<bool, String> {
        mounts::is_mount_point(&self.dirs.data())
    }

    /// vcap's home and ids from the root's passwd; `<root>/home/vcap` without ids when absent.
    fn vcap(&self) -> Result<(PathBuf, Option<(u32, u32)>), String> {
        let entries = users::read_passwd(&self.dirs.under_root(users::SYSTEM_PASSWD))?;
        Ok(match entries.into_iter().find(|e| e.name == "vcap") {
            Some(e) => (self.dirs.under_root(&e.home.to_string_lossy()), Some((e.uid, e.gid))),
            None => (self.dirs.under_root("/home/vcap"), None),
        })
    }

    /// vcap's `authorized_keys`: `env.bosh.authorized_keys` first, then the infrastructure's key (a
    /// metadata service's or config drive's), replacing the file, as the Go agent's two writes leave
    /// it. Left alone when there are neither.
    fn authorized_keys(&self) -> Result<(), String> {
        let settings = &self.settings.settings;
        let mut keys: Vec<&str> = settings.env.bosh.authorized_keys.iter().map(|k| k.trim()).collect();
        if keys.iter().any(|k| k.is_empty() || k.contains(['\n', '\r', '\0'])) {
            return Err("env.bosh.authorized_keys holds an empty or multi-line key".into());
        }
        let iaas = settings.iaas_public_key.as_deref().unwrap_or_default();
        if iaas.chars().any(|c| c.is_control() && !c.is_ascii_whitespace()) {
            log::warn!("bootstrap: the infrastructure's SSH key holds control characters; not installed");
        } else {
            keys.extend(iaas.lines().map(str::trim).filter(|k| !k.is_empty()));
        }
        if keys.is_empty() {
            return Ok(());
        }
        let (home, ids) = self.vcap()?;
        let owner = ids.filter(|_| owner::is_root());
        users::write_authorized_keys(&home, &keys.join("\n"), owner)
    }

    fn passwords(&self) -> Result<(), String> {
        if !self.live {
            log::info!("bootstrap: passwords left alone (not the live system)");
            return Ok(());
        }
        for (user, hash) in password_plan(self.settings) {
            users::set_password(user, &hash)?;
        }
        Ok(())
    }

    fn hostname(&self) -> Result<(), String> {
        let id = &self.settings.settings.agent_id;
        if id.is_empty()
            || id.len() > 253
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!("agent id '{}' cannot be a hostname", id.escape_debug()));
        }
        write_if_changed(&self.dirs.under_root("/etc/hostname"), format!("{id}\n").as_bytes(), 0o644)?;
        let hosts = self.dirs.under_root("/etc/hosts");
        let first = format!("127.0.0.1 {id} localhost");
        let current = std::fs::read_to_string(&hosts).unwrap_or_default();
        // Keep a hosts file that already names this agent: sync_dns records live after its header.
        if current.lines().next() != Some(first.as_str()) {
            write_if_changed(&hosts, super::hosts_file(&[], id).as_bytes(), 0o644)?;
        }
        if self.live {
            exec::run(Command::new("hostname").arg(id), None, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Step 7: the interfaces' networkd files, networkd told, DNS (see `network::setup`).
    fn networking(&self) -> Result<(), String> {
        super::network::setup::apply(self.dirs, &self.settings.settings.networks, self.live)
    }

    /// Step 5: IPv6 in the kernel when `env.bosh.ipv6.enable` asks for it (networks with IPv6
    /// addresses enable it in the networking step anyway).
    fn ipv6(&self) -> Result<(), String> {
        if self.settings.settings.env.bosh.ipv6.enable {
            super::network::ipv6::enable(self.dirs, self.live)?;
        }
        Ok(())
    }

    /// Steps 8–10: raw ephemeral disks, swap and `data` on the ephemeral disk or the root disk, the
    /// root partition grown (see `disks::ephemeral`), or a plain directory when there is no disk to
    /// touch. Runs before the data directories are made, so they land on the disk rather than under
    /// its mount point.
    fn ephemeral_disk(&self, platform: &dyn Platform) -> Result<(), String> {
        if !self.devices {
            log::info!("bootstrap: disks left alone on the dummy platform; data is a directory");
            return owner::ensure_dir(&self.dirs.data(), 0o755);
        }
        platform.disks().setup_ephemeral(self.settings)
    }

    fn ntp(&self) -> Result<(), String> {
        let env = &self.settings.settings.env.bosh;
        let servers = env.ntp.clone().unwrap_or_else(|| self.settings.settings.ntp.clone());
        if servers.iter().any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic())) {
            return Err("an NTP server name is empty or has spaces or control characters".into());
        }
        let path = self.dirs.ntpserver();
        write_if_changed(&path, format!("{}\n", servers.join(" ")).as_bytes(), 0o644)?;
        let sync = self.dirs.sync_time();
        if self.live && !servers.is_empty() && sync.is_file() {
            if let Err(e) = exec::run(&mut Command::new(sync), None, Duration::from_secs(60)) {
                log::warn!("bootstrap: sync-time failed (best effort): {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::disks::mount;
    use serde_json::{json, Value};

    fn effective(v: Value) -> Effective {
        Effective { settings: serde_json::from_value(v).unwrap(), update: Default::default() }
    }

    #[test]
    fn passwords_follow_keep_root_password() {
        let e = effective(json!({"env": {"bosh": {"password": "$6$x$y"}}}));
        assert_eq!(password_plan(&e), vec![("root", "$6$x$y".to_string()), ("vcap", "$6$x$y".to_string())]);
        let e = effective(json!({"env": {"bosh": {"password": "", "keep_root_password": true}}}));
        assert_eq!(password_plan(&e), vec![("vcap", "*".to_string())]);
    }

    #[test]
    fn runs_only_where_asked() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("base"), root.path());
        let settings = effective(json!({"agent_id": "a-1"}));
        let dummy = crate::platform::new(crate::platform::PlatformKind::Dummy, &dirs);
        dummy.bootstrap(&settings, false).unwrap();
        assert!(!dirs.under_root("/etc/hostname").exists(), "dummy without -c writes nothing");
        dummy.bootstrap(&settings, true).unwrap();
        assert!(dirs.under_root("/etc/hostname").exists(), "dummy with -c writes files");
        for kind in [crate::platform::PlatformKind::Ubuntu, crate::platform::PlatformKind::Linux] {
            let root = tempfile::tempdir().unwrap();
            let dirs = Dirs::new(root.path().join("base"), root.path());
            let result = crate::platform::new(kind, &dirs).bootstrap(&settings, false);
            // As root the bootstrap mounted a tmpfs on data/sys/run: undo it before the asserts.
            let table = mount::mounts().unwrap();
            for m in table.iter().rev().filter(|m| m.mount_point.starts_with(root.path())) {
                mount::unmount(&m.mount_point).unwrap();
            }
            result.unwrap();
            assert!(dirs.under_root("/etc/hostname").exists(), "{kind:?} always configures");
        }
    }

    #[test]
    fn errors_name_the_step() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("base"), root.path());
        let linux = crate::platform::new(crate::platform::PlatformKind::Linux, &dirs);
        let e = linux.bootstrap(&effective(json!({"agent_id": "bad id"})), false).unwrap_err();
        assert!(e.starts_with("bootstrap step 'hostname': agent id"), "{e}");
    }
}
