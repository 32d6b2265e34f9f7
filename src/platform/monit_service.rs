//! Starting monit through the stemcell's service manager, the Go agent's `StartMonit`: which one is
//! `Platform.Linux.ServiceManager` in `agent.json` (`systemd`, else runit).
//!
//! - **systemd** (our stemcell, Noble): `systemctl start monit`. A running monit is left alone, so an
//!   agent restart never restarts or reloads it.
//! - **runit** (Jammy): the stemcell's `delay_monit_start` removes the `/etc/service/monit` link at
//!   every boot (monit must not start before the agent has made `data/sys/run`), so the link to
//!   `/etc/sv/monit` is made again (replacing one that points elsewhere) and then `sv start` asks runsv
//!   to start it. runsvdir notices a new service only at its next scan (every 5 s), so the first
//!   attempts can find no runsv yet: that is what the retries absorb.
//!
//! Either way a start is tried [`ATTEMPTS`] times, [`DELAY`] apart, as the Go agent does; when all
//! fail the error says why the last one did; the agent then keeps serving and tries again later
//! (`app`), where the Go agent exits. The files monit's control file includes (`monit.user`, `alerts.monitrc`) are
//! written before this runs.
//!
//! Paths are under the root dir (`-r`): `sv` is given the service directory's full path, which it
//! uses as it is (a bare name would be looked up in `$SVDIR`, `/etc/service` by default).

use crate::config::LinuxOptions;
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::exec;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How many times a start is tried.
pub const ATTEMPTS: u32 = 10;
/// The pause after a failed attempt.
pub const DELAY: Duration = Duration::from_secs(1);
/// How long one `sv start` or `systemctl start` may take (`sv` itself waits up to 7 s).
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// The service manager that runs monit on this stemcell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceManager {
    /// `ServiceManager: "systemd"`: the stemcell's `monit.service`.
    Systemd,
    /// Anything else, including no setting (the Go agent's default): runit's `/etc/sv/monit`.
    Runit,
}

impl ServiceManager {
    /// The manager `Platform.Linux.ServiceManager` names: `systemd` (any case, as the Go agent
    /// matches it), else runit; a value that names neither is runit with a warning.
    pub fn from_config(linux: &LinuxOptions) -> ServiceManager {
        if linux.uses_systemd() {
            return ServiceManager::Systemd;
        }
        let name = linux.service_manager.as_str();
        if !["", "sv", "runit"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            log::warn!("Platform.Linux.ServiceManager '{}' is unknown: using runit", name.escape_debug());
        }
        ServiceManager::Runit
    }

    fn name(self) -> &'static str {
        match self {
            ServiceManager::Systemd => "systemd",
            ServiceManager::Runit => "runit",
        }
    }
}

/// What `agent.json`'s `Platform.Linux` says about starting monit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitStart {
    /// `ServiceManager`.
    pub manager: ServiceManager,
    /// `UseMonitIptablesFirewall`: the stemcell's iptables rules guard monit, so the agent makes no
    /// nftables monit firewall ([`super::firewall`]).
    pub iptables_firewall: bool,
}

impl MonitStart {
    /// Both options, from `agent.json`'s typed `Platform.Linux`.
    pub fn from_config(linux: &LinuxOptions) -> MonitStart {
        MonitStart {
            manager: ServiceManager::from_config(linux),
            iptables_firewall: linux.use_monit_iptables_firewall,
        }
    }
}

/// How monit is started: the service manager, the attempts and the commands.
#[derive(Clone, Debug)]
pub struct MonitService {
    manager: ServiceManager,
    attempts: u32,
    delay: Duration,
    sv: PathBuf,
    systemctl: PathBuf,
}

impl MonitService {
    /// Monit under `manager`, tried [`ATTEMPTS`] times [`DELAY`] apart, with `sv` and `systemctl`
    /// from `PATH`.
    pub fn new(manager: ServiceManager) -> MonitService {
        MonitService {
            manager,
            attempts: ATTEMPTS,
            delay: DELAY,
            sv: "sv".into(),
            systemctl: "systemctl".into(),
        }
    }

    /// The same with other attempts and pause (tests that expect a failure).
    #[cfg(feature = "internals")]
    pub fn with_retries(mut self, attempts: u32, delay: Duration) -> MonitService {
        self.attempts = attempts.max(1);
        self.delay = delay;
        self
    }

    /// The same with another `systemctl`: a test cannot run systemd, so it gives a stand-in.
    #[cfg(feature = "internals")]
    pub fn with_systemctl(mut self, systemctl: impl Into<PathBuf>) -> MonitService {
        self.systemctl = systemctl.into();
        self
    }

    /// Starts monit (a running one stays as it is): the runit link first, then the start command,
    /// retried. The error names the service manager and the last attempt's failure.
    pub fn start(&self, dirs: &Dirs) -> Result<(), String> {
        let what = format!("starting monit ({})", self.manager.name());
        let mut cmd = match self.manager {
            ServiceManager::Systemd => {
                let mut c = Command::new(&self.systemctl);
                c.args(["start", "monit"]);
                c
            }
            ServiceManager::Runit => {
                let service = runit_link(dirs).context(&what)?;
                let mut c = Command::new(&self.sv);
                c.arg("start").arg(service);
                c
            }
        };
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match run(&mut cmd) {
                Ok(_) => {
                    log::info!("monit started ({}, attempt {attempt})", self.manager.name());
                    return Ok(());
                }
                Err(e) => {
                    log::info!("{what}: attempt {attempt} of {}: {e}", self.attempts);
                    last = e;
                }
            }
            if attempt < self.attempts {
                std::thread::sleep(self.delay);
            }
        }
        Err(format!("{what}: {} attempts failed, the last with: {last}", self.attempts))
    }
}

/// Runs a start command; its error carries what it said (`sv` explains itself on stdout).
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = exec::output(cmd, None, Some(COMMAND_LIMIT))?;
    if out.status.success() {
        return Ok(());
    }
    let said: Vec<&str> =
        [out.stderr.trim(), out.stdout.trim()].into_iter().filter(|s| !s.is_empty()).collect();
    Err(format!("{cmd:?} failed ({}): {}", out.status, said.join("; ")))
}

/// Makes `<root>/etc/service/monit` a link to `<root>/etc/sv/monit` (the Go agent's runit `Setup`):
/// kept when it already is one, replaced when it is a link elsewhere or a file. A directory there is
/// a service directory runsv already supervises, and is used as it is. Returns the service path.
fn runit_link(dirs: &Dirs) -> Result<PathBuf, String> {
    let target = dirs.under_root("/etc/sv/monit");
    let link = dirs.under_root("/etc/service/monit");
    if !target.is_dir() {
        return Err(format!(
            "{} is missing: the stemcell has no runit service for monit (is Platform.Linux.ServiceManager right?)",
            target.display()
        ));
    }
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
                return Ok(link);
            }
            log::info!("monit: {} points elsewhere; linking it to {}", link.display(), target.display());
            remove(&link)?;
        }
        Ok(m) if m.is_dir() => {
            log::info!("monit: {} is a service directory; using it as it is", link.display());
            return Ok(link);
        }
        Ok(_) => remove(&link)?,
        Err(_) => {}
    }
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::os::unix::fs::symlink(&target, &link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    log::info!("monit: linked {} to {}", link.display(), target.display());
    Ok(link)
}

fn remove(path: &Path) -> Result<(), String> {
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_manager_from_agent_json() {
        let of = |linux: serde_json::Value| {
            let config =
                crate::config::AgentConfig::from_value(&json!({"Platform": {"Linux": linux}})).unwrap();
            MonitStart::from_config(&config.linux)
        };
        let start = of(json!({"ServiceManager": "systemd", "usemonitiptablesfirewall": true}));
        assert_eq!(start, MonitStart { manager: ServiceManager::Systemd, iptables_firewall: true });
        assert_eq!(of(json!({"servicemanager": "SystemD"})).manager, ServiceManager::Systemd);
        assert_eq!(of(json!({"ServiceManager": ""})).manager, ServiceManager::Runit);
        assert_eq!(of(json!({"ServiceManager": "upstart"})).manager, ServiceManager::Runit);
        assert_eq!(
            MonitStart::from_config(&LinuxOptions::default()),
            MonitStart { manager: ServiceManager::Runit, iptables_firewall: false }
        );
    }

    #[test]
    fn runit_link_is_made_kept_and_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("var/vcap"), root.path());
        let link = dirs.under_root("/etc/service/monit");
        let target = dirs.under_root("/etc/sv/monit");
        let e = runit_link(&dirs).unwrap_err();
        assert!(e.contains("etc/sv/monit is missing"), "{e}");
        std::fs::create_dir_all(&target).unwrap();
        assert_eq!(runit_link(&dirs).unwrap(), link);
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        assert_eq!(runit_link(&dirs).unwrap(), link, "kept");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("/elsewhere", &link).unwrap();
        runit_link(&dirs).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), target, "a link elsewhere is replaced");
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "junk").unwrap();
        runit_link(&dirs).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), target, "a file is replaced");
    }
}
