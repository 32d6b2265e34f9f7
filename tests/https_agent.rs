//! The agent binary over its HTTPS bus, driven as `bosh create-env` drives it: `POST /agent` without a
//! protocol field, Basic auth from the mbus URL, blobs under `/blobs`.

use crate::common::agent::TestAgent;
use crate::common::nats_server::free_port;
use crate::common::wait_until;
use base64::Engine;
use bosh_agent::client::{call_with, Https, Transport};
use bosh_agent::mbus::url::MbusUrl;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Fixture {
    agent: TestAgent,
    url: String,
    cert: String,
}

fn start() -> Fixture {
    let port = free_port();
    let url = format!("https://mbus:p%40ss@127.0.0.1:{port}");
    let (cert, key) = bosh_agent::tls::server::self_signed(&["127.0.0.1".to_string()]).unwrap();
    let settings = json!({
        "agent_id": "https-agent", "mbus": url,
        "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}},
        "networks": {"default": {"type": "dynamic", "ip": "10.0.0.9", "default": ["dns", "gateway"]}},
        "disks": {"persistent": {"disk-9": "/dev/sdd"}}
    });
    let agent = TestAgent::start(&settings, &[]);
    let up =
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(up, "HTTPS bus never listened:\n{}", agent.log());
    Fixture { agent, url, cert }
}

impl Fixture {
    fn client(&self) -> Https {
        Https::new(&MbusUrl::parse(&self.url).unwrap(), Some(&self.cert)).unwrap()
    }
    fn send(&self, method: &str, args: Value) -> Value {
        let args = args.as_array().cloned().unwrap_or_default();
        self.client().request(method, &args, Instant::now() + Duration::from_secs(10)).unwrap()
    }
    fn ureq(&self) -> ureq::Agent {
        let cert = ureq::tls::Certificate::from_pem(self.cert.as_bytes()).unwrap().to_owned();
        let tls =
            ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[cert])).build();
        ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().new_agent()
    }
    fn base_url(&self) -> String {
        format!("https://{}", MbusUrl::parse(&self.url).unwrap().host_port())
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

#[test]
fn answers_the_create_env_calls_synchronously_where_the_cli_requires_it() {
    let fx = start();
    assert_eq!(fx.send("ping", json!([])), json!({"value": "pong"}));
    let state = fx.send("get_state", json!([]));
    assert_eq!(state["value"]["job_state"], "running");
    assert_eq!(state["value"]["networks"]["default"]["ip"], "10.0.0.9");
    // No protocol field: list_disk answers at once with the CID list, as the CLI type-asserts.
    assert_eq!(fx.send("list_disk", json!([])), json!({"value": ["disk-9"]}));
    assert_eq!(fx.send("nope", json!([])), json!({"exception": {"message": "unknown message nope"}}));
    // Async actions return a string task id the CLI polls.
    let mut client = fx.client();
    let first =
        client.request("dummy_sleep", &[json!(0.2)], Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(first["value"]["agent_task_id"].is_string() && first["value"]["state"] == "running");
    let done = call_with(&mut client, "dummy_sleep", &[json!(0.2)], Instant::now() + Duration::from_secs(10))
        .unwrap();
    assert_eq!(done, json!({"value": {"canceled": false}}));
}

#[test]
fn refuses_bad_credentials_and_bad_bodies() {
    let fx = start();
    let agent = fx.ureq();
    let body = r#"{"method":"ping","arguments":[],"reply_to":"cli"}"#;
    let wrong = agent
        .post(&format!("{}/agent", fx.base_url()))
        .header("Authorization", &basic("mbus", "nope"))
        .send(body)
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The agent closes a refused connection, so it must say so: a client would reuse it otherwise.
    assert_eq!(wrong.headers().get("connection").and_then(|v| v.to_str().ok()), Some("close"));
    assert_eq!(
        wrong.headers().get("www-authenticate").and_then(|v| v.to_str().ok()),
        Some(r#"Basic realm="""#)
    );
    let mut bad = agent
        .post(&format!("{}/agent", fx.base_url()))
        .header("Authorization", &basic("mbus", "p@ss"))
        .send("{oops")
        .unwrap();
    assert_eq!(bad.status(), 200);
    let v: Value = serde_json::from_str(&bad.body_mut().read_to_string().unwrap()).unwrap();
    assert!(v["exception"]["message"].as_str().unwrap().contains("not valid JSON"), "{v}");
    let get = agent
        .get(&format!("{}/agent", fx.base_url()))
        .header("Authorization", &basic("mbus", "p@ss"))
        .call()
        .unwrap();
    assert_eq!(get.status(), 404);
    assert_eq!(fx.send("ping", json!([])), json!({"value": "pong"}));
}

#[test]
fn blobs_land_in_the_data_blobs_directory() {
    let fx = start();
    let agent = fx.ureq();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let url = format!("{}/blobs/ab/blob-1", fx.base_url());
    let put = agent.put(&url).header("Authorization", &basic("mbus", "p@ss")).send(&data[..]).unwrap();
    assert_eq!(put.status(), 201);
    assert_eq!(std::fs::read(fx.agent.base().join("data/blobs/blob-1")).unwrap(), data);
    let mut get = agent.get(&url).header("Authorization", &basic("mbus", "p@ss")).call().unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.body_mut().with_config().limit(10_000_000).read_to_vec().unwrap(), data);
    let missing = agent
        .get(&format!("{}/blobs/ab/none", fx.base_url()))
        .header("Authorization", &basic("mbus", "p@ss"))
        .call()
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[test]
fn embedded_default_runs_with_nothing_configured() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("https://bosh:bosh@127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bosh-agent"))
        .current_dir(dir.path())
        .args(["-n", &url])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up =
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosh-agent"))
        .args(["call", "--mbus", &url, "ping"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "embedded agent never listened");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"value":"pong"}"#);
    let bosh = dir.path().join("agent-data/bosh");
    assert!(bosh.join("embedded-mbus.crt").exists() && bosh.join("settings.json").exists());
}
