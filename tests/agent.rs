//! The agent binary end to end, driven as the director (NATS, protocol 3, mutual TLS against a real
//! nats-server) and as bosh-cli (HTTPS) drive it.

use crate::common::agent::{exception, value, Director, HealthMonitor, Launch, TestAgent};
use crate::common::certs::TestPki;
use crate::common::nats_server::{free_port, MappedUser, NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use crate::common::wait_until;
use bosh_agent::mbus::nats::{NatsConnection, NatsOptions};
use serde_json::{json, Value};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Env {
    pki: TestPki,
    nats: NatsServer,
    agent: TestAgent,
}

fn unique_id(tag: &str) -> String {
    format!("{tag}-{}", &bosh_agent::ids::uuid_v4()[..8])
}

fn start(tag: &str) -> (Env, Director) {
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = unique_id(tag);
    let agent = TestAgent::start(&nats_settings(&pki, &id, &nats.url()), &[]);
    let mut director = Director::connect(&pki, &nats.url(), &id);
    assert!(director.wait_ready(Duration::from_secs(15)), "agent never answered ping:\n{}", agent.log());
    (Env { pki, nats, agent }, director)
}

#[test]
fn answers_every_simple_action_over_mutual_tls() {
    let (env, mut d) = start("simple");
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
    assert_eq!(d.send("ping", json!(["extra", "args", "ignored"])), json!({"value": "pong"}));
    assert_eq!(d.send("noop", json!([])), json!({"value": "nope"}));
    assert_eq!(d.send("info", json!([])), json!({"value": {"api_version": 1}}));

    let state = d.send("get_state", json!([]));
    let s = value(&state);
    assert_eq!(s["agent_id"], env.agent.agent_id.as_str());
    assert_eq!(s["job_state"], "running");
    assert_eq!(s["networks"]["default"]["ip"], "10.0.0.5");
    assert_eq!(s["vm"]["name"], "vm-test");
    assert!(s["processes"].is_array() && s.get("vitals").is_none());
    assert_eq!(d.send("state", json!([]))["value"]["job_state"], "running");

    let full = d.send("get_state", json!(["full"]));
    let vitals = &value(&full)["vitals"];
    for leaf in [
        &vitals["load"][0],
        &vitals["mem"]["kb"],
        &vitals["mem"]["percent"],
        &vitals["disk"]["system"]["percent"],
    ] {
        assert!(leaf.is_string(), "vitals must be string-typed: {vitals}");
    }
    assert!(vitals["uptime"]["secs"].is_u64());

    // Protocol 3 makes list_disk a task whose result is the CID list.
    assert_eq!(d.run_task("list_disk", json!([])), json!({"value": ["disk-1"]}));

    let victim = env.agent.base().join("bundle.tgz");
    std::fs::write(&victim, b"logs").unwrap();
    let path = victim.to_str().unwrap();
    assert_eq!(d.send("remove_file", json!([path])), json!({"value": path}));
    assert!(!victim.exists());
    assert_eq!(d.send("remove_file", json!([path])), json!({"value": path}), "already gone is fine");
    assert_eq!(d.send("shutdown", json!([])), json!({"value": ""}));
}

#[test]
fn bad_input_gets_an_exception_naming_the_problem_and_the_agent_keeps_serving() {
    let (env, mut d) = start("bad");
    assert_eq!(exception(&d.send("no_such_action", json!([]))), "unknown message no_such_action");
    let e = exception(&d.send("get_task", json!([])));
    assert!(e.contains("Not enough arguments, expected 1, got 0"), "{e}");
    let e = exception(&d.send("get_task", json!([42])));
    assert!(e.contains("argument 1") && e.contains("expected a string"), "{e}");
    let e = exception(&d.send("update_settings", json!(["not an object"])));
    assert!(e.starts_with("Action Failed update_settings: Extracting method arguments"), "{e}");
    let e = exception(&d.send("dummy_sleep", json!([-1])));
    assert!(e.contains("seconds must be within"), "{e}");
    assert!(exception(&d.send("get_task", json!(["nope"]))).contains("Task with id nope could not be found"));
    assert!(exception(&d.send("cancel_task", json!(["nope"]))).contains("could not be found"));

    // Malformed envelopes sent raw: with a reply_to they are answered, without one they are dropped,
    // and either way the agent keeps serving.
    let tls = env.pki.nats_tls("raw.bosh-internal");
    let (tx, rx) = std::sync::mpsc::channel();
    let raw = bosh_agent::mbus::nats::NatsConnection::start(
        bosh_agent::mbus::nats::NatsOptions {
            urls: vec![env.nats.url()],
            tls: Some(tls),
            subscriptions: vec!["director.raw.>".into()],
            name: "raw".into(),
        },
        tx,
    );
    assert!(raw.wait_connected(crate::common::CONNECT_WITHIN) && raw.flush(Duration::from_secs(5)));
    let subject = format!("agent.{}", env.agent.agent_id);
    for garbage in [&b"not json"[..], b"[1,2]", b"{\"arguments\":[]}", b"\xff\xfe"] {
        raw.publish(&subject, garbage).unwrap();
    }
    let cases = [
        (r#"{"method":7,"reply_to":"director.raw.a.1"}"#, "'method' must be a string"),
        (
            r#"{"method":"ping","arguments":"x","reply_to":"director.raw.a.2"}"#,
            "'arguments' must be an array",
        ),
        (
            r#"{"method":"ping","protocol":-3,"reply_to":"director.raw.a.3"}"#,
            "'protocol' must be a non-negative integer",
        ),
    ];
    for (body, _) in &cases {
        raw.publish(&subject, body.as_bytes()).unwrap();
    }
    // Workers answer in parallel, so replies may arrive in any order.
    let mut replies = std::collections::HashMap::new();
    for _ in 0..cases.len() {
        let m = rx.recv_timeout(Duration::from_secs(5)).expect("malformed request answered");
        replies.insert(m.subject.clone(), serde_json::from_slice::<Value>(&m.payload).unwrap());
    }
    for (i, (_, want)) in cases.iter().enumerate() {
        let v = &replies[&format!("director.raw.a.{}", i + 1)];
        assert!(exception(v).contains(want), "{v}");
    }
    // A request without protocol is bosh-cli style: list_disk answers synchronously.
    raw.publish(&subject, br#"{"method":"list_disk","arguments":[],"reply_to":"director.raw.a.9"}"#).unwrap();
    let m = rx.recv_timeout(Duration::from_secs(5)).expect("list_disk answered");
    assert_eq!(serde_json::from_slice::<Value>(&m.payload).unwrap(), json!({"value": ["disk-1"]}));
    raw.shutdown();
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
}

#[test]
fn tasks_run_in_parallel_without_delaying_ping_and_can_be_cancelled() {
    let (_env, mut d) = start("tasks");
    let ids: Vec<String> = (0..8)
        .map(|_| {
            let r = d.send("dummy_sleep", json!([60]));
            assert_eq!(r["value"]["state"], "running");
            r["value"]["agent_task_id"].as_str().expect("string task id").to_string()
        })
        .collect();
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
        assert!(value(&d.send("get_state", json!([])))["job_state"].is_string());
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "ping/get_state delayed by running tasks: {:?}",
        t.elapsed()
    );
    let running = d.send("get_task", json!([ids[0]]));
    assert_eq!(running, json!({"value": {"agent_task_id": ids[0], "state": "running"}}));
    for id in &ids {
        assert_eq!(d.send("cancel_task", json!([id])), json!({"value": "canceled"}));
    }
    for id in &ids {
        assert_eq!(d.wait_task(id, Duration::from_secs(10)), json!({"value": {"canceled": true}}));
    }
    // Finished tasks stay answerable and cancelling them again is harmless.
    assert_eq!(d.send("cancel_task", json!([ids[0]])), json!({"value": "canceled"}));
    assert_eq!(d.send("get_task", json!([ids[0]])), json!({"value": {"canceled": true}}));
}

#[test]
fn heartbeats_at_start_and_every_interval() {
    let (env, _d) = start("beat");
    let hm = HealthMonitor::connect(&env.pki, &env.nats.url(), &env.agent.agent_id);
    let subject = format!("hm.agent.heartbeat.{}", env.agent.agent_id);
    let first = hm.next(&subject, Duration::from_secs(5)).expect("a heartbeat within 5 s");
    let t = Instant::now();
    let second = hm.next(&subject, Duration::from_secs(5)).expect("a second heartbeat");
    assert!(t.elapsed() >= Duration::from_millis(500), "heartbeats too close together");
    for beat in [&first, &second] {
        assert!(beat.get("id").is_none(), "no id: the HM deduplicates by id");
        assert_eq!(beat["job_state"], "running");
        assert_eq!(beat["deployment"], "");
        assert!(beat["job"].is_null() && beat["index"].is_null());
        assert_eq!(beat["node_id"], "");
        assert_eq!(beat["number_of_processes"], 0);
        assert!(beat["vitals"]["mem"]["percent"].is_string() && beat["vitals"]["load"][2].is_string());
    }
}

#[test]
fn heartbeat_reports_the_applied_spec() {
    let (env, _d) = start("spec");
    let spec =
        json!({"deployment": "dep", "job": {"name": "web", "templates": []}, "index": 2, "id": "node-7"});
    std::fs::write(env.agent.base().join("bosh/spec.json"), spec.to_string()).unwrap();
    let hm = HealthMonitor::connect(&env.pki, &env.nats.url(), &env.agent.agent_id);
    let subject = format!("hm.agent.heartbeat.{}", env.agent.agent_id);
    let beat = hm.next(&subject, Duration::from_secs(5)).expect("heartbeat");
    assert_eq!(
        (&beat["deployment"], &beat["job"], &beat["index"], &beat["node_id"]),
        (&json!("dep"), &json!("web"), &json!(2), &json!("node-7"))
    );
}

#[test]
fn survives_a_nats_restart_and_keeps_task_results() {
    let (mut env, mut d) = start("restart");
    let task = d.send("dummy_sleep", json!([1]));
    let id = task["value"]["agent_task_id"].as_str().unwrap().to_string();
    env.nats.stop();
    // The task finishes while NATS is down.
    let finished = format!("task {id} (dummy_sleep) done");
    assert!(
        wait_until(Duration::from_secs(10), || env.agent.log().contains(&finished)),
        "{}",
        env.agent.log()
    );
    env.nats.restart();
    let mut d = Director::connect(&env.pki, &env.nats.url(), &env.agent.agent_id);
    assert!(d.wait_ready(Duration::from_secs(20)), "agent did not reconnect:\n{}", env.agent.log());
    assert_eq!(d.send("get_task", json!([id])), json!({"value": {"canceled": false}}));
    let hm = HealthMonitor::connect(&env.pki, &env.nats.url(), &env.agent.agent_id);
    let subject = format!("hm.agent.heartbeat.{}", env.agent.agent_id);
    assert!(hm.next(&subject, Duration::from_secs(5)).is_some(), "heartbeats resumed");
    assert!(env.agent.alive());
}

#[test]
fn starts_while_nats_is_down_and_connects_when_it_comes_up() {
    let pki = TestPki::new();
    let port = free_port();
    let id = unique_id("late");
    let url = format!("nats://127.0.0.1:{port}");
    let mut agent = TestAgent::start(&nats_settings(&pki, &id, &url), &[]);
    // Several failed attempts (0.5 s, then 1 s apart) and still running.
    let failures = |log: String| log.matches("NATS: connecting to").count();
    assert!(
        wait_until(Duration::from_secs(10), || failures(agent.log()) >= 3),
        "agent logs its connection attempts:\n{}",
        agent.log()
    );
    assert!(agent.alive(), "agent must not exit while NATS is unreachable:\n{}", agent.log());
    let nats = NatsServer::start(&pki, NatsServerOptions { port: Some(port), ..Default::default() });
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(20)), "agent never connected:\n{}", agent.log());
}

#[test]
fn oversized_replies_become_exceptions_and_the_connection_survives() {
    let (env, mut d) = start("big");
    let huge = json!({"deployment": "x".repeat(1_200_000)});
    std::fs::write(env.agent.base().join("bosh/spec.json"), huge.to_string()).unwrap();
    let reply = d.send("get_state", json!([]));
    assert_eq!(exception(&reply), "Response exceeded maximum allowed length");
    std::fs::remove_file(env.agent.base().join("bosh/spec.json")).unwrap();
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
}

#[test]
fn replies_respect_a_smaller_server_max_payload() {
    let pki = TestPki::new();
    let nats =
        NatsServer::start(&pki, NatsServerOptions { max_payload: Some(64 * 1024), ..Default::default() });
    let id = unique_id("small");
    let agent = TestAgent::start(&nats_settings(&pki, &id, &nats.url()), &[]);
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "{}", agent.log());
    let spec = json!({"deployment": "y".repeat(100_000)});
    std::fs::write(agent.base().join("bosh/spec.json"), spec.to_string()).unwrap();
    assert_eq!(exception(&d.send("get_state", json!([]))), "Response exceeded maximum allowed length");
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
}

#[test]
fn a_panicking_action_costs_one_reply_not_the_agent() {
    let (mut env, mut d) = start("panic");
    let e = exception(&d.send("dummy_panic", json!([])));
    assert!(e.contains("internal error") && e.contains("asked to panic"), "{e}");
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
    assert!(env.agent.alive());
}

#[test]
fn update_settings_rotates_the_certificate_and_stays_answerable() {
    let (env, mut d) = start("rotate");
    let id = env.agent.agent_id.clone();
    let (cert, key) = env.pki.client(&format!("{id}.agent.bosh-internal"));
    let trusted = env.pki.ca_pem.clone() + &env.pki.ca_pem;
    let args = json!([{
        "trusted_certs": trusted,
        "disk_associations": [{"name": "data", "cid": "disk-1"}],
        "mbus": {"cert": {"ca": env.pki.ca_pem, "certificate": cert, "private_key": key}}
    }]);
    assert_eq!(d.run_task("update_settings", args), json!({"value": "ok"}));
    assert!(wait_until(Duration::from_secs(10), || env
        .agent
        .log()
        .contains("reconnecting to NATS with the new certificate")));
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));

    let stored: Value =
        serde_json::from_slice(&std::fs::read(env.agent.base().join("bosh/update_settings.json")).unwrap())
            .unwrap();
    assert_eq!(stored["mbus"]["cert"]["certificate"], cert.as_str());
    assert_eq!(stored["disk_associations"][0]["cid"], "disk-1");
    let certs = std::fs::read_dir(env.agent.base().join("bosh/trusted_certs")).unwrap().count();
    assert_eq!(certs, 2, "one file per trusted certificate");
    assert_eq!(std::fs::read_to_string(env.agent.base().join("bosh/tasks.json")).unwrap(), "{}");

    // Secrets never reach the log, even at debug level.
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let log = env.agent.log();
    assert!(!log.contains(&key_body[..40]), "private key leaked into the log");
    assert!(!log.contains("PRIVATE KEY"), "private key leaked into the log");
}

/// Make-before-break: while the certificate rotates, a steady stream of requests (each sent once,
/// never retried, as the assertion is that none is lost) is answered exactly once each, including a
/// `get_task` for the rotation's own task. Runs under the per-agent permissions nats-sync writes, so
/// the old and the new identity really are different NATS users.
#[test]
fn rotation_loses_no_request_and_answers_each_once() {
    let pki = TestPki::new();
    let id = unique_id("stream");
    let opts = NatsServerOptions { mapped_users: Some(bosh_users(&id, true)), ..Default::default() };
    let nats = NatsServer::start(&pki, opts);
    let agent = TestAgent::start(&nats_settings(&pki, &id, &nats.url()), &[]);
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());

    let (tx, replies) = mpsc::channel();
    let inbox = format!("director.{}", bosh_agent::ids::uuid_v4());
    let stream = NatsConnection::start(
        NatsOptions {
            urls: vec![nats.url()],
            tls: Some(pki.nats_tls("director.bosh-internal")),
            subscriptions: vec![format!("{inbox}.>")],
            name: "stream".into(),
        },
        tx,
    );
    assert!(stream.wait_connected(crate::common::CONNECT_WITHIN) && stream.flush(Duration::from_secs(5)));

    let (cert, key) = pki.client(&format!("{id}.agent.bosh-internal"));
    let update = json!([{"trusted_certs": "", "mbus": {"cert": {"ca": pki.ca_pem, "certificate": cert, "private_key": key}}}]);
    let task =
        d.send("update_settings", update)["value"]["agent_task_id"].as_str().expect("task id").to_string();

    // Publish until the agent has switched connections, then a little longer.
    let mut sent: Vec<(String, &str)> = Vec::new();
    let started = Instant::now();
    let mut switched_at: Option<Instant> = None;
    while switched_at.is_none_or(|t| t.elapsed() < Duration::from_millis(500)) {
        assert!(started.elapsed() < Duration::from_secs(60), "no switch logged:\n{}", agent.log());
        let n = sent.len();
        let (method, args) = if n % 5 == 4 { ("get_task", json!([task])) } else { ("ping", json!([])) };
        let reply_to = format!("{inbox}.{id}.{n}");
        let body = json!({"protocol": 3, "method": method, "arguments": args, "reply_to": reply_to});
        stream.publish(&format!("agent.{id}"), body.to_string().as_bytes()).expect("publish");
        sent.push((reply_to, method));
        std::thread::sleep(Duration::from_millis(5));
        if switched_at.is_none() && agent.log().contains("switched to the new connection") {
            switched_at = Some(Instant::now());
        }
    }

    let mut answers: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let all_in = wait_until(Duration::from_secs(60), || {
        while let Ok(m) = replies.try_recv() {
            answers
                .entry(m.subject)
                .or_default()
                .push(serde_json::from_slice(&m.payload).expect("JSON reply"));
        }
        sent.iter().all(|(r, _)| answers.contains_key(r))
    });
    // A second copy would come right behind the first: give it a moment to show up.
    std::thread::sleep(Duration::from_secs(1));
    while let Ok(m) = replies.try_recv() {
        answers.entry(m.subject).or_default().push(serde_json::from_slice(&m.payload).expect("JSON reply"));
    }
    stream.shutdown();
    let missing: Vec<&str> =
        sent.iter().filter(|(r, _)| !answers.contains_key(r)).map(|(r, _)| r.as_str()).collect();
    assert!(
        all_in && missing.is_empty(),
        "{} of {} requests unanswered: {missing:?}\n{}",
        missing.len(),
        sent.len(),
        agent.log()
    );
    for (reply_to, method) in &sent {
        let got = &answers[reply_to];
        assert_eq!(got.len(), 1, "{method} {reply_to} answered {} times: {got:?}", got.len());
        match *method {
            "ping" => assert_eq!(got[0], json!({"value": "pong"})),
            _ => assert!(got[0]["value"] == "ok" || got[0]["value"]["state"] == "running", "{}", got[0]),
        }
    }
    assert!(sent.len() >= 20, "the stream covered the switch with {} requests", sent.len());
    assert_eq!(d.wait_task(&task, Duration::from_secs(20)), json!({"value": "ok"}));
    assert!(!nats.log().contains("Permissions Violation"), "{}", nats.log());
}

#[test]
fn an_unusable_certificate_is_refused_before_it_is_persisted() {
    let (env, mut d) = start("badcert");
    let args =
        json!([{"mbus": {"cert": {"ca": env.pki.ca_pem, "certificate": "garbage", "private_key": "nope"}}}]);
    let e = exception(&d.run_task("update_settings", args));
    assert!(e.contains("mbus.cert.certificate"), "{e}");
    assert!(!env.agent.base().join("bosh/update_settings.json").exists());
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
}

#[test]
fn rotated_certificate_survives_a_restart() {
    // After rotation only the new certificate is authorised, so the restarted agent can reach NATS only
    // if it layered update_settings.json over the bootstrap settings.
    let pki = TestPki::new();
    let id = unique_id("rotrestart");
    let mut opts = NatsServerOptions { mapped_users: Some(bosh_users(&id, true)), ..Default::default() };
    let mut nats = NatsServer::start(&pki, opts.clone());
    let mut agent = TestAgent::start(&nats_settings(&pki, &id, &nats.url()), &[]);
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "{}", agent.log());
    let (cert, key) = pki.client(&format!("{id}.agent.bosh-internal"));
    let args = json!([{"trusted_certs": "", "mbus": {"cert": {"ca": pki.ca_pem, "certificate": cert, "private_key": key}}}]);
    assert_eq!(d.run_task("update_settings", args), json!({"value": "ok"}));
    opts.mapped_users = Some(bosh_users(&id, false));
    nats.reload(&pki, &opts);
    assert!(wait_until(Duration::from_secs(5), || nats.log().contains("Reloaded")), "{}", nats.log());
    agent.restart();
    assert!(d.wait_ready(Duration::from_secs(20)), "agent did not come back:\n{}", agent.log());
    let cached: Value =
        serde_json::from_slice(&std::fs::read(agent.base().join("bosh/settings.json")).unwrap()).unwrap();
    assert_eq!(cached["agent_id"], id.as_str());
}

#[test]
fn persistent_tasks_resume_after_a_restart_under_the_same_id() {
    let (mut env, mut d) = start("resume");
    env.agent.kill();
    let body = json!({"protocol": 3, "method": "update_settings", "arguments": [{"trusted_certs": ""}], "reply_to": "director.x.y.z"});
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::STANDARD.encode(v.to_string());
    let unknown = json!({"method": "no_such", "arguments": []});
    let tasks = json!({"task-before-crash": {"TaskID": "task-before-crash", "Method": "update_settings", "Payload": b64(body)},
                       "task-unknown": {"TaskID": "task-unknown", "Method": "no_such", "Payload": b64(unknown)}});
    std::fs::write(env.agent.base().join("bosh/tasks.json"), tasks.to_string()).unwrap();
    env.agent.restart();
    assert!(d.wait_ready(Duration::from_secs(20)), "agent did not come back:\n{}", env.agent.log());
    assert_eq!(d.wait_task("task-before-crash", Duration::from_secs(10)), json!({"value": "ok"}));
    assert!(exception(&d.send("get_task", json!(["task-unknown"]))).contains("cannot be resumed"));
    assert_eq!(std::fs::read_to_string(env.agent.base().join("bosh/tasks.json")).unwrap(), "{}");
}

#[test]
fn exits_cleanly_on_sigterm() {
    let (mut env, _d) = start("term");
    let status = env.agent.terminate().expect("agent exits on SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn call_subcommand_speaks_nats_and_follows_tasks() {
    let (env, _d) = start("call");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = env.pki.client("operator.bosh-internal");
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), key).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosh-agent"))
        .args(["call", "--mbus", &env.nats.url(), "--agent-id", &env.agent.agent_id])
        .args(["--ca", env.pki.ca_file.to_str().unwrap()])
        .args([
            "--cert",
            dir.path().join("c.pem").to_str().unwrap(),
            "--key",
            dir.path().join("k.pem").to_str().unwrap(),
        ])
        .args(["dummy_sleep", "[0.3]"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"value": {"canceled": false}}));
}

#[test]
fn command_line_errors_exit_2_with_one_line() {
    for args in [&["--bogus"][..], &["-P", "windows"], &["-h", "zero"], &["-t", "99999"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosh-agent")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosh-agent")).arg("-v").output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("bosh-agent "));
}

/// A start that fails exits with a clear error, but never at once: a service manager restarting it
/// immediately must not reach its start limit (systemd's default: 5 starts in 10 s). The minimum is
/// shortened here through `agent.json`; its default (10 s) is pinned by a unit test.
#[test]
fn missing_mandatory_setting_is_a_clear_startup_error() {
    let pki = TestPki::new();
    let mut settings = nats_settings(&pki, "x", "nats://127.0.0.1:1");
    settings.as_object_mut().unwrap().remove("agent_id");
    let retry = json!({"Infrastructure": {"Settings": {"Retry": {"MinFailedRunMs": 1500}}}});
    let started = Instant::now();
    let mut agent = TestAgent::launch(&settings, Launch { agent_json: Some(retry), ..Launch::default() });
    assert!(wait_until(Duration::from_secs(15), || !agent.alive()), "agent should exit");
    let lasted = started.elapsed();
    assert!(agent.log().contains("settings lack the mandatory key 'agent_id'"), "{}", agent.log());
    assert!(lasted >= Duration::from_millis(1500), "exited after {lasted:?}:\n{}", agent.log());
    assert!(agent.log().contains("a failed start lasts at least 1.5s"), "{}", agent.log());
}

/// The per-agent NATS users bosh-nats-sync writes: the agent may subscribe to `agent.<id>` only and
/// publish only replies and health-monitor events.
fn bosh_users(id: &str, with_bootstrap: bool) -> Vec<MappedUser> {
    let publish = [
        format!("hm.agent.heartbeat.{id}"),
        format!("hm.agent.alert.{id}"),
        format!("hm.agent.shutdown.{id}"),
        format!("director.*.{id}.*"),
    ];
    let subscribe = [format!("agent.{id}")];
    let mut users = vec![
        MappedUser::cn(&format!("{id}.agent.bosh-internal"), Some(&publish), Some(&subscribe)),
        MappedUser::cn(
            "director.bosh-internal",
            Some(&["agent.*".to_string()]),
            Some(&["director.>".to_string()]),
        ),
        MappedUser::cn("default.hm.bosh-internal", Some(&[]), Some(&["hm.agent.*.*".to_string()])),
    ];
    if with_bootstrap {
        users.push(MappedUser::cn(
            &format!("{id}.bootstrap.agent.bosh-internal"),
            Some(&publish),
            Some(&subscribe),
        ));
    }
    users
}

#[test]
fn bootstrap_certificate_is_replaced_before_nats_sync_revokes_it() {
    let pki = TestPki::new();
    let id = unique_id("sync");
    let mut opts = NatsServerOptions { mapped_users: Some(bosh_users(&id, true)), ..Default::default() };
    let mut nats = NatsServer::start(&pki, opts.clone());
    let agent = TestAgent::start(&nats_settings(&pki, &id, &nats.url()), &[]);
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}\n{}", agent.log(), nats.log());
    let hm = HealthMonitor::connect(&pki, &nats.url(), &id);
    let beat = format!("hm.agent.heartbeat.{id}");
    assert!(
        hm.next(&beat, Duration::from_secs(5)).is_some(),
        "heartbeat allowed under per-agent permissions"
    );

    let (cert, key) = pki.client(&format!("{id}.agent.bosh-internal"));
    let update = json!([{"trusted_certs": "", "mbus": {"cert": {"ca": pki.ca_pem, "certificate": cert, "private_key": key}}}]);
    let first = d.send("update_settings", update);
    let task = first["value"]["agent_task_id"].as_str().expect("task id").to_string();
    assert_eq!(d.wait_task(&task, Duration::from_secs(10)), json!({"value": "ok"}));

    // nats-sync drops the bootstrap user once the director marks the credentials permanent.
    opts.mapped_users = Some(bosh_users(&id, false));
    nats.reload(&pki, &opts);
    assert!(wait_until(Duration::from_secs(5), || nats.log().contains("Reloaded")), "{}", nats.log());
    // The reload may drop connections for a moment; the director's pings ride that out.
    assert!(d.wait_ready(Duration::from_secs(20)), "agent unreachable after the reload:\n{}", agent.log());
    assert_eq!(d.send("get_task", json!([task])), json!({"value": "ok"}));
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
    hm.drain();
    assert!(hm.next(&beat, Duration::from_secs(5)).is_some(), "heartbeats continue with the new certificate");
    assert!(
        !nats.log().contains("Permissions Violation"),
        "the agent stepped outside its permissions:\n{}",
        nats.log()
    );
}
