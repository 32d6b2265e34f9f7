//! End-to-end benchmark of `compile_package` on a compilation VM: a ~100 MB source package (mixed
//! incompressible "binaries" and compressible text) whose `packaging` copies its sources into the
//! install target with `cp -a`, compiled by the release agent over NATS mTLS from a local blobstore.
//!
//! Why the figure is "overhead = round trip - script time": the packaging script's own run time is
//! the release author's business and can be anything from a second to an hour; what the agent adds
//! (fetching and verifying the source, unpacking it, installing dependencies, packing and hashing
//! the install target, uploading it, cleaning up, and the director's polling) is what an agent
//! implementation controls. The script writes `date +%s.%N` at its start and end into a file outside
//! the install target, so its own time is measured by itself, not guessed from outside.
//!
//! Why the tools baseline: the Go agent does the same work with `tar xzf` and `tar czf`; timing those
//! two on the same source shows whether the agent's overhead is in line with the system's own tools.
//!
//! Why a fresh agent per round: its VmHWM is then the peak of that one compile (streaming everything
//! through fixed buffers is what keeps it small however large the package is).

mod support;

use bosh_agent::client::Nats;
use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY};
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    director, mb, nats_settings, seconds, sync, wait_ready, AgentProcess, DataBench, Report, Samples,
    TestPki, XorShift, POLL, TARGET_HWM_BYTES,
};

/// Incompressible files (sizes in bytes): 60 MB of "binaries" and tarballs vendored in the source.
const RANDOM_FILES: [usize; 8] =
    [16_000_000, 12_000_000, 10_000_000, 8_000_000, 6_000_000, 4_000_000, 3_000_000, 1_000_000];
/// Compressible text files (sources, docs) and their size: 40 MB together.
const TEXT_FILES: usize = 160;
const TEXT_BYTES: usize = 250_000;
/// Measured compiles (each with a fresh agent); the table shows medians.
const ROUNDS: usize = 3;
/// A compile slower than this is a failure, not a sample.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(300);
/// Targets (from the issue): agent overhead under 1.5 s; peak RSS reported against 20 MB, as for apply.
const TARGET_OVERHEAD: Duration = Duration::from_millis(1500);

fn main() {
    let started = Instant::now();
    let DataBench { agent_bin, pki, nats, blobstore, scratch } = DataBench::start();
    let mut report = Report::new("tools");

    let times_file = scratch.path().join("packaging-times");
    let (source_id, source_sha1, source_bytes) = write_source(blobstore.path(), &times_file);
    sync();
    report.info("source package: files", format!("{} (+ packaging)", RANDOM_FILES.len() + TEXT_FILES));
    report.info("source package: uncompressed", mb(uncompressed_bytes()));
    report.info("source package: compressed (.tgz, gzip fast)", mb(source_bytes));

    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        rounds.push(compile_once(
            &agent_bin,
            &pki,
            &nats.url(),
            blobstore.path(),
            &source_id,
            &source_sha1,
            &times_file,
        ));
    }
    let tools = tools_baseline(&blobstore.path().join(&source_id), scratch.path());

    let rt = Samples::new(rounds.iter().map(|r| r.round_trip).collect());
    let script = Samples::new(rounds.iter().map(|r| r.script).collect());
    let overhead = Samples::new(rounds.iter().map(|r| r.round_trip.saturating_sub(r.script)).collect());
    report.info("compile_package round trip, median", seconds(rt.p50()));
    report.info("packaging script (cp -a), median", seconds(script.p50()));
    report.row(
        "agent overhead = round trip - script, median",
        seconds(overhead.p50()),
        seconds(tools),
        format!("{:.2}x", overhead.p50().as_secs_f64() / tools.as_secs_f64()),
        format!("< {:.1} s", TARGET_OVERHEAD.as_secs_f64()),
        Some(overhead.p50() < TARGET_OVERHEAD),
    );
    let per_round: Vec<String> = rounds
        .iter()
        .map(|r| format!("{:.2}", r.round_trip.saturating_sub(r.script).as_secs_f64()))
        .collect();
    report.info("  overhead per round (s)", per_round.join(" / "));
    report.info("  tools = tar xzf source + tar czf install dir", seconds(tools));
    // The agent's own account of its steps (its info log line), median per step over the rounds.
    let steps: Vec<Vec<(String, f64)>> = rounds.iter().map(|r| parse_phases(&r.phases)).collect();
    for (k, (name, _)) in steps.first().cloned().unwrap_or_default().iter().enumerate() {
        let mut v: Vec<f64> = steps.iter().filter_map(|s| s.get(k).map(|(_, t)| *t)).collect();
        v.sort_by(f64::total_cmp);
        report.info(&format!("  agent step: {name}, median"), format!("{:.2} s", v[v.len() / 2]));
    }
    let hwm = rounds.iter().map(|r| r.hwm_kib).max().unwrap_or(0);
    report.memory("agent VmHWM during compile (max)", hwm, Some(TARGET_HWM_BYTES));
    report.info("compiled package (.tgz, agent)", mb(rounds[0].compiled_bytes));

    let title = [
        "bosh-agent compile benchmark: ~100 MB source, packaging = cp -a, release agent over NATS mTLS, \
         local blobstore"
            .to_string(),
        format!(
            "{ROUNDS} compiles, fresh agent each, medians; get_task polled every {} ms",
            POLL.as_millis()
        ),
    ];
    report.print(&title, started.elapsed());
}

/// One compile's figures.
struct Round {
    round_trip: Duration,
    script: Duration,
    hwm_kib: u64,
    compiled_bytes: u64,
    /// The agent's own account of where the time went (its info log line).
    phases: String,
}

/// Starts a fresh agent, compiles the source, checks the uploaded blob, reads the agent's memory.
fn compile_once(
    agent_bin: &Path,
    pki: &TestPki,
    url: &str,
    blobstore: &Path,
    source_id: &str,
    source_sha1: &str,
    times_file: &Path,
) -> Round {
    let id = format!("compile-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let mut settings = nats_settings(pki, &id, url);
    settings["blobstore"] = json!({"provider": "local", "options": {"blobstore_path": blobstore}});
    let mut agent = AgentProcess::start_logging(agent_bin, &settings, "info");
    let mut to_agent = director(pki, url, &id);
    wait_ready(&mut to_agent, "agent", &mut agent);
    let _ = fs::remove_file(times_file);
    sync();

    let args = [json!(source_id), json!(source_sha1), json!("big"), json!("1.0.1"), json!({})];
    let (round_trip, reply) = run_task(&mut to_agent, "compile_package", &args, &agent);
    let mem = agent.memory();
    let script = script_time(times_file);

    let result = &reply["value"]["result"];
    let blob_id = result["blobstore_id"].as_str().unwrap_or_else(|| panic!("no result: {reply}"));
    let blob_path = blobstore.join(blob_id);
    let data = fs::read(&blob_path).expect("reading the compiled blob");
    let sha1: String =
        digest(&SHA1_FOR_LEGACY_USE_ONLY, &data).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(result["sha1"], sha1, "the returned sha1 is not the uploaded blob's");
    verify_compiled(&blob_path);
    let compiled_bytes = data.len() as u64;
    let log = agent.log();
    let phases = log
        .lines()
        .find_map(|l| l.split_once("Compiled package big 1.0.1 in ").map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| "(not logged)".into());
    drop(data);
    fs::remove_file(&blob_path).expect("removing the compiled blob");
    assert!(!agent.base().join("data/compile").exists(), "compile dir left behind");
    drop(to_agent);
    agent.stop();
    drop(agent);
    sync();
    Round { round_trip, script, hwm_kib: mem.hwm_kib, compiled_bytes, phases }
}

/// Sends an async request and polls `get_task` every `POLL`; timed as the director sees it.
fn run_task(t: &mut Nats, method: &str, args: &[Value], agent: &AgentProcess) -> (Duration, Value) {
    let (took, reply) = support::run_task(t, method, args, COMPILE_TIMEOUT);
    assert!(
        reply["value"]["result"].is_object(),
        "{method} failed: {reply}\n--- agent log ---\n{}",
        agent.log()
    );
    (took, reply)
}

/// `"1.37 s (fetch 0.23 s, unpack 0.43 s, ...)"` → `[("fetch", 0.23), ("unpack", 0.43), ...]`.
fn parse_phases(line: &str) -> Vec<(String, f64)> {
    let inner = line.split_once('(').and_then(|(_, r)| r.split_once(')')).map_or("", |(i, _)| i);
    inner
        .split(", ")
        .filter_map(|p| {
            let mut w = p.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// The packaging script's own run time, from the two timestamps it wrote.
fn script_time(times_file: &Path) -> Duration {
    let text = fs::read_to_string(times_file).expect("packaging wrote no timestamps");
    let stamps: Vec<f64> = text.split_whitespace().filter_map(|s| s.parse().ok()).collect();
    assert_eq!(stamps.len(), 2, "expected start and end stamps, got {text:?}");
    Duration::from_secs_f64((stamps[1] - stamps[0]).max(0.0))
}

/// Unpacks the compiled blob with the system `tar` (untimed) and checks it holds every source file
/// with the right bytes for a sample.
fn verify_compiled(blob: &Path) {
    let dir = tempfile::tempdir().expect("verify dir");
    let st = Command::new("tar").arg("xzf").arg(blob).arg("-C").arg(dir.path()).status().expect("tar");
    assert!(st.success(), "the compiled blob is not a .tgz");
    let files = source_files();
    // packaging copies `src/.`, so `src/x` is installed as `x`.
    let installed = |f: &SrcFile| dir.path().join(f.path.strip_prefix("src/").unwrap_or(&f.path));
    for f in &files {
        let p = installed(f);
        let len = fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).len();
        assert_eq!(len as usize, f.size, "{}", f.path);
    }
    for f in [&files[0], &files[files.len() - 1]] {
        assert!(fs::read(installed(f)).expect("read") == f.contents(), "{} differs", f.path);
    }
}

/// What the Go agent's tools take for the agent's share of the work: `tar xzf` of the source and
/// `tar czf` of the result (the same tree, since packaging copies the sources).
fn tools_baseline(source: &Path, scratch: &Path) -> Duration {
    let dir = scratch.join("tools");
    fs::create_dir_all(&dir).expect("tools dir");
    sync();
    let start = Instant::now();
    let st = Command::new("tar").arg("xzf").arg(source).arg("-C").arg(&dir).stdin(Stdio::null()).status();
    assert!(matches!(st, Ok(s) if s.success()), "tar xzf failed");
    let out = scratch.join("tools.tgz");
    let st = Command::new("tar").arg("czf").arg(&out).arg("-C").arg(dir.join("src")).arg(".").status();
    assert!(matches!(st, Ok(s) if s.success()), "tar czf failed");
    let took = start.elapsed();
    fs::remove_dir_all(&dir).expect("removing tools dir");
    fs::remove_file(&out).expect("removing tools tgz");
    took
}

/// One source file; contents are a function of its seed, so checks can regenerate them.
struct SrcFile {
    path: String,
    random: bool,
    size: usize,
    seed: u64,
}

impl SrcFile {
    fn contents(&self) -> Vec<u8> {
        let mut rng = XorShift::new(self.seed);
        if self.random {
            let mut v = vec![0u8; self.size];
            rng.fill(&mut v);
            v
        } else {
            text(&mut rng, self.size)
        }
    }
}

fn source_files() -> Vec<SrcFile> {
    let mut files = Vec::new();
    for (k, &size) in RANDOM_FILES.iter().enumerate() {
        files.push(SrcFile {
            path: format!("src/vendor/blob-{k}.tar.xz"),
            random: true,
            size,
            seed: 7 + k as u64,
        });
    }
    for k in 0..TEXT_FILES {
        let path = format!("src/lib/dir-{:02}/file-{k:03}.c", k % 16);
        files.push(SrcFile { path, random: false, size: TEXT_BYTES, seed: 1000 + k as u64 });
    }
    files
}

fn uncompressed_bytes() -> u64 {
    source_files().iter().map(|f| f.size as u64).sum()
}

/// Writes the source tarball into the blobstore; returns (id, sha1 hex, compressed size).
fn write_source(blobstore: &Path, times_file: &Path) -> (String, String, u64) {
    let id = bosh_agent::ids::uuid_v4();
    let path: PathBuf = blobstore.join(&id);
    let out = BufWriter::new(File::create(&path).expect("creating source tarball"));
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(out, flate2::Compression::fast()));
    let times = times_file.to_str().expect("UTF-8 scratch path");
    let packaging = format!(
        "echo \"$(date +%s.%N)\" > {times}\ncp -a src/. \"$BOSH_INSTALL_TARGET/\"\necho \"$(date +%s.%N)\" >> {times}\n"
    );
    append(&mut b, "packaging", 0o755, packaging.as_bytes());
    for f in source_files() {
        append(&mut b, &f.path, 0o644, &f.contents());
    }
    let mut out = b.into_inner().and_then(|gz| gz.finish()).expect("finishing source tarball");
    out.flush().expect("flushing source tarball");
    drop(out);
    let data = fs::read(&path).expect("reading source tarball");
    let sha1 = digest(&SHA1_FOR_LEGACY_USE_ONLY, &data).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    (id, sha1, data.len() as u64)
}

fn append<W: io::Write>(b: &mut tar::Builder<W>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, path, data).expect("appending entry");
}

/// C-ish source text from a small vocabulary: compresses about as well as real sources.
const WORDS: [&str; 16] = [
    "int", "return", "static", "struct", "package", "compile", "if", "else", "for", "while", "void", "const",
    "char", "size_t", "NULL", "agent",
];

fn text(rng: &mut XorShift, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 16);
    while out.len() < size {
        let r = rng.next();
        out.extend_from_slice(WORDS[(r & 15) as usize].as_bytes());
        out.push(if (r >> 8).is_multiple_of(10) { b'\n' } else { b' ' });
    }
    out.truncate(size);
    out
}
