//! The platform layer: what differs between a real Linux VM ([`linux`]) and the dummy platform
//! ([`dummy`]) that lets the whole director conversation run on any machine (`-P dummy`). Callers
//! ask the [`Platform`] for behaviour; none of them asks which platform it is.

pub mod bootstrap;
pub mod disks;
mod dummy;
pub mod firewall;
mod linux;
pub mod logrotate;
pub mod monit_service;
pub mod network;
pub mod users;

use crate::config::LinuxOptions;
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::settings::Effective;
use users::UserRegex;

/// The platform `-P` names, parsed once on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformKind {
    /// `-P ubuntu`: a Linux stemcell (today's stemcells say so).
    Ubuntu,
    /// `-P linux`: the same Linux platform under its generic name.
    Linux,
    /// `-P dummy`: records instead of touching the machine.
    Dummy,
}

impl PlatformKind {
    /// The kind `-P <name>` names, if any.
    pub fn parse(name: &str) -> Option<PlatformKind> {
        match name {
            "ubuntu" => Some(PlatformKind::Ubuntu),
            "linux" => Some(PlatformKind::Linux),
            "dummy" => Some(PlatformKind::Dummy),
            _ => None,
        }
    }
}

/// Builds the platform for `-P` with `agent.json`'s defaults (tests; the agent passes its options).
#[cfg(feature = "internals")]
pub fn new(kind: PlatformKind, dirs: &Dirs) -> Box<dyn Platform> {
    match kind {
        PlatformKind::Ubuntu | PlatformKind::Linux => {
            Box::new(linux::Linux::new(dirs, false, disks::DiskConfig::default()))
        }
        PlatformKind::Dummy => Box::new(dummy::Dummy::new(dirs)),
    }
}

/// Builds the platform for `-P` as `agent.json`'s `Platform.Linux` says (`UseDefaultTmpDir`, the
/// disk keys); fails on an option no platform can honour (an unknown `PartitionerType`).
pub fn with_options(
    kind: PlatformKind,
    dirs: &Dirs,
    options: &LinuxOptions,
) -> Result<Box<dyn Platform>, String> {
    let disk = disks::DiskConfig::from_linux(options)?;
    Ok(match kind {
        PlatformKind::Ubuntu | PlatformKind::Linux => {
            Box::new(linux::Linux::new(dirs, options.use_default_tmp_dir, disk))
        }
        PlatformKind::Dummy => Box::new(dummy::Dummy::new(dirs)),
    })
}

/// Platform operations the agent needs.
pub trait Platform: Send + Sync {
    /// Configures the VM at start ([`bootstrap`]); `configure` is `-c`, which the dummy platform
    /// needs before it writes anything (files only, never devices or the live system).
    fn bootstrap(&self, settings: &Effective, configure: bool) -> Result<(), String>;
    /// Whether the test aids `dummy_sleep` and `dummy_panic` are offered.
    fn offers_test_actions(&self) -> bool;
    /// Whether the machine's rsyslog forwards sshd's lines to the agent, for SSH login alerts.
    fn forwards_syslog(&self) -> bool;
    /// Starts monit through the stemcell's service manager, retried ([`monit_service`]), once the
    /// files its monitrc includes exist; a running monit is left alone. The monit firewall is made
    /// first ([`firewall`], best effort) unless `how` says the stemcell's iptables rules do that. An
    /// error means monit could not be started (the Go agent's `SetupFirewall` and `StartMonit`).
    fn start_monit(&self, how: &monit_service::MonitStart) -> Result<(), String>;
    /// Powers the VM off.
    fn shutdown(&self) -> Result<(), String>;
    /// Replaces the agent-managed trusted CA certificates with the blocks in `pem_bundle`.
    fn update_trusted_certs(&self, pem_bundle: &str) -> Result<(), String>;
    /// CIDs of the persistent disks currently mounted.
    fn mounted_persistent_disks(&self, settings: &Effective) -> Result<Vec<String>, String>;
    /// Whether ephemeral/persistent vitals need a real mount point (Linux) or just a path (dummy).
    fn vitals_require_mount_points(&self) -> bool;
    /// Writes the director's DNS records where name resolution finds them (`/etc/hosts`).
    fn save_dns_records(&self, records: &[(String, String)], agent_id: &str) -> Result<(), String>;
    /// Forgets the neighbour (ARP) entries of these addresses; failures are only logged.
    fn delete_arp_entries(&self, ips: &[std::net::IpAddr]);
    /// Persistent and dynamic disk operations: real devices on Linux, a JSON record on dummy.
    fn disks(&self) -> &dyn disks::DiskManager;
    /// Gets ready for the director moving the VM to other networks (`prepare_network_change`).
    fn prepare_network_change(&self) -> Result<(), String>;
    /// Called before each metadata request while settings are fetched: on a VM none of whose NICs
    /// is configured yet, brings up DHCP on them (failures are logged; the request tells).
    fn network_for_settings(&self);
    /// Fills the DHCP networks' `ip`, `netmask` and `gateway` with what DHCP gave the VM, which the
    /// director learns only from the agent (`apply`, `get_state`); others are left alone.
    fn resolve_dhcp_networks(
        &self,
        networks: &mut std::collections::BTreeMap<String, crate::settings::Network>,
    );
    /// The VM's SSH host public key, so bosh-cli can pin it in `known_hosts`.
    fn ssh_host_public_key(&self) -> Result<String, String>;
    /// Creates (or completes) the `bosh ssh` user `user` that logs in with `public_key`.
    fn setup_ssh_user(&self, user: &str, password: Option<&str>, public_key: &str) -> Result<(), String>;
    /// Removes the `bosh ssh` users `regex` matches; returns their names.
    fn cleanup_ssh_users(&self, regex: &UserRegex) -> Result<Vec<String>, String>;
    /// The uid and gid that give `user` (the `bosh ssh` user bosh-cli set up to copy it) a
    /// `bundle_logs` tarball.
    fn bundle_owner(&self, user: &str) -> Result<(u32, u32), String> {
        users::lookup_user(user)
    }
    /// Rotates the jobs' logs past `size` ([`logrotate`]), after an apply that installed jobs.
    fn setup_logrotate(&self, size: &str) -> Result<(), String>;
    /// Links `instance/disks/<name>` to `disk`'s device (`update_settings`' `disk_associations`).
    fn associate_disk(&self, name: &str, disk: &disks::DiskSettings) -> Result<(), String>;
}

/// Checks a disk association's name, which becomes a file name under `instance/disks`.
pub fn check_association_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!("invalid disk association name '{}'", name.escape_debug()));
    }
    Ok(())
}

/// The `/etc/hosts` text: the local names first, then one line per record.
pub fn hosts_file(records: &[(String, String)], agent_id: &str) -> String {
    let mut out = format!(
        "127.0.0.1 {agent_id} localhost\n\n# The following lines are desirable for IPv6 capable hosts\n\
         ::1 {agent_id} localhost ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\n\
         ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\nff02::3 ip6-allhosts\n"
    );
    for (ip, name) in records {
        out.push_str(&format!("{ip} {name}\n"));
    }
    out
}

/// Splits a PEM bundle into its certificate blocks.
pub fn pem_blocks(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in bundle.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(c) = current.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END ") {
            out.extend(current.take());
        }
    }
    out
}

/// Writes `bosh-trusted-cert-<n>.crt` files into `dir`, removing the ones from a previous update.
fn write_cert_files(dir: &std::path::Path, pem_bundle: &str) -> Result<usize, String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("bosh-trusted-cert-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let blocks = pem_blocks(pem_bundle);
    for (i, block) in blocks.iter().enumerate() {
        let path = dir.join(format!("bosh-trusted-cert-{}.crt", i + 1));
        crate::fsutil::write_atomic(&path, block.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(blocks.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_pem_bundles_and_replaces_old_files() {
        let bundle = "junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_blocks(bundle).len(), 2);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(write_cert_files(dir.path(), bundle).unwrap(), 2);
        assert_eq!(write_cert_files(dir.path(), "").unwrap(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
