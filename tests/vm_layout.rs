//! What a release job assumes the agent did to its VM (issue 12), with real parts on a scratch root:
//! a loop device for the data disk, real tmpfs and bind mounts read back from
//! `/proc/self/mountinfo`, real chowns to a real `vcap` user, and a real process running as vcap
//! (`setpriv`, as monit start programs and bpm drop to it) that reads its rendered config and writes
//! its log, pid file, data and a temp file. Also `health.json`, log rotation with the real logrotate,
//! `disk_associations` and the infrastructure's SSH key.
//!
//! The tests that mount or chown need root, loop devices and the tools named in [`TOOLS`]: without
//! them they print a loud notice and return, except under `CI=true`, where they fail. The `vcap`
//! user and group are created on the machine when missing and left there (a stemcell has them, and
//! tests running in parallel use them); the scratch root gets copies of the machine's `/etc/passwd`
//! and `/etc/group`, so the agent finds vcap's ids there as on a VM. Every mount under a scratch root
//! is undone when its test ends, pass or fail.

use crate::common::agent::{exception, value, Director, Launch, TestAgent};
use crate::common::certs::TestPki;
use crate::common::loopdev::{devices_available, sh, LoopDevice, DEVICES};
use crate::common::mounts::{self, UnmountOnDrop};
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use crate::common::tarball::{digests, file, script, tgz};
use crate::common::{capture_logs, logged, wait_until};
use bosh_agent::dirs::Dirs;
use bosh_agent::platform::{self, PlatformKind};
use bosh_agent::settings::{Effective, Settings};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// What these tests drive: the disk tools of the ephemeral disk, `setpriv` to run as vcap,
/// `useradd` to make vcap and `logrotate` to rotate for real.
const TOOLS: &[&str] = &["sfdisk", "mkfs.ext4", "blkid", "partx", "setpriv", "useradd", "logrotate"];
/// A gid for a `syslog` group in the scratch root when the machine has none (only ever a number on
/// files under the scratch root).
const SYSLOG_GID: u32 = 59_999;

/// Takes the loop-device turn and checks the machine can run the test.
fn devices(test: &str) -> Option<MutexGuard<'static, ()>> {
    let turn = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    devices_available(test, TOOLS).then_some(turn)
}

/// The machine's `vcap` user: `(uid, gid)`, created (with its group) when missing.
fn vcap() -> (u32, u32) {
    static CREATING: Mutex<()> = Mutex::new(());
    let _one = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    let find = || {
        bosh_agent::platform::users::read_passwd(Path::new("/etc/passwd"))
            .expect("passwd")
            .into_iter()
            .find(|e| e.name == "vcap")
            .map(|e| (e.uid, e.gid))
    };
    if let Some(ids) = find() {
        return ids;
    }
    // Exit 9: created meanwhile by another process.
    let status = Command::new("useradd")
        .args(["--user-group", "--no-create-home", "--shell", "/bin/bash", "vcap"])
        .status()
        .expect("useradd");
    assert!(status.success() || status.code() == Some(9), "useradd vcap: {status}");
    find().expect("vcap after useradd")
}

/// A scratch root a vcap process can walk into (0755), with the machine's user database; `groups`
/// adds the `syslog` and `utmp` groups when the machine lacks them, or removes them when false.
/// Its mounts are undone on drop, before the directory goes.
struct Root {
    _mounts: UnmountOnDrop,
    dir: tempfile::TempDir,
}

impl Root {
    fn new(groups: bool) -> Root {
        let dir = tempfile::tempdir().expect("root");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod root");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::copy("/etc/passwd", dir.path().join("etc/passwd")).expect("passwd");
        let live = std::fs::read_to_string("/etc/group").expect("group");
        let mut lines: Vec<String> = live
            .lines()
            .filter(|l| groups || !(l.starts_with("syslog:") || l.starts_with("utmp:")))
            .map(String::from)
            .collect();
        if groups && !lines.iter().any(|l| l.starts_with("syslog:")) {
            lines.push(format!("syslog:x:{SYSLOG_GID}:"));
        }
        std::fs::write(dir.path().join("etc/group"), lines.join("\n") + "\n").expect("group");
        Root { _mounts: UnmountOnDrop(vec![dir.path().to_path_buf()]), dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn dirs(&self) -> Dirs {
        Dirs::new(self.path().join("var/vcap"), self.path())
    }

    fn gid(&self, group: &str) -> u32 {
        bosh_agent::platform::users::group_gid(&self.path().join("etc/group"), group)
            .unwrap_or_else(|| panic!("no {group} in the scratch group file"))
    }
}

/// `(mode with the sticky bit, uid, gid)` of a path, following links.
fn stat(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

/// Runs `script` with `sh -c` as vcap, as a job's start program does after dropping privileges.
fn as_vcap(script: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid=vcap", "--regid=vcap", "--init-groups", "sh", "-c", script])
        .output()
        .expect("setpriv")
}

fn effective(v: Value) -> Effective {
    let settings: Settings = serde_json::from_value(v).expect("settings");
    Effective { settings, update: Default::default() }
}

/// The bootstrap on a data disk: every mount the Go agent makes, in place with its flags, the modes
/// and owners of the layout, and nothing new on a second run (an agent restart).
#[test]
fn bootstrap_on_a_data_disk_mounts_and_owns_the_layout_as_the_go_agent_does() {
    let Some(_turn) = devices("bootstrap_on_a_data_disk_mounts_and_owns_the_layout_as_the_go_agent_does")
    else {
        return;
    };
    let (vcap_uid, vcap_gid) = vcap();
    let root = Root::new(true);
    let r = root.path();
    let disk = LoopDevice::new(64);
    // What the system has before the agent: a hardened /tmp holding a file, a /dev/shm tmpfs, /home.
    std::fs::create_dir_all(r.join("tmp")).expect("tmp");
    std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o770)).expect("chmod tmp");
    std::fs::write(r.join("tmp/before"), "x").expect("before");
    std::fs::create_dir_all(r.join("dev/shm")).expect("dev/shm");
    sh(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(r.join("dev/shm")));
    std::fs::create_dir_all(r.join("home")).expect("home");
    let settings = effective(json!({
        "agent_id": "agent-vm",
        "disks": {"ephemeral": disk.path()},
        "env": {"bosh": {"swap_size": 0, "run_dir": {"tmpfs_size": "8m"},
                         "job_dir": {"tmpfs": true, "tmpfs_size": "24m"}}}
    }));
    let dirs = root.dirs();
    let boot = || platform::new(PlatformKind::Linux, &dirs).bootstrap(&settings, false);
    boot().expect("bootstrap");

    let base = dirs.base.clone();
    let mount = |rel: &str| {
        let p = r.join(rel);
        mounts::at(&p).unwrap_or_else(|| panic!("nothing mounted at {}", p.display()))
    };
    for (rel, size, mode) in [
        ("var/vcap/data/sys/run", "size=8192k", 0o1777),
        ("var/vcap/data/jobs", "size=24576k", 0o750),
        ("var/vcap/data/sensitive_blobs", "size=24576k", 0o700),
    ] {
        let m = mount(rel);
        assert!(m.fs_type == "tmpfs" && m.super_options.iter().any(|o| o == size), "{rel}: {m:?}");
        assert_eq!(stat(&r.join(rel)), (mode, 0, vcap_gid), "{rel}");
    }
    let no_exec = ["nodev", "nosuid", "noexec"];
    for (rel, src, flags, absent) in [
        ("tmp", "/root_tmp", &no_exec[..], &[][..]),
        ("var/tmp", "/root_tmp", &no_exec[..], &[]),
        ("var/log", "/root_log", &no_exec[..], &[]),
        ("opt", "/root_opt", &["nodev"][..], &["noexec", "nosuid"][..]),
        ("var/opt", "/root_var_opt", &["nodev"][..], &["noexec", "nosuid"][..]),
        ("home", "/", &["nodev", "nosuid"][..], &["noexec"][..]),
        ("dev/shm", "/", &no_exec[..], &[]),
    ] {
        let m = mount(rel);
        if rel != "home" && rel != "dev/shm" {
            assert_eq!(m.root, src, "{rel} is not a bind of the data disk's {src}: {m:?}");
        }
        assert!(flags.iter().all(|f| m.has(f)) && !absent.iter().any(|f| m.has(f)), "{rel}: {m:?}");
    }

    // Owners and modes: the data disk's root as mkfs left it, the layout root:vcap where jobs go.
    for (rel, want) in [
        ("var/vcap/data", (0o755, 0, 0)),
        ("var/vcap/data/sys", (0o750, 0, vcap_gid)),
        ("var/vcap/data/sys/log", (0o750, 0, vcap_gid)),
        ("var/vcap/data/packages", (0o755, 0, vcap_gid)),
        ("var/vcap/data/blobs", (0o700, 0, vcap_gid)),
        ("var/vcap/data/tmp", (0o755, 0, 0)),
        ("var/vcap/data/root_tmp", (0o1777, 0, vcap_gid)),
        ("tmp", (0o1777, 0, vcap_gid)),
        ("var/tmp", (0o1777, 0, vcap_gid)),
        ("var/log", (0o771, 0, root.gid("syslog"))),
        ("var/log/audit", (0o750, 0, 0)),
        ("var/log/sysstat", (0o755, 0, 0)),
        ("var/log/btmp", (0o600, 0, root.gid("utmp"))),
        ("var/log/wtmp", (0o664, 0, root.gid("utmp"))),
        ("var/log/lastlog", (0o664, 0, root.gid("utmp"))),
        ("opt", (0o755, 0, 0)),
    ] {
        assert_eq!(stat(&r.join(rel)), want, "{rel}");
    }
    assert!(!r.join("tmp/before").exists(), "/tmp is the data disk's root_tmp");
    assert_eq!(std::fs::read_link(base.join("sys")).expect("sys link"), base.join("data/sys"));

    // vcap may write in /tmp but not run what it put there.
    let out = as_vcap(&format!("cp /bin/true {0}/tmp/t && {0}/tmp/t", r.display()));
    assert!(!out.status.success(), "ran a program from a noexec /tmp");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    assert_eq!(stat(&r.join("tmp/t")).1, vcap_uid);

    // An agent restart changes nothing: the same mounts, nothing mounted twice.
    let before = mounts::under(r);
    boot().expect("second bootstrap");
    assert_eq!(mounts::under(r), before);
    assert_eq!(stat(&r.join("var/vcap/data/sys/run")), (0o1777, 0, vcap_gid));
}

/// Without `syslog` and `utmp` groups (a stemcell without rsyslog) the bootstrap logs and carries
/// on; with `UseDefaultTmpDir` `/tmp` stays where it is, still open to jobs.
#[test]
fn missing_log_groups_and_use_default_tmp_dir_still_boot() {
    let Some(_turn) = devices("missing_log_groups_and_use_default_tmp_dir_still_boot") else { return };
    capture_logs();
    let (_, vcap_gid) = vcap();
    let root = Root::new(false);
    let r = root.path();
    let disk = LoopDevice::new(64);
    let settings = effective(json!({
        "agent_id": "agent-vm2", "disks": {"ephemeral": disk.path()}, "env": {"bosh": {"swap_size": 0}}
    }));
    let options = bosh_agent::config::LinuxOptions { use_default_tmp_dir: true, ..Default::default() };
    let linux = platform::with_options(PlatformKind::Linux, &root.dirs(), &options).expect("options");
    linux.bootstrap(&settings, false).expect("bootstrap without syslog and utmp groups");

    assert!(logged(&format!("no group 'syslog' in {}", r.join("etc/group").display())));
    assert!(logged(&format!("no group 'utmp' in {}", r.join("etc/group").display())));
    assert_eq!(stat(&r.join("var/log")), (0o771, 0, 0));
    assert_eq!(stat(&r.join("var/log/btmp")), (0o600, 0, 0));
    assert_eq!(mounts::at(&r.join("var/log")).expect("var/log bound").root, "/root_log");
    assert!(mounts::at(&r.join("tmp")).is_none(), "UseDefaultTmpDir: /tmp is not bound");
    assert_eq!(stat(&r.join("tmp")), (0o1777, 0, vcap_gid));
    assert!(!root.dirs().root_tmp().exists());
}

/// A VM the director drives: the agent binary on `-P linux` with a data disk, a job and a package
/// from real tarballs, the job's start program dropping to vcap.
struct JobVm {
    root: Root,
    _disk: LoopDevice,
    blobs: tempfile::TempDir,
    _pki: TestPki,
    _nats: NatsServer,
    agent: TestAgent,
    d: Director,
}

impl JobVm {
    fn start(tag: &str) -> JobVm {
        let root = Root::new(true);
        let disk = LoopDevice::new(96);
        let pki = TestPki::new();
        let nats = NatsServer::start(&pki, NatsServerOptions::default());
        let id = format!("{tag}-{}", &bosh_agent::ids::uuid_v4()[..8]);
        let blobs = tempfile::tempdir().expect("blobstore");
        let mut settings = nats_settings(&pki, &id, &nats.url());
        settings["blobstore"] = json!({"provider": "local", "options": {"blobstore_path": blobs.path()}});
        settings["disks"] = json!({"ephemeral": disk.path(), "persistent": {}});
        settings["env"]["bosh"]["swap_size"] = json!(0);
        settings["env"]["bosh"]["max_log_file_size"] = json!("2M");
        let base = root.dirs().base;
        // The stemcell's cron set-up for logrotate, recording that the agent ran it.
        let hook = root.dirs().setup_logrotate();
        std::fs::create_dir_all(hook.parent().expect("bin")).expect("bosh/bin");
        std::fs::write(&hook, "#!/bin/sh\ntouch \"$0.ran\"\n").expect("hook");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod hook");
        let root_arg = root.path().to_str().expect("utf-8").to_string();
        let agent = TestAgent::launch(
            &settings,
            Launch { base: Some(&base), extra: &["-P", "linux", "-r", &root_arg], ..Launch::default() },
        );
        let mut d = Director::connect(&pki, &nats.url(), &id);
        assert!(d.wait_ready(Duration::from_secs(20)), "agent never answered:\n{}", agent.log());
        JobVm { root, _disk: disk, blobs, _pki: pki, _nats: nats, agent, d }
    }

    fn base(&self) -> PathBuf {
        self.agent.base()
    }

    /// Puts `src` in the local blobstore; its id and sha1.
    fn put(&self, src: &Path) -> (String, String) {
        let id = bosh_agent::ids::uuid_v4();
        std::fs::copy(src, self.blobs.path().join(&id)).expect("blob");
        (id, digests(src).0)
    }

    fn tarball(&self, entries: &[crate::common::tarball::Entry]) -> (String, String) {
        let dir = tempfile::tempdir().expect("tarball dir");
        let path = dir.path().join("t.tgz");
        tgz(&path, entries);
        self.put(&path)
    }
}

/// The job's start program, run as vcap: reads its rendered config, runs its package, writes its
/// log, pid file, data and a file in `/tmp`, then says who it is.
const CTL: &str = "#!/bin/sh\nset -e\ncat @BASE@/jobs/web/config/web.yml\n\
@BASE@/jobs/web/packages/hello/bin/hello >> @BASE@/sys/log/web/web.log\n\
echo $$ > @BASE@/sys/run/web/web.pid\necho state > @BASE@/data/web/state\n\
echo scratch > @ROOT@/tmp/web.tmp\nid -un\n";

/// The errand, run by the agent as root: shows its `TMPDIR` and drops to vcap like a monit start
/// program does.
const RUN: &str = "#!/bin/sh\necho \"TMPDIR=$TMPDIR\"\n\
exec setpriv --reuid=vcap --regid=vcap --init-groups @BASE@/jobs/web/bin/ctl\n";

#[test]
fn a_vcap_job_reads_its_config_and_writes_its_log_pid_data_and_tmp() {
    let Some(_turn) = devices("a_vcap_job_reads_its_config_and_writes_its_log_pid_data_and_tmp") else {
        return;
    };
    let (vcap_uid, vcap_gid) = vcap();
    let mut vm = JobVm::start("vcap-job");
    let (base, r) = (vm.base(), vm.root.path().to_path_buf());
    let fill = |s: &str| {
        s.replace("@BASE@", base.to_str().expect("utf-8")).replace("@ROOT@", r.to_str().expect("utf-8"))
    };
    let (pkg_id, pkg_sha1) = vm.tarball(&[script("bin/hello", "#!/bin/sh\necho hello from package\n")]);
    let (ctl, run) = (fill(CTL), fill(RUN));
    let (arch_id, arch_sha1) = vm.tarball(&[
        file("web/monit", b"check process web with pidfile /var/vcap/sys/run/web/web.pid\n"),
        script("web/bin/ctl", &ctl),
        script("web/bin/run", &run),
        script("web/bin/pre-start", "#!/bin/sh\necho pre-start ran\n"),
        file("web/config/web.yml", b"port: 8080\n"),
    ]);
    let spec = json!({
        "deployment": "dep", "name": "web-ig", "index": 0, "id": "uuid-1", "az": "z1",
        "job": {"name": "web-ig", "templates": [{"name": "web", "version": "v1"}]},
        "packages": {"hello": {"name": "hello", "version": "1.0", "sha1": pkg_sha1, "blobstore_id": pkg_id}},
        "configuration_hash": "hash-1", "persistent_disk": 0,
        "rendered_templates_archive": {"blobstore_id": arch_id, "sha1": arch_sha1},
        "properties": {"logging": {"max_log_file_size": "1k"}},
        "networks": {"default": {"ip": "10.0.0.5"}}
    });
    assert_eq!(vm.d.run_task("apply", json!([spec])), json!({"value": "applied"}), "{}", vm.agent.log());

    // Bundles: root:vcap; the job's directories 0750, bin 0750, other files 0640; packages 0755.
    let job = base.join("jobs/web");
    for (rel, mode) in [
        ("", 0o750),
        ("bin", 0o750),
        ("bin/ctl", 0o750),
        ("config", 0o750),
        ("config/web.yml", 0o640),
        ("monit", 0o640),
    ] {
        assert_eq!(stat(&job.join(rel)), (mode, 0, vcap_gid), "jobs/web/{rel}");
    }
    assert_eq!(stat(&base.join("jobs")), (0o750, 0, vcap_gid));
    assert_eq!(stat(&base.join("packages")), (0o755, 0, vcap_gid));
    assert_eq!(stat(&base.join("packages/hello")), (0o755, 0, vcap_gid));
    for rel in ["sys/log/web", "sys/run/web", "data/web"] {
        assert_eq!(stat(&base.join(rel)), (0o770, 0, vcap_gid), "{rel}");
    }

    // The job, as vcap.
    let out = vm.d.run_task("run_errand", json!(["web"]));
    let result = value(&out);
    assert_eq!(result["exit_code"], 0, "{result}");
    let stdout = result["stdout"].as_str().expect("stdout");
    assert!(stdout.contains(&format!("TMPDIR={}\n", base.join("data/tmp").display())), "{stdout}");
    assert!(stdout.contains("port: 8080\n") && stdout.ends_with("vcap\n"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(base.join("sys/log/web/web.log")).expect("log"),
        "hello from package\n"
    );
    for rel in ["sys/log/web/web.log", "sys/run/web/web.pid", "data/web/state"] {
        assert_eq!(stat(&base.join(rel)).1, vcap_uid, "{rel} not written by vcap");
    }
    assert_eq!(stat(&base.join("data/root_tmp/web.tmp")).1, vcap_uid, "/tmp is the data disk's root_tmp");

    // Scripts the agent runs never reset a job's log directory.
    for _ in 0..2 {
        assert_eq!(vm.d.run_task("run_script", json!(["pre-start", {}])), json!({"value": {}}));
    }
    assert_eq!(stat(&base.join("sys/log/web")), (0o770, 0, vcap_gid));
    assert_eq!(
        std::fs::read_to_string(base.join("sys/log/web/pre-start.stdout.log")).expect("log"),
        "pre-start ran\npre-start ran\n"
    );

    // Rotation: the spec's size wins over env's; the stemcell's hook ran; the real logrotate rotates
    // the vcap-written log in its group-writable directory (the file's `su` line).
    let conf = r.join("etc/logrotate.d/vcap");
    let text = std::fs::read_to_string(&conf).expect("logrotate.d/vcap");
    assert!(
        text.contains(&format!("{}/*.log ", base.join("data/sys/log").display()))
            && text.contains("size=1k\n"),
        "{text}"
    );
    assert!(base.join("bosh/bin/setup-logrotate.sh.ran").exists(), "setup-logrotate.sh not run");
    let big = "x".repeat(4096);
    let out = as_vcap(&format!("echo {big} >> {}", base.join("sys/log/web/web.log").display()));
    assert!(out.status.success(), "{out:?}");
    sh(Command::new("logrotate").arg("-s").arg(r.join("logrotate.state")).arg(&conf));
    assert!(base.join("sys/log/web/web.log.1.gz").exists(), "not rotated");
    assert_eq!(std::fs::metadata(base.join("sys/log/web/web.log")).expect("log").len(), 0, "not truncated");

    // DNS records: root:vcap 0640, readable by vcap.
    let dns = tempfile::tempdir().expect("dns");
    let records = dns.path().join("records.json");
    std::fs::write(&records, json!({"version": 1, "records": [["10.0.0.9", "db.example"]]}).to_string())
        .expect("records");
    let (dns_id, dns_sha1) = vm.put(&records);
    assert_eq!(vm.d.send("sync_dns", json!([dns_id, dns_sha1, 1])), json!({"value": "synced"}));
    let stored = base.join("instance/dns/records.json");
    assert_eq!(stat(&stored), (0o640, 0, vcap_gid));
    assert!(as_vcap(&format!("cat {}", stored.display())).status.success());
}

/// `health.json` holds the job state the heartbeat reports, and follows `stop` and `start`. The
/// heartbeat comes once at start and then only hourly, so what changes the file afterwards is the
/// action.
#[test]
fn health_json_follows_heartbeats_start_and_stop() {
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("health-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let agent = TestAgent::launch(
        &nats_settings(&pki, &id, &nats.url()),
        Launch { extra: &["-h", "3600"], ..Launch::default() },
    );
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());
    let health = agent.base().join("instance/health.json");
    let read = || std::fs::read_to_string(&health).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || read() == r#"{"state":"running"}"#), "{}", read());
    assert_eq!(std::fs::metadata(&health).expect("health").permissions().mode() & 0o777, 0o644);
    assert_eq!(d.run_task("stop", json!([])), json!({"value": "stopped"}));
    assert_eq!(read(), r#"{"state":"stopped"}"#);
    assert_eq!(d.send("start", json!([])), json!({"value": "started"}));
    assert_eq!(read(), r#"{"state":"running"}"#);
}

/// `update_settings` links `instance/disks/<name>` to the associated disk's device, and refuses an
/// unknown disk or a name that is no file name.
#[test]
fn disk_associations_link_to_the_resolved_device() {
    let Some(_turn) = devices("disk_associations_link_to_the_resolved_device") else { return };
    let root = Root::new(true);
    let disk = LoopDevice::new(16);
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("assoc-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let mut settings = nats_settings(&pki, &id, &nats.url());
    settings["disks"] = json!({"persistent": {"disk-1": disk.path()}});
    let root_arg = root.path().to_str().expect("utf-8").to_string();
    let agent = TestAgent::launch(
        &settings,
        Launch { extra: &["-P", "linux", "-r", &root_arg], ..Launch::default() },
    );
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());

    let assoc = |name: &str, cid: &str| json!([{"trusted_certs": "", "disk_associations": [{"name": name, "cid": cid}]}]);
    assert_eq!(d.run_task("update_settings", assoc("data", "disk-1")), json!({"value": "ok"}));
    let link = agent.base().join("instance/disks/data");
    assert_eq!(std::fs::read_link(&link).expect("link"), std::fs::canonicalize(disk.path()).expect("dev"));
    assert_eq!(stat(&agent.base().join("instance/disks")).0, 0o755);

    let e = exception(&d.run_task("update_settings", assoc("data", "nope")));
    assert!(
        e.contains("Fetching disk settings: Persistent disk with volume id 'nope' could not be found"),
        "{e}"
    );
    let e = exception(&d.run_task("update_settings", assoc("../escape", "disk-1")));
    assert!(e.contains("invalid disk association name '../escape'"), "{e}");
    assert!(!agent.base().join("instance/escape").exists());
}

/// The infrastructure's key from a config drive (EC2-style `public-keys` meta-data) joins the
/// director's keys in vcap's `authorized_keys`, owned by vcap.
#[test]
fn the_iaas_ssh_key_joins_vcaps_authorized_keys() {
    let Some(_turn) = devices("the_iaas_ssh_key_joins_vcaps_authorized_keys") else { return };
    let (vcap_uid, vcap_gid) = vcap();
    let root = Root::new(true);
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("iaaskey-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let mut settings = nats_settings(&pki, &id, &nats.url());
    settings["env"]["bosh"]["authorized_keys"] = json!(["ssh-ed25519 ENVKEY director"]);
    let drive = tempfile::tempdir().expect("drive");
    let latest = drive.path().join("ec2/latest");
    std::fs::create_dir_all(&latest).expect("drive dirs");
    let meta =
        json!({"instance-id": "i-1", "public-keys": {"0": {"openssh-key": "ssh-rsa IAASKEY cloud\n"}}});
    std::fs::write(latest.join("meta-data.json"), meta.to_string()).expect("meta-data");
    std::fs::write(latest.join("user-data"), settings.to_string()).expect("user-data");
    let agent_json = json!({"Infrastructure": {"Settings": {"Sources": [{"Type": "ConfigDrive",
        "DiskPaths": [drive.path()], "MetaDataPath": "ec2/latest/meta-data.json", "UserDataPath": "ec2/latest/user-data"}]}}});
    let root_arg = root.path().to_str().expect("utf-8").to_string();
    let agent = TestAgent::launch(
        &settings,
        Launch {
            agent_json: Some(agent_json),
            extra: &["-P", "linux", "-r", &root_arg],
            ..Launch::default()
        },
    );
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());

    let home = bosh_agent::platform::users::read_passwd(&root.path().join("etc/passwd"))
        .expect("passwd")
        .into_iter()
        .find(|e| e.name == "vcap")
        .expect("vcap")
        .home;
    let ssh = root.dirs().under_root(home.to_str().expect("utf-8")).join(".ssh");
    let keys = ssh.join("authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&keys).expect("keys"),
        "ssh-ed25519 ENVKEY director\nssh-rsa IAASKEY cloud\n"
    );
    assert_eq!(stat(&ssh), (0o700, vcap_uid, vcap_gid));
    assert_eq!(stat(&keys), (0o600, vcap_uid, vcap_gid));
}
