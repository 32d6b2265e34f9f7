//! Settings sources against real parts: an EC2-style metadata service and a BOSH registry served
//! from a local HTTP server in this process, config drives and CD-ROMs as directories and as
//! loop-mounted disk images, the settings service's order and fallback, bounded retries against a
//! server that never answers, and the agent binary booting from the HTTP source.
//!
//! The metadata service is `common::metadata`'s, in this process (see there why).

use crate::common::agent::{Director, Launch, TestAgent};
use crate::common::certs::TestPki;
use crate::common::fixture;
use crate::common::metadata::{MetaServer, MetaState};
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use bosh_agent::config::{HttpSourceConfig, SourceConfig};
use bosh_agent::dirs::Dirs;
use bosh_agent::settings::service::{Overrides, SettingsService};
use bosh_agent::settings::sources::retry::RetryPolicy;
use bosh_agent::settings::sources::select::{build, for_infrastructure, infrastructure_configs};
use bosh_agent::settings::sources::{FileSource, SettingsSource};
use bosh_agent::settings::Settings;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        interval: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(2),
        total: Duration::from_secs(10),
    }
}

fn ec2(url: &str) -> HttpSourceConfig {
    HttpSourceConfig {
        uri: url.to_string(),
        user_data_path: "/latest/user-data".into(),
        instance_id_path: "/latest/meta-data/instance-id".into(),
        ssh_keys_path: "/latest/meta-data/public-keys/0/openssh-key".into(),
        ..Default::default()
    }
}

fn one(config: SourceConfig, dirs: &Dirs) -> Box<dyn SettingsSource> {
    build(&[config], dirs, policy()).into_iter().next().expect("one source")
}

fn scratch() -> (tempfile::TempDir, Dirs) {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path().join("base"), "/");
    std::fs::create_dir_all(dirs.bosh()).unwrap();
    (dir, dirs)
}

fn settings(id: &str) -> Value {
    json!({"agent_id": id, "mbus": "nats://10.0.0.1:4222", "vm": {"name": "vm-1"}})
}

#[test]
fn http_source_uses_the_imdsv2_token_custom_headers_and_reads_the_key() {
    let server = MetaServer::start(MetaState { token: Some("tok-123".into()), ..Default::default() });
    let mut doc = settings("a-imds");
    doc["registry"] = json!({"endpoint": "http://unused:1"});
    server.route("/latest/user-data", 200, &doc.to_string());
    server.route("/latest/meta-data/public-keys/0/openssh-key", 200, "ssh-rsa AAAA test\n");
    let (_d, dirs) = scratch();
    let mut cfg = ec2(&server.url());
    cfg.token_path = "/latest/api/token".into();
    cfg.headers = vec![("X-Custom".into(), "yes".into())];
    let source = one(SourceConfig::Http(cfg), &dirs);

    assert_eq!(source.fetch().unwrap(), settings("a-imds"), "user-data settings, envelope removed");
    assert_eq!(source.public_key().as_deref(), Some("ssh-rsa AAAA test"));
    let seen = server.seen();
    assert_eq!((seen[0].method.as_str(), seen[0].target.as_str()), ("PUT", "/latest/api/token"));
    assert!(seen[0].header("X-aws-ec2-metadata-token-ttl-seconds").is_some());
    for s in &seen[1..] {
        assert_eq!(s.header("X-aws-ec2-metadata-token"), Some("tok-123"), "{s:?}");
        assert_eq!(s.header("X-Custom"), Some("yes"));
    }
    assert_eq!(server.count("/latest/meta-data/instance-id"), 0, "settings in user data need no id");

    // Without the token the service refuses (401), which is retried and then reported.
    let plain = one(SourceConfig::Http(ec2(&server.url())), &dirs);
    let err = plain.fetch().unwrap_err();
    assert!(err.contains("HTTP 401") && err.contains("after 3 attempts"), "{err}");
}

#[test]
fn http_source_follows_the_registry_with_the_instance_id() {
    let server = MetaServer::start(MetaState::default());
    let endpoint = format!("http://admin:s3cret@{}", server.listener.addr());
    let user_data = json!({"registry": {"endpoint": endpoint}, "dns": {"nameserver": ["10.0.0.2"]}});
    // Base64 of the JSON, JSON-quoted: one of the encodings clouds hand back.
    use base64::Engine as _;
    let quoted = json!(base64::engine::general_purpose::STANDARD.encode(user_data.to_string()));
    server.route("/latest/user-data", 200, &quoted.to_string());
    server.route("/latest/meta-data/instance-id", 200, "i-0abc\n");
    let reg = json!({"status": "ok", "settings": settings("a-reg").to_string()});
    server.route("/instances/i-0abc/settings", 200, &reg.to_string());
    let (_d, dirs) = scratch();
    let source = one(SourceConfig::Http(ec2(&server.url())), &dirs);

    assert_eq!(source.fetch().unwrap(), settings("a-reg"));
    assert_eq!(source.public_key(), None, "404 on the key path: no key, still settings");
    let reg_req = server.seen().into_iter().find(|s| s.target.starts_with("/instances/")).unwrap();
    use base64::engine::general_purpose::STANDARD;
    assert_eq!(
        reg_req.header("Authorization"),
        Some(format!("Basic {}", STANDARD.encode("admin:s3cret")).as_str())
    );
    assert_eq!(reg_req.header("Accept"), Some("application/json"));

    // A registry without settings for us: the error names the source and the problem, and leaks no
    // password.
    server.route("/instances/i-0abc/settings", 404, "");
    let err = source.fetch().unwrap_err();
    assert!(err.contains("registry") && err.contains("HTTP 404") && !err.contains("s3cret"), "{err}");
}

#[test]
fn user_data_without_settings_or_registry_is_a_permanent_error() {
    let server = MetaServer::start(MetaState::default());
    server.route("/latest/user-data", 200, r#"{"server":{"name":"vm-1"}}"#);
    let (_d, dirs) = scratch();
    let source = one(SourceConfig::Http(ec2(&server.url())), &dirs);
    let err = source.fetch().unwrap_err();
    assert!(err.contains("Metadata does not provide settings"), "{err}");
    assert_eq!(server.count("/latest/user-data"), 1, "a permanent error is not retried");
}

#[test]
fn a_transient_failure_is_retried() {
    let server = MetaServer::start(MetaState::default());
    server.route("/latest/user-data", 200, &settings("a-retry").to_string());
    server.state.fail_next.store(2, Ordering::SeqCst);
    let (_d, dirs) = scratch();
    let source = one(SourceConfig::Http(ec2(&server.url())), &dirs);
    assert_eq!(source.fetch().unwrap()["agent_id"], "a-retry");
    assert_eq!(server.count("/latest/user-data"), 3);
}

#[test]
fn instance_metadata_sends_the_required_header() {
    let server = MetaServer::start(MetaState {
        required: Some(("Metadata-Flavor".into(), "Google".into())),
        ..Default::default()
    });
    server.route(
        "/computeMetadata/v1/instance/attributes/bosh_settings",
        200,
        &settings("a-gce").to_string(),
    );
    let (_d, dirs) = scratch();
    let cfg = |headers: Vec<(String, String)>| SourceConfig::InstanceMetadata {
        uri: server.url(),
        headers,
        settings_path: "/computeMetadata/v1/instance/attributes/bosh_settings".into(),
    };
    let with = one(cfg(vec![("Metadata-Flavor".into(), "Google".into())]), &dirs);
    assert_eq!(with.fetch().unwrap(), settings("a-gce"));
    let without = one(cfg(vec![]), &dirs);
    let err = without.fetch().unwrap_err();
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(without.name().starts_with("InstanceMetadata("), "{}", without.name());
}

/// Writes an OpenStack config drive's files under `root`.
fn write_config_drive(root: &Path, user_data: &Value) {
    let latest = root.join("openstack/latest");
    std::fs::create_dir_all(&latest).unwrap();
    let meta = json!({"uuid": "u-42", "name": "vm-1", "public_keys": {"k": "ssh-ed25519 CCCC"}});
    std::fs::write(latest.join("meta_data.json"), meta.to_string()).unwrap();
    std::fs::write(latest.join("user_data"), user_data.to_string()).unwrap();
}

fn config_drive(paths: Vec<std::path::PathBuf>) -> SourceConfig {
    SourceConfig::ConfigDrive {
        disk_paths: paths,
        meta_data_path: "openstack/latest/meta_data.json".into(),
        user_data_path: "openstack/latest/user_data".into(),
        settings_path: String::new(),
    }
}

#[test]
fn config_drive_from_a_directory_directly_and_through_the_registry() {
    let (dir, dirs) = scratch();
    let drive = dir.path().join("drive");
    write_config_drive(&drive, &settings("a-cd"));
    let missing = dir.path().join("no-such-disk");
    let source = one(config_drive(vec![missing, drive.clone()]), &dirs);
    assert_eq!(source.fetch().unwrap(), settings("a-cd"), "first path missing, second used");
    assert_eq!(source.public_key().as_deref(), Some("ssh-ed25519 CCCC"));

    let server = MetaServer::start(MetaState::default());
    let reg = json!({"settings": settings("a-cd-reg").to_string()});
    server.route("/instances/u-42/settings", 200, &reg.to_string());
    write_config_drive(&drive, &json!({"registry": {"endpoint": server.url()}}));
    assert_eq!(source.fetch().unwrap(), settings("a-cd-reg"), "registry keyed by the meta-data uuid");

    // An image that is no filesystem: mount fails (whatever the kernel offers), the error says so,
    // and the temporary mount point under <base>/bosh is gone again.
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 64 << 10]).unwrap();
    let err = one(config_drive(vec![junk]), &dirs).fetch().unwrap_err();
    assert!(err.contains("mount -o ro,loop") && err.contains("after 3 attempts"), "{err}");
    assert_eq!(std::fs::read_dir(dirs.bosh()).unwrap().count(), 0, "mount point left behind");

    let none = one(config_drive(vec![dir.path().join("nope")]), &dirs);
    let err = none.fetch().unwrap_err();
    assert!(err.contains("nope") && err.contains("does not exist"), "{err}");
}

#[test]
fn cdrom_env_file_from_a_directory() {
    let (dir, dirs) = scratch();
    let disc = dir.path().join("disc");
    std::fs::create_dir_all(&disc).unwrap();
    std::fs::write(disc.join("env"), settings("a-vsphere").to_string()).unwrap();
    let source = one(SourceConfig::Cdrom { file_name: "env".into(), device_path: disc.clone() }, &dirs);
    assert_eq!(source.fetch().unwrap(), settings("a-vsphere"));
    std::fs::write(disc.join("env"), "not json").unwrap();
    assert!(source.fetch().unwrap_err().contains("env is not JSON"));
}

/// Whether this host can loop-mount a disk image. When it cannot, says so loudly; under `CI=true`
/// that is a failure, because CI runs as root and must exercise the mount path.
fn loop_mount_available(work: &Path) -> bool {
    let why = (|| -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let img = work.join("probe.img");
        make_image(&img)?;
        let mnt = work.join("probe-mnt");
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        run("mount", &["-o", "ro,loop", p(&img), p(&mnt)])?;
        run("umount", &[p(&mnt)])
    })();
    match why {
        Ok(()) => true,
        Err(e) => {
            let msg = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED: loop-mounting a disk image is impossible here: {e}\n\
                 !!! (needs root, mkfs.ext4 and loop devices)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            eprintln!("{msg}");
            println!("{msg}");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true requires the mount test: {e}");
            false
        }
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn make_image(img: &Path) -> Result<(), String> {
    let f = std::fs::File::create(img).map_err(|e| e.to_string())?;
    f.set_len(4 << 20).map_err(|e| e.to_string())?;
    // ext4 stands in for the iso9660/vfat of real config drives and CD-ROMs: some CI kernels lack
    // those, ext4 is everywhere, and the agent's path (a read-only loop mount) is the same.
    run("mkfs.ext4", &["-q", "-F", "-L", "config-2", p(img)])
}

/// Builds a disk image holding what `fill` writes (populated through a read-write loop mount).
fn disk_image(work: &Path, name: &str, fill: impl FnOnce(&Path)) -> std::path::PathBuf {
    let img = work.join(format!("{name}.img"));
    make_image(&img).unwrap();
    let mnt = work.join(format!("{name}-fill"));
    std::fs::create_dir_all(&mnt).unwrap();
    run("mount", &["-o", "loop", p(&img), p(&mnt)]).unwrap();
    fill(&mnt);
    run("umount", &[p(&mnt)]).unwrap();
    img
}

#[test]
fn config_drive_and_cdrom_from_loop_mounted_images() {
    // Loop mounts take loop devices: in turn with the disk tests, which detach one and expect it gone.
    let _devices = crate::common::loopdev::DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, dirs) = scratch();
    if !loop_mount_available(dir.path()) {
        return;
    }
    // ext4 stands in for iso9660, which the kernels of some CI sandboxes lack; the code path (mount
    // -o ro,loop on a fresh directory, read, umount) is the same.
    let drive = disk_image(dir.path(), "config-2", |m| write_config_drive(m, &settings("a-vfat")));
    let source = one(config_drive(vec![drive]), &dirs);
    assert_eq!(source.fetch().unwrap(), settings("a-vfat"));
    let disc = disk_image(dir.path(), "cdrom", |m| {
        std::fs::write(m.join("env"), settings("a-iso").to_string()).unwrap()
    });
    let cdrom = one(SourceConfig::Cdrom { file_name: "env".into(), device_path: disc }, &dirs);
    assert_eq!(cdrom.fetch().unwrap(), settings("a-iso"));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(p(&dirs.bosh())), "mount points left behind:\n{mounts}");
    let leftovers: Vec<_> =
        std::fs::read_dir(dirs.bosh()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "mount directories left behind: {leftovers:?}");
}

#[test]
fn sources_are_tried_in_order_and_the_cache_is_the_last_resort() {
    let (_d, dirs) = scratch();
    let down = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed on drop
    let server = MetaServer::start(MetaState::default());
    server.route("/settings", 200, &settings("a-second").to_string());
    let configs = [
        SourceConfig::Http(ec2(&format!("http://{down}"))),
        SourceConfig::InstanceMetadata {
            uri: server.url(),
            headers: vec![],
            settings_path: "/settings".into(),
        },
    ];
    let svc = SettingsService::new(dirs.clone(), build(&configs, &dirs, policy()), Overrides::default());
    assert_eq!(svc.load().unwrap().settings.agent_id, "a-second", "first source down, second used");

    server.route("/settings", 503, "");
    let loaded = svc.load().unwrap();
    assert_eq!(loaded.settings.agent_id, "a-second", "all down: cached settings.json used");
    assert!(dirs.settings_json().is_file());

    std::fs::remove_file(dirs.settings_json()).unwrap();
    let err = svc.load().unwrap_err();
    assert!(err.contains(&format!("HTTP(http://{down})")) && err.contains("InstanceMetadata("), "{err}");
}

#[test]
fn retries_against_a_hanging_server_are_bounded() {
    let server = MetaServer::start(MetaState { hang: true, ..Default::default() });
    let (_d, dirs) = scratch();
    let quick = RetryPolicy {
        attempts: 3,
        interval: Duration::from_millis(50),
        attempt_timeout: Duration::from_millis(300),
        total: Duration::from_secs(30),
    };
    let source = build(&[SourceConfig::Http(ec2(&server.url()))], &dirs, quick).remove(0);
    let started = Instant::now();
    let err = source.fetch().unwrap_err();
    let took = started.elapsed();
    // 3 x 300 ms + 2 x 50 ms between the tries, plus scheduling slack.
    assert!(took < Duration::from_secs(3), "took {took:?}: {err}");
    assert!(err.contains("after 3 attempts"), "{err}");
    assert_eq!(server.count("/latest/user-data"), 3);

    // The total deadline wins over the attempt count.
    let capped = RetryPolicy { attempts: 100, total: Duration::from_millis(800), ..quick };
    let source = build(&[SourceConfig::Http(ec2(&server.url()))], &dirs, capped).remove(0);
    let started = Instant::now();
    let err = source.fetch().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}: {err}", started.elapsed());
    assert!(err.contains("deadline"), "{err}");

    // The default policy bounds a hanging source too (its tries and pauses fit one pass).
    let d = RetryPolicy::default();
    let worst = (d.attempt_timeout + d.interval) * d.attempts;
    assert!(worst <= d.total && d.total <= Duration::from_secs(120), "{d:?}");
}

#[test]
fn infrastructure_names_map_to_the_ruby_agents_sources() {
    let (_d, dirs) = scratch();
    let aws = infrastructure_configs("aws", &dirs, None).unwrap();
    let SourceConfig::Http(h) = &aws[0] else { panic!("{aws:?}") };
    assert_eq!(h.uri, "http://169.254.169.254");
    let os = infrastructure_configs("openstack", &dirs, Some("http://127.0.0.1:9/")).unwrap();
    assert!(matches!(&os[0], SourceConfig::ConfigDrive { disk_paths, .. }
        if disk_paths[0] == Path::new("/dev/disk/by-label/config-2")));
    assert!(matches!(&os[1], SourceConfig::Http(h) if h.uri == "http://127.0.0.1:9" && h.use_server_name));
    let vs = infrastructure_configs("vsphere", &dirs, None).unwrap();
    assert_eq!(vs, vec![SourceConfig::Cdrom { file_name: "env".into(), device_path: "/dev/sr0".into() }]);
    let dummy = infrastructure_configs("dummy", &dirs, None).unwrap();
    assert_eq!(dummy.last(), Some(&SourceConfig::File { settings_path: dirs.bosh().join("settings.json") }));
    let err = infrastructure_configs("warden", &dirs, None).unwrap_err();
    assert!(err.contains("-C agent.json"), "{err}");

    // -I aws against a served metadata service and registry, keyed by the instance id.
    let server = MetaServer::start(MetaState::default());
    server.route("/latest/user-data", 200, &json!({"registry": {"endpoint": server.url()}}).to_string());
    server.route("/latest/meta-data/instance-id", 200, "i-aws");
    server.route("/latest/meta-data/public-keys/0/openssh-key", 200, "ssh-rsa K");
    let reg = json!({"settings": settings("a-aws").to_string()});
    server.route("/instances/i-aws/settings", 200, &reg.to_string());
    let srcs = for_infrastructure("aws", &dirs, Some(&server.url())).unwrap();
    assert_eq!(srcs[0].fetch().unwrap(), settings("a-aws"));
    assert_eq!(srcs[0].public_key().as_deref(), Some("ssh-rsa K"));
}

#[test]
fn agent_boots_from_the_http_metadata_source() {
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("http-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let doc = nats_settings(&pki, &id, &nats.url());
    let server = MetaServer::start(MetaState { token: Some("boot-token".into()), ..Default::default() });
    server.route("/latest/user-data", 200, &doc.to_string());
    let agent_json = json!({"Infrastructure": {"Settings": {"Sources": [
        {"Type": "HTTP", "URI": server.url(), "UserDataPath": "/latest/user-data",
         "InstanceIDPath": "/latest/meta-data/instance-id", "TokenPath": "/latest/api/token"}
    ]}}});
    let agent = TestAgent::launch(&doc, Launch { agent_json: Some(agent_json), ..Launch::default() });
    let mut director = Director::connect(&pki, &nats.url(), &id);
    assert!(director.wait_ready(Duration::from_secs(15)), "agent never answered ping:\n{}", agent.log());
    assert!(agent.log().contains("settings loaded from HTTP("), "{}", agent.log());
    let state = director.send("get_state", json!([]));
    assert_eq!(state["value"]["vm"]["name"], "vm-test");
    assert_eq!(server.count("/latest/api/token"), 1);
}

/// Settings as each cloud's CPI delivers them (`tests/fixtures/settings`): the keys the agent acts on
/// are read, and everything else survives the `settings.json` cache it boots from when the source is
/// gone.
#[test]
fn captured_settings_of_each_cloud_load_and_survive_the_cache() {
    for cloud in ["aws", "openstack", "vsphere"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let dirs = Dirs::new(dir.path(), "/");
        let source = FileSource { path: fixture(&format!("settings/{cloud}.json")) };
        let svc = SettingsService::new(dirs.clone(), vec![Box::new(source)], Overrides::default());
        let loaded = svc.load().unwrap_or_else(|e| panic!("{cloud}: {e}")).settings;
        assert!(!loaded.agent_id.is_empty() && !loaded.mbus.is_empty(), "{cloud}");
        assert!(loaded.networks.values().any(|n| n.is_default_for("gateway") && !n.ip.is_empty()), "{cloud}");
        assert!(loaded.env.bosh.password.is_some() && !loaded.env.bosh.mbus.cert.ca.is_empty(), "{cloud}");
        let cached: Value =
            serde_json::from_slice(&std::fs::read(dirs.settings_json()).expect("cache")).expect("json");
        assert!(cached["networks"]
            .as_object()
            .expect("networks")
            .values()
            .all(|n| n.get("cloud_properties").is_some()));
        assert_eq!(serde_json::from_value::<Settings>(cached).expect(cloud), loaded, "{cloud}");
    }
}

/// A stand-in for VMware Tools (there is no VMware here): a script answering guest RPCs the way
/// `vmware-rpctool <rpc>` and `vmtoolsd --cmd <rpc>` do, from a `userdata` file in `state`, and
/// recording every call in `state/calls`. Installed as `bin/<name>` under `state`.
fn fake_vmware_tool(state: &Path, name: &str) -> std::path::PathBuf {
    let bin = state.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         # FAKE VMware Tools for tests: no VMware here.\n\
         [ \"$1\" = --cmd ] && shift\n\
         echo \"{name} $1\" >>'{state}/calls'\n\
         case \"$1\" in\n\
         \"info-get guestinfo.userdata\") cat '{state}/userdata' ;;\n\
         \"info-set guestinfo.userdata \"*) printf '%s' \"${{1#info-set guestinfo.userdata }}\" >'{state}/userdata' ;;\n\
         \"info-set guestinfo.userdata.encoding \"*) printf '%s' \"${{1#info-set guestinfo.userdata.encoding }}\" >'{state}/encoding' ;;\n\
         *) echo 'Unknown command' >&2; exit 1 ;;\n\
         esac\n",
        state = state.display()
    );
    let path = bin.join(name);
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Base64 of the gzipped settings, as the vSphere CPI sets `guestinfo.userdata`.
fn guestinfo_value(settings: &Value) -> String {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(settings.to_string().as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

/// NO VMWARE HERE: `vmware-rpctool` is a fake script on the agent's PATH (see
/// [`fake_vmware_tool`]). The agent reads guestinfo once, clears it (the settings hold credentials),
/// and a restarted agent, finding only `---` there, boots from its cached settings.
#[test]
fn vsphere_guest_info_is_read_through_vmware_tools_then_cleared() {
    eprintln!("NOTE: no VMware here: vmware-rpctool is a fake script on the agent's PATH");
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("guestinfo-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let doc = nats_settings(&pki, &id, &nats.url());
    let state = tempfile::tempdir().unwrap();
    fake_vmware_tool(state.path(), "vmware-rpctool");
    std::fs::write(state.path().join("userdata"), guestinfo_value(&doc)).unwrap();
    let path =
        format!("{}:{}", state.path().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let env = vec![("PATH".to_string(), path)];
    let agent_json = json!({"Infrastructure": {"Settings": {"Sources": [{"Type": "VsphereGuestInfo"}]}}});
    let mut agent =
        TestAgent::launch(&doc, Launch { agent_json: Some(agent_json), env, ..Launch::default() });
    let mut director = Director::connect(&pki, &nats.url(), &id);
    assert!(director.wait_ready(Duration::from_secs(20)), "agent never answered:\n{}", agent.log());
    assert!(agent.log().contains("settings loaded from VsphereGuestInfo(vmware-rpctool)"), "{}", agent.log());
    let calls = std::fs::read_to_string(state.path().join("calls")).unwrap();
    assert_eq!(
        calls,
        "vmware-rpctool info-get guestinfo.userdata\n\
         vmware-rpctool info-set guestinfo.userdata ---\n\
         vmware-rpctool info-set guestinfo.userdata.encoding ''\n"
    );
    assert_eq!(std::fs::read_to_string(state.path().join("userdata")).unwrap(), "---");

    agent.restart();
    let mut director = Director::connect(&pki, &nats.url(), &id);
    assert!(director.wait_ready(Duration::from_secs(20)), "no restart from the cache:\n{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("guestinfo.userdata is not base64") && log.contains("using the cached settings.json"),
        "{log}"
    );
}

/// NO VMWARE HERE: both tools are fake scripts. Without a working `vmware-rpctool`, the same RPCs
/// go through `vmtoolsd --cmd`.
#[test]
fn vsphere_guest_info_falls_back_to_vmtoolsd() {
    let state = tempfile::tempdir().unwrap();
    let vmtoolsd = fake_vmware_tool(state.path(), "vmtoolsd");
    std::fs::write(state.path().join("userdata"), guestinfo_value(&settings("a-vmtoolsd"))).unwrap();
    let (_d, dirs) = scratch();
    let config = SourceConfig::VsphereGuestInfo {
        rpc_tool_path: state.path().join("bin/no-such-rpctool").display().to_string(),
        vmtoolsd_path: vmtoolsd.display().to_string(),
    };
    let source = one(config, &dirs);
    assert_eq!(source.fetch().unwrap(), settings("a-vmtoolsd"));
    let calls = std::fs::read_to_string(state.path().join("calls")).unwrap();
    assert!(
        calls.starts_with("vmtoolsd info-get guestinfo.userdata\nvmtoolsd info-set guestinfo.userdata ---\n"),
        "{calls}"
    );
    let err = source.fetch().unwrap_err();
    assert!(err.contains("not base64"), "read once: {err}");
}

/// A CD-ROM that is a real block device (a loop device standing in for `/dev/sr0`): the agent reads
/// it until it answers, lets udev settle, mounts, reads and unmounts it, and ejects it. There is no
/// udev daemon and no ejectable drive here, so `udevadm` and `eject` are FAKE recording scripts on
/// the agent's PATH; the device, the mount and the read are real.
#[test]
fn a_cdrom_drive_is_settled_mounted_read_and_ejected() {
    let _devices = crate::common::loopdev::DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    if !loop_mount_available(work.path()) {
        return;
    }
    eprintln!("NOTE: no udev daemon or ejectable drive here: udevadm and eject are fake recording scripts");
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("cdrom-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let doc = nats_settings(&pki, &id, &nats.url());
    let image = disk_image(work.path(), "env", |m| std::fs::write(m.join("env"), doc.to_string()).unwrap());
    let device =
        crate::common::loopdev::sh(std::process::Command::new("losetup").args(["-f", "--show", p(&image)]));
    let device = device.trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(device.clone());
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["udevadm", "eject"] {
        let script = format!(
            "#!/bin/sh\n# FAKE {tool} for tests\necho \"{tool} $*\" >>'{}/calls'\n",
            work.path().display()
        );
        std::fs::write(bin.join(tool), script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let env = vec![("PATH".to_string(), path)];
    let agent_json = json!({"Infrastructure": {"Settings": {"Sources": [
        {"Type": "CDROM", "FileName": "env", "DevicePath": device}]}}});
    let agent = TestAgent::launch(&doc, Launch { agent_json: Some(agent_json), env, ..Launch::default() });
    let mut director = Director::connect(&pki, &nats.url(), &id);
    assert!(director.wait_ready(Duration::from_secs(20)), "agent never answered:\n{}", agent.log());
    assert!(agent.log().contains(&format!("settings loaded from CDROM({device}:env)")), "{}", agent.log());
    let calls = std::fs::read_to_string(work.path().join("calls")).unwrap();
    assert_eq!(calls, format!("udevadm settle\neject -v {device}\n"));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.lines().any(|l| l.starts_with(&format!("{device} "))), "left mounted:\n{mounts}");
}
