//! bosh-cli's polling replayed: how many `get_task` polls each disk and script step of `bosh
//! create-env` needs, and what the sequence costs in wall time.
//!
//! bosh-cli (its agent client over the HTTPS bus) sends an asynchronous request, polls `get_task`
//! once at once, and then once a second until the task is no longer running. A step that misses the
//! first poll therefore costs a whole second, however quick the task. This bench drives the release
//! agent on the dummy platform exactly that way, through a create-env with a disk migration and a
//! delete-env: add/mount a disk, the job's pre-start and post-start, add/mount a second disk,
//! migrate, remove the first, pre-stop, drain, post-stop, unmount and remove the second. The job's
//! scripts do nothing (`exit 0`, a drain printing `0`), so each step is the agent's own overhead:
//! the target is that every one is found done by the first poll. The client keeps its HTTPS
//! connection alive, so its first poll follows the request sooner than bosh-cli's (which opens a
//! new TLS connection per request): if anything, stricter than the real thing.

mod support;
#[path = "../tests/common/tarball.rs"]
#[allow(dead_code)]
mod tarball;

use bosh_agent::client::{running_task, Https, Transport};
use bosh_agent::mbus::url::MbusUrl;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{agent_binary, AgentProcess};
use tarball::{digests, file, script, tgz};

/// bosh-cli's pause between `get_task` polls (`getTaskDelay`).
const POLL_DELAY: Duration = Duration::from_secs(1);
/// Rounds of the whole sequence; each step's polls are shown for every round.
const ROUNDS: usize = 3;
/// The target: found done by the first poll.
const TARGET_POLLS: usize = 1;

/// One step: its label, whether it has the one-poll target, the method and its arguments.
struct Step {
    label: String,
    targeted: bool,
    method: &'static str,
    args: Value,
}

fn step(label: &str, targeted: bool, method: &'static str, args: Value) -> Step {
    Step { label: label.to_string(), targeted, method, args }
}

/// create-env with a disk, an update that migrates the disk, and delete-env, as bosh-cli orders
/// them (its `deployment/vm/disk_deployer.go` and `instance.go`); the disk ids are per round.
fn sequence(round: usize) -> Vec<Step> {
    let (old, new) = (format!("disk-{round}-a"), format!("disk-{round}-b"));
    let hint = |path: &str, cid: &str| json!([cid, {"path": path, "volume_id": cid}]);
    vec![
        step("add_persistent_disk", true, "add_persistent_disk", hint("/dev/sdc", &old)),
        step("mount_disk", true, "mount_disk", json!([old])),
        step("run_script pre-start", true, "run_script", json!(["pre-start", {}])),
        step("run_script post-start", true, "run_script", json!(["post-start", {}])),
        step("add_persistent_disk (new)", true, "add_persistent_disk", hint("/dev/sdd", &new)),
        step("mount_disk (new)", true, "mount_disk", json!([new])),
        step("migrate_disk", true, "migrate_disk", json!([])),
        step("remove_persistent_disk (old)", true, "remove_persistent_disk", json!([old])),
        step("run_script pre-stop", true, "run_script", json!(["pre-stop", {}])),
        step("drain shutdown", true, "drain", json!(["shutdown", {}])),
        step("stop", false, "stop", json!([])),
        step("run_script post-stop", true, "run_script", json!(["post-stop", {}])),
        step("unmount_disk", true, "unmount_disk", json!([new])),
        step("remove_persistent_disk", true, "remove_persistent_disk", json!([new])),
    ]
}

/// Sends `method` and polls `get_task` as bosh-cli does; returns how many polls it took (0 for a
/// synchronous answer) and the time from the request to the final reply.
fn as_bosh_cli(client: &mut Https, method: &str, args: &Value) -> (usize, Duration) {
    let started = Instant::now();
    let deadline = || Instant::now() + Duration::from_secs(60);
    let args = args.as_array().cloned().unwrap_or_default();
    let mut reply = client.request(method, &args, deadline()).unwrap_or_else(|e| panic!("{method}: {e}"));
    let mut polls = 0;
    while let Some(id) = running_task(&reply) {
        if polls > 0 {
            std::thread::sleep(POLL_DELAY);
        }
        reply = client.request("get_task", &[json!(id)], deadline()).expect("get_task");
        polls += 1;
        assert!(polls < 120, "{method} still running after {polls} polls");
    }
    assert!(reply.get("exception").is_none(), "{method}: {reply}");
    (polls, started.elapsed())
}

fn main() {
    let started = Instant::now();
    let binary = agent_binary();
    let port = support::nats_server::free_port();
    let (cert, key) = bosh_agent::tls::server::self_signed(&["127.0.0.1".to_string()]).unwrap();
    let settings = json!({
        "agent_id": "polls", "mbus": format!("https://mbus:pw@127.0.0.1:{port}"),
        "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}},
        "networks": {"default": {"type": "manual", "ip": "10.0.0.6", "default": ["dns", "gateway"]}}
    });
    let mut agent = AgentProcess::start(&binary, &settings);
    let up = (0..1000).any(|_| {
        agent.check_alive();
        let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if !listening {
            std::thread::sleep(Duration::from_millis(10));
        }
        listening
    });
    assert!(up, "the HTTPS bus never listened:\n{}", agent.log());
    let url = MbusUrl::parse(&format!("https://mbus:pw@127.0.0.1:{port}")).unwrap();
    let mut client = Https::new(&url, Some(&cert)).unwrap();

    // The job: a rendered-templates archive with scripts that do nothing, put where bosh-cli puts it
    // (`PUT /blobs`, i.e. the agent's data/blobs), and the apply that installs it.
    let scratch = tempfile::tempdir().unwrap();
    let archive = scratch.path().join("rendered.tgz");
    let noop = "#!/bin/sh\nexit 0\n";
    tgz(
        &archive,
        &[
            file("web/monit", b"check process web with pidfile /nonexistent\n"),
            script("web/bin/pre-start", noop),
            script("web/bin/post-start", noop),
            script("web/bin/pre-stop", noop),
            script("web/bin/post-stop", noop),
            script("web/bin/drain", "#!/bin/sh\necho 0\n"),
        ],
    );
    put_blob(port, &cert, "rendered-1", &std::fs::read(&archive).unwrap());
    let spec = json!({"deployment": "bosh", "name": "bosh", "index": 0, "id": "0", "az": "unknown",
        "job": {"name": "bosh", "templates": [{"name": "web", "version": "1"}]},
        "packages": {}, "configuration_hash": "h1", "networks": {},
        "rendered_templates_archive": {"blobstore_id": "rendered-1", "sha1": digests(&archive).0}});
    let (apply_polls, apply_time) = as_bosh_cli(&mut client, "apply", &json!([spec]));

    let labels: Vec<(String, bool)> = sequence(0).into_iter().map(|s| (s.label, s.targeted)).collect();
    let mut polls = vec![Vec::new(); labels.len()];
    let mut times = vec![Vec::new(); labels.len()];
    let mut totals = Vec::new();
    for round in 0..ROUNDS {
        let begun = Instant::now();
        for (i, s) in sequence(round).iter().enumerate() {
            let (n, t) = as_bosh_cli(&mut client, s.method, &s.args);
            polls[i].push(n);
            times[i].push(t);
        }
        totals.push(begun.elapsed());
    }

    println!();
    println!("bosh-cli's polling replayed against the release agent over the HTTPS bus (dummy platform):");
    println!(
        "the request, get_task at once, then every {} s; {ROUNDS} rounds of the sequence.",
        POLL_DELAY.as_secs()
    );
    println!();
    let header = ["step", "polls per round", "median time", "target", "verdict"].map(String::from);
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut missed = Vec::new();
    let mut checked = 0;
    rows.push([
        "apply (once, before the rounds)".into(),
        apply_polls.to_string(),
        ms(apply_time),
        "-".into(),
        "-".into(),
    ]);
    for (i, (label, targeted)) in labels.iter().enumerate() {
        let worst = polls[i].iter().copied().max().unwrap_or(0);
        let verdict = if *targeted {
            checked += 1;
            if worst <= TARGET_POLLS {
                "ok"
            } else {
                missed.push(label.clone());
                "MISS"
            }
        } else {
            "-"
        };
        rows.push([
            label.clone(),
            polls[i].iter().map(usize::to_string).collect::<Vec<_>>().join(" "),
            ms(median(&times[i])),
            if *targeted { format!("{TARGET_POLLS} poll") } else { "-".into() },
            verdict.into(),
        ]);
    }
    totals.sort();
    let all_polls: usize = polls.iter().flatten().sum();
    rows.push([
        format!("sequence ({} steps)", labels.len()),
        format!("{all_polls} in all"),
        ms(totals[totals.len() / 2]),
        "-".into(),
        "-".into(),
    ]);
    support::print_table(&header, &rows);
    println!();
    println!(
        "Sequence wall time per round: {} (each poll beyond the first would add {} s).",
        totals.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", "),
        POLL_DELAY.as_secs()
    );
    support::print_summary(checked, &missed, started.elapsed());
    agent.stop();
}

/// `PUT /blobs/<prefix>/<id>` with the mbus credentials, as bosh-cli uploads rendered templates.
fn put_blob(port: u16, ca: &str, id: &str, data: &[u8]) {
    let cert = ureq::tls::Certificate::from_pem(ca.as_bytes()).unwrap().to_owned();
    let tls =
        ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[cert])).build();
    let http = ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().new_agent();
    let auth =
        format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "mbus:pw"));
    let url = format!("https://127.0.0.1:{port}/blobs/ab/{id}");
    let put = http.put(&url).header("Authorization", &auth).send(data).expect("PUT /blobs");
    assert_eq!(put.status(), 201, "PUT /blobs");
}

fn median(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
