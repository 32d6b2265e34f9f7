//! upload_blob, sync_dns and delete_arp_entries end to end over NATS (and upload_blob over HTTPS):
//! large payloads with the director's line-wrapped base64, checksums, DNS record versions.

use crate::common::agent::{exception, AgentEnv};
use crate::common::blob_server::{BlobServer, BlobServerOptions};
use crate::common::nats_server::NatsServerOptions;
use crate::common::tarball::{digests, file, tgz};
use base64::Engine;
use serde_json::{json, Value};

type Env = AgentEnv;

fn start(tag: &str) -> Env {
    // The bosh nats job lets operators raise max_payload for NATS-delivered templates.
    AgentEnv::start(tag, NatsServerOptions { max_payload: Some(16 << 20), ..Default::default() }, None)
}

/// Base64 wrapped at 60 columns, as the director's Ruby `Base64.encode64` writes it.
fn wrapped_base64(data: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(data);
    flat.as_bytes().chunks(60).map(|c| format!("{}\n", String::from_utf8_lossy(c))).collect()
}

fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    format!("sha256:{}", d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[test]
fn upload_blob_stores_a_large_payload_that_apply_then_uses() {
    let mut env = start("upload");
    // Rendered templates for job `web`, padded to several MiB.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("rendered.tgz");
    let filler: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    tgz(&archive, &[file("web/config/big.bin", &filler), file("web/monit", b"")]);
    let bytes = std::fs::read(&archive).unwrap();
    let payload = wrapped_base64(&bytes);
    let marker = &payload[120..170];
    let args = json!([{"blob_id": "rendered-1", "checksum": sha256(&bytes), "payload": payload}]);
    assert_eq!(env.d.run_task("upload_blob", args), json!({"value": "rendered-1"}));
    let stored = env.agent.base().join("data/sensitive_blobs/rendered-1");
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);

    // apply finds the sensitive blob before the (empty) blobstore.
    let spec = json!({"deployment": "dep", "job": {"name": "ig", "templates": [{"name": "web", "version": "v1"}]},
        "packages": {}, "configuration_hash": "h1", "index": 0, "id": "i1",
        "rendered_templates_archive": {"blobstore_id": "rendered-1", "sha1": digests(&archive).0}});
    assert_eq!(env.d.run_task("apply", json!([spec])), json!({"value": "applied"}));
    assert_eq!(std::fs::read(env.agent.base().join("jobs/web/config/big.bin")).unwrap(), filler);
    assert!(!env.agent.log().contains(marker), "the payload reached the log");
}

#[test]
fn upload_blob_with_a_bad_checksum_keeps_nothing() {
    let mut env = start("badsum");
    let args = json!([{"blob_id": "b1", "checksum": sha256(b"other"), "payload": wrapped_base64(b"hello")}]);
    let e = exception(&env.d.run_task("upload_blob", args));
    assert!(e.contains("Payload corrupted. Checksum mismatch"), "{e}");
    assert!(!env.agent.base().join("data/sensitive_blobs/b1").exists());
    let e = exception(
        &env.d.send("upload_blob", json!([{"blob_id": "../x", "checksum": sha256(b""), "payload": ""}])),
    );
    assert!(e.contains("blob_id"), "{e}");
}

#[test]
fn sync_dns_writes_newer_records_and_skips_older_ones() {
    let mut env = start("dns");
    let put = |env: &Env, id: &str, body: &Value| -> String {
        let data = body.to_string().into_bytes();
        std::fs::write(env.blobs.path().join(id), &data).unwrap();
        sha256(&data)
    };
    let v3 = json!({"Version": 3, "records": [["10.0.0.7", "baz.bosh"], ["10.0.0.8", "q-s0.web.dep.bosh"]],
                    "record_keys": ["id"], "record_infos": [["x"]]});
    let d3 = put(&env, "dns-3", &v3);
    assert_eq!(env.d.send("sync_dns", json!(["dns-3", d3, 3])), json!({"value": "synced"}));
    let hosts = std::fs::read_to_string(env.agent.base().join("bosh/etc_hosts")).unwrap();
    assert_eq!(hosts, "10.0.0.7 baz.bosh\n10.0.0.8 q-s0.web.dep.bosh\n");
    let records: Value =
        serde_json::from_slice(&std::fs::read(env.agent.base().join("instance/dns/records.json")).unwrap())
            .unwrap();
    assert_eq!(records["Version"], 3);

    // An older version is answered at once without touching anything (its blob does not even exist).
    assert_eq!(env.d.send("sync_dns", json!(["missing", d3, 2])), json!({"value": "synced"}));
    assert_eq!(std::fs::read_to_string(env.agent.base().join("bosh/etc_hosts")).unwrap(), hosts);

    let v5 = json!({"Version": 4, "records": []});
    let d5 = put(&env, "dns-5", &v5);
    let e = exception(&env.d.send("sync_dns", json!(["dns-5", d5, 5])));
    assert!(e.contains("does not match version"), "{e}");
    assert!(exception(&env.d.send("sync_dns", json!(["dns-3", "sha256:00", 9]))).contains("digest"));
}

#[test]
fn sync_dns_with_signed_url_sends_the_directors_headers() {
    let mut env = start("dnssigned");
    let server = BlobServer::start(BlobServerOptions {
        required_header: Some(("x-amz-server-side-encryption".into(), "AES256".into())),
        ..Default::default()
    });
    let body = json!({"Version": 7, "records": [["10.1.0.1", "a.bosh"]]}).to_string();
    server.put_blob("/dns/records-7", body.as_bytes());
    let args = json!([{"signed_url": format!("{}/dns/records-7?sig=abc", server.url()), "multi_digest": sha256(body.as_bytes()),
                       "version": 7, "blobstore_headers": {"x-amz-server-side-encryption": "AES256"}}]);
    assert_eq!(env.d.send("sync_dns_with_signed_url", args), json!({"value": "synced"}));
    assert_eq!(
        std::fs::read_to_string(env.agent.base().join("bosh/etc_hosts")).unwrap(),
        "10.1.0.1 a.bosh\n"
    );
}

#[test]
fn delete_arp_entries_answers_and_checks_its_arguments() {
    let mut env = start("arp");
    assert_eq!(
        env.d.send("delete_arp_entries", json!([{"ips": ["10.0.0.1", "fe80::1"]}])),
        json!({"value": {}})
    );
    assert!(exception(&env.d.send("delete_arp_entries", json!([{"ips": ["1.2.3.4; reboot"]}])))
        .contains("invalid IP"));
}
