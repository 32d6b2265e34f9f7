//! The Linux platform (`-P ubuntu`, `-P linux`): a stemcell VM the agent configures and whose
//! devices, users and services it manages.

use super::bootstrap::{self, Machine};
use super::disks::{self, DiskConfig, DiskManager as _, LinuxDisks};
use super::firewall;
use super::monit_service::{MonitService, MonitStart};
use super::users::{self, UserRegex};
use super::{hosts_file, network, write_cert_files, Platform};
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::exec;
use crate::settings::Effective;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A real Linux VM (`-P ubuntu` or `-P linux`).
pub struct Linux {
    dirs: Dirs,
    disks: LinuxDisks,
    /// `agent.json`'s `UseDefaultTmpDir`.
    default_tmp_dir: bool,
}

impl Linux {
    pub(super) fn new(dirs: &Dirs, default_tmp_dir: bool, disk: DiskConfig) -> Linux {
        Linux { dirs: dirs.clone(), disks: LinuxDisks::new(dirs.clone(), disk), default_tmp_dir }
    }

    /// Whether this is the live system (root `/`) rather than a scratch root in tests.
    fn live(&self) -> bool {
        self.dirs.root == Path::new("/")
    }
}

impl Platform for Linux {
    /// Always runs: a stemcell's agent configures its VM. Commands that change the live system run
    /// only when the root is `/`.
    fn bootstrap(&self, settings: &Effective, _configure: bool) -> Result<(), String> {
        let machine = Machine { live: self.live(), devices: true, default_tmp_dir: self.default_tmp_dir };
        bootstrap::run(&self.dirs, settings, self, machine)
    }
    fn offers_test_actions(&self) -> bool {
        false
    }
    fn forwards_syslog(&self) -> bool {
        true
    }
    fn start_monit(&self, how: &MonitStart) -> Result<(), String> {
        if !self.live() {
            log::info!("monit: not started (a scratch root, not the live system)");
            return Ok(());
        }
        if how.iptables_firewall {
            log::info!("monit firewall: left to the stemcell's iptables rules (UseMonitIptablesFirewall)");
        } else if let Err(e) = firewall::setup_monit_firewall() {
            log::warn!("{e}");
        }
        MonitService::new(how.manager).start(&self.dirs)
    }
    fn save_dns_records(&self, records: &[(String, String)], agent_id: &str) -> Result<(), String> {
        let path = self.dirs.under_root("/etc/hosts");
        crate::fsutil::write_atomic(&path, hosts_file(records, agent_id).as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))
    }
    fn delete_arp_entries(&self, ips: &[std::net::IpAddr]) {
        for ip in ips {
            let ip = ip.to_string();
            if let Err(e) = exec::run(
                Command::new("ip").args(["neigh", "flush", "to", &ip]),
                None,
                Duration::from_secs(5),
            ) {
                log::info!("flushing the neighbour entry of {ip}: {e}");
            }
        }
    }
    /// `shutdown -P 0` as the Go agent runs it; on a systemd without D-Bus and logind (a minimal
    /// stemcell), where that fails for want of a bus, `poweroff` asks systemd directly.
    fn shutdown(&self) -> Result<(), String> {
        let limit = Duration::from_secs(30);
        exec::run(Command::new("shutdown").args(["-P", "0"]), None, limit)
            .or_else(|e| {
                log::info!("shutdown -P 0: {e}; trying poweroff");
                exec::run(&mut Command::new("poweroff"), None, limit)
            })
            .map(|_| ())
    }
    fn update_trusted_certs(&self, pem_bundle: &str) -> Result<(), String> {
        write_cert_files(&self.dirs.under_root("/usr/local/share/ca-certificates"), pem_bundle)?;
        if !self.live() {
            return Ok(()); // a scratch root (tests): the system bundle is not ours to rebuild
        }
        let mut last = String::new();
        for _ in 0..3 {
            match exec::run(Command::new("update-ca-certificates").arg("-f"), None, Duration::from_secs(60)) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
    fn mounted_persistent_disks(&self, settings: &Effective) -> Result<Vec<String>, String> {
        Ok(self.disks.mounted(&disks::known_disks(&self.dirs, settings)))
    }
    fn disks(&self) -> &dyn disks::DiskManager {
        &self.disks
    }
    fn vitals_require_mount_points(&self) -> bool {
        true
    }
    /// Forgets the udev rule that pinned the old NIC's MAC to `eth0`, so the new NIC gets the same
    /// name on the next boot, as the original Ruby agent's `prepare_network_change` did.
    fn prepare_network_change(&self) -> Result<(), String> {
        network::remove_persistent_net_rules(&self.dirs)
    }
    fn network_for_settings(&self) {
        network::setup::dhcp_before_settings(&self.dirs, self.live());
    }
    fn resolve_dhcp_networks(
        &self,
        networks: &mut std::collections::BTreeMap<String, crate::settings::Network>,
    ) {
        let nics = network::nics::detect(&self.dirs).unwrap_or_else(|e| {
            log::warn!("finding the network interfaces: {e}");
            Vec::new()
        });
        let live = network::routes::Live::read();
        network::routes::fill_dhcp(networks, |n, v6| live.lease(&nics, n, v6));
    }
    fn ssh_host_public_key(&self) -> Result<String, String> {
        users::host_public_key(&self.dirs)
    }
    fn setup_ssh_user(&self, user: &str, password: Option<&str>, public_key: &str) -> Result<(), String> {
        users::setup_ssh_user(&self.dirs.bosh_ssh(), user, password, public_key)
    }
    fn cleanup_ssh_users(&self, regex: &UserRegex) -> Result<Vec<String>, String> {
        users::cleanup_ssh_users(regex)
    }
    fn setup_logrotate(&self, size: &str) -> Result<(), String> {
        super::logrotate::write_vcap(&self.dirs, size)
    }
    /// Links to the resolved block device (e.g. `/dev/sdc`), as the Go agent does, rather than to
    /// where the disk is mounted: the link names the disk even while it is not mounted.
    fn associate_disk(&self, name: &str, disk: &disks::DiskSettings) -> Result<(), String> {
        super::check_association_name(name)?;
        let device = self.disks.device(disk)?;
        crate::owner::ensure_dir(&self.dirs.instance_disks(), 0o755)?;
        crate::fsutil::switch_link(&self.dirs.instance_disk(name), &device)
    }
}
