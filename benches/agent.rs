//! End-to-end benchmark of the agent as the director sees it, side by side with the Go bosh-agent
//! and a bare NATS echo responder, all on one mutual-TLS nats-server: CPU per reply (sequential and
//! under 8 concurrent clients), request latency, `get_state ["full"]`, an idle agent's threads,
//! wakeups, CPU and memory (PSS and RssAnon, not only RSS), latency while tasks run, memory after a
//! soak, and the release binary's size.
//!
//! Why these three: absolute figures on a shared 2-core machine swing by large factors from run to
//! run, so a number on its own says little. The echo responder (a process that only parses
//! `reply_to` and answers `pong` on its NATS connection thread) pays the same network, TLS,
//! nats-server and client costs as the agent: it is the floor. The Go agent (`GO_AGENT_BIN`, built
//! from its public source outside this repository; its column is skipped when not given) is what
//! ours replaces. All are measured in the same run and interleaved (rounds in rotating order, or
//! one request each in turn), so a noisy moment hits all of them; quote ratios, not absolute
//! figures. CPU is each process's own CPU clock (all threads, to the nanosecond) over the requests
//! of a round, divided by the replies: what a reply costs the responder, whatever the client does.
//!
//! Why a real nats-server and the real release binary: the point is what a BOSH VM runs, started the
//! way a stemcell starts it (`-C agent.json` with a File settings source, dummy platform), logging
//! at INFO as it does there (one line per request).

mod support;

use bosh_agent::client::{Nats, Transport};
use bosh_agent::dispatch::pool::LINGER;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::peers::{go_agent_binary, run_role_if_asked, EchoProcess, GoAgent};
use support::{
    agent_binary, context_switches, cpu_time, director, memory_of, micros, nats_settings, print_summary,
    print_table, wait_ready, AgentProcess, Memory, NatsServer, Peer, Samples, TestPki, REQUEST_TIMEOUT,
};

/// Rounds of the CPU measurements; each figure is the median of its rounds.
const ROUNDS: usize = 5;
/// Sequential pings per responder and round.
const SEQ_PINGS: usize = 2000;
/// Concurrent director clients, and the pings each sends per round.
const CLIENTS: usize = 8;
const CLIENT_PINGS: usize = 500;
/// Pings per responder in the latency phase: enough that p99 rests on ~30 samples.
const PINGS: usize = 3000;
/// Untimed requests before the phases, so connections, caches and allocators are warm.
const WARMUP: usize = 200;
/// `get_state ["full"]` per agent (vitals make it the heaviest read).
const STATES: usize = 500;
/// Sleeping tasks kept running during the busy phase.
const BUSY_TASKS: usize = 8;
/// Pings while the tasks run.
const BUSY_PINGS: usize = 2000;
/// Requests of the memory soak (ping, get_state, get_task, list_disk in turn).
const SOAK: usize = 10_000;
/// How long everything sits idle, right after start, while wakeups and CPU are counted (two
/// heartbeats of 30 s).
const IDLE: Duration = Duration::from_secs(60);

/// Issue 16's targets against the Go agent: CPU per reply under 8 clients and sequentially.
const TARGET_CPU_CONCURRENT: f64 = 1.0 / 3.0;
const TARGET_CPU_SEQUENTIAL: f64 = 0.3;
/// `get_state ["full"]` p50 and p99 against the Go agent: what each adds to the echo floor.
const TARGET_STATE: f64 = 0.5;
/// Threads of an idle agent.
const TARGET_IDLE_THREADS: u64 = 5;
/// Wakeups of an idle agent: no more than before issue 16 (40 context switches in 120 s).
const TARGET_IDLE_SWITCHES_PER_MIN: f64 = 20.0;
/// The design card's targets: ping latency against the echo floor, p99 with tasks running.
const TARGET_PING_VS_ECHO: f64 = 1.3;
const TARGET_BUSY_P99_RATIO: f64 = 2.0;
/// Decimal megabytes, as the issues state them.
const TARGET_RSS_BYTES: u64 = 5_000_000;
const TARGET_BINARY_BYTES: u64 = 3_500_000;

fn main() {
    run_role_if_asked();
    let started = Instant::now();
    let load_before = support::load();
    let agent_bin = agent_binary();
    let go_bin = go_agent_binary();
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, support::NatsServerOptions::default());
    let url = nats.url();

    let short = || bosh_agent::ids::uuid_v4()[..8].to_string();
    let echo_id = format!("echo-{}", short());
    let mut echo = EchoProcess::start(&pki, &url, &echo_id);
    let agent_id = format!("bench-{}", short());
    let mut agent =
        AgentProcess::start_configured(&agent_bin, &nats_settings(&pki, &agent_id, &url), None, "info", 30);
    let go_id = format!("go-{}", short());
    let mut go = go_bin.as_ref().map(|bin| GoAgent::start(bin, &pki, &url, &go_id));

    let mut to_echo = director(&pki, &url, &echo_id);
    let mut to_agent = director(&pki, &url, &agent_id);
    let mut to_go = go.as_ref().map(|_| director(&pki, &url, &go_id));
    wait_ready(&mut to_echo, "echo responder", &mut echo);
    wait_ready(&mut to_agent, "agent", &mut agent);
    if let (Some(t), Some(g)) = (to_go.as_mut(), go.as_mut()) {
        wait_ready(t, "Go agent", g);
    }
    // The idle figures of a fresh process: nothing asked of it but one ping.
    let fresh = [Some(memory(&agent)), go.as_ref().map(memory), Some(memory(&echo))];

    // An idle minute, everything as it started: wakeups and CPU of each.
    let pids = [Some(agent.pid()), go.as_ref().map(Peer::pid), Some(echo.pid())];
    let before: Vec<Option<(u64, Duration)>> =
        pids.iter().map(|p| p.map(|pid| (context_switches(pid), cpu_time(pid)))).collect();
    std::thread::sleep(IDLE);
    let per_min = IDLE.as_secs_f64() / 60.0;
    let after: Vec<Option<(u64, Duration)>> =
        pids.iter().map(|p| p.map(|pid| (context_switches(pid), cpu_time(pid)))).collect();
    let switches: Vec<Option<f64>> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| Some(a.as_ref()?.0.saturating_sub(b.as_ref()?.0) as f64 / per_min))
        .collect();
    let idle_cpu: Vec<Option<Duration>> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| Some((a.as_ref()?.1 - b.as_ref()?.1).div_f64(per_min)))
        .collect();

    let mut table = Table::new(go.is_some());
    let ping = |t: &mut Nats| timed(t, "ping", &[], |r| r == &json!({"value": "pong"}));

    // 1: CPU per reply, sequential and with 8 concurrent clients, in rounds of rotating order.
    for t in [&mut to_agent, &mut to_echo].into_iter().chain(to_go.as_mut()) {
        warm_up(t);
    }
    let pool = |id: &str| (0..CLIENTS).map(|_| director(&pki, &url, id)).collect::<Vec<_>>();
    let mut clients = [Some(pool(&agent_id)), to_go.as_ref().map(|_| pool(&go_id)), Some(pool(&echo_id))];
    let mut sequential: [Vec<Duration>; 3] = Default::default();
    let mut concurrent: [Vec<Duration>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..3 {
            let who = (round + k) % 3;
            let (Some(pid), Some(set)) = (pids[who], clients[who].as_mut()) else { continue };
            sequential[who].push(cpu_per_reply(pid, &mut set[..1], SEQ_PINGS));
            concurrent[who].push(cpu_per_reply(pid, set, CLIENT_PINGS));
        }
    }
    drop(clients);
    table.cpu("CPU per ping reply, 8 concurrent clients", &concurrent, TARGET_CPU_CONCURRENT);
    table.cpu("CPU per ping reply, sequential", &sequential, TARGET_CPU_SEQUENTIAL);

    // 2: ping latency, one request to each in turn.
    let mut lat =
        interleaved(PINGS, [Some(&mut to_agent), to_go.as_mut(), Some(&mut to_echo)], |t, _| ping(t));
    table.latency("ping p50", &lat, Samples::p50, Some(Target::Echo(TARGET_PING_VS_ECHO)));
    table.latency("ping p99", &lat, Samples::p99, Some(Target::Echo(TARGET_PING_VS_ECHO)));
    let echo_idle_p99 = lat[2].take().map(|s| s.p99());
    let agent_idle_p99 = lat[0].take().map(|s| s.p99());

    // 3: get_state ["full"] of both agents, an echo ping beside them.
    let full = [json!("full")];
    let states = interleaved(STATES, [Some(&mut to_agent), to_go.as_mut(), Some(&mut to_echo)], |t, who| {
        if who == 2 {
            ping(t)
        } else {
            timed(t, "get_state", &full, |r| r["value"]["vitals"].is_object())
        }
    });
    table.latency("get_state [\"full\"] p50 (echo: ping)", &states, Samples::p50, None);
    table.latency("get_state [\"full\"] p99 (echo: ping)", &states, Samples::p99, None);
    // Both agents pay the round trip the echo responder pays: what each adds to it is its own.
    table.above_floor("get_state [\"full\"] p50 above the echo floor", &states, Samples::p50, TARGET_STATE);
    table.above_floor("get_state [\"full\"] p99 above the echo floor", &states, Samples::p99, TARGET_STATE);

    // 4: ping while cancelable tasks sleep in our agent (the Go agent has no dummy_sleep).
    let tasks: Vec<String> = (0..BUSY_TASKS).map(|_| start_sleep(&mut to_agent)).collect();
    warm_up(&mut to_agent);
    let busy = interleaved(BUSY_PINGS, [Some(&mut to_agent), None, Some(&mut to_echo)], |t, _| ping(t));
    let (agent_busy, echo_busy) = (busy[0].as_ref().expect("agent"), busy[2].as_ref().expect("echo"));
    table.row(
        "ping p99 with 8 tasks running / idle",
        format!("{:.2}x", ratio(agent_busy.p99(), agent_idle_p99.expect("idle p99"))),
        "-".into(),
        format!("{:.2}x", ratio(echo_busy.p99(), echo_idle_p99.expect("echo p99"))),
        Some(Check::at_most(
            ratio(agent_busy.p99(), agent_idle_p99.expect("idle p99")),
            TARGET_BUSY_P99_RATIO,
        )),
    );
    cancel_all(&mut to_agent, &tasks);

    // 5: a soak of mixed requests; memory halfway and after (a plateau means bounded caches).
    let mut soak_errors = soak(&mut to_agent, SOAK / 2);
    let half = agent.memory();
    soak_errors += soak(&mut to_agent, SOAK - SOAK / 2);
    let soaked = agent.memory();

    // 6: the threads left once surplus workers and task threads have lingered out.
    std::thread::sleep(LINGER + Duration::from_secs(5));
    let settled = [Some(memory(&agent)), go.as_ref().map(memory), Some(memory(&echo))];

    table.count("threads, idle after start", &fresh, |m| m.threads, Some(TARGET_IDLE_THREADS));
    table.count(
        &format!("threads, idle after the soak + {}s", (LINGER + Duration::from_secs(5)).as_secs()),
        &settled,
        |m| m.threads,
        Some(TARGET_IDLE_THREADS),
    );
    table.row(
        "idle wakeups (context switches / min)",
        fmt_opt(switches[0], |v| format!("{v:.1}")),
        fmt_opt(switches[1], |v| format!("{v:.1}")),
        fmt_opt(switches[2], |v| format!("{v:.1}")),
        switches[0].map(|v| {
            Check::at_most(v / TARGET_IDLE_SWITCHES_PER_MIN, 1.0)
                .with_text(format!("<= {TARGET_IDLE_SWITCHES_PER_MIN}"))
        }),
    );
    table.row(
        "idle CPU (per min)",
        fmt_opt(idle_cpu[0], |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
        fmt_opt(idle_cpu[1], |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
        fmt_opt(idle_cpu[2], |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
        None,
    );
    table.kib("PSS, idle after start", &fresh, |m| m.pss_kib, None);
    table.kib("RssAnon, idle after start", &fresh, |m| m.rss_anon_kib, None);
    table.kib("VmRSS, idle after start", &fresh, |m| m.rss_kib, None);
    table.kib("PSS, idle after the soak", &settled, |m| m.pss_kib, None);
    table.kib("RssAnon, idle after the soak", &settled, |m| m.rss_anon_kib, None);
    table.kib(&format!("VmRSS after {} requests", SOAK / 2), &[Some(half), None, None], |m| m.rss_kib, None);
    table.kib(
        &format!("VmRSS after {SOAK} requests"),
        &[Some(soaked), None, None],
        |m| m.rss_kib,
        Some(TARGET_RSS_BYTES),
    );
    table.kib(&format!("VmHWM after {SOAK} requests"), &settled, |m| m.hwm_kib, None);
    table.row("soak requests without a value", soak_errors.to_string(), "-".into(), "-".into(), None);

    // 7: the release binary.
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).expect("stat binary");
    let ours = size(&agent_bin);
    table.row(
        "release binary size",
        mb(ours),
        go_bin.as_deref().map(|p| mb(size(p))).unwrap_or_else(|| "-".into()),
        "-".into(),
        Some(
            Check::at_most(ours as f64 / TARGET_BINARY_BYTES as f64, 1.0)
                .with_text(format!("<= {}", mb(TARGET_BINARY_BYTES))),
        ),
    );

    let title = [
        "bosh-agent benchmark: NATS mTLS, director-style protocol 3; ours, the Go agent and a bare echo responder"
            .to_string(),
        format!(
            "ours: {}{}",
            agent_bin.display(),
            go_bin.as_ref().map(|b| format!("; Go: {}", b.display())).unwrap_or_default()
        ),
        format!(
            "samples: CPU {ROUNDS} rounds x ({SEQ_PINGS} sequential, {CLIENTS}x{CLIENT_PINGS} concurrent) pings each, \
             median; ping {PINGS}, get_state {STATES}, busy ping {BUSY_PINGS} with {BUSY_TASKS} dummy_sleep tasks, \
             soak {SOAK}, idle {}s",
            IDLE.as_secs()
        ),
        format!("machine: {}; load average before {load_before}, after {}", support::cores(), support::load()),
    ];
    table.print(&title, started.elapsed());
    drop((to_agent, to_echo, to_go));
    agent.stop();
    drop((go, echo, nats));
}

/// What a figure is checked against.
enum Target {
    /// At most this times the Go agent's.
    Go(f64),
    /// At most this times the echo responder's.
    Echo(f64),
}

/// A checked figure: ratio and verdict text.
struct Check {
    ok: bool,
    text: String,
}

impl Check {
    fn at_most(ratio: f64, target: f64) -> Check {
        Check { ok: ratio <= target, text: format!("<= {target:.2}x") }
    }
    fn with_text(self, text: String) -> Check {
        Check { text, ..self }
    }
}

/// The result table: ours, Go and echo side by side, both ratios, the target and its verdict.
struct Table {
    go: bool,
    rows: Vec<[String; 8]>,
    missed: Vec<String>,
    checked: usize,
}

impl Table {
    fn new(go: bool) -> Table {
        Table { go, rows: Vec::new(), missed: Vec::new(), checked: 0 }
    }

    fn row(&mut self, name: &str, ours: String, go: String, echo: String, check: Option<Check>) {
        self.push(name, [ours, go, echo], [String::new(), String::new()], check);
    }

    fn push(
        &mut self,
        name: &str,
        [ours, go, echo]: [String; 3],
        [vs_go, vs_echo]: [String; 2],
        check: Option<Check>,
    ) {
        let (target, verdict) = match check {
            Some(c) => {
                self.checked += 1;
                if !c.ok {
                    self.missed.push(name.to_string());
                }
                (c.text, if c.ok { "ok" } else { "MISS" }.to_string())
            }
            None => ("-".into(), "-".into()),
        };
        self.rows.push([name.to_string(), ours, go, echo, vs_go, vs_echo, target, verdict]);
    }

    /// Durations (per reply or per request) with ours/Go and ours/echo; `target` checks one of them.
    fn durations(&mut self, name: &str, v: [Option<Duration>; 3], target: Option<Target>) {
        let r = |other: Option<Duration>| v[0].zip(other).map(|(a, b)| ratio(a, b));
        let (vs_go, vs_echo) = (r(v[1]), r(v[2]));
        let check = match target {
            Some(Target::Go(t)) => vs_go.map(|x| Check::at_most(x, t)),
            Some(Target::Echo(t)) => vs_echo.map(|x| Check::at_most(x, t)),
            None => None,
        };
        let go_missing = if self.go { "-" } else { "skipped" };
        let cell = |d: Option<Duration>| d.map(micros).unwrap_or_else(|| go_missing.into());
        let ratio_cell = |x: Option<f64>| x.map(|x| format!("{x:.2}x")).unwrap_or_else(|| go_missing.into());
        self.push(
            name,
            [cell(v[0]), cell(v[1]), cell(v[2])],
            [ratio_cell(vs_go), ratio_cell(vs_echo)],
            check,
        );
    }

    fn cpu(&mut self, name: &str, rounds: &[Vec<Duration>; 3], target_vs_go: f64) {
        let median = |v: &Vec<Duration>| (!v.is_empty()).then(|| Samples::new(v.clone()).p50());
        self.durations(
            name,
            [median(&rounds[0]), median(&rounds[1]), median(&rounds[2])],
            Some(Target::Go(target_vs_go)),
        );
    }

    fn latency(
        &mut self,
        name: &str,
        s: &[Option<Samples>; 3],
        pick: fn(&Samples) -> Duration,
        target: Option<Target>,
    ) {
        self.durations(
            name,
            [s[0].as_ref().map(pick), s[1].as_ref().map(pick), s[2].as_ref().map(pick)],
            target,
        );
    }

    /// What each agent adds to the echo floor's figure, ours over Go's checked against `target`.
    fn above_floor(
        &mut self,
        name: &str,
        s: &[Option<Samples>; 3],
        pick: fn(&Samples) -> Duration,
        target: f64,
    ) {
        let floor = s[2].as_ref().map(pick);
        let added = |x: &Option<Samples>| x.as_ref().map(pick).zip(floor).map(|(a, f)| a.saturating_sub(f));
        let (ours, go) = (added(&s[0]), added(&s[1]));
        let vs_go = ours.zip(go).map(|(a, b)| ratio(a, b));
        let missing = if self.go { "-" } else { "skipped" };
        let cell = |d: Option<Duration>| d.map(micros).unwrap_or_else(|| missing.into());
        self.push(
            name,
            [cell(ours), cell(go), "0 us".into()],
            [vs_go.map(|x| format!("{x:.2}x")).unwrap_or_else(|| missing.into()), String::new()],
            vs_go.map(|x| Check::at_most(x, target)),
        );
    }

    fn count(&mut self, name: &str, m: &[Option<Memory>; 3], pick: fn(&Memory) -> u64, at_most: Option<u64>) {
        let cell = |x: &Option<Memory>| x.as_ref().map(|m| pick(m).to_string()).unwrap_or_else(|| "-".into());
        let check = at_most
            .zip(m[0].as_ref())
            .map(|(t, ours)| Check { ok: pick(ours) <= t, text: format!("<= {t}") });
        self.row(name, cell(&m[0]), cell(&m[1]), cell(&m[2]), check);
    }

    fn kib(&mut self, name: &str, m: &[Option<Memory>; 3], pick: fn(&Memory) -> u64, below: Option<u64>) {
        let cell = |x: &Option<Memory>| x.as_ref().map(|m| mb(pick(m) * 1024)).unwrap_or_else(|| "-".into());
        let ratio_to = |x: &Option<Memory>| {
            m[0].as_ref()
                .zip(x.as_ref())
                .map(|(a, b)| format!("{:.2}x", pick(a) as f64 / pick(b).max(1) as f64))
        };
        let check = below
            .zip(m[0].as_ref())
            .map(|(t, ours)| Check { ok: pick(ours) * 1024 < t, text: format!("< {}", mb(t)) });
        let ratios = [ratio_to(&m[1]).unwrap_or_default(), ratio_to(&m[2]).unwrap_or_default()];
        self.push(name, [cell(&m[0]), cell(&m[1]), cell(&m[2])], ratios, check);
    }

    fn print(&self, title: &[String], elapsed: Duration) {
        println!();
        for t in title {
            println!("{t}");
        }
        println!();
        let header =
            ["figure", "ours", "Go", "echo", "ours/Go", "ours/echo", "target", "verdict"].map(String::from);
        print_table(&header, &self.rows);
        println!();
        print_summary(self.checked, &self.missed, elapsed);
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn fmt_opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn memory(peer: &impl Peer) -> Memory {
    memory_of(peer.pid()).expect("the process is gone")
}

/// `per_client` pings from each of `clients` at once (one thread each, each waiting for its reply
/// before the next); the responder's CPU over them per reply.
fn cpu_per_reply(pid: u32, clients: &mut [Nats], per_client: usize) -> Duration {
    let before = cpu_time(pid);
    std::thread::scope(|s| {
        for t in clients.iter_mut() {
            s.spawn(move || {
                for _ in 0..per_client {
                    timed(t, "ping", &[], |r| r == &json!({"value": "pong"}));
                }
            });
        }
    });
    (cpu_time(pid) - before) / (per_client * clients.len()) as u32
}

/// `n` rounds of one request to each present client in turn (the first one rotating), timed by
/// `op(client, which)`; samples per client.
fn interleaved(
    n: usize,
    mut clients: [Option<&mut Nats>; 3],
    op: impl Fn(&mut Nats, usize) -> Duration,
) -> [Option<Samples>; 3] {
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for i in 0..n {
        for k in 0..3 {
            let who = (i + k) % 3;
            if let Some(t) = clients[who].as_deref_mut() {
                samples[who].push(op(t, who));
            }
        }
    }
    samples.map(|v| (!v.is_empty()).then(|| Samples::new(v)))
}

/// One request, timed from publish to parsed reply; panics when `ok` rejects the reply so a broken
/// responder cannot produce fast-looking numbers.
fn timed(t: &mut Nats, method: &str, args: &[Value], ok: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    let reply = t.request(method, args, start + REQUEST_TIMEOUT).unwrap_or_else(|e| panic!("{method}: {e}"));
    let took = start.elapsed();
    assert!(ok(&reply), "unexpected reply to {method}: {reply}");
    took
}

fn warm_up(t: &mut Nats) {
    for _ in 0..WARMUP {
        timed(t, "ping", &[], |_| true);
    }
}

/// Starts `dummy_sleep [600]` and returns its task id (the reply must be a running-task handle).
fn start_sleep(t: &mut Nats) -> String {
    let reply =
        t.request("dummy_sleep", &[json!(600)], Instant::now() + REQUEST_TIMEOUT).expect("dummy_sleep");
    assert_eq!(reply["value"]["state"], "running", "dummy_sleep gave no task: {reply}");
    reply["value"]["agent_task_id"].as_str().expect("agent_task_id").to_string()
}

/// Cancels the sleeping tasks and waits until each reports `{"canceled": true}`, so the busy phase
/// demonstrably ran with live, cancelable tasks.
fn cancel_all(t: &mut Nats, tasks: &[String]) {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    for id in tasks {
        let reply = t.request("cancel_task", &[json!(id)], deadline).expect("cancel_task");
        assert_eq!(reply, json!({"value": "canceled"}), "cancel_task {id}");
    }
    for id in tasks {
        loop {
            let reply = t.request("get_task", &[json!(id)], deadline).expect("get_task");
            if reply == json!({"value": {"canceled": true}}) {
                break;
            }
            assert_eq!(reply["value"]["state"], "running", "task {id} after cancel: {reply}");
            assert!(Instant::now() < deadline, "task {id} still running after cancel_task");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The memory soak: ping, get_state, get_task of the previous (finished) list_disk task, and
/// list_disk (a task under protocol 3) in turn. Returns how many replies lacked a `value`.
fn soak(t: &mut Nats, requests: usize) -> usize {
    let first = t.request("list_disk", &[], Instant::now() + REQUEST_TIMEOUT).expect("list_disk");
    let mut last_task = first["value"]["agent_task_id"].as_str().expect("list_disk task id").to_string();
    std::thread::sleep(Duration::from_millis(50));
    let mut errors = 0;
    for i in 0..requests {
        let (method, args) = match i % 4 {
            0 => ("ping", vec![]),
            1 => ("get_state", vec![]),
            2 => ("get_task", vec![json!(last_task)]),
            _ => ("list_disk", vec![]),
        };
        let reply = t.request(method, &args, Instant::now() + REQUEST_TIMEOUT).expect(method);
        if reply.get("value").is_none() {
            errors += 1;
        }
        if let Some(id) = reply["value"]["agent_task_id"].as_str() {
            if method == "list_disk" {
                last_task = id.to_string();
            }
        }
    }
    errors
}
