//! Partition tables: read with `sfdisk -J`, written with `sfdisk`, and the few edits the agent makes
//! on them — a new table, partitions appended after the last one (the root disk), a partition grown
//! to the end of its disk (the root disk and resized persistent disks). Everything is in bytes.
//!
//! One tool for every table: `sfdisk` is in util-linux, on every image. The Go agent writes the
//! ephemeral and root layouts with `parted`; the layouts here are the same (labels, partition names,
//! 1 MiB alignment), only the program differs — and the swap partition's type, which says swap here
//! where parted leaves Linux — so an image without parted works and nothing depends on parted's
//! prompts on a disk in use.
//!
//! A disk in use (the root disk) cannot have its whole table re-read by the kernel; every write
//! here passes `--no-reread` and then `partx -u` tells the kernel partition by partition (see
//! [`super::prepare::sync_partitions`]).

use crate::error::Context as _;
use crate::exec;
use serde_json::Value;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
/// Partitions start and end on 1 MiB boundaries, as the Go agent lays them out.
pub const MIB: u64 = 1 << 20;

/// The kind of partition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// GUID partition table.
    Gpt,
    /// msdos (MBR).
    Dos,
    /// Anything else sfdisk knows (sun, sgi, ...): never this agent's.
    Other,
}

/// One partition, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Its number (`1` for `sdb1`).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length.
    pub size: u64,
    /// The type as sfdisk prints it: a GUID on GPT, hex (`82`, `83`) on msdos.
    pub kind: String,
    /// The GPT partition name (empty on msdos).
    pub name: String,
}

impl Part {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Its kind.
    pub label: Label,
    /// The partitions, by number.
    pub parts: Vec<Part>,
}

/// The table on `dev`, or `None` when sfdisk finds none.
pub fn read(dev: &Path) -> Result<Option<Table>, String> {
    let out = exec::output(Command::new("sfdisk").arg("-J").arg(dev), None, Some(LIMIT))?;
    if out.code() != Some(0) {
        if out.stderr.contains("does not contain a recognized partition table") {
            return Ok(None);
        }
        return Err(format!("reading the partition table of {}: {}", dev.display(), out.stderr.trim()));
    }
    parse(&out.stdout).with_context(|| format!("reading the partition table of {}", dev.display())).map(Some)
}

/// Parses `sfdisk -J` output.
pub fn parse(json: &str) -> Result<Table, String> {
    let v: Value = serde_json::from_str(json).context("sfdisk -J printed no JSON")?;
    let t = &v["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    let label = match t["label"].as_str() {
        Some("gpt") => Label::Gpt,
        Some("dos") => Label::Dos,
        _ => Label::Other,
    };
    let mut parts = Vec::new();
    for p in t["partitions"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let node = p["node"].as_str().unwrap_or_default();
        let digits: String = node
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let number = digits.parse().map_err(|_| format!("partition node '{node}' has no number"))?;
        let (Some(start), Some(size)) = (p["start"].as_u64(), p["size"].as_u64()) else {
            return Err(format!("partition {node} has no start or size"));
        };
        parts.push(Part {
            number,
            start: start * sector,
            size: size * sector,
            kind: p["type"].as_str().unwrap_or_default().to_ascii_lowercase(),
            name: p["name"].as_str().unwrap_or_default().to_string(),
        });
    }
    crate::order::sort_by_key(&mut parts, |p| p.number);
    Ok(Table { label, parts })
}

/// A partition to create: where, how big, what type and, on GPT, its name. Starts and sizes are
/// whole MiB (the agent's alignment), which also makes them whole sectors of any sector size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPart {
    /// First byte, a multiple of 1 MiB.
    pub start: u64,
    /// Length in bytes, a multiple of 1 MiB; `None`: up to the end of the disk.
    pub size: Option<u64>,
    /// `L` (Linux) or `S` (swap), sfdisk's shortcuts for either label.
    pub kind: &'static str,
    /// GPT name; empty for none.
    pub name: String,
}

fn script_line(p: &NewPart) -> String {
    let mut line = format!("start={}MiB", p.start / MIB);
    if let Some(size) = p.size {
        line.push_str(&format!(", size={}MiB", size / MIB));
    }
    line.push_str(&format!(", type={}", p.kind));
    if !p.name.is_empty() {
        line.push_str(&format!(", name=\"{}\"", p.name));
    }
    line
}

/// The sfdisk script of a new table with `parts`.
pub fn new_table_script(label: Label, parts: &[NewPart]) -> String {
    let mut s = format!("label: {}\n", if label == Label::Gpt { "gpt" } else { "dos" });
    for p in parts {
        s.push_str(&script_line(p));
        s.push('\n');
    }
    s
}

fn sfdisk(dev: &Path, args: &[&str], script: &str) -> Result<(), String> {
    log::info!("sfdisk {} {}: {}", args.join(" "), dev.display(), script.trim().replace('\n', "; "));
    let mut cmd = Command::new("sfdisk");
    cmd.args(["-q", "--no-reread", "--wipe", "never"]).args(args).arg(dev);
    exec::run(&mut cmd, Some(script.as_bytes()), LIMIT).map(|_| ())
}

/// Writes a new table holding `parts`, replacing whatever table `dev` had.
pub fn write_new(dev: &Path, label: Label, parts: &[NewPart]) -> Result<(), String> {
    sfdisk(dev, &[], &new_table_script(label, parts))
}

/// Adds `parts` to the existing table of `dev` (a disk in use: the root disk).
pub fn append(dev: &Path, parts: &[NewPart]) -> Result<(), String> {
    let script: String = parts.iter().map(|p| script_line(p) + "\n").collect();
    sfdisk(dev, &["--append"], &script)
}

/// Grows partition `number` to the end of `dev` (past a GPT backup moved to the new end first):
/// what `growpart` does, with sfdisk alone.
pub fn grow_to_end(dev: &Path, table: &Table, number: u32) -> Result<(), String> {
    if table.label == Label::Gpt {
        relocate_backup(dev)?;
    }
    sfdisk(dev, &["-N", &number.to_string()], ", +\n")
}

/// Moves a GPT's backup header to the end of a disk that grew, so the space after it can be used.
pub fn relocate_backup(dev: &Path) -> Result<(), String> {
    log::info!("sfdisk --relocate gpt-bak-std {}", dev.display());
    exec::run(
        Command::new("sfdisk").args(["-q", "--no-reread", "--relocate", "gpt-bak-std"]).arg(dev),
        None,
        LIMIT,
    )
    .map(|_| ())
}

/// Room after partition `number` up to the usable end of the disk, in bytes; `None` when another
/// partition follows it.
pub fn room_after(table: &Table, disk_size: u64, number: u32) -> Option<u64> {
    let part = table.parts.iter().find(|p| p.number == number)?;
    if table.parts.iter().any(|p| p.start > part.start) {
        return None;
    }
    // A GPT whose disk grew still names the old end until the backup is moved: count to the disk's
    // end less the 33 sectors the backup takes.
    let end = match table.label {
        Label::Gpt => disk_size.saturating_sub(33 * 512),
        _ => disk_size,
    };
    Some(end.saturating_sub(part.end()))
}

/// Removes every signature `wipefs` knows from `dev` (tables, filesystems, RAID, LVM).
pub fn wipe_signatures(dev: &Path) -> Result<(), String> {
    log::info!("wipefs --force -a {}", dev.display());
    exec::run(Command::new("wipefs").args(["--force", "-a"]).arg(dev), None, LIMIT).map(|_| ())
}

/// Zeroes the first and last MiB of the region `[start, start + len)` of `dev`, where a partition
/// is about to be made, so nothing an earlier owner left there (a filesystem's superblock, swap, a
/// RAID or LVM label) shows through the new partition. Synced before returning.
pub fn zero_edges_of(dev: &Path, start: u64, len: u64) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {} for writing", dev.display()))?;
    let chunk = MIB.min(len);
    let zeros = vec![0u8; chunk as usize];
    for at in [start, start + len - chunk] {
        f.seek(SeekFrom::Start(at)).with_context(|| format!("seeking {}", dev.display()))?;
        f.write_all(&zeros).with_context(|| format!("zeroing {} at {at}", dev.display()))?;
    }
    f.sync_all().with_context(|| format!("syncing {}", dev.display()))
}

/// `n` rounded up to a multiple of `m`.
pub fn round_up(n: u64, m: u64) -> u64 {
    n.div_ceil(m) * m
}

/// `n` rounded down to a multiple of `m`.
pub fn round_down(n: u64, m: u64) -> u64 {
    n / m * m
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPT_SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";

    const GPT: &str = r#"{"partitiontable": {"label": "gpt", "id": "X", "device": "/dev/loop3", "unit": "sectors",
        "firstlba": 2048, "lastlba": 614366, "sectorsize": 512, "partitions": [
        {"node": "/dev/loop3p2", "start": 206848, "size": 405504, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
         "uuid": "U2", "name": "bosh-partition-a-1"},
        {"node": "/dev/loop3p1", "start": 2048, "size": 204800, "type": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
         "uuid": "U1", "name": "bosh-partition-a-0"}]}}"#;

    #[test]
    fn parses_sfdisk_json_into_bytes() {
        let t = parse(GPT).unwrap();
        assert_eq!(t.label, Label::Gpt);
        assert_eq!(
            t.parts[0],
            Part {
                number: 1,
                start: MIB,
                size: 100 * MIB,
                kind: GPT_SWAP.into(),
                name: "bosh-partition-a-0".into()
            }
        );
        assert_eq!((t.parts[1].number, t.parts[1].end()), (2, 299 * MIB));
        let dos = r#"{"partitiontable": {"label": "dos", "sectorsize": 4096, "partitions": [
            {"node": "/dev/sda1", "start": 256, "size": 2560, "type": "83"}]}}"#;
        let t = parse(dos).unwrap();
        assert_eq!((t.label, t.parts[0].start, t.parts[0].size), (Label::Dos, MIB, 10 * MIB));
        assert!(parse("not json").is_err());
        let bad = r#"{"partitiontable": {"label": "dos", "partitions": [{"node": "/dev/sda", "start": 1}]}}"#;
        assert!(parse(bad).unwrap_err().contains("no number"));
    }

    #[test]
    fn scripts_name_exact_boundaries() {
        let parts = [
            NewPart { start: MIB, size: Some(64 * MIB), kind: "S", name: "bosh-partition-a-0".into() },
            NewPart { start: 65 * MIB, size: None, kind: "L", name: String::new() },
        ];
        assert_eq!(
            new_table_script(Label::Gpt, &parts),
            "label: gpt\nstart=1MiB, size=64MiB, type=S, name=\"bosh-partition-a-0\"\nstart=65MiB, type=L\n"
        );
        assert_eq!(new_table_script(Label::Dos, &parts[1..]), "label: dos\nstart=65MiB, type=L\n");
    }

    #[test]
    fn room_after_only_for_the_last_partition() {
        let t = parse(GPT).unwrap();
        assert_eq!(room_after(&t, 299 * MIB + 33 * 512 + 5 * MIB, 2), Some(5 * MIB));
        assert_eq!(room_after(&t, 400 * MIB, 1), None, "partition 2 follows 1");
        assert_eq!(room_after(&t, 400 * MIB, 7), None);
        assert_eq!(
            (round_up(MIB + 1, MIB), round_down(2 * MIB - 1, MIB), round_up(MIB, MIB)),
            (2 * MIB, MIB, MIB)
        );
    }
}
