//! Persistent disks over iSCSI with multipath (SoftLayer, `DevicePathResolutionType: iscsi`), found
//! as the Go agent finds them, with every command through `exec`:
//!
//! 1. The four `iscsi_settings` (initiator name, CHAP user and password, target portal) must all be
//!    there.
//! 2. A disk found before in this process is where it was (a small cache per CID).
//! 3. `dmsetup ls`: maps named `<wwid>-part1` are disks partitioned before. When the disk is the
//!    one recorded in `managed_disk_settings.json`, or none is recorded yet, the first of them is it
//!    (more than two is refused, as there).
//! 4. Otherwise log in: `/etc/iscsi/initiatorname.iscsi` and `/etc/iscsi/iscsid.conf` (CHAP for
//!    sessions and discovery) are written under the root dir, open-iscsi and multipath-tools are
//!    restarted (on the live system), then `iscsiadm -m discovery -t sendtargets -p <target>`, a
//!    logout (`iscsiadm -m node -u`) when `iscsiadm -m session` shows one, and `iscsiadm -m node -l`.
//! 5. Poll `dmsetup ls` (every 5 s at most, 50 s in all) for a map that is not a partition and was
//!    not among the partitioned ones: `/dev/mapper/<name>`.
//!
//! A partition made on such a map appears as the map `<name>-part1`, made by multipathd; after
//! partitioning, [`wait_for_partition`] restarts the services (live system) and waits for it in
//! `dmsetup ls`, as the Go agent does.
//!
//! The Go agent's guess in step 3 is kept on purpose: it is how a SoftLayer VM's disk comes back
//! after a reboot, and the director mounts one new disk at a time.

use super::options::Waits;
use super::resolve::{poll, Waited};
use super::DiskSettings;
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::exec;
use crate::sync::lock;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
/// How many disks the cache remembers (the oldest is forgotten first).
const CACHE: usize = 10;
/// `dmsetup ls` is never run more often than this while waiting for a map.
const DMSETUP_EVERY: Duration = Duration::from_secs(5);

/// iSCSI lookups for one agent.
pub struct Iscsi {
    dirs: Dirs,
    /// Where the multipath maps' nodes are: `/dev/mapper` under the root dir.
    mapper: PathBuf,
    waits: Waits,
    live: bool,
    cache: Mutex<VecDeque<(String, PathBuf)>>,
}

impl Iscsi {
    /// Lookups writing the iSCSI configuration under the root dir of `dirs`; `live` restarts the
    /// stemcell's services.
    pub fn new(dirs: Dirs, mapper: PathBuf, waits: Waits, live: bool) -> Iscsi {
        Iscsi { dirs, mapper, waits, live, cache: Mutex::new(VecDeque::new()) }
    }

    /// The multipath map of `disk` (module doc); `patient` allows the login and the wait.
    pub fn resolve(&self, disk: &DiskSettings, patient: bool) -> Result<PathBuf, String> {
        let cid = &disk.id;
        check_settings(disk)?;
        if let Some(p) = self.cached(cid) {
            log::info!("disk {cid}: iSCSI map {} (found before)", p.display());
            return Ok(p);
        }
        let partitioned: Vec<String> =
            maps()?.into_iter().filter(|m| m.contains("-part1")).map(|m| base_name(&m).to_string()).collect();
        if partitioned.len() > 2 {
            return Err(format!(
                "disk {cid}: more than 2 partitioned iSCSI disks are attached ({}); cannot tell which one it is",
                partitioned.join(", ")
            ));
        }
        let last = super::last_mounted_cid(&self.dirs)?;
        if last.as_deref().is_none_or(|l| l == cid) {
            if let Some(first) = partitioned.first() {
                let p = self.mapper.join(first);
                log::info!("disk {cid}: the partitioned iSCSI map {} is it", p.display());
                self.remember(cid, &p);
                return Ok(p);
            }
        }
        if !patient {
            return Err(format!("disk {cid}: no iSCSI map is known for it (not logged in yet)"));
        }
        self.connect(disk)?;
        let every = self.waits.poll.max(DMSETUP_EVERY.min(self.waits.iscsi / 10));
        let found = poll(self.waits.iscsi, every, || {
            let fresh: Vec<String> = maps()?
                .into_iter()
                .filter(|m| !m.contains("-part1") && !partitioned.iter().any(|p| p == m))
                .collect();
            Ok(fresh.into_iter().next())
        });
        match found {
            Ok(name) => {
                let p = self.mapper.join(&name);
                log::info!("disk {cid}: iSCSI map {} after the login", p.display());
                self.remember(cid, &p);
                Ok(p)
            }
            Err(Waited::Failed(e)) => Err(format!("disk {cid}: {e}")),
            Err(Waited::TimedOut) => Err(format!(
                "disk {cid}: timed out after {:?} waiting for a new iSCSI map after logging in to {}",
                self.waits.iscsi, disk.iscsi.target
            )),
        }
    }

    fn cached(&self, cid: &str) -> Option<PathBuf> {
        lock(&self.cache).iter().find(|(c, p)| c == cid && p.exists()).map(|(_, p)| p.clone())
    }

    fn remember(&self, cid: &str, path: &Path) {
        let mut c = lock(&self.cache);
        c.retain(|(k, _)| k != cid);
        if c.len() >= CACHE {
            c.pop_front();
        }
        c.push_back((cid.to_string(), path.to_path_buf()));
    }

    /// Step 4 of the module doc.
    fn connect(&self, disk: &DiskSettings) -> Result<(), String> {
        let i = &disk.iscsi;
        let etc = self.dirs.under_root("/etc/iscsi");
        std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
        let name = etc.join("initiatorname.iscsi");
        crate::fsutil::write_atomic(&name, format!("InitiatorName={}\n", i.initiator_name).as_bytes(), 0o644)
            .with_context(|| format!("writing {}", name.display()))?;
        let conf = etc.join("iscsid.conf");
        crate::fsutil::write_atomic(&conf, iscsid_conf(&i.username, &i.password).as_bytes(), 0o600)
            .with_context(|| format!("writing {}", conf.display()))?;
        self.restart_services()?;
        log::info!("iSCSI: discovering targets at {}", i.target);
        iscsiadm(&["-m", "discovery", "-t", "sendtargets", "-p", &i.target])?;
        let sessions = exec::output(Command::new("iscsiadm").args(["-m", "session"]), None, Some(LIMIT))?;
        let logged_in = sessions.stdout.lines().next().is_some_and(is_session_line);
        if sessions.code() != Some(0) && !sessions.stderr.contains("No active sessions") {
            return Err(format!("iscsiadm -m session failed: {}", sessions.stderr.trim()));
        }
        if logged_in {
            log::info!("iSCSI: logging out of the current sessions first");
            iscsiadm(&["-m", "node", "-u"])?;
        }
        log::info!("iSCSI: logging in");
        iscsiadm(&["-m", "node", "-l"])
    }

    /// open-iscsi and multipath-tools pick up new settings and sessions on a restart; only the live
    /// system's services are the agent's to restart.
    fn restart_services(&self) -> Result<(), String> {
        if !self.live {
            log::info!("iSCSI: open-iscsi and multipath-tools not restarted (not the live system)");
            return Ok(());
        }
        for service in ["/etc/init.d/open-iscsi", "/etc/init.d/multipath-tools"] {
            exec::run(Command::new(service).arg("restart"), None, LIMIT)?;
        }
        Ok(())
    }
}

/// After partitioning the multipath map `dev`, restarts the services (live system) and waits, as
/// the Go agent does (20 × 3 s), for multipathd to make `<name>-part1`.
pub fn wait_for_partition(dev: &Path, live: bool, bound: Duration) -> Result<(), String> {
    let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if live {
        for service in ["/etc/init.d/open-iscsi", "/etc/init.d/multipath-tools"] {
            exec::run(Command::new(service).arg("restart"), None, LIMIT)?;
        }
    }
    let want = format!("{name}-part1");
    match poll(bound, Duration::from_millis(500).min(bound), || Ok(maps()?.contains(&want).then_some(()))) {
        Ok(()) => Ok(()),
        Err(Waited::Failed(e)) => Err(e),
        Err(Waited::TimedOut) => Err(format!("partition map {want} did not show up within {bound:?}")),
    }
}

/// Whether `dev` is a multipath map (a `/dev/mapper` name), whose partitions are `<name>-partN`.
pub fn is_map(dev: &Path) -> bool {
    dev.parent().is_some_and(|p| p.ends_with("mapper"))
}

fn check_settings(disk: &DiskSettings) -> Result<(), String> {
    let i = &disk.iscsi;
    for (value, what) in [
        (&i.initiator_name, "InitiatorName"),
        (&i.username, "Username"),
        (&i.password, "Password"),
        (&i.target, "Target"),
    ] {
        if value.is_empty() {
            return Err(format!("disk {}: iSCSI {what} is not set", disk.id));
        }
    }
    Ok(())
}

fn iscsiadm(args: &[&str]) -> Result<(), String> {
    exec::run(Command::new("iscsiadm").args(args), None, LIMIT).map(|_| ())
}

/// `tcp: [N] ...`: a line of `iscsiadm -m session` naming a session.
fn is_session_line(line: &str) -> bool {
    line.strip_prefix("tcp: [")
        .and_then(|r| r.split_once(']'))
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The names `dmsetup ls` prints (first column), none when it says there are none.
fn maps() -> Result<Vec<String>, String> {
    let out = exec::run(Command::new("dmsetup").arg("ls"), None, LIMIT)?;
    Ok(parse_maps(&out))
}

fn parse_maps(out: &str) -> Vec<String> {
    if out.contains("No devices found") {
        return Vec::new();
    }
    out.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

/// The map a partition map belongs to: `<wwid>` of `<wwid>-part1`.
fn base_name(map: &str) -> &str {
    map.split('-').next().unwrap_or(map)
}

/// `iscsid.conf`: CHAP for sessions and discovery, automatic start, and the timeouts and burst
/// sizes SoftLayer's storage wants (the Go agent's values).
fn iscsid_conf(username: &str, password: &str) -> String {
    let mut s = String::from("# Written by the BOSH agent\n");
    for (k, v) in [
        ("node.startup", "automatic"),
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", username),
        ("node.session.auth.password", password),
        ("discovery.sendtargets.auth.authmethod", "CHAP"),
        ("discovery.sendtargets.auth.username", username),
        ("discovery.sendtargets.auth.password", password),
        ("node.session.timeo.replacement_timeout", "120"),
        ("node.conn[0].timeo.login_timeout", "15"),
        ("node.conn[0].timeo.logout_timeout", "15"),
        ("node.conn[0].timeo.noop_out_interval", "10"),
        ("node.conn[0].timeo.noop_out_timeout", "15"),
        ("node.session.iscsi.InitialR2T", "No"),
        ("node.session.iscsi.ImmediateData", "Yes"),
        ("node.session.iscsi.FirstBurstLength", "262144"),
        ("node.session.iscsi.MaxBurstLength", "16776192"),
        ("node.conn[0].iscsi.MaxRecvDataSegmentLength", "65536"),
    ] {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dmsetup_and_iscsiadm_output() {
        let out =
            "3600a09803830447a4f244c4657616f6f\t(253:0)\n3600a09803830447a4f244c4657616f6f-part1\t(253:1)\n";
        let m = parse_maps(out);
        assert_eq!(m.len(), 2);
        assert_eq!(base_name(&m[1]), "3600a09803830447a4f244c4657616f6f");
        assert!(parse_maps("No devices found\n").is_empty());
        assert!(is_session_line("tcp: [3] 10.0.0.1:3260,1 iqn.1992-08.com.netapp:stor (non-flash)"));
        assert!(!is_session_line("tcp: [] x") && !is_session_line("iscsiadm: No active sessions."));
        assert!(is_map(Path::new("/dev/mapper/3600a")) && !is_map(Path::new("/dev/sdc")));
    }

    #[test]
    fn refuses_incomplete_settings_and_writes_chap_for_both_directions() {
        let d = DiskSettings::from_hint(
            "disk-1",
            &serde_json::json!({"iscsi_settings": {"initiator_name": "iqn.x", "username": "u", "target": "t"}}),
        )
        .unwrap();
        assert_eq!(check_settings(&d).unwrap_err(), "disk disk-1: iSCSI Password is not set");
        let conf = iscsid_conf("user1", "secret");
        assert!(conf.contains("node.session.auth.username = user1\n"));
        assert!(conf.contains("discovery.sendtargets.auth.password = secret\n"));
        assert!(conf.contains("node.startup = automatic\n"));
    }
}
