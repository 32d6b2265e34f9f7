//! `compile_package` and `compile_package_with_signed_url` end to end: the real agent binary over a
//! real mTLS nats-server (and once over the HTTPS bus, as `bosh create-env` compiles), real source
//! and dependency tarballs, the local blobstore and the in-test HTTP blob server. The uploaded blob
//! is unpacked with the system's `tar`, so "it is a .tgz" is checked by the tool operators use.

use crate::common::agent::{exception, AgentEnv, TestAgent};
use crate::common::blob_server::{BlobServer, BlobServerOptions};
use crate::common::nats_server::{free_port, NatsServerOptions};
use crate::common::tarball::{file, script, tgz, Entry};
use crate::common::wait_until;
use bosh_agent::client::{call_with, Https};
use bosh_agent::mbus::url::MbusUrl;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type Env = AgentEnv;

fn start(tag: &str) -> Env {
    AgentEnv::start(tag, NatsServerOptions::default(), None)
}

/// Writes a tarball of `entries` and returns its bytes.
fn tarball(entries: &[Entry]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tgz");
    tgz(&path, entries);
    std::fs::read(path).unwrap()
}

fn sha1_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref()))
}

/// The compiled dependency `dep`: `lib/dep.txt` holding `text`.
fn dep_tarball(text: &str) -> Vec<u8> {
    tarball(&[file("./lib/dep.txt", text.as_bytes()), script("./bin/dep", "#!/bin/sh\necho dep\n")])
}

/// A source package whose `packaging` reads the dependency through `packages/dep` (found next to
/// the install target, as `/var/vcap/packages/dep` would be), records its environment and writes
/// into `$BOSH_INSTALL_TARGET`.
const PACKAGING: &str = r#"set -e
deps="$(dirname "$BOSH_INSTALL_TARGET")"
mkdir -p "$BOSH_INSTALL_TARGET/bin" "$BOSH_INSTALL_TARGET/share"
cat "$deps/dep/lib/dep.txt" > "$BOSH_INSTALL_TARGET/share/from-dep.txt"
cp src/hello.txt "$BOSH_INSTALL_TARGET/share/hello.txt"
printf '#!/bin/sh\necho compiled\n' > "$BOSH_INSTALL_TARGET/bin/bar"
chmod 755 "$BOSH_INSTALL_TARGET/bin/bar"
head -c 3000000 /dev/urandom > "$BOSH_INSTALL_TARGET/share/random.bin"
env > "$BOSH_INSTALL_TARGET/share/env.txt"
pwd > "$BOSH_INSTALL_TARGET/share/pwd.txt"
touch "$TMPDIR/scratch" "$HOME/.dotfile"
echo packaging done
"#;

fn source_tarball(packaging: &str) -> Vec<u8> {
    tarball(&[script("packaging", packaging), file("src/hello.txt", b"hello from source\n")])
}

impl Env {
    fn base(&self) -> PathBuf {
        self.agent.base()
    }

    /// Stores `data` in the local blobstore; returns its id.
    fn put(&self, data: &[u8]) -> String {
        let id = bosh_agent::ids::uuid_v4();
        std::fs::write(self.blobs.path().join(&id), data).unwrap();
        id
    }

    fn blob_ids(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.blobs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn dep(&self, version: &str, text: &str) -> Value {
        let data = dep_tarball(text);
        json!({"name": "dep", "version": version, "sha1": sha256(&data), "blobstore_id": self.put(&data)})
    }

    fn compile(&mut self, source: &[u8], digest: &str, deps: Value) -> Value {
        let id = self.put(source);
        self.d.run_task("compile_package", json!([id, digest, "bar", "2.0.1", deps]))
    }
}

/// Unpacks a .tgz with the system `tar` into a fresh directory.
fn untar(data: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob.tgz");
    std::fs::write(&path, data).unwrap();
    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    let st = Command::new("tar").arg("xzf").arg(&path).arg("-C").arg(&out).status().unwrap();
    assert!(st.success(), "the compiled blob is not a .tgz tar can read");
    dir
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join("x").join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Nothing the compile created is left: compile dirs, temp files, the install target, the links.
fn assert_cleaned(base: &Path) {
    assert!(!base.join("data/compile").exists(), "compile dir left behind");
    assert!(!base.join("data/packages/bar").exists(), "install target left behind");
    assert!(std::fs::symlink_metadata(base.join("packages/bar")).is_err(), "packages/bar left behind");
    let tmp: Vec<String> = std::fs::read_dir(base.join("data/tmp"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left behind: {tmp:?}");
}

#[test]
fn compiles_with_a_dependency_and_uploads_what_packaging_wrote() {
    let mut env = start("compile");
    let dep = env.dep("1.0", "dependency data\n");
    let source = source_tarball(PACKAGING);
    let sha1 = sha1_hex(&source);
    let reply = env.compile(&source, &sha1, json!({"dep": dep}));
    let result = &reply["value"]["result"];
    let id = result["blobstore_id"].as_str().unwrap_or_else(|| panic!("no result: {reply}"));
    assert_eq!(id.len(), 36, "blobstore_id must be a UUID: {id}");
    let blob = std::fs::read(env.blobs.path().join(id)).unwrap();
    assert_eq!(result["sha1"], sha1_hex(&blob), "returned sha1 is the uploaded blob's");
    assert_eq!(result.as_object().unwrap().len(), 2, "{result}");

    let x = untar(&blob);
    assert_eq!(read(x.path(), "share/from-dep.txt"), "dependency data\n");
    assert_eq!(read(x.path(), "share/hello.txt"), "hello from source\n");
    // Several gzip members, stored and deflated, read back by the system's tar.
    assert_eq!(std::fs::metadata(x.path().join("x/share/random.bin")).unwrap().len(), 3_000_000);
    let bin = x.path().join("x/bin/bar");
    assert_eq!(String::from_utf8_lossy(&Command::new(&bin).output().unwrap().stdout), "compiled\n");

    // The environment is exactly the documented one (plus what bash itself sets).
    let base = env.base();
    let envs: Vec<(String, String)> = read(x.path(), "share/env.txt")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let keys: BTreeSet<&str> = envs.iter().map(|(k, _)| k.as_str()).collect();
    let documented = [
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "BOSH_COMPILE_TARGET",
        "BOSH_INSTALL_TARGET",
        "BOSH_PACKAGE_NAME",
        "BOSH_PACKAGE_VERSION",
    ];
    let bash_own = ["PWD", "SHLVL", "_", "OLDPWD"];
    for k in &keys {
        assert!(documented.contains(k) || bash_own.contains(k), "inherited variable {k}");
    }
    let get = |k: &str| envs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(get("PATH"), "/usr/sbin:/usr/bin:/sbin:/bin");
    assert_eq!(get("LANG"), "C.UTF-8");
    assert_eq!(get("BOSH_PACKAGE_NAME"), "bar");
    assert_eq!(get("BOSH_PACKAGE_VERSION"), "2.0.1");
    assert_eq!(PathBuf::from(get("BOSH_INSTALL_TARGET")), base.join("packages/bar"));
    assert_eq!(PathBuf::from(get("BOSH_COMPILE_TARGET")), base.join("data/compile/bar"));
    assert_eq!(read(x.path(), "share/pwd.txt").trim(), get("BOSH_COMPILE_TARGET"));
    assert!(PathBuf::from(get("TMPDIR")).starts_with(base.join("data/tmp")));
    assert!(PathBuf::from(get("HOME")).starts_with(base.join("data/tmp")));

    // The log is kept; everything else the compile created is gone, including the dependency.
    let log = std::fs::read_to_string(base.join("data/sys/log/compilation/bar.stdout.log")).unwrap();
    assert!(log.contains("packaging done"), "{log}");
    assert_cleaned(&base);
    assert!(std::fs::symlink_metadata(base.join("packages/dep")).is_err());
    assert!(!base.join("data/packages").exists(), "dependency bundles left behind");
}

#[test]
fn a_failing_packaging_script_reports_the_tail_and_keeps_the_log() {
    let mut env = start("compile-fail");
    let packaging = "for i in $(seq 1 3000); do echo \"noise line $i\"; done\necho last-stdout-line\n\
                     echo boom-on-stderr >&2\nexit 7\n";
    let source = source_tarball(packaging);
    let before = env.blob_ids();
    let reply = env.compile(&source, &sha256(&source), json!({}));
    let e = exception(&reply);
    assert!(e.contains("Compiling package bar: Running packaging script"), "{e}");
    assert!(
        e.contains("exited with 7") && e.contains("last-stdout-line") && e.contains("boom-on-stderr"),
        "{e}"
    );
    assert!(e.contains("truncated") && !e.contains("noise line 1\n"), "only the tail: {e}");
    assert!(e.len() < 25 * 1024, "message too long: {}", e.len());
    let log_path = env.base().join("data/sys/log/compilation/bar.stdout.log");
    assert!(e.contains(&log_path.display().to_string()), "error names the log: {e}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.starts_with("noise line 1\n") && log.contains("last-stdout-line"), "full log kept");
    assert_eq!(env.blob_ids().len(), before.len() + 1, "nothing uploaded (only the test's source)");
    assert_cleaned(&env.base());
}

#[test]
fn a_wrong_source_digest_uploads_nothing() {
    let mut env = start("compile-digest");
    let dep = env.dep("1.0", "d\n");
    let source = source_tarball(PACKAGING);
    let before = env.blob_ids();
    let wrong = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let reply = env.compile(&source, wrong, json!({"dep": dep}));
    let e = exception(&reply);
    assert!(e.contains("Compiling package bar: Fetching package bar") && e.contains("digest"), "{e}");
    assert_eq!(env.blob_ids().len(), before.len() + 1, "only the source was added (by the test)");
    assert_cleaned(&env.base());
    assert!(!env.base().join("data/packages").exists(), "no dependency installed");
}

#[test]
fn packages_of_a_running_job_are_left_alone() {
    let mut env = start("compile-running");
    // A running job uses bar (an older build) and dep 1.0.
    let old_bar = tarball(&[file("./share/hello.txt", b"old bar\n")]);
    let running_bar =
        json!({"name": "bar", "version": "1.0", "sha1": sha256(&old_bar), "blobstore_id": env.put(&old_bar)});
    let running_dep = env.dep("1.0", "running dep\n");
    let spec = json!({"deployment": "dep", "name": "ig", "index": 0, "id": "i1",
        "job": {"name": "ig", "templates": []}, "configuration_hash": "h1",
        "packages": {"bar": running_bar, "dep": running_dep},
        "rendered_templates_archive": {"blobstore_id": "", "sha1": ""}, "networks": {}});
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));
    let base = env.base();
    let bar_target = std::fs::read_link(base.join("packages/bar")).unwrap();
    let dep_target = std::fs::read_link(base.join("packages/dep")).unwrap();

    // Compile bar against dep 2.0: both links switch for the compile, then come back.
    let new_dep = env.dep("2.0", "new dep\n");
    let source = source_tarball(PACKAGING);
    let reply = env.compile(&source, &sha256(&source), json!({"dep": new_dep}));
    let id = reply["value"]["result"]["blobstore_id"].as_str().unwrap_or_else(|| panic!("{reply}"));
    let x = untar(&std::fs::read(env.blobs.path().join(id)).unwrap());
    assert_eq!(read(x.path(), "share/from-dep.txt"), "new dep\n", "compiled against the requested dep");

    assert_eq!(std::fs::read_link(base.join("packages/bar")).unwrap(), bar_target);
    assert_eq!(std::fs::read_link(base.join("packages/dep")).unwrap(), dep_target);
    assert_eq!(std::fs::read_to_string(base.join("packages/bar/share/hello.txt")).unwrap(), "old bar\n");
    assert_eq!(std::fs::read_to_string(base.join("packages/dep/lib/dep.txt")).unwrap(), "running dep\n");
    assert_eq!(std::fs::read_dir(base.join("data/packages/bar")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(base.join("data/packages/dep")).unwrap().count(), 1, "dep 2.0 removed");
    assert!(!base.join("data/compile").exists());

    // Compiling against the dependency the job already has reuses and keeps it.
    let again = env.compile(&source, &sha256(&source), json!({"dep": running_dep_spec(&spec)}));
    assert!(again["value"]["result"]["sha1"].is_string(), "{again}");
    assert_eq!(std::fs::read_to_string(base.join("packages/dep/lib/dep.txt")).unwrap(), "running dep\n");
    assert_eq!(std::fs::read_link(base.join("packages/bar")).unwrap(), bar_target);
}

fn running_dep_spec(spec: &Value) -> Value {
    spec["packages"]["dep"].clone()
}

#[test]
fn signed_urls_carry_the_headers_and_return_the_multi_digest() {
    let server = BlobServer::start(BlobServerOptions {
        required_header: Some(("x-enc-key".into(), "k1".into())),
        ..Default::default()
    });
    let mut env = start("compile-signed");
    let dep = dep_tarball("signed dep\n");
    let source = source_tarball(PACKAGING);
    server.put_blob("/src/bar", &source);
    server.put_blob("/pkg/dep", &dep);
    let arg = json!({
        "package_get_signed_url": format!("{}/src/bar?X-Sig=s1", server.url()),
        "upload_signed_url": format!("{}/compiled/bar?X-Sig=s2", server.url()),
        "blobstore_headers": {"x-enc-key": "k1"},
        "digest": sha1_hex(&source), "name": "bar", "version": "2.0.1",
        "deps": {"dep": {"name": "dep", "version": "1.0", "sha1": sha256(&dep),
            "package_get_signed_url": format!("{}/pkg/dep?X-Sig=s3", server.url()),
            "blobstore_headers": {"x-enc-key": "k1"}}}
    });
    let reply = env.d.run_task("compile_package_with_signed_url", json!([arg]));
    let uploaded = server.blob("/compiled/bar").unwrap_or_else(|| panic!("nothing PUT: {reply}"));
    let sha512 = hex(ring::digest::digest(&ring::digest::SHA512, &uploaded).as_ref());
    assert_eq!(
        reply,
        json!({"value": {"result": {"sha1": format!("{};sha512:{sha512}", sha1_hex(&uploaded))}}})
    );
    let x = untar(&uploaded);
    assert_eq!(read(x.path(), "share/from-dep.txt"), "signed dep\n");
    let reqs = server.requests();
    assert!(reqs.iter().any(|r| r.method == "GET") && reqs.iter().any(|r| r.method == "PUT"));
    assert!(reqs.iter().all(|r| r.header("x-enc-key") == Some("k1")), "{reqs:?}");
    assert!(!env.agent.log().contains("X-Sig=s"), "signed URL credentials leaked into the log");
    assert_cleaned(&env.base());
}

#[test]
fn compiles_over_the_https_bus_without_a_protocol() {
    let port = free_port();
    let url = format!("https://mbus:pass@127.0.0.1:{port}");
    let (cert, key) = bosh_agent::tls::server::self_signed(&["127.0.0.1".to_string()]).unwrap();
    let blobs = tempfile::tempdir().unwrap();
    let settings = json!({
        "agent_id": "https-compile", "mbus": url,
        "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}},
        "blobstore": {"provider": "local", "options": {"blobstore_path": blobs.path()}},
        "networks": {"default": {"type": "dynamic", "ip": "10.0.0.9", "default": ["dns", "gateway"]}}
    });
    let agent = TestAgent::start(&settings, &[]);
    let up =
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(up, "HTTPS bus never listened:\n{}", agent.log());
    // create-env puts the blobs it needs into the agent's own blob directory first.
    let source = source_tarball(PACKAGING);
    let dep = dep_tarball("https dep\n");
    let blob_dir = agent.base().join("data/blobs");
    std::fs::create_dir_all(&blob_dir).unwrap();
    std::fs::write(blob_dir.join("src-bar"), &source).unwrap();
    std::fs::write(blob_dir.join("pkg-dep"), &dep).unwrap();
    let mut client = Https::new(&MbusUrl::parse(&url).unwrap(), Some(&cert)).unwrap();
    let deps =
        json!({"dep": {"name": "dep", "version": "1", "sha1": sha1_hex(&dep), "blobstore_id": "pkg-dep"}});
    let args = [json!("src-bar"), json!(sha1_hex(&source)), json!("bar"), json!("2.0.1"), deps];
    let reply =
        call_with(&mut client, "compile_package", &args, Instant::now() + Duration::from_secs(30)).unwrap();
    let id = reply["value"]["result"]["blobstore_id"].as_str().unwrap_or_else(|| panic!("{reply}"));
    let blob = std::fs::read(blobs.path().join(id)).unwrap();
    assert_eq!(reply["value"]["result"]["sha1"], sha1_hex(&blob));
    assert_eq!(read(untar(&blob).path(), "share/from-dep.txt"), "https dep\n");
    assert_cleaned(&agent.base());
}
