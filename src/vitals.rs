//! VM vitals (cpu, mem, swap, load, disks, uptime) for heartbeats and `get_state ["full"]`.
//!
//! The health monitor turns these into metrics and bosh-cli decodes them strictly, so the JSON matches the
//! Go agent's: every leaf a string except the integer `uptime.secs`. Values come from /proc and statvfs via
//! stack buffers, so a collection is cheap; CPU needs two readings apart in time, hence [`Sampler`].
//! Nothing read from the system may crash the agent: a missing source drops its field and logs a line.

use crate::sync::lock;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// What vitals keep between collections: the cpu window, and the /proc files, kept open.
///
/// CPU use is only meaningful as a difference between two /proc/stat readings; rather than a thread
/// that samples every few seconds (a thread and a wakeup per window for every agent, even an idle
/// one), each collection reads /proc/stat and reports the share of each kind of time since the
/// previous reading, as long as that was at least `min_window` ago; a collection sooner gets the
/// previous figure again. The first window runs from boot, so the first heartbeat and an early
/// `get_state ["full"]` carry cpu too.
///
/// /proc/stat and /proc/meminfo stay open and are read again from offset 0 (the kernel generates
/// their text afresh for each read from the start): a reading costs one `pread`, not an open, reads
/// and a close. Clones share the readings and the files.
#[derive(Clone)]
pub struct Sampler {
    cpu: Arc<Mutex<CpuState>>,
    meminfo: Arc<Mutex<ProcFile>>,
    min_window: Duration,
}

struct CpuState {
    stat: ProcFile,
    /// The previous reading and when it was taken (`None` while /proc/stat is unreadable).
    previous: Option<(CpuTimes, Instant)>,
    latest: Option<CpuPercent>,
}

impl Sampler {
    /// Takes the first cpu reading; windows are at least `min_window` long.
    pub fn start(min_window: Duration) -> Sampler {
        let mut stat = ProcFile::new("/proc/stat");
        let first = read_cpu_times(&mut stat);
        let latest = first.and_then(|now| cpu_percent(&[0; 8], &now));
        let previous = first.map(|times| (times, Instant::now()));
        Sampler {
            cpu: Arc::new(Mutex::new(CpuState { stat, previous, latest })),
            meminfo: Arc::new(Mutex::new(ProcFile::new("/proc/meminfo"))),
            min_window,
        }
    }

    /// The cpu percentages since the previous reading (or of the previous window, when that ended
    /// less than `min_window` ago); `None` while /proc/stat cannot be read.
    pub fn cpu(&self) -> Option<CpuPercent> {
        let mut state = lock(&self.cpu);
        if state.previous.is_some_and(|(_, at)| at.elapsed() < self.min_window) {
            return state.latest;
        }
        let now = read_cpu_times(&mut state.stat);
        if now.is_none() && state.previous.is_some() {
            log::warn!("vitals: cannot read cpu times from /proc/stat; cpu left out");
        }
        let window = state.previous.zip(now).and_then(|((a, _), b)| cpu_percent(&a, &b));
        // A window too short for a jiffy to pass keeps the previous figure.
        if window.is_some() || now.is_none() {
            state.latest = window;
            state.previous = now.map(|times| (times, Instant::now()));
        }
        state.latest
    }

    /// Memory and swap in use, from /proc/meminfo.
    fn memory(&self) -> (Option<MemVitals>, Option<MemVitals>) {
        let mut buf = [0u8; 4096];
        lock(&self.meminfo).read_head(&mut buf).map(parse_meminfo).unwrap_or_default()
    }
}

/// A /proc file kept open, read from offset 0 each time; reopened after an error.
struct ProcFile {
    path: &'static str,
    file: Option<std::fs::File>,
}

impl ProcFile {
    fn new(path: &'static str) -> ProcFile {
        ProcFile { path, file: None }
    }

    /// Up to `buf.len()` bytes of the file as it is now; logs and returns `None` on error.
    fn read_head<'a>(&mut self, buf: &'a mut [u8]) -> Option<&'a str> {
        use std::os::unix::fs::FileExt as _;
        if self.file.is_none() {
            self.file = std::fs::File::open(self.path)
                .map_err(|e| log::warn!("vitals: cannot open {}: {e}", self.path))
                .ok();
        }
        let file = self.file.as_ref()?;
        let mut len = 0;
        while len < buf.len() {
            match file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) => {
                    log::warn!("vitals: cannot read {}: {e}", self.path);
                    self.file = None;
                    return None;
                }
            }
        }
        // Proc files are ASCII; should a head end mid-character anyway, keep the valid prefix.
        let valid = std::str::from_utf8(&buf[..len]).map_or_else(|e| e.valid_up_to(), str::len);
        std::str::from_utf8(&buf[..valid]).ok()
    }
}

/// The cumulative cpu times since boot. The aggregate line comes first in /proc/stat, so a small
/// head of the file suffices.
fn read_cpu_times(stat: &mut ProcFile) -> Option<CpuTimes> {
    parse_proc_stat(stat.read_head(&mut [0; 512])?)
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
    const KEYS: [&str; 6] = ["MemTotal", "MemFree", "Buffers", "Cached", "SwapTotal", "SwapFree"];
    let mut v = [None::<u64>; 6];
    let mut found = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        if let Some(i) = KEYS.iter().position(|k| *k == key) {
            v[i] = value.trim_start().split(' ').next().and_then(|w| w.parse().ok());
            found += 1;
            if found == KEYS.len() {
                break;
            }
        }
    }
    let [total, free, buffers, cached, swap_total, swap_free] = v;
    let usage = |total: u64, used: u64| MemVitals { kb: used.to_string(), percent: percent(used, total, 0) };
    let kernel = buffers.unwrap_or(0) + cached.unwrap_or(0);
    let mem = total.zip(free).map(|(t, f)| usage(t, t.saturating_sub(f + kernel)));
    let swap = swap_total.zip(swap_free).map(|(t, f)| usage(t, t.saturating_sub(f)));
    (mem, swap)
}

/// The 1, 5 and 15 minute load averages as /proc/loadavg prints them (2 decimals), from one
/// `sysinfo(2)` call instead of opening and reading that file.
fn load_averages() -> Option<Vec<String>> {
    // SAFETY: sysinfo is plain data; the call only fills it in.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        log::warn!("vitals: sysinfo: {}", std::io::Error::last_os_error());
        return None;
    }
    Some(info.loads.iter().map(|&raw| load_text(raw)).collect())
}

/// One load average from sysinfo's fixed point (16 fraction bits), rounded as the kernel rounds
/// for /proc/loadavg: its own fixed point has 11 fraction bits, plus 1/200 before truncating to
/// hundredths.
fn load_text(raw: libc::c_ulong) -> String {
    let avenrun = (raw >> 5) + 2048 / 200;
    format!("{}.{:02}", avenrun >> 11, ((avenrun & 2047) * 100) >> 11)
}

/// Whole seconds since boot, from the clock /proc/uptime reads (CLOCK_BOOTTIME, suspend included).
fn uptime_secs() -> Option<u64> {
    // SAFETY: timespec is plain data; clock_gettime fills it in.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out pointer and CLOCK_BOOTTIME a valid clock.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        log::warn!("vitals: reading the boot-time clock: {}", std::io::Error::last_os_error());
        return None;
    }
    u64::try_from(ts.tv_sec).ok()
}

/// `part / total` in percent with `decimals` decimals, as Go's `%.Nf`; 0 for a zero total (no swap, /proc).
fn percent(part: u64, total: u64, decimals: usize) -> String {
    let pct = part.min(total) as f64 * 100.0 / total.max(1) as f64;
    format!("{pct:.decimals$}")
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
pub fn collect(sampler: &Sampler, disks: &DiskPaths, require_mount_points: bool) -> Vitals {
    let (mem, swap) = sampler.memory();
    Vitals {
        cpu: sampler.cpu().map(|c| CpuVitals {
            sys: format!("{:.1}", c.sys),
            user: format!("{:.1}", c.user),
            wait: format!("{:.1}", c.wait),
        }),
        disk: DiskVitals {
            ephemeral: optional_disk(&disks.ephemeral, require_mount_points),
            persistent: optional_disk(&disks.persistent, require_mount_points),
            system: disk_usage(&disks.system),
        },
        load: load_averages().unwrap_or_default(),
        mem,
        swap,
        uptime: uptime_secs().map(|secs| UptimeVitals { secs }),
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
        // sysinfo's fixed point is the kernel's (11 fraction bits) shifted by 5.
        let raw = |avenrun: libc::c_ulong| avenrun << 5;
        assert_eq!(load_text(raw(0)), "0.00");
        assert_eq!(load_text(raw(2048)), "1.00");
        assert_eq!(load_text(raw(4833)), "2.36");
        assert_eq!(load_text(raw(2047)), "1.00", "rounded as /proc/loadavg rounds");
        assert_eq!(load_averages().map(|l| l.len()), Some(3));
        // The boot-time clock is the one /proc/uptime prints (a second may pass between them).
        let proc_uptime: f64 =
            std::fs::read_to_string("/proc/uptime").unwrap().split(' ').next().unwrap().parse().unwrap();
        let secs = uptime_secs().expect("boot-time clock");
        assert!(secs.abs_diff(proc_uptime as u64) <= 1, "{secs} vs {proc_uptime}");
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
        // Windows of an hour: the value read at once is the share since boot, and reading again
        // neither takes a new reading nor changes the figure.
        let sampler = Sampler::start(Duration::from_secs(3600));
        let first = sampler.cpu().expect("cpu share since boot, before the first window");
        assert!((0.0..=100.0).contains(&(first.user + first.sys + first.wait)), "{first:?}");
        let taken = lock(&sampler.cpu).previous.map(|(_, at)| at);
        assert_eq!(sampler.cpu(), Some(first));
        assert_eq!(lock(&sampler.cpu).previous.map(|(_, at)| at), taken);
    }

    #[test]
    fn a_reading_after_the_window_starts_the_next_one() {
        let sampler = Sampler::start(Duration::ZERO);
        let (first_times, first_at) = lock(&sampler.cpu).previous.expect("a first reading");
        // The jiffy counters move with time (idle time counts), so a later reading finds a window.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&sampler.cpu).previous.is_some_and(|(_, at)| at == first_at) {
            assert!(Instant::now() < deadline, "no new window after 10 s");
            std::thread::sleep(Duration::from_millis(5));
            let pct = sampler.cpu().expect("cpu");
            assert!((0.0..=100.0).contains(&(pct.user + pct.sys + pct.wait)), "{pct:?}");
        }
        let (times, _) = lock(&sampler.cpu).previous.expect("a reading");
        assert!(times.iter().sum::<u64>() > first_times.iter().sum::<u64>());
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
        let sampler = Sampler::start(Duration::from_millis(50));
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
