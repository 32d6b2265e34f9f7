//! Fixtures shared by the end-to-end benchmarks (`benches/*.rs`): the release agent as a child
//! process with its memory read from `/proc`, director connections, interleaved sampling and the
//! report table; the throw-away PKI, the mutual-TLS nats-server, the director-style settings and the
//! HTTP request reader are the integration tests' own (`tests/common`), included by path.
//!
//! Why a module of its own: every benchmark must start the agent, the server and the certificates in
//! exactly the same way, or their figures would not describe the same agent; one copy keeps them
//! from drifting apart. Why not all of `tests/common`: the tests' agent fixture (1 s heartbeat, debug
//! logging, the debug binary) is tuned for assertions, not for measuring.

// Each bench compiles this module on its own and uses a different part of it; what one of them does
// not use is not dead for the other.
#![allow(dead_code)]

#[path = "../../tests/common/certs.rs"]
pub mod certs;
#[path = "../../tests/common/http_listener.rs"]
pub mod http_listener;
#[path = "../../tests/common/nats_server.rs"]
pub mod nats_server;
pub mod peers;
#[path = "../../tests/common/poll.rs"]
mod poll;
#[path = "../../tests/common/settings.rs"]
pub mod settings;

pub use certs::TestPki;
pub use nats_server::{NatsServer, NatsServerOptions};
pub use peers::Peer;
/// Settings as a director-created VM gets them; benches add to them (blobstore, `env.bosh.parallel`).
#[allow(unused_imports, reason = "benches/polls.rs drives an HTTPS agent and needs no NATS settings")]
pub use settings::nats_settings;

use bosh_agent::client::{Nats, Transport};
use bosh_agent::mbus::nats::{Message, NatsConnection, NatsOptions};
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The agents' heartbeat interval: short enough that the memory figures can also be read once the
/// agent has settled after a burst (it trims heap and code pages between heartbeats).
pub const HEARTBEAT_SECS: u64 = 5;
/// How often the benches' director polls a running task: bounds the timing error of each task.
pub const POLL: Duration = Duration::from_millis(20);
/// How long the benches' director waits for any one reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The data-path benches' target for the agent's peak resident memory (20 MB, decimal).
pub const TARGET_HWM_BYTES: u64 = 20_000_000;
use tempfile::TempDir;

/// The release artifact, the static binary `target/x86_64-unknown-linux-musl/release/bosh-agent`, or
/// `BOSH_AGENT_BIN`; a missing binary is an error, not a skip, because silently benchmarking nothing
/// would look like a pass.
pub fn agent_binary() -> PathBuf {
    let path = std::env::var_os("BOSH_AGENT_BIN").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-musl/release/bosh-agent")
    });
    assert!(
        path.is_file(),
        "{} not found: run scripts/release first (scripts/bench does), or set BOSH_AGENT_BIN",
        path.display()
    );
    path
}

/// A director-side client (protocol 3, `director.<uuid>.<id>.<uuid>` reply subjects) for `id`.
pub fn director(pki: &TestPki, url: &str, id: &str) -> Nats {
    let tls = pki.nats_tls("director.bosh-internal");
    Nats::connect(url, Some(tls), id, Instant::now() + Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("director connection for {id}: {e}"))
}

/// Pings until `what` answers (the agent connects in the background after start).
pub fn wait_ready(t: &mut Nats, what: &str, agent: &mut impl Peer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        agent.check_alive();
        let attempt = Instant::now() + Duration::from_millis(500);
        if matches!(t.request("ping", &[], attempt), Ok(v) if v == json!({"value": "pong"})) {
            return;
        }
        // Not subscribed yet: the server says so at once ("no reply"), so pace the retries.
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not answer ping within 30 s\n--- agent log ---\n{}", agent.log());
}

/// Runs `a` and `b` alternately `n` times each (starting side alternates too, so neither always
/// follows the other) and collects both sets of samples. Alternating is what makes the ratio of the
/// two meaningful on a noisy machine: a slow moment hits both sides instead of one.
pub fn interleave(
    n: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (Samples, Samples) {
    let (mut sa, mut sb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if i % 2 == 0 {
            sa.push(a());
            sb.push(b());
        } else {
            sb.push(b());
            sa.push(a());
        }
    }
    (Samples::new(sa), Samples::new(sb))
}

/// Duration samples, sorted once.
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Samples {
        assert!(!v.is_empty(), "no samples");
        v.sort_unstable();
        Samples(v)
    }
    /// Nearest-rank percentile.
    pub fn pct(&self, p: f64) -> Duration {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
    pub fn p50(&self) -> Duration {
        self.pct(50.0)
    }
    pub fn p99(&self) -> Duration {
        self.pct(99.0)
    }
    pub fn min(&self) -> Duration {
        self.0[0]
    }
    pub fn max(&self) -> Duration {
        self.0[self.0.len() - 1]
    }
}

/// Whether a ratio must stay under or above its target.
#[derive(Clone, Copy)]
pub enum Target {
    /// Slower-is-worse figures (time, latency): ratio <= target.
    AtMost(f64),
    /// Faster-is-better figures (throughput): ratio >= target.
    AtLeast(f64),
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::AtMost(t) => format!("<= {t:.1}x"),
            Target::AtLeast(t) => format!(">= {t:.1}x"),
        }
    }
    fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtMost(t) => ratio <= t,
            Target::AtLeast(t) => ratio >= t,
        }
    }
}

/// The result table: one row per figure with its target and verdict, and the list of misses for the
/// summary line. The column names are the bench's (what the agent is compared with differs).
pub struct Report {
    header: [String; 6],
    rows: Vec<[String; 6]>,
    missed: Vec<String>,
    checked: usize,
}

impl Report {
    /// `baseline` names the second column, e.g. `echo` or `tar`; the ratio column is `agent/<it>`.
    pub fn new(baseline: &str) -> Report {
        let header = ["figure", "agent", baseline, &format!("agent/{baseline}"), "target", "verdict"]
            .map(String::from);
        Report { header, rows: Vec::new(), missed: Vec::new(), checked: 0 }
    }

    pub fn row(
        &mut self,
        name: &str,
        agent: String,
        baseline: String,
        ratio: String,
        target: String,
        ok: Option<bool>,
    ) {
        let verdict = match ok {
            Some(true) => "ok".to_string(),
            Some(false) => "MISS".to_string(),
            None => "-".to_string(),
        };
        if let Some(ok) = ok {
            self.checked += 1;
            if !ok {
                self.missed.push(name.to_string());
            }
        }
        self.rows.push([name.to_string(), agent, baseline, ratio, target, verdict]);
    }

    /// Two already formatted figures and their ratio, checked against `target` when given.
    pub fn compare(
        &mut self,
        name: &str,
        agent: String,
        baseline: String,
        ratio: f64,
        target: Option<Target>,
    ) {
        self.row(
            name,
            agent,
            baseline,
            format!("{ratio:.2}x"),
            target.map_or("-".into(), Target::text),
            target.map(|t| t.met(ratio)),
        );
    }

    /// Latencies in microseconds; the ratio is agent/baseline, lower is better.
    pub fn latency(&mut self, name: &str, agent: Duration, baseline: Duration, target: Option<f64>) {
        let ratio = agent.as_secs_f64() / baseline.as_secs_f64();
        self.compare(name, micros(agent), micros(baseline), ratio, target.map(Target::AtMost));
    }

    /// Wall-clock times in seconds; the ratio is agent/baseline, lower is better.
    pub fn elapsed(&mut self, name: &str, agent: Duration, baseline: Duration, target: Option<f64>) {
        let ratio = agent.as_secs_f64() / baseline.as_secs_f64();
        self.compare(name, seconds(agent), seconds(baseline), ratio, target.map(Target::AtMost));
    }

    /// Throughputs in decimal MB/s; the ratio is agent/baseline, higher is better.
    pub fn throughput(&mut self, name: &str, agent_mbs: f64, baseline_mbs: f64, target: Option<f64>) {
        self.compare(
            name,
            format!("{agent_mbs:.0} MB/s"),
            format!("{baseline_mbs:.0} MB/s"),
            agent_mbs / baseline_mbs,
            target.map(Target::AtLeast),
        );
    }

    pub fn ratio(&mut self, name: &str, ratio: f64, target: f64) {
        self.compare(name, "".into(), "".into(), ratio, Some(Target::AtMost(target)));
    }

    pub fn info(&mut self, name: &str, value: String) {
        self.row(name, value, "".into(), "".into(), "-".into(), None);
    }

    /// A kernel figure in KiB, shown and checked in decimal megabytes (how the targets are stated).
    pub fn memory(&mut self, name: &str, kib: u64, target: Option<u64>) {
        let bytes = kib * 1024;
        self.row(
            name,
            format!("{:.2} MB", bytes as f64 / 1e6),
            "".into(),
            "".into(),
            target.map_or("-".into(), |t| format!("< {} MB", t / 1_000_000)),
            target.map(|t| bytes < t),
        );
    }

    pub fn size(&mut self, name: &str, bytes: u64, target: u64) {
        self.row(
            name,
            format!("{:.2} MB", bytes as f64 / 1e6),
            "".into(),
            "".into(),
            format!("< {} MB", target / 1_000_000),
            Some(bytes < target),
        );
    }

    /// Prints `title` lines, the table and the summary line.
    pub fn print(&self, title: &[String], elapsed: Duration) {
        println!();
        for t in title {
            println!("{t}");
        }
        println!();
        print_table(&self.header, &self.rows);
        println!();
        print_summary(self.checked, &self.missed, elapsed);
    }
}

/// Prints a table: the header, a rule, the rows; the first column left-aligned, the others right.
pub fn print_table<const N: usize>(header: &[String; N], rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in std::iter::once(header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |r: &[String; N]| {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    };
    line(header);
    println!("{}", "-".repeat(widths.iter().sum::<usize>() + 2 * (N - 1)));
    for r in rows {
        line(r);
    }
}

/// The summary line every bench ends with: how many of the `checked` targets were met, which missed.
pub fn print_summary(checked: usize, missed: &[String], elapsed: Duration) {
    let met = checked - missed.len();
    if missed.is_empty() {
        println!("SUMMARY: all {met}/{checked} targets met ({:.0} s)", elapsed.as_secs_f64());
    } else {
        println!(
            "SUMMARY: {met}/{checked} targets met; missed: {} ({:.0} s)",
            missed.join(", "),
            elapsed.as_secs_f64()
        );
    }
}

pub fn micros(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

pub fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Bytes as decimal megabytes, as the issues' targets are written.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The machine's cores, as the benches' titles give them.
pub fn cores() -> String {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{n} cores")
}

/// The load average now (1, 5, 15 minutes): how busy the shared machine was around a run.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A NATS connection subscribed to `subject` as the client `cn` of the PKI, connected and its
/// subscription confirmed; what arrives goes to the receiver.
pub fn subscriber(
    pki: &TestPki,
    url: &str,
    cn: &str,
    subject: &str,
) -> (NatsConnection, std::sync::mpsc::Receiver<Message>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = NatsOptions {
        urls: vec![url.to_string()],
        tls: Some(pki.nats_tls(cn)),
        subscriptions: vec![subject.to_string()],
        name: cn.to_string(),
    };
    let conn = NatsConnection::start(opts, tx);
    assert!(
        conn.wait_connected(Duration::from_secs(15)) && conn.flush(Duration::from_secs(15)),
        "{cn} could not connect and subscribe to {subject}"
    );
    (conn, rx)
}

/// Flushes dirty pages, so writeback of one phase's files does not land in the next phase's time.
pub fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// What the data-path benches (apply, compile, logs) start from: the release agent binary, a PKI
/// and a mutual-TLS nats-server, a local blobstore directory and a scratch directory.
pub struct DataBench {
    pub agent_bin: PathBuf,
    pub pki: TestPki,
    pub nats: NatsServer,
    pub blobstore: TempDir,
    pub scratch: TempDir,
}

impl DataBench {
    /// Finds the agent and starts the server; panics (failing the bench) when either is missing.
    pub fn start() -> DataBench {
        let agent_bin = agent_binary();
        let pki = TestPki::new();
        let nats = NatsServer::start(&pki, NatsServerOptions::default());
        let blobstore = tempfile::tempdir().expect("blobstore directory");
        let scratch = tempfile::tempdir().expect("scratch directory");
        DataBench { agent_bin, pki, nats, blobstore, scratch }
    }
}

/// Kills a child process when dropped, so a panicking benchmark leaves no servers behind.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("process running").id()
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A process's memory as the kernel reports it.
pub struct Memory {
    pub rss_kib: u64,
    /// The peak of the RSS since the process started: what a fresh agent needed at most.
    pub hwm_kib: u64,
    pub threads: u64,
    /// Anonymous (heap and stacks) part of the RSS, from smaps_rollup; the rest is the binary's and
    /// libc's pages.
    pub anon_kib: u64,
    /// `RssAnon` of /proc/<pid>/status: resident anonymous memory, what the process alone costs.
    pub rss_anon_kib: u64,
    /// Proportional set size: shared pages (the binary's code, shared by every agent on a host)
    /// counted in shares. The figure that adds up across processes.
    pub pss_kib: u64,
}

/// Reads [`Memory`] of process `pid`; `None` once it is gone.
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Some(Memory {
        rss_kib: field(&status, "VmRSS:"),
        hwm_kib: field(&status, "VmHWM:"),
        threads: field(&status, "Threads:"),
        anon_kib: field(&rollup, "Anonymous:"),
        rss_anon_kib: field(&status, "RssAnon:"),
        pss_kib: field(&rollup, "Pss:"),
    })
}

/// The CPU time process `pid` has used so far, all its threads (exited ones too), to the
/// nanosecond: the kernel's process CPU clock.
pub fn cpu_time(pid: u32) -> Duration {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out pointer; the call only looks the process up.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    assert_eq!(rc, 0, "no CPU clock for process {pid} (error {rc})");
    // SAFETY: timespec is plain data; clock_gettime fills it in.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `clock` came from clock_getcpuclockid and `ts` is a valid out pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "reading process {pid}'s CPU clock: {}", std::io::Error::last_os_error());
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Context switches (voluntary and not) of the threads process `pid` has now: each is the thread
/// going to sleep or being preempted, so between requests it counts wakeups.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The release agent, started as a stemcell starts it, on the dummy platform with a 30 s heartbeat.
pub struct AgentProcess {
    child: ChildGuard,
    dir: TempDir,
}

impl AgentProcess {
    /// Starts the agent with `settings` (see [`agent_settings`]) behind a File settings source.
    pub fn start(binary: &Path, settings: &Value) -> AgentProcess {
        AgentProcess::start_logging(binary, settings, "warn")
    }

    /// Like [`AgentProcess::start`] with another log level (`info` lets a bench read the agent's
    /// own timing lines, e.g. the phases of a compile).
    pub fn start_logging(binary: &Path, settings: &Value, level: &str) -> AgentProcess {
        AgentProcess::start_with_sources(binary, settings, None, level)
    }

    /// Like [`AgentProcess::start_logging`] with the given `Infrastructure.Settings.Sources` array
    /// instead of the File source (`settings` is then written but not read), e.g. an HTTP metadata
    /// source served by the bench.
    pub fn start_with_sources(
        binary: &Path,
        settings: &Value,
        sources: Option<Value>,
        level: &str,
    ) -> AgentProcess {
        AgentProcess::start_configured(binary, settings, sources, level, HEARTBEAT_SECS)
    }

    /// The most general start: settings source, log level and heartbeat interval (seconds).
    pub fn start_configured(
        binary: &Path,
        settings: &Value,
        sources: Option<Value>,
        level: &str,
        heartbeat_secs: u64,
    ) -> AgentProcess {
        let dir = tempfile::tempdir().expect("agent directory");
        let p = |name: &str| dir.path().join(name).to_str().expect("UTF-8 temp path").to_string();
        std::fs::create_dir_all(dir.path().join("base/bosh")).expect("base dir");
        std::fs::write(p("settings.json"), settings.to_string()).expect("settings");
        let sources =
            sources.unwrap_or_else(|| json!([{"Type": "File", "SettingsPath": p("settings.json")}]));
        let config = json!({"Platform": {"Linux": {}}, "Infrastructure": {"Settings": {"Sources": sources}}});
        std::fs::write(p("agent.json"), config.to_string()).expect("agent.json");
        let log = File::create(p("agent.log")).expect("agent log");
        let child = Command::new(binary)
            .args(["-P", "dummy", "-M", "dummy", "-l", level, "-h", &heartbeat_secs.to_string()])
            .args(["-C", &p("agent.json"), "-b", &p("base")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        AgentProcess { child: ChildGuard::new(child), dir }
    }

    /// The agent's `-b` base directory (`packages/`, `data/`, `bosh/` live here).
    pub fn base(&self) -> PathBuf {
        self.dir.path().join("base")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn check_alive(&mut self) {
        if let Some(status) = self.child.exited() {
            panic!("agent exited ({status})\n--- agent log ---\n{}", self.log());
        }
    }

    /// Its memory and threads now (see [`Memory`]).
    pub fn memory(&mut self) -> Memory {
        self.check_alive();
        let pid = self.child.pid();
        memory_of(pid).unwrap_or_else(|| panic!("reading /proc/{pid}: the agent is gone"))
    }

    pub fn stop(&mut self) {
        self.child.stop();
    }
}

impl Peer for AgentProcess {
    fn pid(&self) -> u32 {
        self.child.pid()
    }
    fn check_alive(&mut self) {
        AgentProcess::check_alive(self)
    }
    fn log(&self) -> String {
        AgentProcess::log(self)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Stop before the temp dir goes, so the agent is not writing into a directory being removed.
        self.child.stop();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// xorshift64: a fast, seedable source of incompressible bytes for generated test data.
pub struct XorShift(u64);

impl XorShift {
    /// A generator; any seed works (zero is mapped away).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    /// The next 64 pseudo-random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Sends an async request, then `get_task` every [`POLL`] until it is no longer running, timed from
/// the request to the reply that says it is done, as the director sees it; returns that reply.
pub fn run_task(t: &mut Nats, method: &str, args: &[Value], task_timeout: Duration) -> (Duration, Value) {
    let start = Instant::now();
    let first = t.request(method, args, start + REQUEST_TIMEOUT).expect(method);
    let id = first["value"]["agent_task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} gave no task: {first}"))
        .to_string();
    loop {
        std::thread::sleep(POLL);
        let reply = t.request("get_task", &[json!(id)], Instant::now() + REQUEST_TIMEOUT).expect("get_task");
        if reply["value"]["state"] == "running" && reply["value"]["agent_task_id"] == id {
            assert!(start.elapsed() < task_timeout, "{method} still running after {task_timeout:?}");
            continue;
        }
        return (start.elapsed(), reply);
    }
}
