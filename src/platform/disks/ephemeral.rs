//! Swap and `data` at boot (steps 8–10 of the Go agent's `agent/bootstrap.go`): raw ephemeral disks,
//! the ephemeral disk — or, without one, the root disk's free space — and the root partition's
//! growth. All of it is skipped with `SkipDiskSetup` (warden), where `data` is a directory.
//!
//! Where swap and data go:
//!
//! | the settings' ephemeral disk | `CreatePartitionIfNoEphemeralDisk` | swap and data |
//! |---|---|---|
//! | named and found | any | on it (below) |
//! | none named, or named and not found | on | after the root partition (`root`); with less than 1 GiB free there, nowhere: data stays a directory |
//! | named and not found | off | none: the boot fails with the Go agent's "No ephemeral disk found, cannot use root partition as ephemeral disk" |
//! | none named | off | none: data stays a directory on the root filesystem (logged) |
//!
//! The ephemeral disk's layout (`PartitionerType`, see [`Layout`]): swap of `swap_size` MiB (0: no
//! swap partition; unset: min(RAM, disk/2)), then data over the rest, from 1 MiB on 1 MiB
//! boundaries:
//!
//! | layout | table | this agent's when |
//! |---|---|---|
//! | `parted`, `""` | GPT, partitions named `bosh-partition-<agent id>-0`, `-1` (the prefix cut to 32 characters) | as many partitions as wanted, each name starting with the prefix |
//! | `sfdisk` | msdos, types 82 (swap) and 83 | as many partitions as wanted, those types, sizes within 100 MiB |
//!
//! A disk that is this agent's is used as it is: a partition already holding swap (or ext4/xfs for
//! data) is not formatted again, so data survives an agent restart or a reboot. Anything else — a
//! blank disk, another agent's layout, another VM's filesystem, a whole-disk filesystem — is
//! repartitioned, as the Go agent repartitions it, unless something on it is mounted or swapped on
//! (then the boot fails naming it). The order never leaves it half set up: every signature on the
//! disk is wiped, the first and last MiB of each new partition zeroed, and only then the new table
//! written; if the agent stops before the table is written, the next boot repartitions, after it,
//! the next boot finds its own partitions and formats those that are still blank. (The Go agent
//! leaves the partitions' old contents alone, so a foreign filesystem that happened to start where
//! the data partition does was mounted as data; zeroing the edges rules that out.)
//!
//! Raw ephemeral disks (`disks.raw_ephemeral`, instance storage handed to jobs unformatted): each
//! gets a GPT with one partition `raw-ephemeral-<i>` over the whole disk, unless it already has a
//! GPT with such a partition.

use super::mount;
use super::options::{DiskConfig, Layout};
use super::prepare::{self, partition_path_n, probe, size_of, value};
use super::resolve::Resolver;
use super::root;
use super::table::{self, Label, NewPart, Table, MIB};
use super::DiskSettings;
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::exec;
use crate::owner;
use crate::settings::Effective;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOOL_LIMIT: Duration = Duration::from_secs(600);
/// `data` as a plain directory on the root filesystem: as open as mkfs leaves a disk's root, so
/// jobs running as vcap reach their packages through it.
const DATA_DIR_MODE: u32 = 0o755;
/// The data partition must get at least this much.
const MIN_DATA: u64 = 8 * MIB;
/// A partition of the msdos layout within this of its wanted size is taken as made by this agent
/// (the Go agent's sfdisk rule).
const DOS_DELTA: u64 = 100 * MIB;

/// The partitions of a prepared ephemeral disk (or of the root disk's free space).
#[derive(Debug, PartialEq)]
pub struct Ephemeral {
    /// The swap partition, when the layout has one.
    pub swap: Option<PathBuf>,
    /// The partition to mount on `data`.
    pub data: PathBuf,
}

/// The sizes of swap (0: none) and data, whole MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Swap in bytes.
    pub swap: u64,
    /// Data in bytes.
    pub data: u64,
}

impl Plan {
    /// Splits `space` bytes: swap of `setting` MiB (`env.bosh.swap_size`; 0 means no swap) when set,
    /// else the Go agent's min(RAM, space/2); data the rest. Fails when the swap would leave data no
    /// room, rather than making a data filesystem too small to hold anything.
    pub fn new(setting: Option<u64>, ram: u64, space: u64) -> Result<Plan, String> {
        let swap = match setting {
            Some(mib) => mib.saturating_mul(MIB),
            None => table::round_down(ram.min(space / 2), MIB),
        };
        let data = table::round_down(space.saturating_sub(swap), MIB);
        if data < MIN_DATA || swap >= space {
            return Err(format!(
                "a swap partition of {} MiB does not fit {} MiB with room for data",
                swap / MIB,
                space / MIB
            ));
        }
        Ok(Plan { swap, data })
    }

    /// Each partition's size and sfdisk type, in order.
    pub fn sizes(&self) -> Vec<(u64, &'static str)> {
        let mut v = Vec::new();
        if self.swap > 0 {
            v.push((self.swap, "S"));
        }
        v.push((self.data, "L"));
        v
    }

    /// "swap of N MiB and data of M MiB", for logs and errors.
    pub fn describe(&self) -> String {
        if self.swap == 0 {
            format!("data of {} MiB (no swap)", self.data / MIB)
        } else {
            format!("swap of {} MiB and data of {} MiB", self.swap / MIB, self.data / MIB)
        }
    }
}

/// Total RAM in bytes from `/proc/meminfo`; the default swap size depends on it.
pub fn total_ram() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no MemTotal in /proc/meminfo".to_string())
}

/// The GPT name prefix of this agent's partitions: `bosh-partition-<agent id>`, cut to 32
/// characters when longer than 33 so `-<n>` still fits GPT's name field, as the Go agent cuts it.
pub fn label_prefix(agent_id: &str) -> String {
    let prefix = format!("bosh-partition-{agent_id}");
    if prefix.len() > 33 {
        prefix.chars().take(32).collect()
    } else {
        prefix
    }
}

/// Whether the table on a disk of `size` bytes is the `layout` this agent makes for `plan`.
pub fn is_ours(layout: Layout, t: &Table, plan: &Plan, prefix: &str, size: u64) -> bool {
    let wanted = plan.sizes();
    let mut parts: Vec<_> = t.parts.iter().collect();
    crate::order::sort_by_key(&mut parts, |p| p.number);
    if parts.len() != wanted.len() {
        return false;
    }
    match layout {
        Layout::Gpt => t.label == Label::Gpt && parts.iter().all(|p| p.name.starts_with(prefix)),
        Layout::Dos => {
            let mut rest = size;
            t.label == Label::Dos
                && parts.iter().zip(&wanted).enumerate().all(|(i, (p, (want, kind)))| {
                    let want = if i + 1 == wanted.len() { rest } else { *want };
                    rest = rest.saturating_sub(want);
                    let code = if *kind == "S" { "82" } else { "83" };
                    p.kind == code && p.size.abs_diff(want) <= DOS_DELTA
                })
        }
    }
}

/// The new partitions of `layout` for `plan`: from 1 MiB, swap first, data to the end.
fn new_parts(layout: Layout, plan: &Plan, prefix: &str) -> Vec<NewPart> {
    let wanted = plan.sizes();
    let mut start = MIB;
    let mut parts = Vec::new();
    for (i, (size, kind)) in wanted.iter().enumerate() {
        let last = i + 1 == wanted.len();
        let name = if layout == Layout::Gpt { format!("{prefix}-{i}") } else { String::new() };
        parts.push(NewPart { start, size: (!last).then_some(*size), kind, name });
        start += size;
    }
    parts
}

/// Lays out the ephemeral disk `dev` for `plan` unless it already is this agent's (module doc), and
/// returns its swap and data partitions (not yet formatted).
pub fn prepare_disk(dev: &Path, layout: Layout, plan: &Plan, prefix: &str) -> Result<Ephemeral, String> {
    let d = dev.display();
    let size = size_of(dev)?;
    let t = table::read(dev)?;
    let wanted = plan.sizes().len();
    if t.as_ref().is_some_and(|t| is_ours(layout, t, plan, prefix, size)) {
        log::info!("ephemeral disk {d} is already partitioned by this agent: keeping it");
    } else {
        let uses = mount::in_use(dev)?;
        if !uses.is_empty() {
            return Err(format!(
                "ephemeral disk {d} is not laid out by this agent but is in use ({}); not repartitioning it",
                uses.join(", ")
            ));
        }
        let found = match &t {
            Some(t) => format!("a {:?} table with {} partitions", t.label, t.parts.len()).to_lowercase(),
            None => match value(&probe(dev)?, "TYPE") {
                Some(fs) => format!("a {fs} filesystem on the whole device"),
                None => "no partition table".to_string(),
            },
        };
        log::info!("ephemeral disk {d} holds {found}: partitioning it for {}", plan.describe());
        let parts = new_parts(layout, plan, prefix);
        table::wipe_signatures(dev)?;
        let usable_end = size - MIB;
        for p in &parts {
            let len = p.size.unwrap_or(usable_end.saturating_sub(p.start));
            table::zero_edges_of(dev, p.start, len)?;
        }
        let label = if layout == Layout::Gpt { Label::Gpt } else { Label::Dos };
        table::write_new(dev, label, &parts)?;
    }
    let count = prepare::sync_partitions(dev)?;
    if count < wanted {
        return Err(format!("{d} shows {count} partitions, expected {wanted}"));
    }
    let swap = (wanted == 2).then(|| partition_path_n(dev, 1));
    Ok(Ephemeral { swap, data: partition_path_n(dev, wanted) })
}

/// `mkswap` on `part` unless it already holds swap.
pub fn format_swap(part: &Path) -> Result<(), String> {
    if value(&probe(part)?, "TYPE") == Some("swap") {
        return Ok(());
    }
    log::info!("making swap on {}", part.display());
    exec::run(Command::new("mkswap").arg(part), None, TOOL_LIMIT).map(|_| ())
}

/// An ext4 filesystem on `part` unless it already holds ext4 or xfs.
pub fn format_data(part: &Path) -> Result<(), String> {
    match value(&probe(part)?, "TYPE") {
        Some("ext4" | "xfs") => Ok(()),
        _ => prepare::format(part, "ext4"),
    }
}

/// Whether `part` is in `/proc/swaps`, compared by device number (the same partition can have
/// several names).
pub fn swap_active(part: &Path) -> bool {
    let Ok(want) = std::fs::metadata(part).map(|m| m.rdev()) else { return false };
    let text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).any(|name| {
        let name = name.replace("\\040", " ");
        std::fs::metadata(name).is_ok_and(|m| m.rdev() == want)
    })
}

/// Turns on swap on `part` unless it already is on (a restarted agent finds it on).
pub fn swapon(part: &Path) -> Result<(), String> {
    if swap_active(part) {
        log::info!("swap on {} is already active", part.display());
        return Ok(());
    }
    exec::run(Command::new("swapon").arg(part), None, TOOL_LIMIT).map(|_| ())
}

/// Mounts `part` on `data` unless it already is; refuses to hide another filesystem there. The
/// mount point is made 0750, as the Go agent makes it; the disk's own root keeps the mode mkfs gave
/// it (0755), which jobs running as vcap need to reach their packages.
fn mount_data(part: &Path, data: &Path) -> Result<(), String> {
    let number = mount::device_number(part)?;
    match mount::device_at(&mount::mounts()?, data) {
        Some(n) if n == number => log::info!("{} is already mounted on {}", part.display(), data.display()),
        Some(n) => {
            return Err(format!(
                "{} already has another filesystem (device {}:{}) mounted; not mounting {} over it",
                data.display(),
                n.0,
                n.1,
                part.display()
            ))
        }
        None => {
            owner::ensure_dir(data, 0o750)?;
            mount::mount(part, data, &[])?;
            log::info!("mounted {} on {}", part.display(), data.display());
        }
    }
    Ok(())
}

fn is_none(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Boot steps 8–10 (module doc). `live` turns swap on (a scratch root in tests leaves the host's
/// swap alone) and restarts services.
pub fn setup(
    dirs: &Dirs,
    settings: &Effective,
    config: &DiskConfig,
    resolver: &Resolver,
    live: bool,
) -> Result<(), String> {
    let data = dirs.data();
    if config.skip_setup {
        log::info!("SkipDiskSetup: no disk setup; {} is a directory", data.display());
        return owner::ensure_dir(&data, DATA_DIR_MODE);
    }
    let s = &settings.settings;
    raw_ephemeral(&s.disks.raw_ephemeral, resolver)?;
    let eph = &s.disks.ephemeral;
    let named = !is_none(eph);
    let device = if named {
        let disk = DiskSettings::from_hint("", eph)?;
        resolver.resolve(&disk).map_err(|e| log::warn!("ephemeral disk {eph} not found: {e}")).ok()
    } else {
        None
    };
    let ram = total_ram()?;
    let mut on_root = false;
    let parts = match device {
        Some(dev) => {
            let plan = Plan::new(s.env.bosh.swap_size, ram, size_of(&dev)?)?;
            Some(prepare_disk(&dev, config.layout, &plan, &label_prefix(&s.agent_id))?)
        }
        None if config.root_partitions => match root::find(&dirs.root) {
            Err(why) => {
                log::warn!("no ephemeral disk, and no root disk to put swap and data on ({why}): data stays on the root filesystem");
                None
            }
            Ok(r) => {
                let space = root::free_space(&r)?;
                if space < root::MIN_SPACE {
                    log::warn!(
                        "no ephemeral disk, and {} MiB free after the root partition is less than 1 GiB: no swap, \
                         data stays on the root filesystem",
                        space / MIB
                    );
                    None
                } else {
                    on_root = true;
                    Some(root::prepare(&r, &Plan::new(s.env.bosh.swap_size, ram, space)?)?)
                }
            }
        },
        None if named => {
            return Err("No ephemeral disk found, cannot use root partition as ephemeral disk".to_string())
        }
        None => {
            log::warn!("the settings name no ephemeral disk: data stays on the root filesystem");
            None
        }
    };
    if let Some(p) = &parts {
        if let Some(swap) = &p.swap {
            format_swap(swap)?;
            if live {
                swapon(swap)?;
            } else {
                log::info!("swapon {} skipped (scratch root, not the live system)", swap.display());
            }
        }
        format_data(&p.data)?;
        mount_data(&p.data, &data)?;
    } else {
        owner::ensure_dir(&data, DATA_DIR_MODE)?;
    }
    if on_root {
        log::info!("root partition not grown: swap and data use the space after it");
    } else {
        match root::find(&dirs.root) {
            Err(why) => log::info!("no root disk to grow: {why}"),
            Ok(r) => match root::grow(&r) {
                Ok(true) => {
                    log::info!("grew the root partition {} and its filesystem", r.partition.display())
                }
                Ok(false) => {}
                Err(e) => log::warn!("root filesystem on {} not grown: {e}", r.partition.display()),
            },
        }
    }
    Ok(())
}

/// Raw ephemeral disks (module doc).
fn raw_ephemeral(list: &Value, resolver: &Resolver) -> Result<(), String> {
    let disks = match list {
        Value::Null => return Ok(()),
        Value::Array(a) => a,
        other => return Err(format!("disks.raw_ephemeral must be a list, got {other}")),
    };
    for (i, hint) in disks.iter().enumerate() {
        let dev = resolver
            .resolve(&DiskSettings::from_hint("", hint)?)
            .with_context(|| format!("raw ephemeral disk {i}"))?;
        let d = dev.display();
        let t = table::read(&dev)?;
        if t.as_ref().is_some_and(|t| {
            t.label == Label::Gpt && t.parts.iter().any(|p| p.name.starts_with("raw-ephemeral-"))
        }) {
            log::info!("raw ephemeral disk {d} is already partitioned");
            continue;
        }
        let uses = mount::in_use(&dev)?;
        if !uses.is_empty() {
            return Err(format!(
                "raw ephemeral disk {d} is in use ({}); not repartitioning it",
                uses.join(", ")
            ));
        }
        log::info!("raw ephemeral disk {d}: one partition raw-ephemeral-{i} over the whole disk");
        table::wipe_signatures(&dev)?;
        let size = size_of(&dev)?;
        table::zero_edges_of(&dev, MIB, size.saturating_sub(2 * MIB))?;
        let part = NewPart { start: MIB, size: None, kind: "L", name: format!("raw-ephemeral-{i}") };
        table::write_new(&dev, Label::Gpt, &[part])?;
        prepare::sync_partitions(&dev)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const G: u64 = 1 << 30;

    #[test]
    fn swap_defaults_to_the_smaller_of_ram_and_half_the_space() {
        assert_eq!(Plan::new(None, 4 * G, 100 * G).unwrap(), Plan { swap: 4 * G, data: 96 * G });
        let swap_size = |v: serde_json::Value| {
            serde_json::from_value::<crate::settings::BoshEnv>(json!({ "swap_size": v })).map(|e| e.swap_size)
        };
        assert_eq!(Plan::new(swap_size(json!(null)).unwrap(), 16 * G, 10 * G).unwrap().swap, 5 * G);
        assert_eq!(Plan::new(Some(0), 16 * G, 10 * G).unwrap().sizes(), vec![(10 * G, "L")]);
        assert_eq!(Plan::new(Some(100), 16 * G, 10 * G).unwrap().swap, 100 * MIB);
        // Not a whole number of MB: refused where settings are read, as the Go agent's decoder does.
        assert!(swap_size(json!(-1)).is_err());
        assert!(swap_size(json!("1")).is_err());
        assert!(Plan::new(Some(1020), G, G).unwrap_err().contains("does not fit"));
        assert_eq!(Plan::new(Some(64), G, G).unwrap().describe(), "swap of 64 MiB and data of 960 MiB");
        assert!(total_ram().unwrap() > 0);
    }

    #[test]
    fn label_prefixes_are_cut_like_the_go_agents() {
        assert_eq!(label_prefix("abc"), "bosh-partition-abc");
        let id = "0a8d5a52-5c38-4a5b-9c5d-3d6a1b2c3d4e";
        assert_eq!(label_prefix(id), "bosh-partition-0a8d5a52-5c38-4a5");
        assert_eq!(label_prefix(id).len(), 32);
        assert_eq!(label_prefix("0123456789abcdefgh").len(), 33, "33 characters are kept");
    }

    fn table(label: Label, parts: &[(u64, u64, &str, &str)]) -> Table {
        Table {
            label,
            parts: parts
                .iter()
                .enumerate()
                .map(|(i, (start, size, kind, name))| table::Part {
                    number: i as u32 + 1,
                    start: *start,
                    size: *size,
                    kind: kind.to_string(),
                    name: name.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn knows_its_own_layouts_and_nothing_else() {
        let plan = Plan { swap: 64 * MIB, data: 960 * MIB };
        let size = G + 2 * MIB;
        let p = "bosh-partition-a";
        let ours = table(
            Label::Gpt,
            &[(MIB, 64 * MIB, "x", "bosh-partition-a-0"), (65 * MIB, 960 * MIB, "x", "bosh-partition-a-1")],
        );
        assert!(is_ours(Layout::Gpt, &ours, &plan, p, size));
        assert!(!is_ours(Layout::Gpt, &ours, &plan, "bosh-partition-b", size), "another agent's disk");
        assert!(
            !is_ours(Layout::Gpt, &ours, &Plan { swap: 0, data: G }, p, size),
            "a layout for another swap size"
        );
        assert!(!is_ours(Layout::Dos, &ours, &plan, p, size));
        let unnamed = table(Label::Gpt, &[(MIB, 64 * MIB, "x", ""), (65 * MIB, 960 * MIB, "x", "")]);
        assert!(!is_ours(Layout::Gpt, &unnamed, &plan, p, size));
        let dos = table(Label::Dos, &[(MIB, 64 * MIB, "82", ""), (65 * MIB, 960 * MIB, "83", "")]);
        assert!(is_ours(Layout::Dos, &dos, &plan, p, size));
        let small_swap = table(Label::Dos, &[(MIB, 512 * MIB, "82", ""), (513 * MIB, 512 * MIB, "83", "")]);
        assert!(!is_ours(Layout::Dos, &small_swap, &plan, p, size), "sizes off by more than 100 MiB");
        let types = table(Label::Dos, &[(MIB, 64 * MIB, "83", ""), (65 * MIB, 960 * MIB, "83", "")]);
        assert!(!is_ours(Layout::Dos, &types, &plan, p, size));
    }

    #[test]
    fn new_layouts_start_at_one_mib_and_name_partitions_on_gpt_only() {
        let plan = Plan { swap: 64 * MIB, data: 960 * MIB };
        let gpt = new_parts(Layout::Gpt, &plan, "bosh-partition-a");
        assert_eq!(table::new_table_script(Label::Gpt, &gpt),
            "label: gpt\nstart=1MiB, size=64MiB, type=S, name=\"bosh-partition-a-0\"\nstart=65MiB, type=L, name=\"bosh-partition-a-1\"\n");
        let dos = new_parts(Layout::Dos, &Plan { swap: 0, data: G }, "bosh-partition-a");
        assert_eq!(table::new_table_script(Label::Dos, &dos), "label: dos\nstart=1MiB, type=L\n");
    }
}
