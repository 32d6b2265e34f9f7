//! The platform layer: what differs between a real Linux VM and the dummy platform that lets the whole
//! director conversation run on any machine (`-P dummy`).

pub mod bootstrap;
pub mod disks;
pub mod network;
pub mod users;

use crate::error::Context as _;
use crate::dirs::Dirs;
use crate::exec;
use crate::settings::Effective;
use disks::DiskManager as _;
use std::process::Command;
use std::time::Duration;

/// Platform operations the actions need.
pub trait Platform: Send + Sync {
    /// Whether this is the dummy platform (enables test-only actions).
    fn is_dummy(&self) -> bool;
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

/// Picks the platform for `-P`.
pub fn from_name(name: &str, dirs: &Dirs) -> Result<Box<dyn Platform>, String> {
    match name {
        "ubuntu" | "linux" => Ok(Box::new(Linux {
            dirs: dirs.clone(),
            disks: disks::LinuxDisks::new(dirs.clone()),
        })),
        "dummy" => Ok(Box::new(Dummy { dirs: dirs.clone(), disks: disks::DummyDisks::new(dirs.clone()) })),
        other => Err(format!("unknown platform '{other}' (expected ubuntu, linux or dummy)")),
    }
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

/// A real Linux VM (`-P ubuntu` or `-P linux`).
pub struct Linux {
    dirs: Dirs,
    disks: disks::LinuxDisks,
}

impl Platform for Linux {
    fn save_dns_records(&self, records: &[(String, String)], agent_id: &str) -> Result<(), String> {
        let path = self.dirs.under_root("/etc/hosts");
        crate::fsutil::write_atomic(&path, hosts_file(records, agent_id).as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))
    }
    fn delete_arp_entries(&self, ips: &[std::net::IpAddr]) {
        for ip in ips {
            let ip = ip.to_string();
            if let Err(e) =
                exec::run(Command::new("ip").args(["neigh", "flush", "to", &ip]), None, Duration::from_secs(5))
            {
                log::info!("flushing the neighbour entry of {ip}: {e}");
            }
        }
    }
    fn is_dummy(&self) -> bool {
        false
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
        if self.dirs.root != std::path::Path::new("/") {
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
}

/// The dummy platform (`-P dummy`): records instead of touching the machine.
pub struct Dummy {
    dirs: Dirs,
    disks: disks::DummyDisks,
}

impl Platform for Dummy {
    fn save_dns_records(&self, records: &[(String, String)], _agent_id: &str) -> Result<(), String> {
        let text: String = records.iter().map(|(ip, name)| format!("{ip} {name}\n")).collect();
        let path = self.dirs.dummy_etc_hosts();
        crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))
    }
    fn delete_arp_entries(&self, ips: &[std::net::IpAddr]) {
        log::info!("dummy platform: would flush {} neighbour entries", ips.len());
    }
    fn is_dummy(&self) -> bool {
        true
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
