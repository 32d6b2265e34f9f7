//! The job lifecycle end to end with real tarballs and a local blobstore, driven over NATS as the
//! director drives it: apply, scripts, drain, errands, cancel, bad digests and malicious tarballs.

use crate::common::agent::{exception, value, AgentEnv, HealthMonitor};
use crate::common::blob_server::{dav_path, BlobServer, BlobServerOptions};

use crate::common::nats_server::NatsServerOptions;
use crate::common::tarball::{digests, escaping_symlink, file, script, tgz};
use crate::common::wait_until;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The shared agent fixture plus a directory where test scripts record what they saw.
struct Env {
    inner: AgentEnv,
    scratch: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = AgentEnv;
    fn deref(&self) -> &AgentEnv {
        &self.inner
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut AgentEnv {
        &mut self.inner
    }
}

fn start(tag: &str) -> Env {
    start_with(tag, None)
}

/// Starts an agent whose blobstore is `blobstore`, or a local directory when `None`.
fn start_with(tag: &str, blobstore: Option<Value>) -> Env {
    let inner = AgentEnv::start(tag, NatsServerOptions::default(), blobstore);
    Env { inner, scratch: tempfile::tempdir().unwrap() }
}

/// A drain script recording its arguments and env in `@DIR@`; when `@DIR@/drain.dynamic` holds N it
/// answers -N first and 0 to `job_check_status` (dynamic drain), otherwise 0.
const DRAIN: &str = r#"#!/bin/sh
echo "$@" >> @DIR@/drain.args
echo "STATE=$BOSH_JOB_STATE NEXT=$BOSH_JOB_NEXT_STATE" >> @DIR@/drain.args
n=$(cat @DIR@/drain.count 2>/dev/null || echo 0); echo $((n+1)) > @DIR@/drain.count
if [ -e @DIR@/drain.dynamic ] && [ "$1" != job_check_status ]; then echo "-$(cat @DIR@/drain.dynamic)"; else echo 0; fi
"#;

impl Env {
    fn base(&self) -> PathBuf {
        self.agent.base()
    }

    /// Puts a file into the local blobstore under a fresh id; returns (id, sha1, sha256 digest).
    fn put_blob(&self, src: &Path) -> (String, String, String) {
        let id = bosh_agent::ids::uuid_v4();
        std::fs::copy(src, self.blobs.path().join(&id)).unwrap();
        let (sha1, sha256) = digests(src);
        (id, sha1, sha256)
    }

    /// A package tarball holding `bin/<name>` printing `version`.
    fn package(&self, name: &str, version: &str) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pkg.tgz");
        let body = format!("#!/bin/sh\necho {name} {version}\n");
        tgz(&path, &[script(&format!("bin/{name}"), &body), file("./share/README", b"docs")]);
        let (id, _, sha256) = self.put_blob(&path);
        json!({"name": name, "version": version, "sha1": sha256, "blobstore_id": id})
    }

    /// The rendered templates archive for job `web` with lifecycle scripts.
    fn templates(&self, run_body: &str) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendered.tgz");
        let drain = DRAIN.replace("@DIR@", self.scratch.path().to_str().unwrap());
        tgz(
            &path,
            &[
                file("web/monit", b"check process web with pidfile /nonexistent\n"),
                script("web/bin/pre-start", "#!/bin/sh\necho pre-start ran FOO=$FOO\necho warn >&2\n"),
                script("web/bin/drain", &drain),
                script("web/bin/run", run_body),
                file("web/config/web.yml", b"port: 8080\n"),
            ],
        );
        let (id, sha1, _) = self.put_blob(&path);
        json!({"blobstore_id": id, "sha1": sha1})
    }

    fn spec(&self, packages: &[Value], archive: Value, hash: &str) -> Value {
        let pkgs: serde_json::Map<String, Value> =
            packages.iter().map(|p| (p["name"].as_str().unwrap().to_string(), p.clone())).collect();
        json!({
            "deployment": "dep", "name": "web-ig", "index": 0, "id": "uuid-1", "az": "z1",
            "job": {"name": "web-ig", "templates": [{"name": "web", "version": "v1"}]},
            "packages": pkgs, "configuration_hash": hash, "persistent_disk": 0,
            "rendered_templates_archive": archive,
            "networks": {"default": {"ip": "10.0.0.5"}}
        })
    }
}

#[test]
fn apply_installs_packages_and_jobs_and_prunes_old_versions() {
    let mut env = start("apply");
    let foo = env.package("foo", "1.0");
    let bar = env.package("bar", "2.0");
    let archive = env.templates("#!/bin/sh\necho ok\n");
    let spec = env.spec(&[foo.clone(), bar], archive.clone(), "hash-1");
    assert_eq!(env.d.run_task("prepare", json!([spec])), json!({"value": "prepared"}));
    assert!(std::fs::symlink_metadata(env.base().join("packages/foo")).is_err(), "prepare switches nothing");
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));

    let base = env.base();
    let out = std::process::Command::new(base.join("packages/foo/bin/foo")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "foo 1.0\n");
    assert!(base.join("packages/bar/bin/bar").is_file() && base.join("packages/foo/share/README").is_file());
    assert!(base.join("jobs/web/bin/pre-start").is_file() && base.join("jobs/web/config/web.yml").is_file());
    assert!(base.join("jobs/web/packages/foo/bin/foo").is_file(), "job-specific package links");
    assert!(
        base.join("data/sys/log/web").is_dir()
            && base.join("data/sys/run/web").is_dir()
            && base.join("data/web").is_dir()
    );
    assert_eq!(std::fs::read_to_string(base.join("instance/id")).unwrap(), "uuid-1");
    assert_eq!(std::fs::read_to_string(base.join("instance/deployment")).unwrap(), "dep");

    let state = env.d.send("get_state", json!([]));
    assert_eq!(value(&state)["deployment"], "dep");
    assert_eq!(value(&state)["job"]["templates"][0]["name"], "web");

    // The same spec again is cheap; a new version replaces the old bundle.
    let t = Instant::now();
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));
    assert!(t.elapsed() < Duration::from_secs(5));
    let foo2 = env.package("foo", "1.1");
    let spec2 = env.spec(&[foo2], archive, "hash-2");
    assert_eq!(env.d.run_task("apply", json!([spec2])), json!({"value": "applied"}));
    let versions = std::fs::read_dir(base.join("data/packages/foo")).unwrap().count();
    assert_eq!(versions, 1, "old foo removed");
    assert!(!base.join("data/packages/bar").exists(), "bar is no longer in the spec");
    assert!(std::fs::symlink_metadata(base.join("packages/bar")).is_err());
    let out = std::process::Command::new(base.join("packages/foo/bin/foo")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "foo 1.1\n");
}

#[test]
fn an_empty_configuration_hash_only_records_the_spec() {
    let mut env = start("jobless");
    let spec = json!({"deployment": "dep", "job": {"name": "compilation-1"}, "index": 0, "id": "c1",
                      "networks": {"default": {"ip": "10.0.0.7"}}});
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));
    assert_eq!(value(&env.d.send("get_state", json!([])))["networks"]["default"]["ip"], "10.0.0.7");
    assert!(!env.base().join("jobs").exists());
}

#[test]
fn a_never_applied_vm_answers_the_stop_sequence_as_no_ops() {
    let mut env = start("fresh");
    let pre_stop = json!(["pre-stop", {"env": {"BOSH_VM_NEXT_STATE": "keep"}}]);
    assert_eq!(env.d.run_task("run_script", pre_stop), json!({"value": {}}));
    assert_eq!(env.d.run_task("drain", json!(["update", {"deployment": "dep"}])), json!({"value": 0}));
    assert_eq!(env.d.run_task("stop", json!([])), json!({"value": "stopped"}));
    assert_eq!(env.d.run_task("run_script", json!(["post-stop", {}])), json!({"value": {}}));
    assert_eq!(env.d.send("start", json!([])), json!({"value": "started"}));
}

#[test]
fn scripts_drain_and_errands_follow_the_protocols() {
    let mut env = start("scripts");
    let errand = "#!/bin/sh\necho errand-out\necho errand-err >&2\nexit 3\n";
    let archive = env.templates(errand);
    let spec = env.spec(&[env.package("foo", "1.0")], archive, "h1");
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));

    // pre-start with env; output appended to sys/log/<job>/.
    assert_eq!(
        env.d.run_task("run_script", json!(["pre-start", {"env": {"FOO": "bar"}}])),
        json!({"value": {}})
    );
    assert_eq!(
        env.d.run_task("run_script", json!(["pre-start", {"env": {"FOO": "baz"}}])),
        json!({"value": {}})
    );
    let log = std::fs::read_to_string(env.base().join("sys/log/web/pre-start.stdout.log")).unwrap();
    assert_eq!(log, "pre-start ran FOO=bar\npre-start ran FOO=baz\n");
    assert!(std::fs::read_to_string(env.base().join("sys/log/web/pre-start.stderr.log"))
        .unwrap()
        .contains("warn"));
    // A script no job has is fine.
    assert_eq!(env.d.run_task("run_script", json!(["post-deploy", {}])), json!({"value": {}}));

    // drain update: arguments and env per the drain protocol.
    let mut next = spec.clone();
    next["configuration_hash"] = json!("h2");
    next["persistent_disk"] = json!(1024);
    assert_eq!(env.d.run_task("drain", json!(["update", next])), json!({"value": 0}));
    let args = std::fs::read_to_string(env.scratch.path().join("drain.args")).unwrap();
    assert!(args.contains("job_changed hash_changed"), "{args}");
    assert!(args.contains(r#"STATE={"persistent_disk":0} NEXT={"persistent_disk":1024}"#), "{args}");

    // Dynamic drain: -1 first, then 0 after job_check_status.
    std::fs::write(env.scratch.path().join("drain.dynamic"), b"1").unwrap();
    let t = Instant::now();
    let hm = HealthMonitor::connect(&env.pki, &env.nats.url(), &env.agent.agent_id);
    assert_eq!(env.d.run_task("drain", json!(["shutdown", {}])), json!({"value": 0}));
    assert!(t.elapsed() >= Duration::from_secs(1), "waited the |-1| seconds");
    let args = std::fs::read_to_string(env.scratch.path().join("drain.args")).unwrap();
    assert!(
        args.contains("job_shutdown hash_unchanged") && args.contains("job_check_status hash_unchanged"),
        "{args}"
    );
    let shutdown = hm.next(&format!("hm.agent.shutdown.{}", env.agent.agent_id), Duration::from_secs(5));
    assert_eq!(shutdown, Some(Value::Null), "drain shutdown announces itself to the HM");

    // Errand: a non-zero exit is a result, not an error.
    let r = env.d.run_task("run_errand", json!(["web"]));
    assert_eq!(r, json!({"value": {"exit_code": 3, "stdout": "errand-out\n", "stderr": "errand-err\n"}}));
    assert!(exception(&env.d.run_task("run_errand", json!(["nope"]))).contains("Could not find errand nope"));
}

#[test]
fn errands_and_drains_can_be_cancelled_and_still_report() {
    let mut env = start("cancel");
    let started = env.scratch.path().join("errand.started");
    // The shell runs its trap only once its foreground `sleep` is gone: TERM must reach the whole
    // group, within the 10 s grace (KILL after it would mean exit 137 and no trap output).
    let errand = format!(
        "#!/bin/sh\ntrap 'echo got-term; exit 143' TERM\necho started\ntouch {}\nsleep 1000\necho not-reached\n",
        started.display()
    );
    let archive = env.templates(&errand);
    let spec = env.spec(&[], archive, "h1");
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));
    let first = env.d.send("run_errand", json!(["web"]));
    let id = first["value"]["agent_task_id"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(10), || started.exists()), "errand never started");
    assert_eq!(env.d.send("cancel_task", json!([id])), json!({"value": "canceled"}));
    let r = env.d.wait_task(&id, Duration::from_secs(15));
    assert_eq!(r["value"]["exit_code"], 143, "{r}");
    assert_eq!(r["value"]["stdout"], "started\ngot-term\n", "{r}");

    // A dynamic drain that keeps asking for time is cut short by cancel.
    // A drain asking for 60 s more each time.
    std::fs::write(env.scratch.path().join("drain.dynamic"), b"60").unwrap();
    let first = env.d.send("drain", json!(["shutdown", {}]));
    let id = first["value"]["agent_task_id"].as_str().unwrap().to_string();
    let t = Instant::now();
    assert_eq!(env.d.send("cancel_task", json!([id])), json!({"value": "canceled"}));
    let r = env.d.wait_task(&id, Duration::from_secs(15));
    assert!(exception(&r).contains("cancelled"), "{r}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_digest_mismatch_installs_nothing() {
    let mut env = start("digest");
    let mut foo = env.package("foo", "1.0");
    foo["sha1"] = json!("sha256:0000000000000000000000000000000000000000000000000000000000000000");
    let spec = env.spec(&[foo], json!({"blobstore_id": "", "sha1": ""}), "h1");
    let e = exception(&env.d.run_task("apply", json!([spec])));
    assert!(e.contains("foo") && e.contains("digest"), "{e}");
    assert!(
        !env.base().join("data/packages/foo").exists()
            || std::fs::read_dir(env.base().join("data/packages/foo")).unwrap().count() == 0
    );
    assert!(std::fs::symlink_metadata(env.base().join("packages/foo")).is_err());
}

#[test]
fn a_malicious_package_is_refused_and_nothing_escapes() {
    let mut env = start("evil");
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let evil = dir.path().join("evil.tgz");
    escaping_symlink(&evil, "link", outside.to_str().unwrap());
    let (id, _, sha256) = env.put_blob(&evil);
    let pkg = json!({"name": "evil", "version": "1", "sha1": sha256, "blobstore_id": id});
    let spec = env.spec(&[pkg], json!({"blobstore_id": "", "sha1": ""}), "h1");
    let e = exception(&env.d.run_task("apply", json!([spec])));
    assert!(e.contains("evil"), "{e}");
    assert!(!outside.join("pwned").exists(), "a tarball wrote outside its target");
    assert!(std::fs::symlink_metadata(env.base().join("packages/evil")).is_err());
}

#[test]
fn apply_fetches_from_an_http_blobstore_and_from_signed_urls() {
    let dav = BlobServer::start(BlobServerOptions {
        basic_auth: Some(("agent".into(), "s3cret".into())),
        ..Default::default()
    });
    let signer = BlobServer::start(BlobServerOptions {
        required_header: Some(("x-goog-encryption-key".into(), "k1".into())),
        ..Default::default()
    });
    let blobstore =
        json!({"provider": "dav", "options": {"endpoint": dav.url(), "user": "agent", "password": "s3cret"}});
    let mut env = start_with("dav", Some(blobstore));
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tgz"), dir.path().join("b.tgz"));
    tgz(&a, &[file("lib/a", b"from dav")]);
    tgz(&b, &[file("lib/b", b"from a signed url")]);
    dav.put_blob(&dav_path("blob-a"), &std::fs::read(&a).unwrap());
    signer.put_blob("/signed/blob-b", &std::fs::read(&b).unwrap());
    let pkg_a = json!({"name": "a", "version": "1", "sha1": digests(&a).1, "blobstore_id": "blob-a"});
    let pkg_b = json!({"name": "b", "version": "1", "sha1": digests(&b).0,
        "signed_url": format!("{}/signed/blob-b?X-Signature=secret-sig", signer.url()),
        "blobstore_headers": {"x-goog-encryption-key": "k1"}});
    let spec = env.spec(&[pkg_a, pkg_b], json!({"blobstore_id": "", "sha1": ""}), "h1");
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));
    assert_eq!(std::fs::read(env.base().join("packages/a/lib/a")).unwrap(), b"from dav");
    assert_eq!(std::fs::read(env.base().join("packages/b/lib/b")).unwrap(), b"from a signed url");
    assert!(signer.requests().iter().all(|r| r.header("x-goog-encryption-key") == Some("k1")));
    let log = env.agent.log();
    assert!(!log.contains("s3cret") && !log.contains("secret-sig"), "credentials leaked into the log");
}

#[test]
fn drain_shutdown_with_an_empty_spec_gives_both_states_as_integers() {
    let mut env = start("drain-states");
    let archive = env.templates("#!/bin/sh\n");
    let mut spec = env.spec(&[], archive, "h1");
    // bosh-cli's create-env spec has no persistent_disk key at all.
    spec.as_object_mut().unwrap().remove("persistent_disk");
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));
    assert_eq!(env.d.run_task("drain", json!(["shutdown", {}])), json!({"value": 0}));
    assert_eq!(env.d.run_task("drain", json!(["shutdown"])), json!({"value": 0}));
    let args = std::fs::read_to_string(env.scratch.path().join("drain.args")).unwrap();
    let states: Vec<&str> = args.lines().filter(|l| l.starts_with("STATE=")).collect();
    assert_eq!(
        states,
        [r#"STATE={"persistent_disk":0} NEXT={"persistent_disk":0}"#, r#"STATE={"persistent_disk":0} NEXT="#],
        "{args}"
    );
}
