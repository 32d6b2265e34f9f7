//! Integration tests of the blobstore: the cascade, every provider against real files, a real HTTP
//! server and a real external CLI, digest verification, retries and signed URLs.
//!
//! Why integration tests: the value of this module is in how it behaves at its edges (HTTP status
//! codes, auth headers, temp files left behind or not, what reaches logs), which only real I/O shows.

use crate::common::blob_server::{BlobServer, BlobServerOptions};
use bosh_agent::blobstore::dav::shard;
use bosh_agent::blobstore::digest::{hex, UploadDigests};
use bosh_agent::blobstore::{Blobs, MultiDigest};
use bosh_agent::dirs::Dirs;
use bosh_agent::settings::Blobstore;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn sha256(data: &[u8]) -> MultiDigest {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    MultiDigest::parse(&format!("sha256:{}", hex(d.as_ref()))).unwrap()
}

fn sha1_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref())
}

fn settings(provider: &str, options: Value) -> Blobstore {
    Blobstore { provider: provider.into(), options: options.as_object().cloned().unwrap_or_default() }
}

/// A scratch base dir, its `Dirs`, and a temp dir for fetched blobs.
struct Scratch {
    _dir: tempfile::TempDir,
    dirs: Dirs,
    tmp: std::path::PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path().join("base"), dir.path().join("root"));
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        Scratch { _dir: dir, dirs, tmp }
    }

    fn blobs(&self, b: &Blobstore) -> Blobs {
        Blobs::from_settings_with_path(b, &self.dirs, OsStr::new(""))
            .unwrap()
            .with_retry_delay(Duration::from_millis(5))
    }

    fn dav(&self, server: &BlobServer, user: &str, password: &str) -> Blobs {
        self.blobs(&settings("dav", json!({"endpoint": server.url(), "user": user, "password": password})))
    }

    fn tmp_entries(&self) -> usize {
        fs::read_dir(&self.tmp).unwrap().count()
    }
}

#[test]
fn local_provider_fetches_and_uploads() {
    let s = Scratch::new();
    let store = s.tmp.parent().unwrap().join("store");
    fs::create_dir_all(&store).unwrap();
    fs::write(store.join("blob-1"), b"local content").unwrap();
    let blobs = s.blobs(&settings("local", json!({"blobstore_path": store})));

    let got = blobs.fetch("blob-1", &sha256(b"local content"), &s.tmp).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"local content");
    drop(got);
    assert_eq!(s.tmp_entries(), 0, "dropping a fetched blob removes it");

    let src = s.tmp.parent().unwrap().join("upload-src");
    fs::write(&src, b"compiled package").unwrap();
    let (id, sha1) = blobs.upload(&src).unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(sha1, sha1_hex(b"compiled package"));
    assert_eq!(fs::read(store.join(&id)).unwrap(), b"compiled package");

    let err = blobs.fetch("missing", &sha256(b"x"), &s.tmp).unwrap_err();
    assert!(err.contains("missing"), "{err}");
    assert_eq!(s.tmp_entries(), 0);
}

#[test]
fn local_micro_bosh_cache_path_is_rewritten_to_data_blobs() {
    let s = Scratch::new();
    let blobs = s.blobs(&settings("local", json!({"blobstore_path": "/var/vcap/micro_bosh/data/cache"})));
    let src = s.tmp.parent().unwrap().join("src");
    fs::write(&src, b"x").unwrap();
    let (id, _) = blobs.upload(&src).unwrap();
    assert!(s.dirs.blobs().join(&id).exists());
}

#[test]
fn dav_gets_and_puts_sharded_with_basic_auth() {
    let server = BlobServer::start(BlobServerOptions {
        basic_auth: Some(("agent".into(), "s3cret".into())),
        ..Default::default()
    });
    let s = Scratch::new();
    let blobs = s.dav(&server, "agent", "s3cret");
    let id = "4b1a2c8e-6a3f-4d5e-9f00-123456789abc";
    server.put_blob(&format!("/{}/{id}", shard(id)), b"package bits");

    let got = blobs.fetch(id, &sha256(b"package bits"), &s.tmp).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"package bits");

    let src = s.tmp.parent().unwrap().join("src");
    fs::write(&src, b"compiled").unwrap();
    let (new_id, sha1) = blobs.upload(&src).unwrap();
    assert_eq!(sha1, sha1_hex(b"compiled"));
    assert_eq!(server.blob(&format!("/{}/{new_id}", shard(&new_id))).unwrap(), b"compiled");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, format!("/{}/{id}", shard(id)));
    assert_eq!(reqs[1].method, "PUT");
    assert_eq!(reqs[1].header("content-length"), Some("8"));
    assert!(reqs.iter().all(|r| r.header("authorization").is_some_and(|a| a.starts_with("Basic "))));
}

#[test]
fn dav_errors_are_clear_and_permanent_ones_not_retried() {
    crate::common::capture_logs();
    let server = BlobServer::start(BlobServerOptions {
        basic_auth: Some(("agent".into(), "right".into())),
        ..Default::default()
    });
    let s = Scratch::new();
    let err = s.dav(&server, "agent", "right").fetch("nope", &sha256(b"x"), &s.tmp).unwrap_err();
    assert!(err.contains("dav blob nope") && err.contains("404"), "{err}");
    assert_eq!(server.requests().len(), 1, "404 is not retried");

    let err = s.dav(&server, "agent", "wrong").fetch("nope", &sha256(b"x"), &s.tmp).unwrap_err();
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("wrong"), "password leaked into error: {err}");
    server.fail_next(1);
    let err = s.dav(&server, "agent", "dav-pass-x7").fetch("nope", &sha256(b"x"), &s.tmp).unwrap_err();
    assert!(err.contains("401"), "{err}");
    assert!(!crate::common::logged("dav-pass-x7"), "password leaked into logs");
    assert_eq!(s.tmp_entries(), 0);
}

#[test]
fn cascade_prefers_sensitive_then_blobs_then_provider() {
    let server = BlobServer::start(BlobServerOptions::default());
    let s = Scratch::new();
    let blobs = s.dav(&server, "", "");
    let id = "rendered-1";
    let sensitive = s.dirs.base.join("data/sensitive_blobs");
    fs::create_dir_all(&sensitive).unwrap();
    fs::create_dir_all(s.dirs.blobs()).unwrap();
    fs::write(sensitive.join(id), b"A").unwrap();
    fs::write(s.dirs.blobs().join(id), b"B").unwrap();
    server.put_blob(&format!("/{}/{id}", shard(id)), b"C");

    let got = blobs.fetch(id, &sha256(b"A"), &s.tmp).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"A");
    assert!(server.requests().is_empty(), "provider not asked when a local copy verifies");
    drop(got);

    // A local copy that does not verify is skipped: the digest here matches blobs/, not sensitive/.
    let got = blobs.fetch(id, &sha256(b"B"), &s.tmp).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"B");
    assert!(server.requests().is_empty());
    drop(got);

    let got = blobs.fetch(id, &sha256(b"C"), &s.tmp).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"C");
    assert_eq!(server.requests().len(), 1);

    blobs.forget_local(id);
    assert!(!sensitive.join(id).exists() && !s.dirs.blobs().join(id).exists());
    drop(got);
    assert_eq!(s.tmp_entries(), 0);
}

#[test]
fn unsafe_ids_are_refused_before_any_io() {
    let server = BlobServer::start(BlobServerOptions::default());
    let s = Scratch::new();
    let blobs = s.dav(&server, "", "");
    for id in ["", "..", "../etc/passwd", "a/b"] {
        let err = blobs.fetch(id, &sha256(b"x"), &s.tmp).unwrap_err();
        assert!(err.contains("Invalid blob id"), "{err}");
    }
    blobs.forget_local("../../etc/passwd");
    assert!(server.requests().is_empty());
}

#[test]
fn digest_mismatch_is_final_and_leaves_no_temp_file() {
    let server = BlobServer::start(BlobServerOptions::default());
    let s = Scratch::new();
    let blobs = s.dav(&server, "", "");
    server.put_blob(&format!("/{}/src-bar-blob", shard("src-bar-blob")), b"tampered");
    let want = MultiDigest::parse("sha256:deadbeef").unwrap();
    let err = blobs.fetch("src-bar-blob", &want, &s.tmp).unwrap_err();
    let computed = sha256(b"tampered").to_string();
    assert_eq!(
        err,
        format!(
            "Getting blob from inner blobstore: Checking downloaded blob 'src-bar-blob': \
             Expected stream to have digest 'sha256:deadbeef' but was '{computed}'"
        )
    );
    assert_eq!(s.tmp_entries(), 0, "mismatching temp file removed");
    assert_eq!(server.requests().len(), 1, "a digest mismatch is not retried");
}

#[test]
fn transient_server_errors_are_retried() {
    let server = BlobServer::start(BlobServerOptions::default());
    let s = Scratch::new();
    let blobs = s.dav(&server, "", "");
    server.put_blob(&format!("/{}/b1", shard("b1")), b"flaky");
    server.fail_next(2);
    let got = blobs.fetch("b1", &sha256(b"flaky"), &s.tmp).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"flaky");
    assert_eq!(server.requests().len(), 3);

    server.fail_next(3);
    let err = blobs.fetch("b1", &sha256(b"flaky"), &s.tmp).unwrap_err();
    assert!(err.contains("500"), "{err}");
    assert_eq!(server.requests().len(), 6, "three attempts, then give up");
    drop(got);
    assert_eq!(s.tmp_entries(), 0);
}

#[test]
fn signed_urls_send_headers_verify_and_never_show_the_signature() {
    crate::common::capture_logs();
    let server = BlobServer::start(BlobServerOptions {
        required_header: Some(("x-amz-server-side-encryption".into(), "AES256".into())),
        ..Default::default()
    });
    let s = Scratch::new();
    let blobs = s.blobs(&settings("", json!({})));
    let headers: BTreeMap<String, String> =
        [("x-amz-server-side-encryption".to_string(), "AES256".to_string())].into();
    server.put_blob("/bucket/pkg", b"signed package");

    let get_url = format!("{}/bucket/pkg?X-Amz-Signature=SIGNED-GET-SECRET", server.url());
    server.fail_next(1);
    let got = blobs.fetch_signed(&get_url, &headers, &sha256(b"signed package"), &s.tmp).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"signed package");

    let src = s.tmp.parent().unwrap().join("compiled.tgz");
    fs::write(&src, b"compiled result").unwrap();
    let put_url = format!("{}/bucket/out?X-Amz-Signature=SIGNED-PUT-SECRET", server.url());
    let digest = blobs.upload_signed(&put_url, &headers, &src).unwrap();
    let sha512 = hex(ring::digest::digest(&ring::digest::SHA512, b"compiled result").as_ref());
    assert_eq!(digest, format!("{};sha512:{sha512}", sha1_hex(b"compiled result")));
    assert_eq!(UploadDigests::of_file(&src).unwrap().multi(), digest);
    assert_eq!(server.blob("/bucket/out").unwrap(), b"compiled result");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "failed GET, retried GET, PUT");
    assert!(reqs.iter().all(|r| r.header("x-amz-server-side-encryption") == Some("AES256")));
    let put = &reqs[2];
    assert_eq!(put.method, "PUT");
    assert_eq!(put.header("content-length"), Some("15"));
    assert!(put.header("transfer-encoding").is_none());

    // Failures name the URL without its query string.
    let err = blobs.fetch_signed(&get_url, &BTreeMap::new(), &sha256(b"x"), &s.tmp).unwrap_err();
    assert!(err.contains("403") && err.contains("/bucket/pkg"), "{err}");
    let err = blobs.upload_signed(&put_url, &BTreeMap::new(), &src).unwrap_err();
    assert!(err.contains("403"), "{err}");
    let bad = blobs.fetch_signed(&get_url, &headers, &sha256(b"other"), &s.tmp).unwrap_err();
    assert!(bad.contains("Expected stream to have digest"), "{bad}");
    for e in [&err, &bad] {
        assert!(!e.contains("SECRET"), "signature leaked: {e}");
    }
    assert!(!crate::common::logged("SECRET"), "signature leaked into logs");
    drop(got);
    assert_eq!(s.tmp_entries(), 0);
}

const FAKE_CLI: &str = r#"#!/bin/sh
# bosh-blobstore-test -c <config> get <id> <dst> | put <src> <id>; stores files in options.store.
store=$(sed -n 's/.*"store":"\([^"]*\)".*/\1/p' "$2")
case "$3" in
  get) cp "$store/$4" "$5" ;;
  put) cp "$4" "$store/$5" ;;
  *) echo "unknown command $3" >&2; exit 2 ;;
esac
"#;

#[test]
fn external_provider_runs_the_cli_from_the_search_path() {
    let s = Scratch::new();
    let root = s.tmp.parent().unwrap().to_path_buf();
    let bin = root.join("bin");
    let store = root.join("ext-store");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(&store).unwrap();
    let exe = bin.join("bosh-blobstore-test");
    fs::write(&exe, FAKE_CLI).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = settings("test", json!({"store": store, "secret_key": "k"}));
    let search = std::env::join_paths([root.join("nowhere"), bin.clone()]).unwrap();

    let blobs = Blobs::from_settings_with_path(&cfg, &s.dirs, &search).unwrap();
    let cfg_path = s.dirs.base.join("bosh/etc/blobstore-test.json");
    assert_eq!(fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o777, 0o600);
    let written: Value = serde_json::from_slice(&fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(written["secret_key"], "k");

    let src = root.join("src");
    fs::write(&src, b"via cli").unwrap();
    let (id, sha1) = blobs.upload(&src).unwrap();
    assert_eq!(sha1, sha1_hex(b"via cli"));
    assert_eq!(fs::read(store.join(&id)).unwrap(), b"via cli");
    let got = blobs.fetch(&id, &MultiDigest::sha1(&sha1), &s.tmp).unwrap();
    assert_eq!(fs::read(got.path()).unwrap(), b"via cli");
    drop(got);

    let err = blobs.fetch("absent", &sha256(b"x"), &s.tmp).unwrap_err();
    assert!(err.contains("bosh-blobstore-test") && err.contains("absent"), "{err}");
    assert_eq!(s.tmp_entries(), 0, "no downloads or temp files left");

    let missing = Blobs::from_settings_with_path(&settings("nope", json!({})), &s.dirs, &search).unwrap_err();
    assert_eq!(missing, "executable bosh-blobstore-nope not found in PATH");
}

#[test]
fn fifty_megabyte_blob_streams_through_dav() {
    let server = BlobServer::start(BlobServerOptions::default());
    let s = Scratch::new();
    let blobs = s.dav(&server, "", "");
    // Deterministic, incompressible-looking content.
    let mut data = Vec::with_capacity(50 * 1024 * 1024);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 50 * 1024 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    server.put_blob(&format!("/{}/big", shard("big")), &data);
    let sha512 = hex(ring::digest::digest(&ring::digest::SHA512, &data).as_ref());
    let sha1 = sha1_hex(&data);
    // Verification uses the strongest digest (sha512); the sha1 is carried along as the director does.
    let digest = MultiDigest::parse(&format!("sha1:{sha1};sha512:{sha512}")).unwrap();

    let got = blobs.fetch("big", &digest, &s.tmp).unwrap();
    assert!(fs::read(got.path()).unwrap() == data, "fetched bytes differ");

    let (id, uploaded_sha1) = blobs.upload(got.path()).unwrap();
    assert_eq!(uploaded_sha1, sha1);
    assert!(server.blob(&format!("/{}/{id}", shard(&id))).unwrap() == data, "uploaded bytes differ");
    let kept = got.keep();
    assert!(Path::new(&kept).exists());
    fs::remove_file(kept).unwrap();
}
