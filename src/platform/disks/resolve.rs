//! Finds the block device of a persistent (or the ephemeral) disk from the director's hint, the way
//! `DevicePathResolutionType` says (see [`Resolution`]):
//!
//! | type | looks for, in order | waits |
//! |---|---|---|
//! | `""` | the hint's path (or its `vdX`/`xvdX` name), a by-id name ending in the hint's `id`, a SCSI address | never |
//! | `virtio` | after `udevadm trigger` and `settle`: by-id names ending in the CID (CIDs of 20+ characters), `<VirtioDevicePrefix>-<CID's first 20 characters>`, the hint's `id`; else the hint's path as `xvdX`, `vdX` or `sdX` | 0.5 s for the names, 30 s for the path |
//! | `scsi` | after writing `- - -` into every `/sys/class/scsi_host/host*/scan`: the hint's `id` (dashes removed) under by-id; else its `volume_id` as the SCSI target `H:0:<id>:0`; else its `lun` under the controller named by `host_device_id`; else its path | 50 s, 15 s for a volume id |
//! | `iscsi` | the hint's path when given, else an iSCSI login and the new multipath map (`iscsi`) | 50 s |
//!
//! Two ways to ask: [`Resolver::resolve`] rescans, logs in and waits (mounting, attaching, booting);
//! [`Resolver::find`] looks once, so `list_disk` and `unmount_disk` answer at once even when a disk
//! the agent knows is gone.
//!
//! Where it looks: udev's `/dev/disk/by-id`, `/dev/mapper` and the SCSI tree of `/sys` are taken
//! under the roots the resolver is given — the root dir's on a VM, a fake tree in tests, since no
//! test can make the kernel grow a SCSI host. Paths in the hint itself are absolute.
//!
//! SCSI rules: the kernel names each SCSI device `H:C:T:L` in `/sys/bus/scsi/devices`. A
//! `volume_id` `N` (vSphere) selects `H:0:N:0`; when several hosts have one, the Go agent's host —
//! that of the last `*:0:0:0` entry holding an `sd*` disk — wins, and if that does not decide it the
//! hint is refused rather than a disk guessed. A `lun` `N` (Azure) selects entries whose last number
//! is `N` whose sysfs path runs through the controller named by `host_device_id`: the VMBus device
//! whose `device_id` file holds that id (the Go agent's rule), or a path component equal to it. A
//! wrong guess here means formatting somebody else's disk, so more than one match is an error.

use super::iscsi::Iscsi;
use super::options::{DiskConfig, Resolution, Waits};
use super::DiskSettings;
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::exec;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Turns disk hints into devices (module doc).
pub struct Resolver {
    kind: Resolution,
    /// The sysfs root: `/sys` on a VM.
    sys: PathBuf,
    /// The devices root for udev's links and the multipath maps: `/dev` on a VM.
    dev: PathBuf,
    virtio_prefix: String,
    waits: Waits,
    /// Whether `udevadm trigger` and `settle` run before a virtio lookup (the live system only).
    udev: bool,
    iscsi: Iscsi,
}

impl Resolver {
    /// A resolver for `config` looking under the root dir; `live` runs udev and iSCSI services.
    pub fn new(dirs: &Dirs, config: &DiskConfig, live: bool) -> Resolver {
        Resolver::with_roots(dirs, config, live, dirs.under_root("/sys"), dirs.under_root("/dev"))
    }

    /// A resolver looking for sysfs under `sys` and udev's links under `dev`.
    pub fn with_roots(dirs: &Dirs, config: &DiskConfig, live: bool, sys: PathBuf, dev: PathBuf) -> Resolver {
        Resolver {
            kind: config.resolution,
            iscsi: Iscsi::new(dirs.clone(), dev.join("mapper"), config.waits, live),
            sys,
            dev,
            virtio_prefix: config.virtio_prefix.clone(),
            waits: config.waits,
            udev: live,
        }
    }

    /// The disk's device: rescans, logs in and waits as the resolution type does.
    pub fn resolve(&self, disk: &DiskSettings) -> Result<PathBuf, String> {
        self.lookup(disk, true)
    }

    /// The disk's device if it is there now: no rescan, no login, no waiting.
    pub fn find(&self, disk: &DiskSettings) -> Result<PathBuf, String> {
        self.lookup(disk, false)
    }

    fn lookup(&self, disk: &DiskSettings, patient: bool) -> Result<PathBuf, String> {
        match self.kind {
            Resolution::Identity => self.identity(disk),
            Resolution::Virtio => self.virtio(disk, patient),
            Resolution::Scsi => self.scsi(disk, patient),
            Resolution::Iscsi if !disk.path.is_empty() => block_device(Path::new(&disk.path), &disk.id),
            Resolution::Iscsi => {
                let path = self.iscsi.resolve(disk, patient)?;
                block_device(&path, &disk.id)
            }
        }
    }

    fn by_id(&self) -> PathBuf {
        self.dev.join("disk/by-id")
    }

    /// The path as given; for hints without one, what this agent has always read from them.
    fn identity(&self, disk: &DiskSettings) -> Result<PathBuf, String> {
        let cid = &disk.id;
        let scsi = !disk.lun.is_empty() || !disk.volume_id.is_empty();
        if !disk.path.is_empty() && (Path::new(&disk.path).exists() || (disk.device_id.is_empty() && !scsi)) {
            let path = Path::new(&disk.path);
            if let Some(renamed) = renamed_device(path, |p| p.exists()) {
                log::info!("disk {cid}: {} is not there; using {}", path.display(), renamed.display());
                return block_device(&renamed, cid);
            }
            return block_device(path, cid);
        }
        if !disk.device_id.is_empty() {
            let names = self.by_id_names(|name| name.ends_with(disk.device_id.as_str()))?;
            let first = names.first().ok_or_else(|| {
                format!(
                    "no device in {} matches id '{}' of disk {cid}",
                    self.by_id().display(),
                    disk.device_id
                )
            })?;
            return block_device(first, cid);
        }
        if scsi {
            let name = scsi_block_name(disk, &self.sys)?;
            return block_device(&self.dev.join(&name), cid);
        }
        if !disk.iscsi.target.is_empty() || !disk.iscsi.initiator_name.is_empty() {
            return Err(format!(
                "resolving disk {cid}: iSCSI settings need DevicePathResolutionType iscsi (or a path hint)"
            ));
        }
        if !disk.host_device_id.is_empty() {
            return Err(format!("disk {cid} names SCSI host {} but no LUN", disk.host_device_id));
        }
        Err(format!("disk {cid} has neither a device path nor an id"))
    }

    /// Sorted by-id entries whose name passes `keep`; a missing directory has none.
    fn by_id_names(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, String> {
        let dir = self.by_id();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("listing {}: {e}", dir.display())),
        };
        let mut names: Vec<PathBuf> =
            entries.flatten().filter(|e| keep(&e.file_name().to_string_lossy())).map(|e| e.path()).collect();
        crate::order::sort(&mut names);
        Ok(names)
    }

    fn virtio(&self, disk: &DiskSettings, patient: bool) -> Result<PathBuf, String> {
        let cid = &disk.id;
        // Only a disk with a name to look for under by-id is worth waking udev for (the ephemeral
        // disk has none: its path is all there is).
        if patient && self.udev && (!cid.is_empty() || !disk.device_id.is_empty()) {
            for args in [&["trigger"][..], &["settle"][..]] {
                if let Err(e) = exec::run(Command::new("udevadm").args(args), None, Duration::from_secs(120))
                {
                    log::info!("udevadm {}: {e}", args.join(" "));
                }
            }
        }
        let short: String = cid.chars().take(20).collect();
        let exact = format!("{}-{short}", self.virtio_prefix);
        let id_hint = disk.device_id.as_str();
        let wait = if patient { self.waits.by_id } else { Duration::ZERO };
        let found = poll(wait, self.waits.poll, || {
            let names = self.by_id_names(|name| {
                (cid.len() >= 20 && name.ends_with(cid.as_str()))
                    || (!short.is_empty() && name == exact)
                    || (!id_hint.is_empty() && name.ends_with(id_hint))
            })?;
            let mut targets: Vec<PathBuf> =
                names.iter().filter_map(|n| std::fs::canonicalize(n).ok()).collect();
            targets.dedup();
            match targets.as_slice() {
                [] => Ok(None),
                [one] => {
                    log::info!("disk {cid}: found {} under {}", one.display(), self.by_id().display());
                    Ok(Some(one.clone()))
                }
                many => Err(format!(
                    "disk {cid} matches several devices under {}: {}",
                    self.by_id().display(),
                    many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )),
            }
        });
        match found {
            Ok(dev) => return block_device(&dev, cid),
            Err(Waited::Failed(e)) => return Err(e),
            Err(Waited::TimedOut) => {}
        }
        if disk.path.is_empty() {
            return Err(format!(
                "disk {cid}: no device under {} names it and the hint has no path",
                self.by_id().display()
            ));
        }
        let path = PathBuf::from(&disk.path);
        let candidates = mapped_names(&path);
        let wait = if patient { self.waits.mapped_path } else { Duration::ZERO };
        match poll(wait, self.waits.poll, || Ok(candidates.iter().find(|p| p.exists()).cloned())) {
            Ok(p) => block_device(&p, cid),
            Err(Waited::Failed(e)) => Err(e),
            Err(Waited::TimedOut) => Err(format!(
                "timed out after {wait:?} waiting for disk {cid} at {}",
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
            )),
        }
    }

    fn scsi(&self, disk: &DiskSettings, patient: bool) -> Result<PathBuf, String> {
        let cid = &disk.id;
        let has_lun = !disk.lun.is_empty() && !disk.host_device_id.is_empty();
        if disk.device_id.is_empty() && disk.volume_id.is_empty() && !has_lun {
            if !disk.path.is_empty() {
                return self.identity(disk);
            }
            return Err(format!(
                "disk {cid}: neither an id, a volume id nor a LUN with its host device id is given"
            ));
        }
        if patient {
            rescan_scsi_hosts(&self.sys);
        }
        let (wait, what) = if !disk.device_id.is_empty() {
            (self.waits.scsi, format!("a device with id {}", disk.device_id))
        } else if !disk.volume_id.is_empty() {
            (self.waits.scsi_volume, format!("SCSI volume {}", disk.volume_id))
        } else {
            (self.waits.scsi, format!("LUN {} under host {}", disk.lun, disk.host_device_id))
        };
        let wait = if patient { wait } else { Duration::ZERO };
        let found = poll(wait, self.waits.poll, || {
            if !disk.device_id.is_empty() {
                let id = disk.device_id.replace('-', "");
                let names = self.by_id_names(|name| name.ends_with(id.as_str()))?;
                return Ok(names.into_iter().find(|n| n.exists()));
            }
            let d = if disk.device_id.is_empty() && !disk.volume_id.is_empty() {
                DiskSettings { lun: String::new(), ..disk.clone() }
            } else {
                DiskSettings { volume_id: String::new(), ..disk.clone() }
            };
            match scsi_lookup(&d, &self.sys)? {
                Some(name) => {
                    let node = self.dev.join(&name);
                    Ok(node.exists().then_some(node))
                }
                None => Ok(None),
            }
        });
        match found {
            Ok(p) => block_device(&p, cid),
            Err(Waited::Failed(e)) => Err(format!("disk {cid}: {e}")),
            Err(Waited::TimedOut) => {
                Err(format!("timed out after {wait:?} waiting for disk {cid}: no {what}"))
            }
        }
    }
}

/// How a bounded wait ended without a result.
#[derive(Debug)]
pub enum Waited {
    /// The look itself failed (an ambiguous match, an unreadable directory): waiting cannot help.
    Failed(String),
    /// Nothing turned up within the bound.
    TimedOut,
}

/// Calls `look` until it finds something, fails, or `bound` has passed (at least once), sleeping
/// `every` between looks.
pub fn poll<T>(
    bound: Duration,
    every: Duration,
    mut look: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, Waited> {
    let deadline = Instant::now() + bound;
    loop {
        match look() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(Waited::Failed(e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Waited::TimedOut);
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// Asks every SCSI host under `sys` to scan for new devices (`- - -`: every channel, target and
/// LUN), as vSphere and Azure attach disks without telling the guest. Failures are logged: a host
/// that cannot scan does not stop a disk on another from being found.
pub fn rescan_scsi_hosts(sys: &Path) -> usize {
    let dir = sys.join("class/scsi_host");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        log::info!("no SCSI hosts under {}: nothing to rescan", dir.display());
        return 0;
    };
    let mut scanned = 0;
    let mut hosts: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    crate::order::sort(&mut hosts);
    for host in hosts {
        let scan = host.join("scan");
        match std::fs::OpenOptions::new().write(true).open(&scan).and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"- - -")
        }) {
            Ok(()) => scanned += 1,
            Err(e) => log::warn!("rescanning SCSI host {}: {e}", scan.display()),
        }
    }
    log::info!("rescanned {scanned} SCSI hosts under {}", dir.display());
    scanned
}

/// The canonical node of a block device, checked to be one.
pub fn block_device(path: &Path, cid: &str) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("device {} of disk {cid} is not there", path.display()))?;
    let meta = std::fs::metadata(&real).with_context(|| format!("reading {}", real.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{} (disk {cid}) is not a block device", real.display()));
    }
    // A multipath map keeps its /dev/mapper name: its partitions are the maps `<name>-partN`, which
    // only that name leads to.
    if path.parent().is_some_and(|p| p.ends_with("mapper")) {
        return Ok(path.to_path_buf());
    }
    Ok(real)
}

/// The names a guest driver gives a disk the CPI calls `/dev/sdX`, in the Go agent's order
/// (`xvdX`, `vdX`, `sdX`); any other path is itself.
fn mapped_names(path: &Path) -> Vec<PathBuf> {
    let Some(rest) = path.to_str().and_then(|p| p.strip_prefix("/dev/sd")) else {
        return vec![path.to_path_buf()];
    };
    ["xvd", "vd", "sd"].iter().map(|p| PathBuf::from(format!("/dev/{p}{rest}"))).collect()
}

/// The same disk under the name another disk driver gives it, when `path` itself is missing: CPIs
/// name disks `/dev/sdX` while a KVM guest calls them `/dev/vdX` and a Xen guest `/dev/xvdX` (the Go
/// agent's virtio resolver maps them alike). Only a name that exists is returned; letters and
/// partition digits are kept.
fn renamed_device(path: &Path, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if exists(path) {
        return None;
    }
    let name = path.strip_prefix("/dev").ok()?.to_str()?;
    let rest = ["xvd", "sd", "vd"].iter().find_map(|p| name.strip_prefix(p))?;
    let shape = rest.starts_with(|c: char| c.is_ascii_lowercase())
        && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !shape {
        return None;
    }
    ["vd", "xvd", "sd"]
        .iter()
        .map(|p| PathBuf::from(format!("/dev/{p}{rest}")))
        .find(|p| p != path && exists(p))
}

/// The kernel's block device name (`sdc`) of the SCSI disk `disk` names under the sysfs root
/// `sys`; an error when there is none (see the module doc).
pub fn scsi_block_name(disk: &DiskSettings, sys: &Path) -> Result<String, String> {
    let (unit, what) = unit_of(disk);
    scsi_lookup(disk, sys)?.ok_or_else(|| {
        let under = if disk.host_device_id.is_empty() {
            String::new()
        } else {
            format!(" under host {}", disk.host_device_id)
        };
        format!(
            "no SCSI disk with {what} {unit}{under} in {} (disk {})",
            sys.join("bus/scsi/devices").display(),
            disk.id
        )
    })
}

fn unit_of(disk: &DiskSettings) -> (&str, &'static str) {
    if disk.lun.is_empty() {
        (&disk.volume_id, "volume id")
    } else {
        (&disk.lun, "LUN")
    }
}

/// The names a SCSI host device id may appear under in a device's sysfs path: itself (lower case,
/// without braces) and every VMBus device whose `device_id` file holds it.
fn host_names(host_device_id: &str, sys: &Path) -> Vec<String> {
    let want = host_device_id.trim_matches(|c| c == '{' || c == '}').to_ascii_lowercase();
    let mut names = vec![want.clone()];
    if let Ok(entries) = std::fs::read_dir(sys.join("bus/vmbus/devices")) {
        for e in entries.flatten() {
            let id = std::fs::read_to_string(e.path().join("device_id")).unwrap_or_default();
            if id.trim().trim_matches(|c| c == '{' || c == '}').eq_ignore_ascii_case(&want) {
                names.push(e.file_name().to_string_lossy().to_ascii_lowercase());
            }
        }
    }
    names
}

/// [`scsi_block_name`] without the error for "not there (yet)": `Ok(None)`.
fn scsi_lookup(disk: &DiskSettings, sys: &Path) -> Result<Option<String>, String> {
    let cid = &disk.id;
    let (unit, what) = unit_of(disk);
    if unit.is_empty() || !unit.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} '{unit}' of disk {cid} is not a SCSI unit number"));
    }
    let bus = sys.join("bus/scsi/devices");
    let entries = match std::fs::read_dir(&bus) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("listing {}: {e}", bus.display())),
    };
    let hosts =
        if disk.host_device_id.is_empty() { Vec::new() } else { host_names(&disk.host_device_id, sys) };
    let same = |a: &str, b: &str| a.trim_start_matches('0') == b.trim_start_matches('0');
    let mut found = Vec::new();
    let mut os_disks = Vec::new();
    for entry in entries.flatten() {
        let addr = entry.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = addr.split(':').collect();
        let numeric =
            parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !numeric {
            continue;
        }
        let blocks: Vec<String> = std::fs::read_dir(entry.path().join("block"))
            .map(|rd| rd.flatten().map(|b| b.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if same(parts[1], "0")
            && same(parts[2], "0")
            && same(parts[3], "0")
            && blocks.iter().any(|b| b.starts_with("sd"))
        {
            os_disks.push(addr.clone());
        }
        // A vSphere volume id is the SCSI target (`H:0:<id>:0`, as the Ruby and Go agents look it
        // up); an Azure LUN is the last number, under the controller named by the host device id.
        let matches = if disk.lun.is_empty() {
            same(parts[1], "0") && same(parts[2], unit) && same(parts[3], "0")
        } else {
            same(parts[3], unit)
        };
        if !matches {
            continue;
        }
        if !hosts.is_empty() {
            let real = std::fs::canonicalize(entry.path()).unwrap_or_default();
            if !real.iter().any(|c| hosts.contains(&c.to_string_lossy().to_ascii_lowercase())) {
                continue;
            }
        }
        for b in blocks {
            found.push((addr.clone(), parts[0].to_string(), b));
        }
    }
    crate::order::sort(&mut found);
    if found.len() > 1 && disk.lun.is_empty() {
        // The Go agent's host: that of the last `*:0:0:0` entry holding an `sd*` disk.
        crate::order::sort(&mut os_disks);
        if let Some(host) = os_disks.last().and_then(|a| a.split(':').next()) {
            let on_host: Vec<_> = found.iter().filter(|(_, h, _)| h == host).cloned().collect();
            if on_host.len() == 1 {
                found = on_host;
            }
        }
    }
    let under = if disk.host_device_id.is_empty() {
        String::new()
    } else {
        format!(" under host {}", disk.host_device_id)
    };
    match found.as_slice() {
        [] => Ok(None),
        [(_, _, name)] => Ok(Some(name.clone())),
        many => Err(format!(
            "{what} {unit}{under} matches several SCSI disks ({}); refusing to guess for disk {cid}",
            many.iter().map(|(a, _, n)| format!("{a}={n}")).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hint(v: serde_json::Value) -> DiskSettings {
        DiskSettings::from_hint("d", &v).unwrap()
    }

    fn resolver(root: &Path, kind: Resolution) -> Resolver {
        let dirs = Dirs::new(root.join("base"), root);
        let waits = Waits {
            by_id: Duration::from_millis(50),
            mapped_path: Duration::from_millis(50),
            scsi: Duration::from_millis(300),
            scsi_volume: Duration::from_millis(300),
            iscsi: Duration::from_millis(50),
            poll: Duration::from_millis(10),
        };
        Resolver::new(&dirs, &DiskConfig { resolution: kind, waits, ..DiskConfig::default() }, false)
    }

    /// A fake udev `by-id` directory under `root`.
    fn by_id_dir(root: &Path) -> PathBuf {
        let dir = root.join("dev/disk/by-id");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn resolves_paths_and_by_id_links_and_refuses_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let r = resolver(root.path(), Resolution::Identity);
        let by_id = by_id_dir(root.path());
        std::os::unix::fs::symlink("/dev/null", by_id.join("virtio-abc123")).unwrap();
        // /dev/null is a character device: found, then rejected for what it is.
        assert!(r.resolve(&hint(json!({"id": "abc123"}))).unwrap_err().contains("not a block device"));
        assert!(r.resolve(&hint(json!({"id": "zzz"}))).unwrap_err().contains("matches id 'zzz'"));
        assert!(r.resolve(&hint(json!("/dev/does-not-exist"))).unwrap_err().contains("is not there"));
        let d = hint(json!({"id": "x", "iscsi_settings": {"target": "t"}}));
        assert!(r.resolve(&d).unwrap_err().contains("matches id 'x'"));
        let d = hint(json!({"iscsi_settings": {"target": "t"}}));
        assert!(r.resolve(&d).unwrap_err().contains("need DevicePathResolutionType iscsi"));
    }

    #[test]
    fn maps_cpi_disk_names_to_the_guest_driver_names_that_exist() {
        let present = ["/dev/vdb", "/dev/vdb1", "/dev/xvdc"];
        let exists = |p: &Path| present.iter().any(|q| Path::new(q) == p);
        let renamed = |p: &str| renamed_device(Path::new(p), exists);
        assert_eq!(renamed("/dev/sdb"), Some(PathBuf::from("/dev/vdb")));
        assert_eq!(renamed("/dev/sdb1"), Some(PathBuf::from("/dev/vdb1")));
        assert_eq!(renamed("/dev/sdc"), Some(PathBuf::from("/dev/xvdc")));
        assert_eq!(renamed("/dev/vdb"), None, "an existing path is used as is");
        assert_eq!(renamed("/dev/sdd"), None, "no such disk under any name");
        assert_eq!(renamed("/dev/sd"), None);
        assert_eq!(renamed("/dev/sdb/../vdb"), None);
        assert_eq!(renamed("/dev/nvme0n1"), None);
        let names: Vec<String> =
            mapped_names(Path::new("/dev/sdc")).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["/dev/xvdc", "/dev/vdc", "/dev/sdc"]);
        assert_eq!(mapped_names(Path::new("/dev/nvme1n1")), vec![PathBuf::from("/dev/nvme1n1")]);
    }

    #[test]
    fn virtio_finds_the_cid_under_by_id_and_refuses_two_devices() {
        let root = tempfile::tempdir().unwrap();
        let r = resolver(root.path(), Resolution::Virtio);
        let by_id = by_id_dir(root.path());
        let cid = "vol-0123456789abcdefghij-long";
        let d = DiskSettings { id: cid.into(), ..DiskSettings::default() };
        let e = r.resolve(&d).unwrap_err();
        assert!(e.contains("no device under") && e.contains("no path"), "{e}");
        // The Go agent's glob `*<CID>`: GCE's google-<name>.
        std::os::unix::fs::symlink("/dev/null", by_id.join(format!("google-{cid}"))).unwrap();
        assert!(
            r.resolve(&d).unwrap_err().contains("/dev/null (disk vol-0123"),
            "found, then not a block device"
        );
        // A second device naming it: refused.
        std::os::unix::fs::symlink("/dev/zero", by_id.join(format!("scsi-0QEMU_{cid}"))).unwrap();
        assert!(r.resolve(&d).unwrap_err().contains("matches several devices"));
        // KVM truncates virtio serials to 20 characters: only `<prefix>-<first 20>` names it.
        let kvm =
            DiskSettings { id: "11112222-3333-4444-5555-666677778888".into(), ..DiskSettings::default() };
        std::os::unix::fs::symlink("/dev/full", by_id.join("virtio-11112222-3333-4444-5")).unwrap();
        assert!(r.resolve(&kvm).unwrap_err().contains("/dev/full"));
        // Not named there: the hint's path under the names the driver gives it, waited for.
        let missing =
            DiskSettings { id: "short".into(), path: "/dev/sdzz".into(), ..DiskSettings::default() };
        let e = r.resolve(&missing).unwrap_err();
        assert!(e.contains("timed out") && e.contains("/dev/xvdzz or /dev/vdzz or /dev/sdzz"), "{e}");
    }

    /// A fake sysfs: `devices/<path>/<addr>/block/<name>` plus the bus link, as the kernel lays it out.
    fn scsi_device(root: &Path, parent: &str, addr: &str, name: &str) {
        let real = root.join("sys/devices").join(parent).join(addr);
        std::fs::create_dir_all(real.join("block").join(name)).unwrap();
        let bus = root.join("sys/bus/scsi/devices");
        std::fs::create_dir_all(&bus).unwrap();
        std::os::unix::fs::symlink(&real, bus.join(addr)).unwrap();
    }

    #[test]
    fn resolves_scsi_volume_ids_and_luns_in_a_fake_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        // No bus at all: nothing found, not an error.
        assert!(scsi_block_name(&hint(json!({"volume_id": "3"})), &sys)
            .unwrap_err()
            .contains("no SCSI disk"));
        scsi_device(root.path(), "pci0/host0/target0:0:0", "0:0:0:0", "sda");
        scsi_device(root.path(), "pci0/host2/target2:0:3", "2:0:3:0", "sdd");
        scsi_device(root.path(), "pci0/host2/target2:0:0", "2:0:0:3", "sdc");
        scsi_device(
            root.path(),
            "vmbus/f8b3781b-1e82-4818-a1c3-63d806ec15bb/host3/target3:0:0",
            "3:0:0:1",
            "sde",
        );
        scsi_device(
            root.path(),
            "vmbus/00000000-0000-8899-0000-000000000000/host5/target5:0:0",
            "5:0:0:1",
            "sdf",
        );
        std::fs::create_dir_all(root.path().join("sys/bus/scsi/devices/host2")).unwrap();
        // vSphere: the volume id is the target number (2:0:3:0), not the LUN (2:0:0:3).
        assert_eq!(scsi_block_name(&hint(json!({"volume_id": "3"})), &sys).unwrap(), "sdd");
        assert_eq!(scsi_block_name(&hint(json!({"volume_id": 3})), &sys).unwrap(), "sdd");
        let d = hint(json!({"lun": "1", "host_device_id": "{F8B3781B-1E82-4818-A1C3-63D806EC15BB}"}));
        assert_eq!(scsi_block_name(&d, &sys).unwrap(), "sde");
        let e = scsi_block_name(&hint(json!({"lun": "1"})), &sys).unwrap_err();
        assert!(e.contains("several") && e.contains("3:0:0:1=sde") && e.contains("5:0:0:1=sdf"), "{e}");
        let e = scsi_block_name(&hint(json!({"lun": "7", "host_device_id": "h"})), &sys).unwrap_err();
        assert!(e.contains("no SCSI disk with LUN 7 under host h"), "{e}");
        assert!(scsi_block_name(&hint(json!({"lun": "*"})), &sys).unwrap_err().contains("not a SCSI unit"));
        // The Go agent's rule: the VMBus device whose device_id file holds the host device id.
        let vmbus = root.path().join("sys/bus/vmbus/devices/00000000-0000-8899-0000-000000000000");
        std::fs::create_dir_all(&vmbus).unwrap();
        std::fs::write(vmbus.join("device_id"), "{aaaaaaaa-0000-0000-0000-000000000001}\n").unwrap();
        let d = hint(json!({"lun": "1", "host_device_id": "{AAAAAAAA-0000-0000-0000-000000000001}"}));
        assert_eq!(scsi_block_name(&d, &sys).unwrap(), "sdf");
        // Two hosts with target 1: the Go agent's host (the last with an sd* disk at *:0:0:0) wins.
        scsi_device(root.path(), "pci0/host2/target2:0:1", "2:0:1:0", "sdg");
        scsi_device(root.path(), "pci0/host0/target0:0:1", "0:0:1:0", "sdh");
        assert_eq!(scsi_block_name(&hint(json!({"volume_id": "1"})), &sys).unwrap(), "sdh");
        scsi_device(root.path(), "pci0/host2/target2:0:0", "2:0:0:0", "sdb");
        assert_eq!(scsi_block_name(&hint(json!({"volume_id": "1"})), &sys).unwrap(), "sdg");
    }

    #[test]
    fn scsi_rescans_every_host_then_waits_for_the_device() {
        let root = tempfile::tempdir().unwrap();
        let r = resolver(root.path(), Resolution::Scsi);
        for h in ["host0", "host2"] {
            let dir = root.path().join("sys/class/scsi_host").join(h);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("scan"), "").unwrap();
        }
        let d = hint(json!({"volume_id": "4"}));
        // `find` never rescans and never waits.
        assert!(r.find(&d).unwrap_err().contains("timed out after 0ns"));
        assert_eq!(std::fs::read_to_string(root.path().join("sys/class/scsi_host/host0/scan")).unwrap(), "");
        let started = Instant::now();
        let e = r.resolve(&d).unwrap_err();
        assert!(e.contains("timed out after 300ms") && e.contains("no SCSI volume 4"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        for h in ["host0", "host2"] {
            let scan = root.path().join("sys/class/scsi_host").join(h).join("scan");
            assert_eq!(std::fs::read_to_string(scan).unwrap(), "- - -", "{h} not rescanned");
        }
        // Found: the node under the dev root (a character device here, so refused for what it is).
        scsi_device(root.path(), "pci0/host2/target2:0:4", "2:0:4:0", "sdx");
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::os::unix::fs::symlink("/dev/null", root.path().join("dev/sdx")).unwrap();
        assert!(r.resolve(&d).unwrap_err().contains("/dev/null (disk d) is not a block device"));
        // A device id: by-id, dashes removed.
        let by_id = by_id_dir(root.path());
        std::os::unix::fs::symlink("/dev/zero", by_id.join("scsi-36000c29abcdef")).unwrap();
        assert!(r.resolve(&hint(json!({"id": "6000c29a-bcdef"}))).unwrap_err().contains("/dev/zero"));
        let e = r.resolve(&hint(json!({"lun": "2"}))).unwrap_err();
        assert!(e.contains("neither an id, a volume id nor a LUN"), "{e}");
    }

    #[test]
    fn polls_until_found_failed_or_timed_out() {
        let mut n = 0;
        let r = poll(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            Ok((n == 3).then_some(n))
        });
        assert_eq!(r.unwrap(), 3);
        assert!(matches!(poll::<()>(Duration::ZERO, Duration::ZERO, || Ok(None)), Err(Waited::TimedOut)));
        assert!(matches!(
            poll::<()>(Duration::from_secs(5), Duration::ZERO, || Err("x".into())),
            Err(Waited::Failed(_))
        ));
    }
}
