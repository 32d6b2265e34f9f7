//! bosh-cli's and the director's conversation as real runs had it: what `bosh create-env`,
//! `delete-env` and `bosh logs --director` ask of an agent on the dummy platform, and what the first
//! heartbeat and an early `get_state` carry.

use crate::common::agent::{HealthMonitor, TestAgent};
use crate::common::certs::TestPki;
use crate::common::nats_server::{free_port, NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use crate::common::tarball::{digests, script, tgz};
use crate::common::wait_until;
use bosh_agent::client::{call_with, Https};
use bosh_agent::mbus::url::MbusUrl;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An agent on the HTTPS bus as a CPI leaves it for bosh-cli, with `disks` in its settings.
struct CreateEnv {
    agent: TestAgent,
    settings: Value,
    port: u16,
    cert: String,
}

impl CreateEnv {
    fn start(disks: Value) -> CreateEnv {
        let port = free_port();
        let (cert, key) = bosh_agent::tls::server::self_signed(&["127.0.0.1".to_string()]).unwrap();
        let settings = json!({
            "agent_id": "create-env", "mbus": format!("https://mbus:pw@127.0.0.1:{port}"),
            "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}},
            "networks": {"default": {"type": "manual", "ip": "10.0.0.6", "default": ["dns", "gateway"]}},
            "disks": disks
        });
        let agent = TestAgent::start(&settings, &[]);
        let up =
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "HTTPS bus never listened:\n{}", agent.log());
        CreateEnv { agent, settings, port, cert }
    }

    fn client(&self) -> Https {
        let url = MbusUrl::parse(&format!("https://mbus:pw@127.0.0.1:{}", self.port)).unwrap();
        Https::new(&url, Some(&self.cert)).unwrap()
    }

    /// One request, followed to its result when it is a task (as bosh-cli polls).
    fn call(&self, method: &str, args: Value) -> Value {
        let args = args.as_array().cloned().unwrap_or_default();
        call_with(&mut self.client(), method, &args, Instant::now() + Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.agent.log()))
    }

    /// What the CPI does to the settings: `change` them and write them where the agent reads them.
    fn cpi_changes_settings(&mut self, change: impl FnOnce(&mut Value)) {
        change(&mut self.settings);
        std::fs::write(self.agent.settings_path(), self.settings.to_string()).unwrap();
    }

    /// `PUT /blobs/<prefix>/<id>` as bosh-cli uploads a package.
    fn put_blob(&self, id: &str, data: &[u8]) {
        let cert = ureq::tls::Certificate::from_pem(self.cert.as_bytes()).unwrap().to_owned();
        let tls =
            ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[cert])).build();
        let agent =
            ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().new_agent();
        let auth = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "mbus:pw")
        );
        let url = format!("https://127.0.0.1:{}/blobs/ab/{id}", self.port);
        let put = agent.put(&url).header("Authorization", &auth).send(data).unwrap();
        assert_eq!(put.status(), 201);
    }
}

/// `bosh delete-env` after the CPI detached the disk and took it out of the settings (registry
/// style): `list_disk` must not name it, or bosh-cli tries to unmount a disk that is gone.
#[test]
fn list_disk_answers_from_the_settings_the_cpi_just_changed() {
    let mut env = CreateEnv::start(json!({"persistent": {"disk-1": "/dev/sdc"}}));
    assert_eq!(env.call("mount_disk", json!(["disk-1"])), json!({"value": {}}));
    assert_eq!(env.call("list_disk", json!([])), json!({"value": ["disk-1"]}));
    env.cpi_changes_settings(|s| s["disks"] = json!({"persistent": {}}));
    assert_eq!(env.call("list_disk", json!([])), json!({"value": []}));
}

/// bosh-cli uploads a package, then applies a spec naming a different digest: the exception says
/// which digest was expected and which was found, not that the blobstore lacks the blob.
#[test]
fn a_digest_mismatch_names_both_digests() {
    let env = CreateEnv::start(json!({}));
    let dir = tempfile::tempdir().unwrap();
    let uploaded = dir.path().join("uploaded.tgz");
    tgz(&uploaded, &[script("bin/foo", "#!/bin/sh\necho uploaded\n")]);
    let named = dir.path().join("named.tgz");
    tgz(&named, &[script("bin/foo", "#!/bin/sh\necho named\n")]);
    env.put_blob("pkg-foo", &std::fs::read(&uploaded).unwrap());
    let (expected, actual) = (digests(&named).0, digests(&uploaded).0);
    let spec = json!({"deployment": "bosh", "name": "bosh", "index": 0, "id": "0", "az": "unknown",
        "job": {"name": "bosh", "templates": []}, "configuration_hash": "h1",
        "packages": {"foo": {"name": "foo", "version": "1", "sha1": expected, "blobstore_id": "pkg-foo"}},
        "rendered_templates_archive": {"blobstore_id": "", "sha1": ""}, "networks": {}});
    let reply = env.call("apply", json!([spec]));
    let message = reply["exception"]["message"].as_str().unwrap_or_else(|| panic!("{reply}"));
    let mismatch = format!("Expected stream to have digest '{expected}' but was '{actual}'");
    assert!(message.contains(&mismatch), "{message}");
}

/// bosh-cli shows vitals from `get_state ["full"]` right after the VM answers: cpu is there too.
#[test]
fn an_early_get_state_carries_cpu() {
    let env = CreateEnv::start(json!({}));
    let state = env.call("get_state", json!(["full"]));
    let cpu = &state["value"]["vitals"]["cpu"];
    assert!(cpu["user"].is_string() && cpu["sys"].is_string() && cpu["wait"].is_string(), "{state}");
}

/// The health monitor's first heartbeat from a new VM has cpu vitals.
#[test]
fn the_first_heartbeat_carries_cpu() {
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("first-beat-{}", &bosh_agent::ids::uuid_v4()[..8]);
    // Subscribed before the agent starts, so the first heartbeat is the one seen.
    let hm = HealthMonitor::connect(&pki, &nats.url(), &id);
    let agent = TestAgent::start(&nats_settings(&pki, &id, &nats.url()), &[]);
    let beat = hm.next(&format!("hm.agent.heartbeat.{id}"), Duration::from_secs(15));
    let beat = beat.unwrap_or_else(|| panic!("no heartbeat:\n{}", agent.log()));
    let cpu = &beat["vitals"]["cpu"];
    assert!(cpu["user"].is_string() && cpu["sys"].is_string() && cpu["wait"].is_string(), "{beat}");
}
