//! The dummy platform (`-P dummy`): the whole director conversation on any machine, with records
//! under `<base>/bosh` instead of changes to the machine.

use super::bootstrap::{self, Machine};
use super::disks::{self, DiskManager as _, DummyDisks};
use super::users::{self, UserRegex};
use super::{write_cert_files, Platform};
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::settings::Effective;
use std::collections::BTreeMap;

/// The dummy platform (`-P dummy`): records instead of touching the machine.
pub struct Dummy {
    dirs: Dirs,
    disks: DummyDisks,
}

impl Dummy {
    pub(super) fn new(dirs: &Dirs) -> Dummy {
        Dummy { dirs: dirs.clone(), disks: DummyDisks::new(dirs.clone()) }
    }

    /// Applies `change` to the record of SSH users (name → key).
    fn record_ssh_users(&self, change: impl FnOnce(&mut BTreeMap<String, String>)) -> Result<(), String> {
        let path = self.dirs.dummy_ssh_users_json();
        let mut users: BTreeMap<String, String> = crate::fsutil::read_json(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .unwrap_or_default();
        change(&mut users);
        crate::fsutil::write_json_atomic(&path, &users, 0o600)
            .with_context(|| format!("writing {}", path.display()))
    }
}

impl Platform for Dummy {
    /// Runs only with `-c`, and then writes files only: no devices, no live system.
    fn bootstrap(&self, settings: &Effective, configure: bool) -> Result<(), String> {
        if !configure {
            log::info!("bootstrap: skipped on the dummy platform without -c");
            return Ok(());
        }
        let machine = Machine { live: false, devices: false, default_tmp_dir: true };
        bootstrap::run(&self.dirs, settings, self, machine)
    }
    fn offers_test_actions(&self) -> bool {
        true
    }
    fn forwards_syslog(&self) -> bool {
        false
    }
    fn start_monit(&self, _how: &super::monit_service::MonitStart) -> Result<(), String> {
        Ok(())
    }
    fn save_dns_records(&self, records: &[(String, String)], _agent_id: &str) -> Result<(), String> {
        let text: String = records.iter().map(|(ip, name)| format!("{ip} {name}\n")).collect();
        let path = self.dirs.dummy_etc_hosts();
        crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))
    }
    fn delete_arp_entries(&self, ips: &[std::net::IpAddr]) {
        log::info!("dummy platform: would flush {} neighbour entries", ips.len());
    }
    fn shutdown(&self) -> Result<(), String> {
        log::info!("dummy platform: shutdown requested, nothing to power off");
        Ok(())
    }
    fn update_trusted_certs(&self, pem_bundle: &str) -> Result<(), String> {
        write_cert_files(&self.dirs.dummy_trusted_certs(), pem_bundle).map(|_| ())
    }
    fn mounted_persistent_disks(&self, settings: &Effective) -> Result<Vec<String>, String> {
        Ok(self.disks.mounted(&disks::known_disks(&self.dirs, settings)))
    }
    fn disks(&self) -> &dyn disks::DiskManager {
        &self.disks
    }
    fn vitals_require_mount_points(&self) -> bool {
        false
    }
    /// No NICs to rename.
    fn prepare_network_change(&self) -> Result<(), String> {
        Ok(())
    }
    /// No NICs to bring up.
    fn network_for_settings(&self) {}
    /// What `bosh/dummy-default-network-settings.json` says DHCP gave (`{"ip", "netmask",
    /// "gateway"}`, as the Go dummy platform reads it); without that file nothing is changed.
    fn resolve_dhcp_networks(&self, networks: &mut BTreeMap<String, crate::settings::Network>) {
        let path = self.dirs.dummy_default_network_json();
        let known: crate::settings::Network = match crate::fsutil::read_json(&path) {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => return log::warn!("reading {}: {e}", path.display()),
        };
        let Ok(ip) = known.ip.parse::<std::net::IpAddr>() else {
            return log::warn!("{}: ip '{}' is not an address", path.display(), known.ip);
        };
        super::network::routes::fill_dhcp(networks, |_, _| {
            Some(super::network::routes::Resolved {
                iface: "dummy".into(),
                ip,
                netmask: known.netmask.clone(),
                gateway: known.gateway.parse().ok(),
            })
        });
    }
    fn ssh_host_public_key(&self) -> Result<String, String> {
        Ok("dummy-public-key".into())
    }
    /// Records the user and key in `<base>/bosh/dummy_ssh_users.json`.
    fn setup_ssh_user(&self, user: &str, _password: Option<&str>, public_key: &str) -> Result<(), String> {
        self.record_ssh_users(|m| {
            m.insert(user.to_string(), public_key.to_string());
        })
    }
    /// The user's own ids when the system has it; a user that `ssh setup` only recorded gets the
    /// agent's own ids (root's on a VM), as if the user existed: bosh-cli's `bosh logs --director`
    /// sets one up and asks for a bundle owned by it.
    fn bundle_owner(&self, user: &str) -> Result<(u32, u32), String> {
        users::lookup_user(user).or_else(|e| {
            let path = self.dirs.dummy_ssh_users_json();
            let recorded: BTreeMap<String, String> = crate::fsutil::read_json(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .unwrap_or_default();
            // SAFETY: geteuid and getegid only read the process's credentials.
            let own = unsafe { (libc::geteuid(), libc::getegid()) };
            recorded.contains_key(user).then_some(own).ok_or(e)
        })
    }
    /// Nothing to rotate on the dummy platform.
    fn setup_logrotate(&self, _size: &str) -> Result<(), String> {
        Ok(())
    }
    /// Records the name in `<base>/bosh/disk_associations.json`, as the Go dummy platform does.
    fn associate_disk(&self, name: &str, _disk: &disks::DiskSettings) -> Result<(), String> {
        super::check_association_name(name)?;
        let path = self.dirs.dummy_disk_associations_json();
        let mut names: Vec<String> = crate::fsutil::read_json(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .unwrap_or_default();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        crate::fsutil::write_json_atomic(&path, &names, 0o644)
            .with_context(|| format!("writing {}", path.display()))
    }
    fn cleanup_ssh_users(&self, regex: &UserRegex) -> Result<Vec<String>, String> {
        let mut removed = Vec::new();
        self.record_ssh_users(|m| {
            m.retain(|u, _| {
                let gone = u.starts_with(users::SSH_USER_PREFIX) && regex.matches(u);
                if gone {
                    removed.push(u.clone());
                }
                !gone
            })
        })?;
        Ok(removed)
    }
}
