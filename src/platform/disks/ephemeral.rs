//! The ephemeral disk (step 9 of the Go agent's `agent/bootstrap.go`): swap plus the `data` filesystem on a disk the IaaS
//! hands out blank with every VM.
//!
//! Layout this agent makes on a blank disk (GPT, with `sfdisk`):
//!
//! | partition | type | content |
//! |---|---|---|
//! | 1 | Linux swap | `mkswap`; the swap size (left out entirely when the size is 0) |
//! | 2 (or 1 without swap) | Linux | `mkfs.ext4`; the rest of the disk, mounted on `<base>/data` |
//!
//! The decision table, applied on every boot:
//!
//! | the device holds | action |
//! |---|---|
//! | no signature, zeros in its first and last MiB | partition, `mkswap`, `mkfs.ext4` |
//! | the layout above (either shape), with filesystems | keep it: nothing is written |
//! | the layout above with a partition that is still blank | format that partition (an earlier boot stopped half way) |
//! | anything else | refuse, naming what was found |
//!
//! The disk is "ephemeral" only in the IaaS's sense: after an agent restart it holds the jobs'
//! data, so an existing layout is kept even when `swap_size` changed since it was made (a warning
//! says so) — repartitioning would throw that data away.

use crate::error::Context as _;
use crate::exec;
use super::prepare::{self, has_signature, partition_path_n, probe, value, zero_edges};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOOL_LIMIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
/// GPT headers and the 1 MiB alignment of partition 1 take this much; the data partition must get
/// at least `MIN_DATA_MIB` of what is left.
const OVERHEAD_MIB: u64 = 2;
const MIN_DATA_MIB: u64 = 8;

/// The partitions of a prepared ephemeral disk.
#[derive(Debug, PartialEq)]
pub struct Ephemeral {
    /// The swap partition, when the layout has one.
    pub swap: Option<PathBuf>,
    /// The ext4 partition to mount on `data`.
    pub data: PathBuf,
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

/// The swap size in MiB: `env.bosh.swap_size` (MiB; 0 means no swap) when set, else the Go agent's
/// default of min(RAM, disk/2). Fails when the swap would leave the data partition no room, rather
/// than making a data filesystem too small to hold anything.
pub fn swap_size_mib(setting: Option<u64>, ram: u64, disk: u64) -> Result<u64, String> {
    let disk_mib = disk / MIB;
    let swap = setting.unwrap_or(ram.min(disk / 2) / MIB);
    if swap.saturating_add(OVERHEAD_MIB + MIN_DATA_MIB) > disk_mib {
        return Err(format!(
            "a swap partition of {swap} MiB does not fit the {disk_mib} MiB ephemeral disk with room for data"
        ));
    }
    Ok(swap)
}

/// The `sfdisk` script for a blank disk.
pub fn sfdisk_script(swap_mib: u64) -> String {
    if swap_mib == 0 {
        "label: gpt\n,,L\n".to_string()
    } else {
        format!("label: gpt\n,{swap_mib}MiB,S\n,,L\n")
    }
}

/// What each partition must hold, in order, for a layout of `count` partitions; `None` for a
/// partition count this agent never makes.
fn expected(count: usize) -> Option<&'static [&'static str]> {
    match count {
        1 => Some(&["ext4"]),
        2 => Some(&["swap", "ext4"]),
        _ => None,
    }
}

/// Applies the decision table (module doc) to `dev`; returns the partitions to use.
pub fn prepare(dev: &Path, swap_mib: u64) -> Result<Ephemeral, String> {
    let d = dev.display();
    let found = probe(dev)?;
    if let Some(t) = value(&found, "TYPE") {
        return Err(format!(
            "ephemeral disk {d} holds a {t} filesystem on the whole device, not this agent's swap + data \
             layout; refusing to touch it"
        ));
    }
    if let Some(pt) = value(&found, "PTTYPE") {
        return keep_existing(dev, pt, swap_mib);
    }
    if has_signature(&found) || !zero_edges(dev)? {
        return Err(format!(
            "ephemeral disk {d} is not blank (unrecognised data in its first or last MiB); refusing to format it"
        ));
    }
    log::info!("ephemeral disk {d} is blank: partitioning it (swap {swap_mib} MiB, data the rest)");
    exec::run(
        Command::new("sfdisk").args(["-q", "--wipe", "never"]).arg(dev),
        Some(sfdisk_script(swap_mib).as_bytes()),
        TOOL_LIMIT,
    )?;
    let want = if swap_mib == 0 { 1 } else { 2 };
    let count = prepare::sync_partitions(dev)?;
    if count != want {
        return Err(format!("{d} shows {count} partitions after partitioning, expected {want}"));
    }
    // Checked again: a blank disk must give blank partitions; anything else means the probe lied.
    keep_existing(dev, "gpt", swap_mib)
}

/// The disk already has a partition table: accept it only as this agent's layout, formatting
/// partitions that are still blank and nothing else.
fn keep_existing(dev: &Path, pt: &str, swap_mib: u64) -> Result<Ephemeral, String> {
    let d = dev.display();
    let count = prepare::sync_partitions(dev)?;
    let Some(types) = expected(count) else {
        return Err(format!(
            "ephemeral disk {d} holds a {pt} partition table with {count} partitions, not this agent's swap + \
             data layout; refusing to touch it"
        ));
    };
    let mut blank = Vec::new();
    for (i, want) in types.iter().enumerate() {
        let part = partition_path_n(dev, i + 1);
        if !part.exists() {
            return Err(format!("partition {} of {d} has no device node {}", i + 1, part.display()));
        }
        let inner = probe(&part)?;
        match value(&inner, "TYPE") {
            Some(t) if t == *want => {}
            Some(t) => {
                return Err(format!(
                "ephemeral disk {d}: {} holds {t} where this agent's layout has {want}; refusing to touch it",
                part.display()
            ))
            }
            None if !has_signature(&inner) && zero_edges(&part)? => blank.push((part, *want)),
            None => {
                return Err(format!(
                    "ephemeral disk {d}: {} holds data blkid does not recognise; refusing to format it",
                    part.display()
                ))
            }
        }
    }
    // Only after every partition passed: never format one and then refuse on the next.
    for (part, kind) in &blank {
        if *kind == "swap" {
            log::info!("making swap on {}", part.display());
            exec::run(Command::new("mkswap").arg(part), None, TOOL_LIMIT)?;
        } else {
            prepare::format(part, kind)?;
        }
    }
    if blank.is_empty() {
        log::info!("ephemeral disk {d} already has the swap + data layout: keeping it");
    }
    if (count == 2) != (swap_mib > 0) {
        log::warn!(
            "ephemeral disk {d} was laid out {} swap; swap_size now asks for {swap_mib} MiB — keeping the \
             existing layout, which holds data",
            if count == 2 { "with" } else { "without" }
        );
    }
    let swap = (count == 2).then(|| partition_path_n(dev, 1));
    Ok(Ephemeral { swap, data: partition_path_n(dev, count) })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn swap_size_defaults_to_the_smaller_of_ram_and_half_the_disk() {
        let g = 1 << 30;
        assert_eq!(swap_size_mib(None, 4 * g, 100 * g).unwrap(), 4096);
        let swap_size = |v: serde_json::Value| {
            serde_json::from_value::<crate::settings::BoshEnv>(json!({ "swap_size": v })).map(|e| e.swap_size)
        };
        assert_eq!(swap_size_mib(swap_size(json!(null)).unwrap(), 16 * g, 10 * g).unwrap(), 5120);
        assert_eq!(swap_size_mib(Some(0), 16 * g, 10 * g).unwrap(), 0);
        assert_eq!(swap_size_mib(Some(100), 16 * g, 10 * g).unwrap(), 100);
        // Not a whole number of MB: refused where settings are read, as the Go agent's decoder does.
        assert!(swap_size(json!(-1)).is_err());
        assert!(swap_size(json!("1")).is_err());
        assert!(swap_size_mib(Some(1020), g, g).unwrap_err().contains("does not fit"));
    }

    #[test]
    fn scripts_for_both_shapes() {
        assert_eq!(sfdisk_script(0), "label: gpt\n,,L\n");
        assert_eq!(sfdisk_script(64), "label: gpt\n,64MiB,S\n,,L\n");
        assert!(total_ram().unwrap() > 0);
    }
}
