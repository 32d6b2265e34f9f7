//! Density: how many agents one host carries. Starts `DENSITY_AGENTS` (default 1000) release
//! agents on one mutual-TLS nats-server, as a director's VMs would be, then reports per agent what
//! they hold while idle (PSS, RssAnon, threads, CPU and wakeups over a minute) and how long a ping
//! sweep of all of them takes (one director connection publishes a ping to every agent, then waits
//! for every reply). Issue 16's goal: 5,000 agents answering a sweep in under 10 s on a 2-core
//! 24 GiB host.
//!
//! Why it stops early rather than fails: past some number the host's own limits decide (the pid
//! limit, open files, memory, nats-server), and that number is the result. The bench starts agents
//! in batches and, when one cannot be started, reports how many run and the host's limits.

mod support;

use bosh_agent::mbus::nats::{Message, NatsConnection};
use serde_json::json;
use std::collections::HashSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{
    agent_binary, context_switches, cpu_time, memory_of, print_summary, print_table, settings::nats_settings,
    AgentProcess, NatsServer, NatsServerOptions, TestPki,
};

/// Agents started at once before the next batch.
const BATCH: usize = 100;
/// How long the agents sit idle while their CPU and wakeups are counted.
const IDLE: Duration = Duration::from_secs(60);
/// Measured sweeps (after the one that finds everyone up); the table shows the slowest.
const SWEEPS: usize = 3;
/// Issue 16's goals.
const GOAL_AGENTS: usize = 5000;
const GOAL_SWEEP: Duration = Duration::from_secs(10);

fn main() {
    let started = Instant::now();
    let wanted: usize = std::env::var("DENSITY_AGENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    raise_open_files();
    let binary = agent_binary();
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let url = nats.url();

    // One certificate for all: nats-server checks the chain, not which agent it is.
    let template = nats_settings(&pki, "density", &url);
    let mut agents: Vec<(String, AgentProcess)> = Vec::with_capacity(wanted);
    let mut stopped_by = None;
    while agents.len() < wanted && stopped_by.is_none() {
        for _ in 0..BATCH.min(wanted - agents.len()) {
            let id = format!("density-{}", agents.len());
            let mut settings = template.clone();
            settings["agent_id"] = json!(id);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                AgentProcess::start_configured(&binary, &settings, None, "info", 30)
            })) {
                Ok(agent) => agents.push((id, agent)),
                Err(_) => {
                    stopped_by = Some(format!("agent {} could not be started", agents.len() + 1));
                    break;
                }
            }
        }
        // Let the batch finish its TLS handshakes before the next one adds to the queue.
        std::thread::sleep(Duration::from_millis(300));
    }
    let n = agents.len();
    let ids: Vec<&str> = agents.iter().map(|(id, _)| id.as_str()).collect();
    let mut director = Sweeper::connect(&pki, &url);

    // Everyone up: sweep until every agent has answered once (they connect in the background).
    let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 20);
    let mut answered: HashSet<usize> = HashSet::new();
    while answered.len() < n && Instant::now() < deadline {
        let missing: Vec<usize> = (0..n).filter(|i| !answered.contains(i)).collect();
        answered.extend(director.sweep(&ids, &missing, Duration::from_secs(5)).0);
    }
    let up = answered.len();
    if up < n {
        stopped_by.get_or_insert(format!("{} of {n} agents never answered a ping", n - up));
    }

    let all: Vec<usize> = (0..n).collect();
    let mut sweeps = Vec::new();
    for _ in 0..SWEEPS {
        let (got, took) = director.sweep(&ids, &all, Duration::from_secs(30));
        sweeps.push((got.len(), took));
    }
    let slowest = sweeps.iter().map(|s| s.1).max().unwrap_or_default();
    let fewest = sweeps.iter().map(|s| s.0).min().unwrap_or_default();

    // Idle: a minute of nothing, CPU and wakeups summed over all agents.
    let pids: Vec<u32> = agents.iter().map(|(_, a)| support::Peer::pid(a)).collect();
    let (cpu0, sw0): (Duration, u64) =
        (pids.iter().map(|&p| cpu_time(p)).sum(), pids.iter().map(|&p| context_switches(p)).sum());
    std::thread::sleep(IDLE);
    let (cpu1, sw1): (Duration, u64) =
        (pids.iter().map(|&p| cpu_time(p)).sum(), pids.iter().map(|&p| context_switches(p)).sum());
    let per_min = IDLE.as_secs_f64() / 60.0;
    let mems: Vec<_> = pids.iter().filter_map(|&p| memory_of(p)).collect();
    let sum = |f: fn(&support::Memory) -> u64| mems.iter().map(f).sum::<u64>();
    let per_agent_kib = |f: fn(&support::Memory) -> u64| sum(f) as f64 / mems.len().max(1) as f64;
    let max_threads = mems.iter().map(|m| m.threads).max().unwrap_or(0);

    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut missed = Vec::new();
    let mut check = |name: &str, value: String, target: String, ok: Option<bool>| {
        if ok == Some(false) {
            missed.push(name.to_string());
        }
        let verdict = match ok {
            Some(true) => "ok",
            Some(false) => "MISS",
            None => "-",
        };
        rows.push([name.to_string(), value, target, verdict.to_string()]);
    };
    check(
        "agents running and answering",
        format!("{up} of {wanted}"),
        format!(">= {GOAL_AGENTS}"),
        Some(up >= GOAL_AGENTS),
    );
    check(
        "ping sweep of all (slowest of 3)",
        format!("{:.2} s, {fewest} replies at least", slowest.as_secs_f64()),
        format!("< {} s", GOAL_SWEEP.as_secs()),
        Some(slowest < GOAL_SWEEP && fewest == n),
    );
    check("PSS per agent", format!("{:.0} kB", per_agent_kib(|m| m.pss_kib)), "-".into(), None);
    check("RssAnon per agent", format!("{:.0} kB", per_agent_kib(|m| m.rss_anon_kib)), "-".into(), None);
    check(
        "PSS of all agents",
        format!("{:.0} MB", sum(|m| m.pss_kib) as f64 * 1024.0 / 1e6),
        "-".into(),
        None,
    );
    check(
        "threads per agent (mean / max)",
        format!("{:.2} / {max_threads}", per_agent_kib(|m| m.threads)),
        "<= 5".into(),
        Some(max_threads <= 5),
    );
    check(
        "idle CPU per agent (per min)",
        format!("{:.2} ms", (cpu1 - cpu0).as_secs_f64() * 1e3 / n.max(1) as f64 / per_min),
        "-".into(),
        None,
    );
    check(
        "idle wakeups per agent (per min)",
        format!("{:.1}", (sw1.saturating_sub(sw0)) as f64 / n.max(1) as f64 / per_min),
        "-".into(),
        None,
    );

    println!();
    println!("bosh-agent density: {wanted} agents wanted on one nats-server ({})", binary.display());
    println!("machine: {}; load average now {}", support::cores(), support::load());
    println!();
    let header = ["figure", "value", "target", "verdict"].map(String::from);
    print_table(&header, &rows);
    println!();
    println!("what stopped it: {}", stopped_by.unwrap_or_else(|| "nothing: all started".into()));
    println!("host limits: {}", host_limits());
    print_summary(2, &missed, started.elapsed());
    drop(director);
    drop(agents);
    drop(nats);
}

/// The director's side: one connection, replies on `director.density.<index>`.
struct Sweeper {
    conn: NatsConnection,
    replies: mpsc::Receiver<Message>,
}

impl Sweeper {
    fn connect(pki: &TestPki, url: &str) -> Sweeper {
        let (conn, replies) = support::subscriber(pki, url, "director.bosh-internal", "director.density.>");
        Sweeper { conn, replies }
    }

    /// Pings the agents at `which` (indexes into `ids`) all at once; returns those that answered
    /// `pong` within `limit` and the time until the last of them did.
    fn sweep(&mut self, ids: &[&str], which: &[usize], limit: Duration) -> (HashSet<usize>, Duration) {
        while self.replies.try_recv().is_ok() {} // late replies of an earlier sweep
        let start = Instant::now();
        for &i in which {
            let reply_to = format!("director.density.{i}");
            let body =
                json!({"protocol": 3, "method": "ping", "arguments": [], "reply_to": reply_to}).to_string();
            self.conn.publish(&format!("agent.{}", ids[i]), body.as_bytes()).expect("publishing a ping");
        }
        let mut got = HashSet::new();
        let mut last = Duration::ZERO;
        let deadline = start + limit;
        while got.len() < which.len() {
            let Ok(m) = self.replies.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                break;
            };
            let pong = serde_json::from_slice::<serde_json::Value>(&m.payload)
                .is_ok_and(|v| v == json!({"value": "pong"}));
            if let Some(i) = m.subject.strip_prefix("director.density.").and_then(|i| i.parse().ok()) {
                if pong && got.insert(i) {
                    last = start.elapsed();
                }
            }
        }
        (got, last)
    }
}

/// Open files up to the hard limit, for nats-server (one socket per agent) and this process.
fn raise_open_files() {
    // SAFETY: rlimit is plain data; getrlimit fills it, setrlimit reads it.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The limits that decide how many agents fit: pids, threads, open files, memory.
fn host_limits() -> String {
    let read =
        |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into());
    // SAFETY: rlimit is plain data; getrlimit fills it.
    let nofile = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    };
    let tasks = read("/proc/loadavg").split_whitespace().nth(3).unwrap_or("?").to_string();
    let available = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    format!(
        "pid_max {}, threads-max {}, tasks running/total {tasks}, open files {nofile}, MemAvailable {available}",
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max"),
    )
}
