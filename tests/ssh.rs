//! `ssh` setup and cleanup with real users (root only: they run in CI, which runs as root), the same
//! over NATS through the agent binary on the Linux platform, `prepare_network_change`, and the syslog
//! listener that turns sshd lines into SSH Login/Logout alerts.
//!
//! Real-user tests act on the live `/etc/passwd` with unique `bosh_t...` names and remove every user
//! (and any group) they created, even when they fail.

use crate::common::agent::{Director, TestAgent};
use crate::common::certs::TestPki;
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use bosh_agent::platform::users::{self, UserRegex};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Real-user tests share the user and group databases; one at a time.
static USER_DB: Mutex<()> = Mutex::new(());

/// True when the test may touch real users. Otherwise prints a loud notice, and fails under CI.
fn can_manage_users(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["useradd", "userdel", "usermod", "groupadd"]
        .iter()
        .all(|t| ["/usr/sbin", "/sbin", "/usr/bin"].iter().any(|d| Path::new(d).join(t).exists()));
    if root && tools {
        return true;
    }
    let msg = format!(
        "\n!!!!!!!! {test}: SKIPPED — needs root and shadow-utils (root: {root}, tools: {tools}). CI runs as root. !!!!!!!!\n"
    );
    eprintln!("{msg}");
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{msg}");
    false
}

fn unique(tag: &str) -> String {
    format!("bosh_t{tag}{}", &bosh_agent::ids::uuid_v4()[..8])
}

/// Removes the users it names, and the groups setup created, when the test ends (pass or fail).
struct Cleanup {
    users: Vec<String>,
    groups: Vec<&'static str>,
}

impl Cleanup {
    fn new() -> Cleanup {
        let groups = ["bosh_sudoers", "bosh_sshers"]
            .into_iter()
            .filter(|g| users::group_gid(Path::new("/etc/group"), g).is_none())
            .collect();
        Cleanup { users: Vec::new(), groups }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = Command::new("userdel").args(["-r", "-f", u]).stderr(Stdio::null()).status();
        }
        for g in &self.groups {
            let _ = Command::new("groupdel").arg(g).stderr(Stdio::null()).status();
        }
    }
}

fn passwd_entry(name: &str) -> Option<users::PasswdEntry> {
    users::read_passwd(Path::new("/etc/passwd")).expect("passwd").into_iter().find(|e| e.name == name)
}

fn groups_of(name: &str) -> String {
    let out = Command::new("id").args(["-nG", name]).output().expect("id");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

fn check_user(name: &str, ssh_base: &Path, key: &str) {
    let e = passwd_entry(name).unwrap_or_else(|| panic!("{name} not in /etc/passwd"));
    let home = ssh_base.join(name);
    assert_eq!(e.home, home);
    assert_eq!(mode(&home), 0o700);
    let dir = home.join(".ssh");
    let file = dir.join("authorized_keys");
    assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
    for p in [&home, &dir, &file] {
        let m = std::fs::metadata(p).expect("metadata");
        assert_eq!((m.uid(), m.gid()), (e.uid, e.gid), "owner of {}", p.display());
    }
    assert_eq!(std::fs::read_to_string(&file).expect("keys"), format!("{key}\n"));
    let groups = groups_of(name);
    for g in ["bosh_sudoers", "bosh_sshers"] {
        assert!(groups.split_whitespace().any(|x| x == g), "{name} not in {g}: {groups}");
    }
}

#[test]
fn setup_creates_the_user_and_cleanup_removes_only_matching_bosh_users() {
    if !can_manage_users("ssh setup/cleanup") {
        return;
    }
    let _db = USER_DB.lock().unwrap_or_else(|e| e.into_inner());
    let mut cleanup = Cleanup::new();
    let base = tempfile::tempdir().expect("base");
    let ssh_base = base.path().join("bosh_ssh");
    let (a, b) = (unique("a"), unique("b"));
    cleanup.users.extend([a.clone(), b.clone()]);
    let key = "ssh-rsa AAAAB3NzaC1yc2E test@example";
    users::setup_ssh_user(&ssh_base, &a, None, key).expect("setup a");
    users::setup_ssh_user(&ssh_base, &b, None, key).expect("setup b");
    check_user(&a, &ssh_base, key);
    users::setup_ssh_user(&ssh_base, &a, None, "ssh-ed25519 NEW").expect("a retried setup completes");
    check_user(&a, &ssh_base, "ssh-ed25519 NEW");

    let removed =
        users::cleanup_ssh_users(&UserRegex::parse(&format!("^{a}")).expect("regex")).expect("cleanup");
    assert_eq!(removed, vec![a.clone()]);
    assert!(passwd_entry(&a).is_none() && !ssh_base.join(&a).exists(), "{a} and its home are gone");
    assert!(passwd_entry(&b).is_some(), "{b} did not match and stays");
    assert!(passwd_entry("root").is_some());
    users::cleanup_ssh_users(&UserRegex::parse(&format!("^{b}$")).expect("regex")).expect("cleanup b");
    assert!(passwd_entry(&b).is_none());
}

/// An agent binary on the Linux platform with a scratch root, killed on drop.
struct LinuxAgent {
    child: Child,
    dir: tempfile::TempDir,
}

impl LinuxAgent {
    fn start(settings: &Value) -> LinuxAgent {
        let dir = tempfile::tempdir().expect("agent dir");
        let p = |x: &Path| x.to_str().expect("utf-8 path").to_string();
        std::fs::create_dir_all(dir.path().join("base/bosh")).expect("base");
        std::fs::write(dir.path().join("settings.json"), settings.to_string()).expect("settings");
        let cfg = json!({"Platform": {"Linux": {}}, "Infrastructure": {"Settings": {"Sources": [
            {"Type": "File", "SettingsPath": p(&dir.path().join("settings.json"))}]}}});
        std::fs::write(dir.path().join("agent.json"), cfg.to_string()).expect("agent.json");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_bosh-agent"))
            .args(["-P", "linux", "-M", "dummy", "-l", "debug", "-h", "1", "--no-alerts"])
            .args(["-C", &p(&dir.path().join("agent.json"))])
            .args(["-b", &p(&dir.path().join("base")), "-r", &p(&dir.path().join("root"))])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning bosh-agent");
        LinuxAgent { child, dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for LinuxAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::common::mounts::unmount_under(&[self.dir.path()]);
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// Writes the scratch root's RSA host key with ssh-keygen when available, else a fake `.pub`.
fn host_key(root: &Path) -> String {
    let dir = root.join("etc/ssh");
    std::fs::create_dir_all(&dir).expect("etc/ssh");
    let key = dir.join("ssh_host_rsa_key");
    let generated = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !generated {
        eprintln!("ssh-keygen not available: using a fake host public key");
        std::fs::write(dir.join("ssh_host_rsa_key.pub"), "ssh-rsa FAKEHOSTKEY root@test\n")
            .expect("fake key");
    }
    std::fs::read_to_string(dir.join("ssh_host_rsa_key.pub")).expect("host key")
}

#[test]
fn ssh_over_nats_on_the_linux_platform() {
    if !can_manage_users("ssh over NATS") {
        return;
    }
    let _db = USER_DB.lock().unwrap_or_else(|e| e.into_inner());
    let mut cleanup = Cleanup::new();
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("ssh-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let agent = LinuxAgent::start(&nats_settings(&pki, &id, &nats.url()));
    let host_public_key = host_key(&agent.root());
    let rules = agent.root().join("etc/udev/rules.d/70-persistent-net.rules");
    std::fs::create_dir_all(rules.parent().expect("parent")).expect("rules dir");
    std::fs::write(&rules, "SUBSYSTEM==\"net\"\n").expect("rules");
    let mut director = Director::connect(&pki, &nats.url(), &id);
    assert!(director.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());

    let user = unique("n");
    cleanup.users.push(user.clone());
    let key = "ssh-rsa AAAAB3NzaC1yc2E cli@example";
    let reply = director.send("ssh", json!(["setup", {"user": user, "public_key": key}]));
    assert_eq!(
        reply,
        json!({"value": {"command": "setup", "status": "success", "ip": "10.0.0.5", "host_public_key": host_public_key}})
    );
    check_user(&user, &agent.dir.path().join("base/bosh_ssh"), key);
    assert!(!agent.log().contains(key), "ssh arguments are not logged");

    let reply = director.send("ssh", json!(["cleanup", {"user_regex": format!("^{user}")}]));
    assert_eq!(reply, json!({"value": {"command": "cleanup", "status": "success"}}));
    assert!(passwd_entry(&user).is_none());

    let reply = director.send("ssh", json!(["reboot", {}]));
    assert_eq!(reply["exception"]["message"], "Action Failed ssh: Unknown command for SSH method", "{reply}");
    let reply = director.send("ssh", json!(["cleanup", {"user_regex": ".*"}]));
    assert!(
        reply["exception"]["message"].as_str().is_some_and(|m| m.contains("Unsupported user_regex")),
        "{reply}"
    );

    assert_eq!(director.send("prepare_network_change", json!([])), json!({"value": true}));
    assert!(!rules.exists(), "udev rules removed under the scratch root");
}

#[test]
fn ssh_on_the_dummy_platform_only_records() {
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("ssh-dummy-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let agent = TestAgent::start(&nats_settings(&pki, &id, &nats.url()), &[]);
    let mut director = Director::connect(&pki, &nats.url(), &id);
    assert!(director.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());
    let reply = director.send("ssh", json!(["setup", {"user": "bosh_dummy1", "public_key": "ssh-rsa K"}]));
    assert_eq!(
        reply,
        json!({"value": {"command": "setup", "status": "success", "ip": "10.0.0.5", "host_public_key": "dummy-public-key"}})
    );
    assert!(passwd_entry("bosh_dummy1").is_none(), "the dummy platform creates no user");
    let record = agent.base().join("bosh/dummy_ssh_users.json");
    assert!(std::fs::read_to_string(&record).expect("record").contains("bosh_dummy1"));
    let reply = director.send("ssh", json!(["cleanup", {"user_regex": "^bosh_dummy"}]));
    assert_eq!(reply["value"]["status"], "success");
    assert_eq!(std::fs::read_to_string(&record).expect("record"), "{}");
    assert_eq!(director.send("prepare_network_change", json!([])), json!({"value": true}));
}

#[test]
fn syslog_lines_become_ssh_alerts_and_garbage_is_ignored() {
    use std::io::Write;
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let server = bosh_agent::alerts::syslog::start(
        "127.0.0.1:0",
        Box::new(move |a| {
            let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(a);
        }),
    )
    .expect("listener");
    let mut c = std::net::TcpStream::connect(server.local_addr()).expect("connect");
    let long = "x".repeat(bosh_agent::alerts::syslog::MAX_LINE + 100);
    let lines = [
        "<38>Jan  5 10:00:00 vm-1 sshd[22636]: Accepted publickey for bosh_8ckfjuxt7 from 10.10.0.7 port 40312 ssh2",
        "\u{0}\u{1}garbage <999> ::::",
        &format!("<38>Jan  5 10:00:00 vm-1 sshd[1]: Accepted publickey for {long}"),
        "<86>Jan  5 10:01:00 vm-1 sudo: pam_unix(sudo:session): session opened",
        "<38>Jan  5 10:05:00 vm-1 sshd[22636]: Received disconnect from 10.10.0.7 port 40312:11: disconnected by user\r",
    ];
    for l in lines {
        c.write_all(format!("{l}\n").as_bytes()).expect("write");
    }
    c.write_all(b"\xff\xfe not utf-8\n").expect("write");
    let first = rx.recv_timeout(Duration::from_secs(5)).expect("login alert");
    let second = rx.recv_timeout(Duration::from_secs(5)).expect("logout alert");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "only two alerts");
    assert_eq!((first.title.as_str(), second.title.as_str()), ("SSH Login", "SSH Logout"));
    let v = serde_json::to_value(&first).expect("json");
    assert_eq!(v["severity"], 4);
    assert_eq!(
        v["summary"],
        "sshd[22636]: Accepted publickey for bosh_8ckfjuxt7 from 10.10.0.7 port 40312 ssh2"
    );
    assert!(v["created_at"].as_i64().is_some_and(|t| t > 1_600_000_000) && v["id"].as_str().is_some());
    drop(server);
}
