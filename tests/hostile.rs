//! Hostile input, floods and crashes, against the real agent binary, a real mutual-TLS nats-server and
//! real tarballs: traversal through names and paths, fuzzed envelopes and arguments (a deterministic
//! mutation loop with a fixed seed, bounded), long and forged `reply_to`s, secrets in debug logs,
//! stop signals, task floods, archive bombs on a small tmpfs, kills during apply, and the temp files
//! killed work leaves. Long soak variants live in `benches/hostile.rs`.

use crate::common::agent::{exception, value, AgentEnv};
use crate::common::nats_server::NatsServerOptions;
use crate::common::tarball::{digests, file, script, tgz};
use crate::common::wait_until;
use bosh_agent::mbus::nats::{Message, NatsConnection, NatsOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// A director-certified NATS client that publishes raw bodies to `agent.<id>` and collects whatever
/// arrives on its own inbox, for envelopes the normal client would never send.
struct Raw {
    conn: NatsConnection,
    rx: Receiver<Message>,
    inbox: String,
    agent_id: String,
}

impl Raw {
    fn connect(env: &AgentEnv) -> Raw {
        let inbox = format!("director.{}", bosh_agent::ids::uuid_v4());
        let (tx, rx) = mpsc::channel();
        let opts = NatsOptions {
            urls: vec![env.nats.url()],
            tls: Some(env.pki.nats_tls("director.bosh-internal")),
            subscriptions: vec![format!("{inbox}.>")],
            name: "hostile".into(),
        };
        let conn = NatsConnection::start(opts, tx);
        assert!(conn.wait_connected(crate::common::CONNECT_WITHIN) && conn.flush(Duration::from_secs(5)));
        Raw { conn, rx, inbox, agent_id: env.agent.agent_id.clone() }
    }

    fn reply_to(&self, n: usize) -> String {
        format!("{}.{}.{n}", self.inbox, self.agent_id)
    }

    fn send(&self, body: &[u8]) {
        self.conn.publish(&format!("agent.{}", self.agent_id), body).expect("publishing");
    }

    /// Replies received until every subject in `want` answered or `timeout` passed, by subject.
    fn collect(&self, want: &[String], timeout: Duration) -> HashMap<String, Value> {
        let mut got = HashMap::new();
        let deadline = Instant::now() + timeout;
        while want.iter().any(|w| !got.contains_key(w)) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    let v = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                    got.insert(m.subject, v);
                }
                Err(_) => break,
            }
        }
        got
    }

    /// Sends one request with arguments `args` and waits for its reply.
    fn request(&self, n: usize, method: &str, args: &Value) -> Value {
        let reply_to = self.reply_to(n);
        let body = json!({"protocol": 3, "method": method, "arguments": args, "reply_to": reply_to});
        self.send(body.to_string().as_bytes());
        let mut got = self.collect(std::slice::from_ref(&reply_to), Duration::from_secs(20));
        got.remove(&reply_to).unwrap_or_else(|| panic!("no reply to {method} {args}"))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.conn.shutdown();
    }
}

/// A fixed-seed xorshift: the same mutations on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every file under `dir` with its size and mode, skipping `skip` (the agent's own base dir and log).
fn snapshot(dir: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, (u64, u32, bool)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if skip.contains(&p) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            out.insert(p.clone(), (m.len(), m.permissions().mode(), m.file_type().is_symlink()));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// What lies beside the agent's base dir (its scratch dir, with a planted `victim/file`), to show
/// that nothing outside the base dir was created or changed.
struct Outside {
    scratch: PathBuf,
    skip: [PathBuf; 2],
    before: BTreeMap<PathBuf, (u64, u32, bool)>,
}

impl Outside {
    fn watch(env: &AgentEnv) -> Outside {
        let scratch = env.agent.base().parent().unwrap().to_path_buf();
        std::fs::create_dir_all(scratch.join("victim")).unwrap();
        std::fs::write(scratch.join("victim/file"), b"precious").unwrap();
        let skip = [env.agent.base(), scratch.join("agent.log")];
        let before = snapshot(&scratch, &skip);
        Outside { scratch, skip, before }
    }

    fn assert_unchanged(&self) {
        assert_eq!(std::fs::read(self.scratch.join("victim/file")).unwrap(), b"precious");
        assert_eq!(
            snapshot(&self.scratch, &self.skip),
            self.before,
            "something outside the base dir changed"
        );
    }
}

fn start(tag: &str) -> AgentEnv {
    AgentEnv::start(tag, NatsServerOptions::default(), None)
}

/// Puts a package tarball into the env's local blobstore; the spec entry for it.
fn package(env: &AgentEnv, name: &str, version: &str, filler: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pkg.tgz");
    let body = format!("#!/bin/sh\necho {name} {version}\n");
    let noise: Vec<u8> = (0..filler).map(|i| (i as u64).wrapping_mul(2654435761).to_le_bytes()[3]).collect();
    tgz(&path, &[script(&format!("bin/{name}"), &body), file("share/noise", &noise)]);
    let id = bosh_agent::ids::uuid_v4();
    std::fs::copy(&path, env.blobs.path().join(&id)).unwrap();
    let (_, sha256) = digests(&path);
    json!({"name": name, "version": version, "sha1": sha256, "blobstore_id": id})
}

/// Names a release can never have, each of which would have become a path segment.
const HOSTILE_NAMES: &[&str] = &[
    "..",
    ".",
    "",
    "../../../victim",
    "../x",
    "a/../../b",
    "/abs",
    "x/..",
    "a\nb",
    "a\0b",
    "..\\x",
    " ",
    "name with space",
    "*",
    "$(touch pwned)",
];

/// Item 1: every name that would become a path segment, in apply and prepare, as package, job and
/// dependency-of-a-job name: refused with an exception naming it, and nothing outside the base
/// dir created or changed.
#[test]
fn hostile_names_are_refused_and_nothing_outside_the_base_dir_changes() {
    let mut env = start("names");
    let outside = Outside::watch(&env);
    let good = package(&env, "good", "1", 10);
    let mut tried = 0;
    for name in HOSTILE_NAMES {
        let mut pkg = good.clone();
        pkg["name"] = json!(name);
        let specs = [
            json!({"configuration_hash": "h", "packages": {"p": pkg}}),
            json!({"configuration_hash": "h", "packages": {"good": good},
                   "job": {"name": "g", "templates": [{"name": name, "version": "1"}]},
                   "rendered_templates_archive": {"blobstore_id": "x", "sha1": "sha256:00"}}),
            json!({"configuration_hash": "h", "job": {"name": "g", "template": name, "templates": []}}),
        ];
        for spec in specs.iter().take(if name.is_empty() { 2 } else { 3 }) {
            for method in ["apply", "prepare"] {
                tried += 1;
                let reply = env.d.send(method, json!([spec]));
                let e = exception(&reply);
                let shown: String = name.chars().take(6).collect::<String>().escape_debug().to_string();
                assert!(e.contains("invalid") && e.contains(&shown), "{method} {name:?}: {e}");
            }
        }
    }
    assert_eq!(tried, 2 * (3 * HOSTILE_NAMES.len() - 1));
    outside.assert_unchanged();
    // The agent still applies a good spec afterwards.
    let ok = env.d.run_task("apply", json!([{"configuration_hash": "h", "packages": {"good": good}}]));
    assert_eq!(value(&ok), "applied");
}

/// Item 2 (and 6): `remove_file` refuses what could take the agent's state with it; a file left
/// directly under `data/packages` does not break the next applies.
#[test]
fn remove_file_refuses_directories_and_the_base_dir() {
    let mut env = start("rmfile");
    let base = env.agent.base();
    let data = base.join("data");
    std::fs::create_dir_all(data.join("tmp")).unwrap();
    let count = |p: &Path| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let (in_base, in_bosh) = (count(&base), count(&base.join("bosh")));
    let outside = base.parent().unwrap().join("outside.txt");
    std::fs::write(&outside, b"x").unwrap();
    let base_s = base.to_str().unwrap().to_string();
    let refused = [
        "".to_string(),
        ".".into(),
        "..".into(),
        "/".into(),
        "bosh".into(),
        base_s.clone(),
        format!("{base_s}/"),
        base.parent().unwrap().to_str().unwrap().into(),
        format!("{base_s}/bosh"),
        format!("{base_s}/data"),
        format!("{base_s}/data/../bosh/settings.json"),
        format!("{base_s}/./bosh/settings.json"),
        outside.to_str().unwrap().into(),
    ];
    for path in &refused {
        let e = exception(&env.d.send("remove_file", json!([path])));
        assert!(e.contains("refusing to remove"), "{path:?}: {e}");
    }
    assert_eq!((count(&base), count(&base.join("bosh"))), (in_base, in_bosh), "nothing was removed");
    assert!(outside.exists());
    let tarball = data.join("tmp/logs-x.tgz");
    std::fs::write(&tarball, b"logs").unwrap();
    let path = tarball.to_str().unwrap();
    assert_eq!(env.d.send("remove_file", json!([path])), json!({"value": path}));
    assert!(!tarball.exists());

    // A stray file under data/packages (what a package named "" once left there) is left alone by
    // pruning, and applies keep working.
    std::fs::create_dir_all(data.join("packages")).unwrap();
    std::fs::write(data.join("packages/stray"), b"x").unwrap();
    let good = package(&env, "good", "1", 10);
    for _ in 0..2 {
        let r = env.d.run_task("apply", json!([{"configuration_hash": "h", "packages": {"good": good}}]));
        assert_eq!(value(&r), "applied");
    }
    assert!(data.join("packages/stray").is_file());
}

/// Item 4: a `reply_to` past the server's control-line limit is never published (nor buffered), so
/// the connection stays up and every later ping is answered.
#[test]
fn reply_to_longer_than_a_control_line_keeps_the_connection() {
    let mut env = start("longreply");
    let raw = Raw::connect(&env);
    for len in [4_100, 8_000, 70_000] {
        let reply_to = format!("{}.{}", raw.inbox, "a".repeat(len));
        raw.send(
            json!({"protocol": 3, "method": "ping", "arguments": [], "reply_to": reply_to})
                .to_string()
                .as_bytes(),
        );
    }
    let mut answered = 0;
    for _ in 0..100 {
        if env
            .d
            .request_within("ping", json!([]), Duration::from_secs(5))
            .is_ok_and(|v| v == json!({"value": "pong"}))
        {
            answered += 1;
        }
    }
    assert_eq!(answered, 100);
    let log = env.agent.log();
    assert!(!log.contains("NATS: disconnected"), "the connection dropped:\n{log}");
    assert!(log.contains("control line"), "the refusal is logged");
}

/// Item 13: SIGSTOP/SIGCONT (what a ptrace attach does) interrupts the NATS read with EINTR; the
/// connection must survive it.
#[test]
fn stop_and_continue_keep_the_nats_connection() {
    let mut env = start("sigstop");
    let pid = env.agent.pid().expect("agent pid") as i32;
    for _ in 0..5 {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        // Stopped means every thread is: only then has the read been interrupted.
        let stopped = wait_until(Duration::from_secs(10), || {
            std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
                matches!(state, Some(Some('T' | 't')))
            })
        });
        assert!(stopped, "the agent never stopped");
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        assert!(env.d.wait_ready(Duration::from_secs(10)));
    }
    let log = env.agent.log();
    assert!(!log.contains("NATS: disconnected"), "a stop signal dropped the connection:\n{log}");
}

/// Item 5: the request line bounds `method` and `reply_to` and escapes control characters; secrets
/// planted under any key that says so never reach the debug log; spec.json is 0600.
#[test]
fn logs_are_bounded_escaped_and_redacted() {
    let mut env = start("logs");
    let raw = Raw::connect(&env);
    // CR/LF in reply_to would forge a line; a 900 KB method would write a 900 KB line.
    let forged = format!("{}.x\r\nINFO forged line", raw.inbox);
    raw.send(
        json!({"protocol": 3, "method": "ping", "arguments": [], "reply_to": forged}).to_string().as_bytes(),
    );
    let method = "m".repeat(900_000);
    let r = raw.request(1, &method, &json!([]));
    assert!(exception(&r).contains("unknown message"));
    let planted = ["s3cr3t-1", "s3cr3t-2", "s3cr3t-3", "s3cr3t-4", "s3cr3t-5", "s3cr3t-6"];
    let spec = json!({"configuration_hash": "", "properties": {"db_password": planted[0],
        "nested": {"credentials": {"user": planted[1]}}, "Api_Token": planted[2]},
        "env": {"bosh": {"password": planted[3], "mbus": {"cert": {"private_key": planted[4]}}}},
        "links": [{"client_secret": planted[5]}]});
    assert_eq!(value(&env.d.run_task("apply", json!([spec]))), "applied");
    let log = env.agent.log();
    for s in planted {
        assert!(!log.contains(s), "{s} reached the log");
    }
    assert!(log.contains("request apply arguments"), "the debug line is there, redacted");
    assert!(log.lines().all(|l| l.len() < 4096), "a log line is over 4 KiB");
    assert!(!log.lines().any(|l| l.starts_with("INFO forged")), "a log line was forged");
    let mode = std::fs::metadata(env.agent.base().join("bosh/spec.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Item 9: temp files of killed work are removed at start; a foreign file is not.
#[test]
fn temp_area_is_cleaned_at_start() {
    let mut env = start("tmpclean");
    let tmp = env.agent.base().join("data/tmp");
    std::fs::create_dir_all(tmp.join("compile-x/home")).unwrap();
    for f in [".blob-1.tmp", ".blob-2.tmp", "compiled-x-1.tgz"] {
        std::fs::write(tmp.join(f), vec![0u8; 1 << 16]).unwrap();
    }
    std::fs::write(tmp.join("operator.txt"), b"mine").unwrap();
    env.agent.restart();
    assert!(env.d.wait_ready(Duration::from_secs(15)));
    let mut left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["operator.txt"]);
}

/// Item 12 and the envelope fuzz: a fixed-seed mutation loop over director envelopes. Every body that
/// is well-formed JSON with a readable `reply_to` (including what serde refuses as a value: `1e400`,
/// a lone surrogate) gets an exception or a value back; byte-level garbage gets nothing but must not
/// hurt; the agent answers pings throughout and afterwards.
#[test]
fn fuzzed_envelopes_always_get_a_reply_when_reply_to_is_readable() {
    let mut env = start("fuzzenv");
    let raw = Raw::connect(&env);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let hostile_values = [
        "1e400",
        "-1e400",
        "\"\\ud800\"",
        "\"\\udfff\\ud800\"",
        "18446744073709551616",
        "-0",
        "null",
        "true",
        "{}",
        "[]",
        "\"\"",
        "[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]",
        "{\"a\":1e400}",
        "0.0000001e-400",
        "\"..\"",
        "\"/\"",
        "\"\\u0000\"",
        "\"\\r\\nINFO x\"",
    ];
    let methods: Vec<&str> =
        ["ping", "get_state", "get_task", "apply", "remove_file", "nope", "", "cancel_task"].to_vec();
    let (mut expected, mut garbage) = (Vec::new(), 0);
    const ROUNDS: usize = 600;
    for n in 0..ROUNDS {
        let reply_to = raw.reply_to(n);
        let method = methods[rng.below(methods.len())];
        let v = |rng: &mut Rng| hostile_values[rng.below(hostile_values.len())];
        let body = match rng.below(6) {
            // A hostile value as the one argument.
            0 => format!(
                r#"{{"protocol":3,"method":"{method}","arguments":[{}],"reply_to":"{reply_to}"}}"#,
                v(&mut rng)
            ),
            // A hostile value as the method or the protocol.
            1 => {
                format!(r#"{{"protocol":3,"method":{},"arguments":[],"reply_to":"{reply_to}"}}"#, v(&mut rng))
            }
            2 => format!(
                r#"{{"protocol":{},"method":"{method}","arguments":[],"reply_to":"{reply_to}"}}"#,
                v(&mut rng)
            ),
            // A hostile value as `arguments`, or an unknown member holding one.
            3 => format!(r#"{{"reply_to":"{reply_to}","method":"{method}","arguments":{}}}"#, v(&mut rng)),
            4 => format!(
                r#"{{"reply_to":"{reply_to}","method":"{method}","x":{},"arguments":[]}}"#,
                v(&mut rng)
            ),
            // Bytes flipped, cut or inserted anywhere: no reply owed.
            _ => {
                let mut b = format!(
                    r#"{{"protocol":3,"method":"{method}","arguments":[1],"reply_to":"{reply_to}"}}"#
                )
                .into_bytes();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(b.len());
                    match rng.below(3) {
                        0 => b[i] = rng.next() as u8,
                        1 => b.truncate(i),
                        _ => {
                            let bytes = b"{}[]\",:\\\0\xff";
                            b.insert(i, bytes[rng.below(bytes.len())])
                        }
                    }
                    if b.is_empty() {
                        b.push(b'{');
                    }
                }
                garbage += 1;
                raw.send(&b);
                continue;
            }
        };
        expected.push((reply_to, body.clone()));
        raw.send(body.as_bytes());
    }
    let subjects: Vec<String> = expected.iter().map(|(r, _)| r.clone()).collect();
    let got = raw.collect(&subjects, Duration::from_secs(60));
    let missing: Vec<_> = expected.iter().filter(|(r, _)| !got.contains_key(r)).map(|(_, b)| b).collect();
    assert!(
        missing.is_empty(),
        "{} of {} well-formed envelopes got no reply, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(got.values().all(|v| v.get("value").is_some() || v["exception"]["message"].is_string()));
    assert!(garbage > 50 && expected.len() > 400, "the loop tried both kinds ({garbage} garbage)");
    assert!(env.d.wait_ready(Duration::from_secs(10)));
    assert!(env.agent.alive());
}

/// Hostile values for any argument position.
fn hostile_args() -> Vec<Value> {
    let long = "x".repeat(70_000);
    let mut out = vec![
        json!(null),
        json!(-1),
        json!(1.5e300),
        json!(u64::MAX),
        json!(""),
        json!("."),
        json!(".."),
        json!("/"),
        json!("../../../victim/file"),
        json!("a\r\nb"),
        json!(long),
        json!([]),
        json!({}),
        json!({"name": "..", "version": "../x", "sha1": "sha256:00", "blobstore_id": "../victim"}),
        json!({"packages": {"p": {"name": "../victim", "sha1": "sha256:00", "blobstore_id": "x"}}, "configuration_hash": "h"}),
        json!({"blobstore_id": "../../victim", "sha1": "x", "owning_user": "../root", "log_type": "../x", "filters": ["../**"]}),
        json!({"user": "../x", "public_key": "x", "command": "setup", "params": {"user": "../x"}}),
        serde_json::from_str(&format!("{}{}", "[".repeat(40), "]".repeat(40))).unwrap(),
    ];
    out.push(json!({"deep": out.clone()}));
    out
}

/// The action-argument fuzz: every method with every hostile value in each of its first three
/// positions (and all together), over NATS. Every request gets a reply, the agent never dies, and
/// nothing outside the base dir is created or changed.
#[test]
fn every_action_survives_hostile_arguments() {
    let mut env = start("fuzzargs");
    let raw = Raw::connect(&env);
    let outside = Outside::watch(&env);
    let args = hostile_args();
    let mut n = 0;
    let mut tasks = Vec::new();
    for spec in bosh_agent::actions::REGISTRY.iter().filter(|s| !s.dummy_only) {
        // Not these: they stop what the test needs, and refuse nothing by design.
        if matches!(spec.name, "shutdown" | "update_settings") {
            continue;
        }
        let mut calls: Vec<Value> = Vec::new();
        for a in &args {
            calls.push(json!([a]));
            calls.push(json!(["x", a]));
            calls.push(json!(["x", "y", a, a, a]));
        }
        calls.push(Value::Array(args.clone()));
        for call in calls {
            n += 1;
            let reply = raw.request(n, spec.name, &call);
            assert!(
                reply.get("value").is_some() || reply["exception"]["message"].is_string(),
                "{} {call}: {reply}",
                spec.name
            );
            if let Some(id) = reply["value"]["agent_task_id"].as_str() {
                tasks.push(id.to_string());
            }
        }
    }
    // Every task ends (or is still running, e.g. a drain waiting): none is lost.
    for id in &tasks {
        let r = raw.request(n + 1, "get_task", &json!([id]));
        n += 1;
        let lost = format!("Task with id {id} could not be found");
        assert!(r.get("value").is_some() || !exception(&r).contains(&lost), "{id}: {r}");
    }
    assert!(n > 1500, "only {n} requests");
    assert!(env.agent.alive() && env.d.wait_ready(Duration::from_secs(10)));
    outside.assert_unchanged();
}

/// Items 7 and 8: a flood of tasks runs on a bounded number of threads while `ping` and `get_task`
/// are answered at once; the results of a thousand tasks that end together all stay answerable, and
/// an unknown id is told apart from nothing.
#[test]
fn a_task_flood_is_bounded_and_every_result_is_kept() {
    let mut env = start("flood");
    let raw = Raw::connect(&env);
    let pid = env.agent.pid().unwrap();
    let threads = || -> usize {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let idle_threads = threads();
    // 300 long sleeps: far more than may run at once.
    let mut long = Vec::new();
    for i in 0..300 {
        let r = raw.request(i, "dummy_sleep", &json!([600]));
        long.push(r["value"]["agent_task_id"].as_str().expect("a task").to_string());
    }
    let started = Instant::now();
    assert_eq!(env.d.send("ping", json!([])), json!({"value": "pong"}));
    let last = env.d.send("get_task", json!([long[299]]));
    assert_eq!(last["value"]["state"], "running", "a queued task is reported running");
    assert!(started.elapsed() < Duration::from_secs(5), "ping and get_task waited behind the flood");
    let max = bosh_agent::dispatch::pool::MAX_TASK_THREADS;
    assert!(threads() <= idle_threads + max + 4, "{} threads for 300 tasks", threads());
    for (i, id) in long.iter().enumerate() {
        assert_eq!(value(&raw.request(1000 + i, "cancel_task", &json!([id]))), "canceled");
    }
    // A thousand short tasks that end together: every result is still there afterwards.
    let mut short = Vec::new();
    for i in 0..1000 {
        let r = raw.request(2000 + i, "dummy_sleep", &json!([0]));
        short.push(r["value"]["agent_task_id"].as_str().expect("a task").to_string());
    }
    for (i, id) in short.iter().enumerate() {
        let mut r = Value::Null;
        assert!(wait_until(Duration::from_secs(30), || {
            r = raw.request(4000 + i, "get_task", &json!([id]));
            r["value"]["state"] != "running"
        }));
        assert_eq!(r, json!({"value": {"canceled": false}}), "task {i}");
    }
    let e = exception(&env.d.send("get_task", json!(["no-such-task"])));
    assert!(e.contains("could not be found") && e.contains("no task ever had this id"), "{e}");
}

/// A tmpfs of `mib` MiB on a fresh directory, unmounted on drop: a real small disk to fill.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs (the tests run as root)");
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn free(&self) -> u64 {
        let f = std::fs::File::open(self.path()).unwrap();
        bosh_agent::fsutil::space(&f).unwrap().0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A GNU sparse tar whose one entry describes `real` bytes with 512 bytes of data at its end.
fn sparse_tar(out: &Path, real: u64) {
    let mut h = tar::Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(512);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(real);
    gnu.sparse[0].set_offset(real - 512);
    gnu.sparse[0].set_length(512);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[7u8; 512]);
    bytes.extend_from_slice(&[0u8; 1024]);
    std::fs::write(out, bytes).unwrap();
}

/// A gzip'd tar of `count` files of `each` zero bytes: small on the wire, large on disk.
fn zero_bomb(out: &Path, count: usize, each: usize) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
    let zeros = vec![0u8; each];
    for i in 0..count {
        let mut h = tar::Header::new_gnu();
        h.set_size(each as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("z{i}"), &zeros[..]).unwrap();
    }
    b.into_inner().and_then(|gz| gz.finish()).unwrap();
}

/// Item 11: a 20 GiB sparse tar, a single entry claiming 1 GiB, and a gzip of many zero files are
/// all refused before the unpack takes a small disk below its reserve, and leave nothing behind;
/// an archive that fits still unpacks.
#[test]
fn archive_bombs_stop_above_the_reserve() {
    use bosh_agent::archive::{reserve, unpack, Unpack};
    let disk = Tmpfs::mount(64);
    let work = tempfile::tempdir().unwrap();
    let total = bosh_agent::fsutil::space(&std::fs::File::open(disk.path()).unwrap()).unwrap().1;
    let keep = reserve(total);
    let empty_free = disk.free();

    let sparse = work.path().join("sparse.tar");
    sparse_tar(&sparse, 20 << 30);
    assert!(std::fs::metadata(&sparse).unwrap().len() < 4096);
    let e = unpack(&sparse, &disk.path().join("s"), &Unpack::default()).unwrap_err();
    assert!(e.contains("refusing to fill the disk") && e.contains(&format!("needs {}", 20u64 << 30)), "{e}");

    let one = work.path().join("one.tgz");
    {
        // The header promises 1 GiB; the refusal comes before a byte of it is read.
        let mut h = tar::Header::new_gnu();
        h.set_path("huge").unwrap();
        h.set_size(1 << 30);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut gz =
            flate2::write::GzEncoder::new(std::fs::File::create(&one).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, h.as_bytes()).unwrap();
        std::io::Write::write_all(&mut gz, &vec![0u8; 1 << 20]).unwrap();
        gz.finish().unwrap();
    }
    let e = unpack(&one, &disk.path().join("o"), &Unpack::default()).unwrap_err();
    assert!(e.contains("refusing to fill the disk"), "{e}");

    // 40 files of 4 MiB: each fits alone, together they would fill the disk. A watcher records the
    // least free space it sees while the unpack runs.
    let bomb = work.path().join("bomb.tgz");
    zero_bomb(&bomb, 40, 4 << 20);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 2 << 20);
    let done = std::sync::atomic::AtomicBool::new(false);
    let least = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut least = u64::MAX;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                least = least.min(disk.free());
                std::thread::sleep(Duration::from_micros(200));
            }
            least
        });
        let e = unpack(&bomb, &disk.path().join("b"), &Unpack::default()).unwrap_err();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(e.contains("refusing to fill the disk"), "{e}");
        watcher.join().unwrap()
    });
    assert!(least + (1 << 20) >= keep, "free space fell to {least}, below the reserve {keep}");
    assert!(wait_until(Duration::from_secs(5), || std::fs::read_dir(disk.path()).unwrap().count() == 0));
    assert!(disk.free() + (1 << 20) >= empty_free, "the staging directory was removed");

    let fits = work.path().join("fits.tgz");
    zero_bomb(&fits, 4, 4 << 20);
    unpack(&fits, &disk.path().join("f"), &Unpack::default()).expect("16 MiB fit on 64 MiB");
}

/// Item 10: SIGKILLed at points spread across applies, the agent restarts with the recorded spec and
/// the links in agreement (the soak with 100 kills is `benches/hostile.rs`).
#[test]
fn killed_applies_leave_the_spec_and_the_links_in_agreement() {
    let mut env = start("killapply");
    let kills = crate::common::crash::kill_during_apply(&mut env, 8, 2 << 20);
    assert_eq!(kills.tried, 8);
    assert!(kills.disagreed.is_empty(), "{:#?}", kills.disagreed);
    eprintln!("kill loop: {kills:?}");
}
