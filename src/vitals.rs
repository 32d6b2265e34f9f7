//! VM vitals (cpu, mem, swap, load, disks, uptime) for heartbeats and `get_state ["full"]`.
//!
//! The health monitor turns these into metrics and bosh-cli decodes them strictly, so the JSON matches the
//! Go agent's: every leaf a string except the integer `uptime.secs`. Values come from /proc and statvfs via
//! stack buffers, so a collection is cheap; CPU needs two readings apart in time, hence [`CpuSampler`].
//! Nothing read from the system may crash the agent: a missing source drops its field and logs a line.

use crate::sync::lock;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The vitals object exactly as the Go agent serialises it; optional parts are omitted when unknown,
/// because the health monitor and bosh-cli tolerate a missing field but not a wrongly typed one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Vitals {
    /// Percent of CPU time in the last sampling window; absent until the sampler has two samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuVitals>,
    /// Usage of the agent's disks; entries that are not reported are left out.
    pub disk: DiskVitals,
    /// The 1, 5 and 15 minute load averages with 2 decimals; empty when /proc/loadavg is unreadable.
    pub load: Vec<String>,
    /// RAM actually used by processes (page cache and buffers excluded, as sigar counts it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<MemVitals>,
    /// Swap in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<MemVitals>,
    /// Time since boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime: Option<UptimeVitals>,
}

/// CPU percentages as strings with 1 decimal, the format the health monitor's `system.cpu.*` metrics expect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CpuVitals {
    /// Kernel time.
    pub sys: String,
    /// User plus nice time.
    pub user: String,
    /// I/O wait time.
    pub wait: String,
}

/// The three disks BOSH knows by name; a struct rather than a map so names cannot drift.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct DiskVitals {
    /// The ephemeral disk (`<base>/data`), reported only when mounted on Linux.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<DiskUsage>,
    /// The persistent disk (`<base>/store`), reported only when mounted on Linux.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<DiskUsage>,
    /// The root file system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<DiskUsage>,
}

/// Block and inode usage of one file system, in whole percent as strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DiskUsage {
    /// Used inodes over total inodes.
    pub inode_percent: String,
    /// Used blocks (total − free, reserved blocks count as used) over total blocks.
    pub percent: String,
}

/// Memory or swap use: kB in use and whole percent of the total, both strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MemVitals {
    /// kB in use.
    pub kb: String,
    /// Percent of the total in use.
    pub percent: String,
}

/// Uptime; the one integer among the vitals, because bosh-cli decodes it as an integer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UptimeVitals {
    /// Whole seconds since boot.
    pub secs: u64,
}

/// CPU time shares over one sampling window, 0–100; kept numeric so callers may compare or reformat.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuPercent {
    /// (user + nice) / total.
    pub user: f64,
    /// system / total.
    pub sys: f64,
    /// iowait / total.
    pub wait: f64,
}

/// Cumulative jiffies from the `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal
/// (guest time is already inside user, so it is not counted twice).
type CpuTimes = [u64; 8];

/// Background CPU sampler. CPU use is only meaningful as a difference between two /proc/stat readings, and a
/// heartbeat must not sleep to get one, so a named thread samples every window and keeps the latest result.
/// Clones are cheap; the thread exits once every clone is dropped.
#[derive(Clone)]
pub struct CpuSampler {
    latest: Arc<Mutex<Option<CpuPercent>>>,
    _stop: Sender<()>,
}

impl CpuSampler {
    /// Starts sampling. Until the first window completes (about 1 s after start) the value is the
    /// share since boot, so the first heartbeat and an early `get_state ["full"]` carry cpu too;
    /// then one result per `window`. If the thread cannot be spawned the value stays the one since boot.
    pub fn start(window: Duration) -> CpuSampler {
        let (stop, stopped) = mpsc::channel();
        let first = read_cpu_times();
        let latest = Arc::new(Mutex::new(first.and_then(|now| cpu_percent(&[0; 8], &now))));
        let shared = Arc::clone(&latest);
        let spawned = std::thread::Builder::new()
            .name("vitals-cpu".into())
            .spawn(move || sample_loop(&shared, &stopped, window, first));
        if let Err(e) = spawned {
            log::warn!("vitals: cannot start cpu sampler thread: {e}");
        }
        CpuSampler { latest, _stop: stop }
    }

    /// The percentages of the most recent window, or `None` before the first one completes.
    pub fn latest(&self) -> Option<CpuPercent> {
        *lock(&self.latest)
    }
}

/// The sampling thread: read, wait, read, publish the delta; log a failing /proc/stat once per outage.
fn sample_loop(
    latest: &Mutex<Option<CpuPercent>>,
    stopped: &Receiver<()>,
    window: Duration,
    first: Option<CpuTimes>,
) {
    let mut prev = first;
    let mut pause = window.min(Duration::from_secs(1));
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(pause) {
        pause = window;
        let now = read_cpu_times();
        if now.is_none() && prev.is_some() {
            log::warn!("vitals: cannot read cpu times from /proc/stat; cpu left out");
        }
        let pct = prev.zip(now).and_then(|(a, b)| cpu_percent(&a, &b));
        *lock(latest) = pct;
        prev = now;
    }
}

/// The cumulative cpu times since boot. The aggregate line comes first in /proc/stat, so a small
/// head of the file suffices.
fn read_cpu_times() -> Option<CpuTimes> {
    parse_proc_stat(read_head("/proc/stat", &mut [0; 512])?)
}

/// Parses the aggregate `cpu ` line of /proc/stat; old kernels give only the first four fields.
fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let mut f = [0u64; 8];
    let mut n = 0;
    for (slot, word) in f.iter_mut().zip(line.split_whitespace().skip(1)) {
        *slot = word.parse().ok()?;
        n += 1;
    }
    (n >= 4).then_some(f)
}

/// Shares between two readings: user is user+nice, sys is system, wait is iowait, each over the sum of
/// all eight; `None` when no time passed.
fn cpu_percent(a: &CpuTimes, b: &CpuTimes) -> Option<CpuPercent> {
    let d = |i: usize| b[i].saturating_sub(a[i]) as f64;
    let total: f64 = (0..8).map(d).sum();
    (total > 0.0).then(|| CpuPercent {
        user: (d(0) + d(1)) * 100.0 / total,
        sys: d(2) * 100.0 / total,
        wait: d(4) * 100.0 / total,
    })
}

/// Parses /proc/meminfo into (mem, swap). Mem is "actual used" = MemTotal − MemFree − Buffers − Cached
/// (sigar's figure, which is what the health monitor has always graphed); swap is SwapTotal − SwapFree.
fn parse_meminfo(text: &str) -> (Option<MemVitals>, Option<MemVitals>) {
    const KEYS: &str = "MemTotal: MemFree: Buffers: Cached: SwapTotal: SwapFree:";
    let mut v = [None::<u64>; 6];
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or_default();
        if let Some(i) = KEYS.split(' ').position(|k| k == key) {
            v[i] = words.next().and_then(|w| w.parse().ok());
        }
    }
    let [total, free, buffers, cached, swap_total, swap_free] = v;
    let usage = |total: u64, used: u64| MemVitals { kb: used.to_string(), percent: percent(used, total, 0) };
    let kernel = buffers.unwrap_or(0) + cached.unwrap_or(0);
    let mem = total.zip(free).map(|(t, f)| usage(t, t.saturating_sub(f + kernel)));
    let swap = swap_total.zip(swap_free).map(|(t, f)| usage(t, t.saturating_sub(f)));
    (mem, swap)
}

/// Parses the three load averages from /proc/loadavg.
fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut words = text.split_whitespace().map(|w| w.parse::<f64>().ok());
    Some([words.next()??, words.next()??, words.next()??])
}

/// Parses whole seconds of uptime (the first number of /proc/uptime, truncated).
fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// `part / total` in percent with `decimals` decimals, as Go's `%.Nf`; 0 for a zero total (no swap, /proc).
fn percent(part: u64, total: u64, decimals: usize) -> String {
    let pct = part.min(total) as f64 * 100.0 / total.max(1) as f64;
    format!("{pct:.decimals$}")
}

/// Reads up to `buf.len()` bytes of a (proc) file without heap allocation; logs and returns `None` on error.
fn read_head<'a>(path: &str, buf: &'a mut [u8]) -> Option<&'a str> {
    let read = std::fs::File::open(path).and_then(|mut file| {
        let mut len = 0;
        loop {
            // A full buffer reads as 0 bytes, like end of file.
            match file.read(&mut buf[len..])? {
                0 => return Ok(len),
                n => len += n,
            }
        }
    });
    let len = read.map_err(|e| log::warn!("vitals: cannot read {path}: {e}")).ok()?;
    // Proc files are ASCII; should a head end mid-character anyway, keep the valid prefix.
    let valid = std::str::from_utf8(&buf[..len]).map_or_else(|e| e.valid_up_to(), str::len);
    std::str::from_utf8(&buf[..valid]).ok()
}

/// Where the agent's three disks live; a plain struct so the Linux and dummy platforms can point it anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPaths {
    /// The root file system, normally `/`.
    pub system: PathBuf,
    /// The ephemeral disk mount, normally `<base>/data`.
    pub ephemeral: PathBuf,
    /// The persistent disk mount, normally `<base>/store`.
    pub persistent: PathBuf,
}

/// Collects the vitals now. `require_mount_points` is true on Linux, where an unmounted `data` or `store`
/// directory would report the root disk under the wrong name; the dummy platform (false) has no mounts
/// and reports any existing path. Missing sources leave fields out and log; this never fails.
pub fn collect(cpu: &CpuSampler, disks: &DiskPaths, require_mount_points: bool) -> Vitals {
    let mut buf = [0u8; 4096];
    let (mem, swap) = read_head("/proc/meminfo", &mut buf).map(parse_meminfo).unwrap_or_default();
    let load = read_head("/proc/loadavg", &mut buf)
        .and_then(parse_loadavg)
        .map(|l| l.iter().map(|x| format!("{x:.2}")).collect())
        .unwrap_or_default();
    let uptime = read_head("/proc/uptime", &mut buf).and_then(parse_uptime).map(|secs| UptimeVitals { secs });
    Vitals {
        cpu: cpu.latest().map(|c| CpuVitals {
            sys: format!("{:.1}", c.sys),
            user: format!("{:.1}", c.user),
            wait: format!("{:.1}", c.wait),
        }),
        disk: DiskVitals {
            ephemeral: optional_disk(&disks.ephemeral, require_mount_points),
            persistent: optional_disk(&disks.persistent, require_mount_points),
            system: disk_usage(&disks.system),
        },
        load,
        mem,
        swap,
        uptime,
    }
}

/// Usage of an `ephemeral` or `persistent` disk, if it counts as present (see [`collect`]).
fn optional_disk(path: &Path, require_mount_point: bool) -> Option<DiskUsage> {
    let present = path.exists() && (!require_mount_point || is_mount_point(path));
    present.then(|| disk_usage(path)).flatten()
}

/// Block and inode usage from statvfs; `None` (logged) when the call fails.
fn disk_usage(path: &Path) -> Option<DiskUsage> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data, so all-zero is a valid value; the call only writes into it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        let err = std::io::Error::last_os_error();
        log::warn!("vitals: statvfs {}: {err}", path.display());
        return None;
    }
    let (blocks, files) = (st.f_blocks as u64, st.f_files as u64);
    Some(DiskUsage {
        inode_percent: percent(files.saturating_sub(st.f_ffree as u64), files, 0),
        percent: percent(blocks.saturating_sub(st.f_bfree as u64), blocks, 0),
    })
}

/// Whether `path` is a mount point: its device differs from its parent's (or it is its own parent, `/`),
/// or, for bind mounts of the same device, it is listed in /proc/self/mountinfo.
fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Ok(parent)) = (std::fs::metadata(path), std::fs::metadata(path.join(".."))) else {
        return false;
    };
    if me.dev() != parent.dev() || me.ino() == parent.ino() {
        return true;
    }
    // Field 5 is the mount point. It is octal-escaped (`\040` for a space), so a path with such characters
    // never matches; BOSH's own mount points have none.
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(info) => info.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == path)),
        Err(e) => {
            log::warn!("vitals: cannot read /proc/self/mountinfo: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 20 30 800 40 5 5 0 7 0\ncpu0 50 10 15 400 20 2 3 0 0 0\nintr 1 2 3\n";
    const MEMINFO: &str =
        "MemTotal:       16000000 kB\nMemFree:         4000000 kB\nMemAvailable:   9000000 kB\n\
        Buffers:          500000 kB\nCached:          3500000 kB\nSwapCached:            0 kB\n\
        SwapTotal:       2000000 kB\nSwapFree:        1500000 kB\n";

    #[test]
    fn proc_stat_sums_user_nice_and_total() {
        let t = parse_proc_stat(STAT).expect("cpu line");
        assert_eq!(t, [100, 20, 30, 800, 40, 5, 5, 0]);
        let old_kernel = parse_proc_stat("cpu  1 2 3 4\n");
        assert_eq!(old_kernel, Some([1, 2, 3, 4, 0, 0, 0, 0]));
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 x 3 4\n"), None);
        let later = parse_proc_stat("cpu  190 30 80 1639 41 10 10 0\n").expect("cpu line");
        let p = cpu_percent(&t, &later).expect("delta");
        assert_eq!((p.user, p.sys, p.wait), (10.0, 5.0, 0.1));
        assert_eq!(cpu_percent(&t, &t), None);
    }

    #[test]
    fn meminfo_actual_used_and_swap() {
        let json = |text| serde_json::to_string(&parse_meminfo(text)).expect("json");
        let want = r#"[{"kb":"8000000","percent":"50"},{"kb":"500000","percent":"25"}]"#;
        assert_eq!(json(MEMINFO), want);
        let no_swap = "MemTotal: 10 kB\nMemFree: 5 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n";
        let want = r#"[{"kb":"5","percent":"50"},{"kb":"0","percent":"0"}]"#;
        assert_eq!(json(no_swap), want);
        assert_eq!(json("garbage"), "[null,null]");
    }

    #[test]
    fn loadavg_uptime_and_percent_formats() {
        let load = parse_loadavg("2.36 1.20 0.53 2/345 6789\n");
        assert_eq!(load, Some([2.36, 1.2, 0.53]));
        assert_eq!(parse_loadavg("2.36\n"), None);
        assert_eq!(parse_uptime("4887.93 19000.10\n"), Some(4887));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(percent(1, 3, 0), "33");
        assert_eq!(percent(2, 3, 1), "66.7");
        assert_eq!(percent(5, 0, 0), "0");
    }

    #[test]
    fn mount_point_rule() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_mount_point(dir.path()));
        assert!(!is_mount_point(&dir.path().join("absent")));
    }

    #[test]
    fn cpu_is_known_from_the_start() {
        // A window of an hour: whatever the sampler thread does, the first window is far away, so
        // the value read at once is the share since boot.
        let sampler = CpuSampler::start(Duration::from_secs(3600));
        let first = sampler.latest().expect("cpu share since boot, before the first window");
        assert!((0.0..=100.0).contains(&(first.user + first.sys + first.wait)), "{first:?}");
    }

    #[test]
    fn collect_here_has_string_leaves_except_uptime() {
        fn check(v: &serde_json::Value, at: &str) {
            match v {
                serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| check(v, &format!("{at}.{k}"))),
                serde_json::Value::Array(a) => a.iter().for_each(|v| check(v, at)),
                serde_json::Value::Number(_) => assert_eq!(at, ".uptime.secs"),
                other => assert!(other.is_string(), "{at} is {other}"),
            }
        }
        let sampler = CpuSampler::start(Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(150));
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = DiskPaths {
            system: "/".into(),
            ephemeral: dir.path().join("data"),
            persistent: dir.path().join("store"),
        };
        std::fs::create_dir(&paths.ephemeral).expect("mkdir data");
        let linux = collect(&sampler, &paths, true);
        let dummy = collect(&sampler, &paths, false);
        drop(sampler);
        assert!(linux.disk.system.is_some() && linux.disk.ephemeral.is_none());
        assert!(dummy.disk.ephemeral.is_some() && dummy.disk.persistent.is_none());
        let json = serde_json::to_value(&dummy).expect("serialise");
        check(&json, "");
        assert_eq!(json["load"].as_array().map(Vec::len), Some(3));
        assert!(json["uptime"]["secs"].is_u64() && json["mem"]["kb"].is_string());
        let back: Vitals = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, dummy);
    }
}
