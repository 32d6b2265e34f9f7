//! The Linux bootstrap against a scratch root: every file it writes, their modes, and that a second
//! run changes nothing (the agent restarts often on a VM).

use crate::common::mounts::UnmountOnDrop;
use bosh_agent::dirs::Dirs;
use bosh_agent::platform::network::nics;
use bosh_agent::platform::{self, PlatformKind};
use bosh_agent::settings::{Effective, Settings};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn settings() -> Effective {
    let s: Settings = serde_json::from_value(json!({
        "agent_id": "agent-123",
        "networks": {
            "default": {"type": "manual", "ip": "10.0.0.5", "netmask": "255.255.255.0", "gateway": "10.0.0.1",
                        "dns": ["10.0.0.2", "10.0.0.3"], "default": ["dns", "gateway"], "mac": "aa:bb:cc:dd:ee:01"},
            "other": {"type": "dynamic", "mac": "aa:bb:cc:dd:ee:02", "dns": ["10.1.0.2"]},
            "public": {"type": "vip", "ip": "203.0.113.9"}
        },
        "ntp": ["0.pool.ntp.org"],
        "env": {"bosh": {"authorized_keys": ["ssh-rsa AAAA one", "ssh-ed25519 BBBB two"],
                         "ntp": ["time.example.com", "time2.example.com"], "password": "$6$salt$hash"}},
        "disks": {"ephemeral": null}
    }))
    .expect("settings");
    Effective { settings: s, update: Default::default() }
}

/// The VM's NICs in a fake sysfs under `root`: eth0 and eth1 carry the settings' MACs.
fn fake_nics(root: &Path) {
    nics::fake(root, "eth0", "aa:bb:cc:dd:ee:01", 2, true).expect("fake NIC");
    nics::fake(root, "eth1", "aa:bb:cc:dd:ee:02", 3, true).expect("fake NIC");
}

/// Every entry under `dir`: relative path → (mode, content or symlink target).
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, String)>) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("prefix").to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).expect("metadata");
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(rel, (0, std::fs::read_link(&p).expect("link").to_string_lossy().into_owned()));
            } else if m.is_dir() {
                out.insert(rel, (mode, String::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, (mode, std::fs::read_to_string(&p).expect("read")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn bootstrap_writes_the_vm_configuration_under_the_root_and_is_idempotent() {
    let root = tempfile::tempdir().expect("root");
    let _mounts = UnmountOnDrop(vec![root.path().to_path_buf()]);
    let base = root.path().join("var/vcap");
    let dirs = Dirs::new(&base, root.path());
    fake_nics(root.path());
    platform::new(PlatformKind::Linux, &dirs).bootstrap(&settings(), false).expect("first bootstrap");
    let first = snapshot(root.path());

    let file = |p: &str| first.get(p).unwrap_or_else(|| panic!("{p} missing; have {:?}", first.keys()));
    assert_eq!(file("etc/hostname").1, "agent-123\n");
    assert!(file("etc/hosts").1.starts_with("127.0.0.1 agent-123 localhost\n"));
    let net = &file("etc/systemd/network/10_eth0.network").1;
    for line in ["Name=eth0", "Address=10.0.0.5/24", "Gateway=10.0.0.1", "DNS=10.0.0.2"] {
        assert!(net.contains(line), "{line} missing in\n{net}");
    }
    let other = &file("etc/systemd/network/10_eth1.network").1;
    assert!(other.contains("DHCP=yes") && other.contains("UseRoutes=no"), "{other}");
    assert!(!first.contains_key("etc/systemd/network/10_public.network"), "vip networks get no file");
    let resolv = &file("etc/resolv.conf").1;
    assert!(resolv.contains("nameserver 10.0.0.2\nnameserver 10.0.0.3\n") && !resolv.contains("10.1.0.2"));
    assert_eq!(file("var/vcap/bosh/etc/ntpserver").1, "time.example.com time2.example.com\n");
    let keys = file("home/vcap/.ssh/authorized_keys");
    assert_eq!(keys, &(0o600, "ssh-rsa AAAA one\nssh-ed25519 BBBB two\n".to_string()));
    assert_eq!(file("home/vcap/.ssh").0, 0o700);
    // SAFETY: geteuid has no preconditions. As root `data/sys/run` is a tmpfs (1777, its root's
    // mode); without a disk `data` is as open as mkfs leaves a disk's root.
    let run = if unsafe { libc::geteuid() } == 0 { 0o1777 } else { 0o750 };
    for (rel, mode) in [
        ("data", 0o755),
        ("data/sys", 0o750),
        ("data/sys/log", 0o750),
        ("data/sys/run", run),
        ("data/jobs", 0o750),
        ("data/packages", 0o755),
        ("data/sensitive_blobs", 0o700),
        ("data/blobs", 0o700),
        ("data/tmp", 0o755),
    ] {
        assert_eq!(file(&format!("var/vcap/{rel}")).0, mode, "{rel}");
    }
    assert_eq!(file("var/vcap/sys").1, base.join("data/sys").to_string_lossy());
    assert_eq!((file("tmp").0, file("var/tmp").0), (0o1777, 0o1777));

    platform::new(PlatformKind::Linux, &dirs).bootstrap(&settings(), false).expect("second bootstrap");
    assert_eq!(snapshot(root.path()), first, "a second bootstrap changed the tree");

    // sync_dns records after the hosts header survive a restart.
    let hosts = root.path().join("etc/hosts");
    let with_records = format!("{}10.0.0.9 db.example\n", file("etc/hosts").1);
    std::fs::write(&hosts, &with_records).expect("hosts");
    platform::new(PlatformKind::Linux, &dirs).bootstrap(&settings(), false).expect("third bootstrap");
    assert_eq!(std::fs::read_to_string(&hosts).expect("hosts"), with_records);
}

#[test]
fn bootstrap_replaces_stale_network_files_and_names_failing_steps() {
    let root = tempfile::tempdir().expect("root");
    let _mounts = UnmountOnDrop(vec![root.path().to_path_buf()]);
    let dirs = Dirs::new(root.path().join("base"), root.path());
    fake_nics(root.path());
    platform::new(PlatformKind::Linux, &dirs).bootstrap(&settings(), false).expect("bootstrap");
    // The director detached the second NIC and its network.
    let mut fewer = settings();
    fewer.settings.networks.remove("other");
    std::fs::remove_dir_all(root.path().join("sys/class/net/eth1")).expect("NIC gone");
    platform::new(PlatformKind::Linux, &dirs).bootstrap(&fewer, false).expect("bootstrap");
    assert!(!root.path().join("etc/systemd/network/10_eth1.network").exists());
    let foreign = root.path().join("etc/systemd/network/99_admin.network");
    std::fs::write(&foreign, "[Match]\nName=lo\n").expect("foreign file");
    platform::new(PlatformKind::Linux, &dirs).bootstrap(&fewer, false).expect("bootstrap");
    assert!(foreign.exists(), "files the agent did not write are left alone");

    nics::fake(root.path(), "eth2", "aa:bb:cc:dd:ee:03", 4, true).expect("fake NIC");
    let mut bad = fewer.clone();
    bad.settings.networks.insert(
        "x".into(),
        serde_json::from_value(
            json!({"ip": "10.0.0.300", "netmask": "255.0.0.0", "mac": "aa:bb:cc:dd:ee:03"}),
        )
        .expect("network"),
    );
    let e = platform::new(PlatformKind::Linux, &dirs).bootstrap(&bad, false).expect_err("bad ip");
    assert!(e.starts_with("bootstrap step 'networking'") && e.contains("not an IP address"), "{e}");

    let dummy_root = tempfile::tempdir().expect("root");
    let dummy = Dirs::new(dummy_root.path().join("base"), dummy_root.path());
    platform::new(PlatformKind::Dummy, &dummy).bootstrap(&settings(), false).expect("dummy without -c");
    assert!(!dummy_root.path().join("etc").exists(), "dummy without -c writes nothing");
}
