//! Every official stemcell's `agent.json` (`tests/fixtures/agent-json`, Jammy and Noble for nine
//! clouds) starts the agent: `-P ubuntu` on a scratch root, the file's settings sources pointed at
//! local stand-ins (a metadata service in this process for `HTTP` and `InstanceMetadata`, with
//! AWS's IMDSv2 token and GCP's `Metadata-Flavor` header enforced; files, a config-drive directory
//! and a CD-ROM directory under the scratch root), each test asserting that the agent answers `ping`
//! over NATS, took its settings from the source the cloud uses, and logged for every
//! `Platform.Linux` and `Infrastructure.Settings` key whether it is honoured or ignored (and why).
//!
//! OpenStack lists three sources; Jammy's file is served through its config drive and Noble's
//! through the metadata service, so both later sources are shown to work after the earlier ones fail.

use crate::common::agent::{Director, Launch, TestAgent};
use crate::common::certs::TestPki;
use crate::common::fixture;
use crate::common::metadata::{MetaServer, MetaState};
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use bosh_agent::config::get_ci;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "imds-token-123";

/// `path` (absolute in the stemcell) under the scratch root.
fn under(root: &Path, path: &str) -> String {
    root.join(path.trim_start_matches('/')).to_str().expect("UTF-8 path").to_string()
}

fn write(path: &str, text: &str) {
    let path = Path::new(path);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// The source type that will deliver the settings: the only one, or for OpenStack the config drive
/// (Jammy) or the metadata service (Noble).
fn delivering(name: &str, sources: &[Value]) -> String {
    let kinds: Vec<&str> = sources.iter().filter_map(|s| get_ci(s, "Type").and_then(Value::as_str)).collect();
    match (name, kinds.as_slice()) {
        ("jammy-openstack", _) => "ConfigDrive".into(),
        ("noble-openstack", _) => "HTTP".into(),
        (_, [only]) => only.to_string(),
        _ => panic!("{name}: which source delivers? {kinds:?}"),
    }
}

fn boots_with(name: &str) {
    let original: Value = serde_json::from_slice(
        &std::fs::read(fixture(&format!("agent-json/{name}.json"))).expect("agent.json fixture"),
    )
    .expect("agent.json is JSON");
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("{name}-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let settings = nats_settings(&pki, &id, &nats.url());
    let text = settings.to_string();
    let root = tempfile::tempdir().expect("scratch root");
    let base = root.path().join("var/vcap");

    let mut doc = original.clone();
    let sources = doc["Infrastructure"]["Settings"]["Sources"].as_array().cloned().expect("sources");
    let via = delivering(name, &sources);
    let needs_token = sources.iter().any(|s| get_ci(s, "TokenPath").is_some());
    let flavor = sources.iter().find_map(|s| get_ci(s, "Headers").and_then(|h| get_ci(h, "Metadata-Flavor")));
    let meta = MetaServer::start(MetaState {
        token: needs_token.then(|| TOKEN.to_string()),
        required: flavor.and_then(Value::as_str).map(|v| ("Metadata-Flavor".to_string(), v.to_string())),
        ..Default::default()
    });
    let mut rewritten = Vec::new();
    for mut source in sources {
        let kind = get_ci(&source, "Type").and_then(Value::as_str).unwrap_or_default().to_string();
        let serves = kind == via;
        let text_of =
            |key: &str| get_ci(&source, key).and_then(Value::as_str).unwrap_or_default().to_string();
        match kind.as_str() {
            "HTTP" | "InstanceMetadata" => {
                let path = if kind == "HTTP" { text_of("UserDataPath") } else { text_of("SettingsPath") };
                if serves {
                    meta.route(&path, 200, &text);
                    let key = text_of("SSHKeysPath");
                    if !key.is_empty() {
                        meta.route(&key, 200, "ssh-rsa AAAAB3Nza test@stemcell");
                    }
                }
                source["URI"] = json!(meta.url());
            }
            "File" => {
                let path = under(root.path(), &text_of("SettingsPath"));
                if serves {
                    write(&path, &text);
                }
                source["SettingsPath"] = json!(path);
            }
            "ConfigDrive" => {
                let paths: Vec<String> = source["DiskPaths"]
                    .as_array()
                    .expect("DiskPaths")
                    .iter()
                    .map(|p| under(root.path(), p.as_str().expect("path")))
                    .collect();
                if serves {
                    // The lower-case label, as most clouds write it: the upper-case path is tried
                    // first and is missing.
                    let drive = Path::new(&paths[1]);
                    let meta_data =
                        json!({"instance-id": "i-1", "public_keys": {"0": {"openssh-key": "ssh-rsa K"}}});
                    write(&drive.join(text_of("MetaDataPath")).to_string_lossy(), &meta_data.to_string());
                    write(&drive.join(text_of("UserDataPath")).to_string_lossy(), &text);
                }
                source["DiskPaths"] = json!(paths);
            }
            "CDROM" => {
                let disc = under(root.path(), "/dev/sr0");
                write(&Path::new(&disc).join(text_of("FileName")).to_string_lossy(), &text);
                source["DevicePath"] = json!(disc);
            }
            other => panic!("{name}: unexpected source type {other}"),
        }
        rewritten.push(source);
    }
    doc["Infrastructure"]["Settings"]["Sources"] = json!(rewritten);

    let root_arg = root.path().to_str().expect("UTF-8 root").to_string();
    let agent = TestAgent::launch(
        &settings,
        Launch {
            base: Some(&base),
            agent_json: Some(doc),
            extra: &["-P", "ubuntu", "-r", &root_arg],
            ..Launch::default()
        },
    );
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(60)), "{name}: agent never answered ping:\n{}", agent.log());
    let log = agent.log();
    assert!(log.contains(&format!("settings loaded from {via}(")), "{name}: not from {via}:\n{log}");
    if needs_token {
        assert!(meta.count("/latest/api/token") >= 1, "{name}: no IMDSv2 token asked for");
    }
    let linux = original["Platform"]["Linux"].as_object().expect("Platform.Linux");
    let settings_keys = original["Infrastructure"]["Settings"].as_object().expect("Settings");
    let keys = linux
        .keys()
        .map(|k| format!("Platform.Linux.{k}"))
        .chain(settings_keys.keys().map(|k| format!("Infrastructure.Settings.{k}")));
    for key in keys {
        let honoured = format!("agent.json {key}: honoured: ");
        let ignored = format!("agent.json {key}: ignored: ");
        assert!(log.contains(&honoured) || log.contains(&ignored), "{name}: {key} not accounted for:\n{log}");
    }
    assert_eq!(d.send("ping", json!([])), json!({"value": "pong"}));
}

macro_rules! stemcells {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                boots_with($file);
            }
        )*
    };
}

stemcells! {
    jammy_alicloud => "jammy-alicloud",
    jammy_aws => "jammy-aws",
    jammy_azure => "jammy-azure",
    jammy_cloudstack => "jammy-cloudstack",
    jammy_google => "jammy-google",
    jammy_openstack => "jammy-openstack",
    jammy_softlayer => "jammy-softlayer",
    jammy_vsphere => "jammy-vsphere",
    jammy_warden => "jammy-warden",
    noble_alicloud => "noble-alicloud",
    noble_aws => "noble-aws",
    noble_azure => "noble-azure",
    noble_cloudstack => "noble-cloudstack",
    noble_google => "noble-google",
    noble_openstack => "noble-openstack",
    noble_softlayer => "noble-softlayer",
    noble_vsphere => "noble-vsphere",
    noble_warden => "noble-warden",
}
