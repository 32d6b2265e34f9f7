//! `bosh logs` end to end: the real agent binary over mTLS NATS (as the director calls it) uploading
//! log tarballs to a local blobstore, a dav blob server and a signed URL, and over the HTTPS bus (as
//! bosh-cli calls `bundle_logs` on a create-env VM). Every test unpacks what was stored and compares
//! names and contents, because an agent that uploads an empty tarball would otherwise pass.

use crate::common::agent::{AgentEnv, TestAgent};
use crate::common::blob_server::{dav_path, BlobServer, BlobServerOptions};
use crate::common::nats_server::{free_port, NatsServerOptions};
use crate::common::wait_until;
use bosh_agent::blobstore::digest::UploadDigests;
use bosh_agent::client::{Https, Transport};
use bosh_agent::mbus::url::MbusUrl;
use flate2::read::GzDecoder;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Env = AgentEnv;

/// Starts an agent whose blobstore is `blobstore`, or a local directory when `None`, and fills its
/// log directories.
fn start(tag: &str, blobstore: Option<Value>) -> Env {
    let env = AgentEnv::start(tag, NatsServerOptions::default(), blobstore);
    fill_logs(&env.agent.base());
    env
}

fn write(path: &Path, data: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Job logs in two job directories (with a rotated file and a nested one), agent logs, and a symlink
/// pointing outside the log directory that must never be followed.
fn fill_logs(base: &Path) {
    let job = base.join("sys/log");
    write(&job.join("web/web.stdout.log"), "web started\n");
    write(&job.join("web/web.stderr.log"), "web warning\n");
    write(&job.join("web/web.stdout.log.1"), "rotated\n");
    write(&job.join("web/nested/access.log"), "GET /\n");
    write(&job.join("worker/worker.log"), "working\n");
    write(&base.join("bosh/log/current"), "agent line\n");
    let secret = base.join("secret.txt");
    write(&secret, "do not ship me\n");
    std::os::unix::fs::symlink(&secret, job.join("web/leak.log")).unwrap();
    std::os::unix::fs::symlink(base.join("bosh"), job.join("bosh-dir")).unwrap();
}

/// name -> contents of every entry of a .tgz (read with a single-member gzip reader).
fn unpack(data: &[u8]) -> BTreeMap<String, String> {
    let mut archive = tar::Archive::new(GzDecoder::new(data));
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        assert_eq!(entry.header().entry_type(), tar::EntryType::Regular, "only regular files");
        let name = entry.path().expect("entry path").to_string_lossy().into_owned();
        let mut s = String::new();
        entry.read_to_string(&mut s).expect("entry data");
        out.insert(name, s);
    }
    out
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Env {
    /// Runs `fetch_logs` and returns the unpacked tarball from the local blobstore, checking the
    /// returned id, sha1 and that no temp tarball stayed behind.
    fn fetch(&mut self, args: Value) -> BTreeMap<String, String> {
        let reply = self.d.run_task("fetch_logs", args);
        let id = reply["value"]["blobstore_id"].as_str().unwrap_or_else(|| panic!("{reply}")).to_string();
        assert_eq!(id.len(), 36, "blobstore_id is a UUID: {id}");
        let stored = self.blobs.path().join(&id);
        let sha1 = UploadDigests::of_file(&stored).unwrap().sha1;
        assert_eq!(reply["value"]["sha1"], sha1);
        self.assert_no_temp_tarballs();
        unpack(&std::fs::read(stored).unwrap())
    }

    fn assert_no_temp_tarballs(&self) {
        let tmp = self.agent.base().join("data/tmp");
        let left: Vec<_> =
            std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "temp files left in {}: {left:?}", tmp.display());
    }
}

#[test]
fn fetch_logs_uploads_only_the_matching_job_logs() {
    let mut env = start("logs-job", None);
    let web = env.fetch(json!(["job", ["web/*.log"]]));
    assert_eq!(
        web,
        expect(&[("web/web.stderr.log", "web warning\n"), ("web/web.stdout.log", "web started\n")])
    );

    let several = env.fetch(json!(["job", ["**/*.log", "web/*.1"]]));
    assert_eq!(
        several.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "web/nested/access.log",
            "web/web.stderr.log",
            "web/web.stdout.log",
            "web/web.stdout.log.1",
            "worker/worker.log"
        ]
    );

    // null and [] both mean everything; the symlinks (to a file and to a directory outside) are not
    // followed, so the secret never reaches the blobstore.
    let everything = env.fetch(json!(["job", null]));
    assert_eq!(everything, env.fetch(json!(["job", []])));
    assert_eq!(everything.len(), 5, "{everything:?}");
    assert!(everything.values().all(|v| !v.contains("do not ship me")));
    assert!(everything.keys().all(|k| !k.contains("leak") && !k.contains("bosh-dir")));
}

#[test]
fn fetch_logs_collects_agent_logs_and_combined_types() {
    let mut env = start("logs-agent", None);
    assert_eq!(env.fetch(json!(["agent", null])), expect(&[("current", "agent line\n")]));
    let both = env.fetch(json!(["job,agent", ["current", "worker/*"]]));
    assert_eq!(both, expect(&[("agent/current", "agent line\n"), ("job/worker/worker.log", "working\n")]));
}

#[test]
fn fetch_logs_refuses_unknown_types_and_bad_filters() {
    let mut env = start("logs-bad", None);
    let reply = env.d.send("fetch_logs", json!(["kernel", null]));
    let msg = reply["exception"]["message"].as_str().unwrap_or_else(|| panic!("{reply}"));
    assert!(msg.contains("Invalid log type 'kernel'"), "{msg}");
    let reply = env.d.send("fetch_logs", json!(["job,nope", null]));
    assert!(reply["exception"]["message"].as_str().is_some_and(|m| m.contains("'nope'")), "{reply}");
    let reply = env.d.send("fetch_logs", json!(["job", ["[unclosed"]]));
    assert!(reply["exception"]["message"].as_str().is_some_and(|m| m.contains("Invalid filter")), "{reply}");
    assert!(std::fs::read_dir(env.blobs.path()).unwrap().next().is_none(), "nothing uploaded");
}

#[test]
fn fetch_logs_uploads_to_a_dav_blobstore() {
    let dav = BlobServer::start(BlobServerOptions {
        basic_auth: Some(("agent".into(), "s3cret".into())),
        ..Default::default()
    });
    let blobstore =
        json!({"provider": "dav", "options": {"endpoint": dav.url(), "user": "agent", "password": "s3cret"}});
    let mut env = start("logs-dav", Some(blobstore));
    let reply = env.d.run_task("fetch_logs", json!(["job", ["worker/*.log"]]));
    let id = reply["value"]["blobstore_id"].as_str().unwrap_or_else(|| panic!("{reply}")).to_string();
    let stored = dav.blob(&dav_path(&id)).expect("tarball PUT to the dav server");
    assert_eq!(reply["value"]["sha1"], UploadDigests::of_reader(&mut &stored[..]).unwrap().sha1);
    assert_eq!(unpack(&stored), expect(&[("worker/worker.log", "working\n")]));
    assert!(dav.requests().iter().any(|r| r.method == "PUT"));
    env.assert_no_temp_tarballs();

    // A blobstore that keeps failing: the task fails with the cause, and the tarball is still removed.
    dav.fail_next(10);
    let reply = env.d.run_task("fetch_logs", json!(["job", null]));
    let msg = reply["exception"]["message"].as_str().unwrap_or_else(|| panic!("{reply}"));
    assert!(msg.contains("Uploading logs: ") && msg.contains("500"), "{msg}");
    env.assert_no_temp_tarballs();
    assert!(!env.agent.log().contains("s3cret"), "password leaked into the log");
}

#[test]
fn fetch_logs_with_signed_url_puts_with_the_headers_and_reports_both_digests() {
    let signer = BlobServer::start(BlobServerOptions {
        required_header: Some(("x-amz-server-side-encryption".into(), "AES256".into())),
        ..Default::default()
    });
    let mut env = start("logs-signed", None);
    let url = format!("{}/logs/bundle.tgz?X-Amz-Signature=secret-sig", signer.url());
    let reply = env.d.run_task(
        "fetch_logs_with_signed_url",
        json!([{"signed_url": url, "log_type": "job", "filters": null,
                "blobstore_headers": {"x-amz-server-side-encryption": "AES256"}}]),
    );
    let stored = signer.blob("/logs/bundle.tgz").unwrap_or_else(|| panic!("nothing stored: {reply}"));
    let d = UploadDigests::of_reader(&mut &stored[..]).unwrap();
    assert_eq!(reply, json!({"value": {"sha1": format!("{};sha512:{}", d.sha1, d.sha512)}}));
    assert_eq!(unpack(&stored).len(), 5);
    let puts: Vec<_> = signer.requests().into_iter().filter(|r| r.method == "PUT").collect();
    assert!(!puts.is_empty());
    assert!(puts.iter().all(|r| r.header("x-amz-server-side-encryption") == Some("AES256")));
    env.assert_no_temp_tarballs();
    assert!(!env.agent.log().contains("secret-sig"), "signature leaked into the log");
}

/// An agent on the HTTPS bus, as `bosh create-env` leaves it.
fn https_agent() -> (TestAgent, Https) {
    let port = free_port();
    let url = format!("https://mbus:pw@127.0.0.1:{port}");
    let (cert, key) = bosh_agent::tls::server::self_signed(&["127.0.0.1".to_string()]).unwrap();
    let settings = json!({
        "agent_id": "logs-https", "mbus": url,
        "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}},
        "networks": {"default": {"type": "dynamic", "ip": "10.0.0.9", "default": ["dns", "gateway"]}}
    });
    let agent = TestAgent::start(&settings, &[]);
    fill_logs(&agent.base());
    let up =
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(up, "HTTPS bus never listened:\n{}", agent.log());
    let client = Https::new(&MbusUrl::parse(&url).unwrap(), Some(&cert)).unwrap();
    (agent, client)
}

fn call(client: &mut Https, method: &str, args: Value) -> Value {
    let args = args.as_array().cloned().unwrap_or_default();
    client.request(method, &args, Instant::now() + Duration::from_secs(20)).unwrap()
}

/// uid and gid of `nobody`, from the system's user database as the agent sees it.
fn nobody() -> (u32, u32) {
    bosh_agent::platform::users::lookup_user("nobody").expect("the test needs a 'nobody' user")
}

#[test]
fn bundle_logs_over_https_leaves_an_owned_tarball_that_remove_file_removes() {
    let (agent, mut client) = https_agent();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let owner = if root {
        "nobody"
    } else {
        eprintln!(
            "\n!!! NOT RUNNING AS ROOT: bundle_logs cannot chown, so the owning_user part of this test is \
             SKIPPED (CI runs as root). Checking everything else with owning_user \"\".\n"
        );
        ""
    };
    let reply = call(
        &mut client,
        "bundle_logs",
        json!([{"owning_user": owner, "log_type": "job,agent", "filters": ["web/*.log", "current"]}]),
    );
    let value = &reply["value"];
    let path = PathBuf::from(value["logs_tar_path"].as_str().unwrap_or_else(|| panic!("{reply}")));
    assert!(path.starts_with(agent.base().join("data/tmp")), "{}", path.display());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    if root {
        assert_eq!((meta.uid(), meta.gid()), nobody(), "chowned to nobody");
    }
    let data = std::fs::read(&path).unwrap();
    let sha512 = UploadDigests::of_reader(&mut &data[..]).unwrap().sha512;
    assert_eq!(value["sha512"], format!("sha512:{sha512}"));
    assert_eq!(
        unpack(&data),
        expect(&[
            ("agent/current", "agent line\n"),
            ("job/web/web.stderr.log", "web warning\n"),
            ("job/web/web.stdout.log", "web started\n")
        ])
    );

    let removed = call(&mut client, "remove_file", json!([path.to_str().unwrap()]));
    assert_eq!(removed, json!({"value": path.to_str().unwrap()}));
    assert!(!path.exists(), "remove_file removed the bundle");

    let reply = call(
        &mut client,
        "bundle_logs",
        json!([{"owning_user": "no-such-user-xyz", "log_type": "job", "filters": null}]),
    );
    let msg = reply["exception"]["message"].as_str().unwrap_or_else(|| panic!("{reply}"));
    assert!(msg.contains("no-such-user-xyz") && msg.contains("no such user"), "{msg}");
    let left = std::fs::read_dir(agent.base().join("data/tmp")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no tarball for an unknown user");
}

/// `bosh logs --director` as bosh-cli runs it against a create-env VM on the dummy platform: `ssh
/// setup` (which only records the user there), `bundle_logs` owned by that user, `ssh cleanup`.
#[test]
fn bundle_logs_for_the_user_a_dummy_ssh_setup_recorded() {
    let (agent, mut client) = https_agent();
    let user = "bosh_logs_cli_user";
    let setup = call(&mut client, "ssh", json!(["setup", {"user": user, "public_key": "ssh-rsa K"}]));
    assert_eq!(setup["value"]["status"], "success", "{setup}");
    let reply = call(
        &mut client,
        "bundle_logs",
        json!([{"owning_user": user, "log_type": "job", "filters": ["web/*.log"]}]),
    );
    let path = PathBuf::from(reply["value"]["logs_tar_path"].as_str().unwrap_or_else(|| panic!("{reply}")));
    let meta = std::fs::metadata(&path).unwrap();
    // The user exists only on record: the bundle is the agent's own (root's on a VM).
    // SAFETY: geteuid and getegid have no preconditions.
    let own = unsafe { (libc::geteuid(), libc::getegid()) };
    assert_eq!((meta.uid(), meta.gid()), own);
    assert_eq!(unpack(&std::fs::read(&path).unwrap()).len(), 2, "both web logs bundled");
    assert_eq!(
        call(&mut client, "remove_file", json!([path.to_str().unwrap()]))["value"],
        path.to_str().unwrap()
    );

    // Once cleaned up, the user is unknown again.
    let cleanup = call(&mut client, "ssh", json!(["cleanup", {"user_regex": format!("^{user}")}]));
    assert_eq!(cleanup["value"]["status"], "success", "{cleanup}");
    let reply =
        call(&mut client, "bundle_logs", json!([{"owning_user": user, "log_type": "job", "filters": null}]));
    let msg = reply["exception"]["message"].as_str().unwrap_or_else(|| panic!("{reply}"));
    assert!(msg.contains(user) && msg.contains("no such user"), "{msg}");
    drop(agent);
}
