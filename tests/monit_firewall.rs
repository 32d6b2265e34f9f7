//! The monit firewall with the real `nft`, each test in a network namespace of its own (a thread
//! that `unshare`s `CLONE_NEWNET` and whose children inherit it), so the host's firewall is never
//! touched: the agent's table `inet bosh_agent`, and the binary run as `bosh-enable-monit-access`
//! adding a job's rule, checked by real connections to a listener on `127.0.0.1:2822` from other
//! users (`setpriv`) and from a bpm-like cgroup.
//!
//! A dropped connection is judged by a connect that does not complete within 3 s; an accepted one
//! completes on the loopback at once, so the bound is generous, never a race.

use bosh_agent::platform::firewall;
use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The uid the scratch root's `/etc/passwd` gives vcap (nobody's, which exists on every host).
const VCAP_UID: u32 = 65534;
/// Some other unprivileged uid.
const OTHER_UID: u32 = 65533;

/// Runs `f` on a thread in a fresh network namespace with the loopback up; panics (failing the test)
/// when namespaces cannot be made here.
fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare only changes this thread's namespaces (the thread is ours alone).
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {} (these tests need root)",
                std::io::Error::last_os_error()
            );
            ok(Command::new("ip").args(["link", "set", "lo", "up"]));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a connection to monit's port made as `uid` (through `prefix`, e.g. a cgroup move)
/// completes within 3 s.
fn connects_as(uid: u32, prefix: &str) -> bool {
    let script = format!(
        "{prefix}exec timeout 3 setpriv --reuid={uid} --regid={uid} --clear-groups \
         bash -c 'exec 3<>/dev/tcp/127.0.0.1/2822'"
    );
    Command::new("sh").arg("-c").arg(&script).status().expect("sh").success()
}

/// A scratch root whose passwd names vcap, and the agent binary linked as `bosh-enable-monit-access`.
struct Tool {
    dir: tempfile::TempDir,
}

impl Tool {
    fn new() -> Tool {
        let dir = tempfile::tempdir().expect("scratch");
        fs::create_dir_all(dir.path().join("root/etc")).expect("etc");
        fs::write(
            dir.path().join("root/etc/passwd"),
            format!("root:x:0:0:root:/root:/bin/bash\nvcap:x:{VCAP_UID}:{VCAP_UID}::/home/vcap:/bin/bash\n"),
        )
        .expect("passwd");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_bosh-agent"),
            dir.path().join("bosh-enable-monit-access"),
        )
        .expect("link");
        Tool { dir }
    }

    fn program(&self) -> PathBuf {
        self.dir.path().join("bosh-enable-monit-access")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Runs it (through `prefix` in `sh`, e.g. a cgroup move) and returns its output.
    fn run(&self, prefix: &str) -> Output {
        let script = format!("{prefix}exec \"$0\" -r \"$1\"");
        Command::new("sh").arg("-c").arg(script).arg(self.program()).arg(self.root()).output().expect("run")
    }
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// `nft -j list chain inet bosh_agent <chain>`'s rules.
fn rules(chain: &str) -> Vec<serde_json::Value> {
    let out = ok(Command::new("nft").args(["-j", "list", "chain", "inet", "bosh_agent", chain]));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("nft json");
    doc["nftables"].as_array().expect("array").iter().filter_map(|i| i.get("rule").cloned()).collect()
}

#[test]
fn agent_table_lets_root_through_and_vcap_once_enabled() {
    let tool = Tool::new();
    in_fresh_netns(|| {
        let listener = TcpListener::bind("127.0.0.1:2822").expect("listening on 2822 in the namespace");
        // Before the agent's table, anyone reaches the port.
        assert!(connects_as(OTHER_UID, ""), "no firewall yet");
        firewall::setup_monit_firewall().expect("the agent's monit firewall");
        assert_eq!(rules(firewall::CHAIN).len(), 4, "jump, established, root, drop");
        assert!(std::net::TcpStream::connect("127.0.0.1:2822").is_ok(), "root reaches monit");
        assert!(!connects_as(VCAP_UID, ""), "vcap is dropped until enabled");
        assert!(!connects_as(OTHER_UID, ""), "others are dropped");

        let out = tool.run("");
        assert!(out.status.success(), "exit {:?}: {}", out.status.code(), said(&out));
        assert!(
            said(&out).contains(&format!("monit access for vcap (uid {VCAP_UID}) added")),
            "{}",
            said(&out)
        );
        assert!(connects_as(VCAP_UID, ""), "vcap reaches monit once enabled");
        assert!(!connects_as(OTHER_UID, ""), "others still do not");

        let again = tool.run("");
        assert!(again.status.success(), "{}", said(&again));
        assert!(said(&again).contains("already present"), "{}", said(&again));
        let jobs = rules(firewall::JOBS_CHAIN);
        assert_eq!(jobs.len(), 1, "one rule however often it runs: {jobs:?}");

        // The agent starts again: its chain is refilled, the jobs' rules stay.
        firewall::setup_monit_firewall().expect("again");
        assert_eq!(rules(firewall::CHAIN).len(), 4);
        assert_eq!(rules(firewall::JOBS_CHAIN).len(), 1);
        assert!(connects_as(VCAP_UID, ""));
        drop(listener);
    });
}

#[test]
fn enable_monit_access_fails_without_the_agents_table() {
    let tool = Tool::new();
    in_fresh_netns(|| {
        let out = tool.run("");
        assert_eq!(out.status.code(), Some(1), "{}", said(&out));
        assert!(
            said(&out).starts_with("bosh-enable-monit-access: reading chain monit_access_jobs"),
            "{}",
            said(&out)
        );
        let bad = Command::new(tool.program()).arg("1000").output().expect("run");
        assert_eq!(bad.status.code(), Some(1), "an unknown argument: {}", said(&bad));
    });
}

/// The cgroup2 hierarchy's mount: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host.
fn cgroup2_mount() -> PathBuf {
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let out = Command::new("stat").args(["-f", "-c", "%T", p]).output().expect("stat");
        if String::from_utf8_lossy(&out.stdout).trim() == "cgroup2fs" {
            return p.into();
        }
    }
    panic!("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: the bpm test needs one");
}

/// `<cgroup2>/bosh-test-<id>/runc-bpm-web.scope`, removed on drop (its processes have exited).
struct BpmCgroup {
    parent: PathBuf,
}

impl BpmCgroup {
    fn new() -> BpmCgroup {
        let parent = cgroup2_mount().join(format!("bosh-test-{}", &bosh_agent::ids::uuid_v4()[..8]));
        fs::create_dir(&parent).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", parent.display()));
        let c = BpmCgroup { parent };
        c.recreate();
        c
    }

    fn scope(&self) -> PathBuf {
        self.parent.join("runc-bpm-web.scope")
    }

    /// A new incarnation of the scope (a new inode), as a restarted bpm container gets.
    fn recreate(&self) {
        let _ = fs::remove_dir(self.scope());
        fs::create_dir(self.scope()).expect("creating the scope cgroup");
    }

    /// A shell prefix that moves the shell into the scope.
    fn enter(&self) -> String {
        format!("echo $$ >{}/cgroup.procs && ", self.scope().display())
    }

    /// The path nft names it by (relative to `/sys/fs/cgroup`).
    fn nft_path(&self) -> String {
        self.scope().strip_prefix("/sys/fs/cgroup").expect("under /sys/fs/cgroup").display().to_string()
    }
}

impl Drop for BpmCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(self.scope());
        let _ = fs::remove_dir(&self.parent);
    }
}

fn cgroup_rules() -> Vec<serde_json::Value> {
    rules(firewall::JOBS_CHAIN).into_iter().filter(|r| r["comment"] == "bosh-monit-access:web").collect()
}

#[test]
fn a_bpm_job_gets_a_rule_for_its_cgroup() {
    let tool = Tool::new();
    let cgroup = BpmCgroup::new();
    in_fresh_netns(|| {
        let _listener = TcpListener::bind("127.0.0.1:2822").expect("listening on 2822 in the namespace");
        firewall::setup_monit_firewall().expect("the agent's monit firewall");
        assert!(!connects_as(OTHER_UID, &cgroup.enter()), "dropped before the job's rule");

        let out = tool.run(&cgroup.enter());
        assert!(out.status.success(), "{}", said(&out));
        let expected =
            format!("monit access for bpm job 'web' (cgroup {}) added, 0 older", cgroup.nft_path());
        assert!(said(&out).contains(&expected), "{}", said(&out));
        let r = cgroup_rules();
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].to_string().contains(&format!("\"right\":\"{}\"", cgroup.nft_path())), "{}", r[0]);
        assert!(rules(firewall::JOBS_CHAIN).iter().all(|r| !r.to_string().contains("skuid")), "no uid rule");
        assert!(connects_as(OTHER_UID, &cgroup.enter()), "any user of the job's cgroup reaches monit");
        assert!(!connects_as(OTHER_UID, ""), "the same user outside it does not");

        let again = tool.run(&cgroup.enter());
        assert!(said(&again).contains("already present"), "{}", said(&again));
        assert_eq!(cgroup_rules().len(), 1);

        // The container restarts: a new cgroup under the same name replaces the old rule.
        cgroup.recreate();
        let renewed = tool.run(&cgroup.enter());
        assert!(said(&renewed).contains("added, 1 older rule(s) removed"), "{}", said(&renewed));
        assert_eq!(cgroup_rules().len(), 1);
        assert!(connects_as(OTHER_UID, &cgroup.enter()));
    });
}
