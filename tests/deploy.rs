//! A whole deploy under real monit, driven over NATS as the director drives it: apply → pre-start →
//! start → running in get_state and heartbeats; a crashing job → failing and an alert on NATS; an
//! update (drain → stop → apply v2 → start); and monit gone while get_state is asked.

use crate::common::agent::{Director, HealthMonitor, TestAgent};
use crate::common::certs::TestPki;
use crate::common::monit_daemon::MonitDaemon;
use crate::common::nats_server::{free_port, NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use crate::common::tarball::{digests, file, script, tgz};
use crate::common::wait_until;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Deploy {
    pki: TestPki,
    nats: NatsServer,
    monit: MonitDaemon,
    agent: TestAgent,
    blobs: tempfile::TempDir,
    d: Director,
}

fn start(tag: &str) -> Deploy {
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let monit = MonitDaemon::start(&[]);
    let id = format!("{tag}-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let blobs = tempfile::tempdir().unwrap();
    let mut settings = nats_settings(&pki, &id, &nats.url());
    settings["blobstore"] = json!({"provider": "local", "options": {"blobstore_path": blobs.path()}});
    let agent = monit.launch_agent(&settings, free_port());
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());
    Deploy { pki, nats, monit, agent, blobs, d }
}

impl Deploy {
    fn spec(&self, version: &str) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let rendered = dir.path().join("rendered.tgz");
        let monit_file = self.monit.job_snippet("web");
        let pre_start = format!("#!/bin/sh\necho pre-start {version}\n");
        tgz(
            &rendered,
            &[
                file("web/monit", monit_file.as_bytes()),
                script("web/bin/pre-start", &pre_start),
                script("web/bin/drain", "#!/bin/sh\necho 0\n"),
            ],
        );
        let pkg = dir.path().join("pkg.tgz");
        tgz(&pkg, &[file("lib/version", version.as_bytes())]);
        let put = |p: &std::path::Path| {
            let id = bosh_agent::ids::uuid_v4();
            std::fs::copy(p, self.blobs.path().join(&id)).unwrap();
            (id, digests(p))
        };
        let (rid, (rsha1, _)) = put(&rendered);
        let (pid, (_, psha256)) = put(&pkg);
        json!({
            "deployment": "dep", "name": "web-ig", "index": 0, "id": "uuid-1", "az": "z1",
            "job": {"name": "web-ig", "templates": [{"name": "web", "version": version}]},
            "packages": {"lib": {"name": "lib", "version": version, "sha1": psha256, "blobstore_id": pid}},
            "configuration_hash": format!("hash-{version}"), "persistent_disk": 0,
            "rendered_templates_archive": {"blobstore_id": rid, "sha1": rsha1},
            "networks": {"default": {"ip": "10.0.0.5"}}
        })
    }

    fn job_state(&mut self) -> String {
        self.d.send("get_state", json!([]))["value"]["job_state"].as_str().unwrap_or("").to_string()
    }

    fn wait_state(&mut self, want: &str, timeout: Duration) {
        let mut last = String::new();
        let ok = wait_until(timeout, || {
            last = self.job_state();
            last == want
        });
        assert!(
            ok,
            "job_state stayed {last}, wanted {want}\nagent:\n{}\nmonit:\n{}",
            self.agent.log(),
            self.monit.log()
        );
    }
}

#[test]
fn deploy_crash_alert_and_update_under_real_monit() {
    let mut dep = start("deploy");
    let hm = HealthMonitor::connect(&dep.pki, &dep.nats.url(), &dep.agent.agent_id);
    let v1 = dep.spec("v1");
    assert_eq!(dep.d.run_task("apply", json!([v1])), json!({"value": "applied"}));
    assert_eq!(dep.d.run_task("run_script", json!(["pre-start", {}])), json!({"value": {}}));
    assert_eq!(dep.d.send("start", json!([])), json!({"value": "started"}));
    dep.wait_state("running", Duration::from_secs(20));
    let state = dep.d.send("get_state", json!(["full"]));
    let processes = state["value"]["processes"].as_array().cloned().unwrap_or_default();
    assert!(processes.iter().any(|p| p["name"] == "web" && p["state"] == "running"), "{state}");
    assert!(dep.monit.live_pid("web").is_some(), "the job process really runs");
    assert_eq!(dep.d.run_task("run_script", json!(["post-start", {}])), json!({"value": {}}));

    let beat_subject = format!("hm.agent.heartbeat.{}", dep.agent.agent_id);
    hm.drain();
    let beat = hm.next(&beat_subject, Duration::from_secs(5)).expect("heartbeat");
    assert_eq!(
        (&beat["job_state"], &beat["number_of_processes"], &beat["job"]),
        (&json!("running"), &json!(1), &json!("web-ig"))
    );

    // The job crashes: monit mails the agent, which publishes one alert.
    let pid = dep.monit.live_pid("web").expect("web pid");
    // SAFETY: killing the test's own job process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let alert_subject = format!("hm.agent.alert.{}", dep.agent.agent_id);
    let alert = hm.next(&alert_subject, Duration::from_secs(20)).expect("an alert for the crashed job");
    assert!(alert["title"].as_str().unwrap_or("").starts_with("web (10.0.0.5) - "), "{alert}");
    assert!(
        alert["severity"].as_u64().is_some_and(|s| (1..=4).contains(&s)) && alert["created_at"].is_i64(),
        "{alert}"
    );
    assert!(alert.get("source").is_none() && alert["id"].is_string());
    dep.wait_state("running", Duration::from_secs(20)); // monit restarted it

    // Update: drain, stop, apply v2, start.
    let v2 = dep.spec("v2");
    assert_eq!(dep.d.run_task("drain", json!(["update", v2])), json!({"value": 0}));
    assert_eq!(dep.d.run_task("stop", json!([])), json!({"value": "stopped"}));
    assert_eq!(dep.job_state(), "stopped");
    // The stop program has run; the job's shell exits after its current 0.2 s sleep.
    let gone = wait_until(Duration::from_secs(3), || dep.monit.live_pid("web").is_none());
    assert!(gone, "stop left the job running:\n{}", dep.monit.log());
    assert_eq!(dep.d.run_task("apply", json!([v2])), json!({"value": "applied"}));
    assert_eq!(std::fs::read_to_string(dep.agent.base().join("packages/lib/lib/version")).unwrap(), "v2");
    assert_eq!(dep.d.send("start", json!([])), json!({"value": "started"}));
    dep.wait_state("running", Duration::from_secs(20));
}

#[test]
fn get_state_answers_within_two_seconds_when_monit_is_gone() {
    let mut dep = start("gone");
    let v1 = dep.spec("v1");
    assert_eq!(dep.d.run_task("apply", json!([v1])), json!({"value": "applied"}));
    assert_eq!(dep.d.send("start", json!([])), json!({"value": "started"}));
    dep.wait_state("running", Duration::from_secs(20));
    dep.monit.kill_monit();
    let t = Instant::now();
    let state = dep.d.send("get_state", json!(["full"]));
    assert!(t.elapsed() < Duration::from_secs(2), "get_state took {:?}", t.elapsed());
    assert_eq!(state["value"]["job_state"], "unknown");
    assert_eq!(dep.d.send("ping", json!([])), json!({"value": "pong"}));
}
