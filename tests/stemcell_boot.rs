//! The stemcell end to end: boot the image `stemcell/build` made in qemu, with its settings on a
//! config-drive ISO and NATS (mutual TLS) and a dav blobstore on this host, and drive the agent inside
//! as the director does: first heartbeat, ping, get_state, apply a tiny release, start, running in a
//! heartbeat, drain, stop, shutdown. On the way it checks what only a real VM shows: the ephemeral disk
//! became swap and `/var/vcap/data`, the agent came up without an error (no restart by systemd), and a
//! SIGKILLed agent is back within seconds with its state. Every step's time, where the boot's time
//! went, and the agent's memory inside the VM are printed.
//!
//! It also checks what a real release assumes the agent did (issue 12), each a row of the step table:
//! the job `tiny` drops to vcap in its monit start program (`setpriv`), reads its rendered config,
//! writes its log, pid and data files and a file in `/tmp`, and reaches `running`; the errand `layout`
//! reports the owners and modes of the job's directories, `instance/health.json`,
//! `/etc/logrotate.d/vcap`, `/tmp` (1777), `data/sys/run` (a tmpfs), the config drive's SSH key in
//! vcap's `authorized_keys`, the monit firewall and `bosh-enable-monit-access`; `fetch_logs` returns
//! the vcap job's log. These checks are collected and the test fails at the end naming every one that
//! did not hold, so one run shows them all.
//!
//! It needs the built stemcell (`STEMCELL=<tarball>`), qemu and genisoimage, so it is ignored in a
//! plain `cargo test`; `scripts/stemcell-test` builds the stemcell and runs it. Run without the
//! stemcell, it fails rather than passing silently.
//!
//! The VM's network is qemu's user network with `restrict=on`: the guest reaches nothing but the
//! host's NATS and blob servers, forwarded from 10.0.2.100 by `guestfwd` (one `nc` per connection).
//! KVM is used when `/dev/kvm` runs this kernel; where it does not (a nested hypervisor whose KVM
//! cannot run stock kernels), the boot falls back to software emulation and says so.

use crate::common::agent::{Director, HealthMonitor};
use crate::common::blob_server::{dav_path, BlobServer, BlobServerOptions};
use crate::common::certs::{TestPki, GUEST_FORWARD_IP};
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::tarball::{digests, file, script, tgz};
use crate::common::wait_until;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Guest-side ports of the forwarded host servers.
const NATS_GUEST_PORT: u16 = 4222;
const BLOBS_GUEST_PORT: u16 = 25250;
/// The VM's NIC, also named in the settings' network so the agent configures it.
const MAC: &str = "52:54:00:12:34:56";
/// How long a KVM boot may take to print the kernel banner before KVM is judged unusable here.
const KVM_PROBE: Duration = Duration::from_secs(25);

/// One row of the step table: a timed step, or a check of what the VM shows.
enum Row {
    Step(String, Duration),
    Check { name: String, ok: bool, seen: String },
}

/// The timed steps and the checks of the run, printed at the end (and on failure, as far as it got).
struct Steps {
    start: Instant,
    rows: Vec<Row>,
}

impl Steps {
    fn new() -> Steps {
        Steps { start: Instant::now(), rows: Vec::new() }
    }

    fn time<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.rows.push(Row::Step(name.to_string(), t.elapsed()));
        println!("step {name}: {:.2} s", t.elapsed().as_secs_f64());
        out
    }

    /// Records a check (it fails the test at the end, in [`Steps::finish`], not here).
    fn check(&mut self, name: &str, ok: bool, seen: impl Into<String>) {
        let seen = seen.into();
        println!("check {name}: {} ({seen})", if ok { "ok" } else { "FAILED" });
        self.rows.push(Row::Check { name: name.to_string(), ok, seen });
    }

    fn print(&self) {
        println!("\n{:<58} {:>9}", "step", "seconds");
        for row in &self.rows {
            match row {
                Row::Step(name, d) => println!("{name:<58} {:>9.2}", d.as_secs_f64()),
                Row::Check { name, ok, seen } => {
                    let seen: String = seen.chars().take(60).collect();
                    println!(
                        "{:<58} {:>9}  {seen}",
                        format!("check: {name}"),
                        if *ok { "ok" } else { "FAILED" }
                    )
                }
            }
        }
        println!("{:<58} {:>9.2}", "total", self.start.elapsed().as_secs_f64());
    }

    /// Fails the test naming every check that did not hold.
    fn finish(&self) {
        let failed: Vec<&str> = self
            .rows
            .iter()
            .filter_map(|r| match r {
                Row::Check { name, ok: false, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert!(failed.is_empty(), "checks that did not hold: {failed:?} (see the table above)");
    }
}

impl Drop for Steps {
    /// A failed assertion ends the run early: the table as far as it got.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print();
        }
    }
}

/// The qemu process; killed on drop.
struct Vm {
    child: Child,
    console: PathBuf,
    accel: &'static str,
}

impl Vm {
    /// Boots from `disks`, on KVM when it works here, else under software emulation.
    fn boot(dir: &Path, disks: &Disks, forwards: &[(u16, u16)]) -> Vm {
        if Path::new("/sys/module/kvm_pvm").exists() {
            println!(
                "KVM: this host's /dev/kvm is kvm_pvm (a nested hypervisor that runs only kernels built \
                 for it), not hardware KVM: software emulation"
            );
        } else if kvm_openable() {
            let mut vm = Vm::spawn(dir, disks, forwards, "kvm");
            if wait_until(KVM_PROBE, || vm.console().contains("Linux version")) {
                return vm;
            }
            println!(
                "KVM: /dev/kvm is there but the kernel printed nothing in {} s (a nested KVM such as \
                 kvm_pvm runs only kernels built for it): booting again under software emulation",
                KVM_PROBE.as_secs()
            );
            vm.kill();
            // The second boot starts from the same blank disks as the first.
            disks.fresh();
        } else {
            println!("KVM: /dev/kvm is missing or not usable: software emulation");
        }
        Vm::spawn(dir, disks, forwards, "tcg")
    }

    fn spawn(dir: &Path, disks: &Disks, forwards: &[(u16, u16)], accel: &'static str) -> Vm {
        let console = dir.join(format!("console-{accel}.log"));
        let mut netdev = "user,id=n0,restrict=on".to_string();
        for (guest, host) in forwards {
            netdev.push_str(&format!(",guestfwd=tcp:{GUEST_FORWARD_IP}:{guest}-cmd:nc 127.0.0.1 {host}"));
        }
        let qemu_log = fs::File::create(dir.join(format!("qemu-{accel}.log"))).expect("qemu log");
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", accel, "-m", "1024", "-smp", "2", "-nodefaults", "-display", "none"])
            .args(["-no-reboot", "-serial", &format!("file:{}", console.display())])
            .args(["-drive", &format!("file={},if=virtio,format=qcow2", disks.root.display())])
            .args(["-drive", &format!("file={},if=virtio,format=qcow2", disks.ephemeral.display())])
            .args([
                "-drive",
                &format!("file={},if=virtio,format=raw,readonly=on", disks.config_drive.display()),
            ])
            .args(["-netdev", &netdev, "-device", &format!("virtio-net-pci,netdev=n0,mac={MAC},romfile=")])
            .stdin(Stdio::null())
            .stdout(Stdio::from(qemu_log.try_clone().expect("qemu log handle")))
            .stderr(Stdio::from(qemu_log))
            .spawn()
            .expect("starting qemu-system-x86_64 (scripts/prerequisites installs it)");
        println!("qemu: started with -accel {accel}");
        Vm { child, console, accel }
    }

    /// The serial console so far, without the colour escapes systemd puts inside its status lines.
    fn console(&self) -> String {
        let text = String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).into_owned();
        let mut plain = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters, ended by a letter.
                for e in chars.by_ref() {
                    if e.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// The last lines of the console, for failure messages.
    fn console_tail(&self) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kvm_openable() -> bool {
    fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The VM's disks in the order OpenStack attaches them: root (`vda`), ephemeral (`vdb`, which the
/// CPI calls `/dev/sdb`), config drive (`vdc`).
struct Disks {
    /// A qcow2 overlay over the stemcell's `root.img`, so the image itself stays pristine.
    root: PathBuf,
    /// A blank 2 GiB disk: the agent makes swap and `/var/vcap/data` on it.
    ephemeral: PathBuf,
    config_drive: PathBuf,
}

impl Disks {
    fn new(dir: &Path, config_drive: PathBuf) -> Disks {
        let disks =
            Disks { root: dir.join("vm.qcow2"), ephemeral: dir.join("ephemeral.qcow2"), config_drive };
        disks.fresh();
        disks
    }

    /// (Re)creates the root overlay and a blank ephemeral disk.
    fn fresh(&self) {
        let base = self.root.with_file_name("root.img");
        let _ = fs::remove_file(&self.root);
        let _ = fs::remove_file(&self.ephemeral);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&self.root));
        run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&self.ephemeral).arg("2G"));
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unpacks the stemcell as a CPI does (checking the manifest's sha1 of the image) and returns the
/// directory holding `root.img` and the manifest text.
fn unpack_stemcell(tarball: &Path, dir: &Path) -> String {
    run(Command::new("tar").arg("-xzf").arg(tarball).arg("-C").arg(dir));
    let manifest = fs::read_to_string(dir.join("stemcell.MF")).expect("stemcell.MF in the tarball");
    let sha1 = run(Command::new("sha1sum").arg(dir.join("image")));
    let sha1 = sha1.split_whitespace().next().unwrap_or("");
    assert!(
        manifest.contains(&format!("sha1: {sha1}")),
        "stemcell.MF does not carry the image's sha1 {sha1}"
    );
    assert!(fs::metadata(dir.join("packages.txt")).is_ok_and(|m| m.len() > 0), "packages.txt missing");
    run(Command::new("tar").arg("-xzf").arg(dir.join("image")).arg("-C").arg(dir));
    manifest
}

/// The config drive OpenStack would attach: user data = the settings, meta-data with the uuid and
/// the IaaS SSH key (`public-keys`, as OpenStack and the Go agent spell it).
fn config_drive(dir: &Path, settings: &Value, ssh_key: &str) -> PathBuf {
    let tree = dir.join("config-drive");
    let latest = tree.join("openstack/latest");
    fs::create_dir_all(&latest).expect("config drive tree");
    let meta = json!({"uuid": "vm-stemcell-test", "name": "vm-stemcell-test",
                      "public-keys": {"0": {"openssh-key": ssh_key}}});
    fs::write(latest.join("meta_data.json"), meta.to_string()).expect("meta_data.json");
    fs::write(latest.join("user_data"), settings.to_string()).expect("user_data");
    let iso = dir.join("config-2.iso");
    run(Command::new("genisoimage")
        .args(["-quiet", "-V", "config-2", "-r", "-J", "-o"])
        .arg(&iso)
        .arg(&tree));
    iso
}

/// A release with one package and four jobs: `tiny`, which monit keeps running as vcap (its start
/// program drops to vcap with `setpriv`; as vcap it reads its config, writes its log, its pid and data
/// files and a file in `/tmp`, and runs a shell loop from the package); the errand `probe`, which
/// reports from inside the VM the agent's pid and memory, the swap and the mount of `/var/vcap/data`;
/// the errand `layout`, which reports what a release assumes of the VM (owners and modes, files the
/// agent writes, mounts, the firewall); the errand `killer`, which SIGKILLs the agent; and the errand
/// `crash`, which SIGKILLs tiny's process.
fn tiny_release(blobs: &BlobServer, work: &Path) -> Value {
    let pkg = work.join("tinypkg.tgz");
    tgz(
        &pkg,
        &[script("bin/tiny-server", "#!/bin/sh\nwhile true; do echo \"tiny: $1 $(date)\"; sleep 5; done\n")],
    );
    let as_vcap = "/usr/bin/setpriv --reuid=vcap --regid=vcap --init-groups /var/vcap/jobs/tiny/bin/ctl";
    let monit = format!(
        "check process tiny\n  with pidfile /var/vcap/sys/run/tiny/tiny.pid\n\
         \x20 start program \"{as_vcap} start\"\n  stop program \"{as_vcap} stop\"\n  group vcap\n"
    );
    // Runs as vcap: every step fails loudly (no pid file, so never `running`) if the agent did not
    // make the job's directories writable for vcap or its files readable.
    let ctl = "#!/bin/bash\nrun=/var/vcap/sys/run/tiny log=/var/vcap/sys/log/tiny data=/var/vcap/data/tiny\n\
               case $1 in\n\
               start) exec >>$log/ctl.log 2>&1 || exit 1\n  echo \"ctl start as $(id -un):$(id -gn)\"\n\
               \x20 greeting=$(cat /var/vcap/jobs/tiny/config/tiny.conf) || exit 1\n\
               \x20 echo \"$greeting\" >$data/greeting || exit 1\n\
               \x20 echo \"tiny was here\" >/tmp/tiny-$(id -un) || exit 1\n\
               \x20 /var/vcap/packages/tinypkg/bin/tiny-server \"$greeting\" >>$log/tiny.log 2>&1 &\n\
               \x20 echo $! >$run/tiny.pid ;;\n\
               stop) kill $(cat $run/tiny.pid); rm -f $run/tiny.pid ;;\n\
               esac\n";
    let probe =
        "#!/bin/sh\npid=$(pidof bosh-agent)\necho pid=$pid\ngrep -E '^(VmRSS|VmHWM)' /proc/$pid/status\n\
                 grep '^/dev/' /proc/swaps\ngrep ' /var/vcap/data ' /proc/mounts\n\
                 echo errors=$(grep -c '\\[ERROR\\]' /var/vcap/bosh/log/current)\n\
                 grep '\\[ERROR\\]' /var/vcap/bosh/log/current | head -5\necho monit=$(pidof monit)\n";
    let layout = "#!/bin/sh\n\
        s() { printf '%s=%s\\n' \"$1\" \"$(stat -L -c '%U:%G %a' \"$2\" 2>&1)\"; }\n\
        s job-dir /var/vcap/jobs/tiny\ns job-bin /var/vcap/jobs/tiny/bin/ctl\n\
        s job-config /var/vcap/jobs/tiny/config/tiny.conf\n\
        s log-dir /var/vcap/sys/log/tiny\ns run-dir /var/vcap/sys/run/tiny\ns data-dir /var/vcap/data/tiny\n\
        s pid-file /var/vcap/sys/run/tiny/tiny.pid\ns log-file /var/vcap/sys/log/tiny/tiny.log\n\
        s data-file /var/vcap/data/tiny/greeting\ns tmp-file /tmp/tiny-vcap\n\
        s tmp /tmp\ns var-tmp /var/tmp\n\
        s ssh-dir /home/vcap/.ssh\ns authorized-keys /home/vcap/.ssh/authorized_keys\n\
        echo \"process-user=$(ps -o user= -p \"$(cat /var/vcap/sys/run/tiny/tiny.pid)\" 2>&1)\"\n\
        echo \"health=$(cat /var/vcap/instance/health.json 2>&1)\"\n\
        echo \"run-fs=$(stat -f -c %T /var/vcap/data/sys/run 2>&1)\"\n\
        echo \"logrotate=$(tr '\\n' ' ' </etc/logrotate.d/vcap 2>&1)\"\n\
        echo \"keys=$(tr '\\n' ' ' </home/vcap/.ssh/authorized_keys 2>&1)\"\n\
        echo \"firewall=$(nft list chain inet bosh_agent monit_access 2>&1 | tr '\\n' ' ')\"\n\
        out=$(/var/vcap/bosh/etc/bosh-enable-monit-access 2>&1); echo \"monit-access=$? $out\"\n";
    let crash = "#!/bin/sh\nkill -9 $(cat /var/vcap/sys/run/tiny/tiny.pid)\n";
    // Kills the agent a second after the errand has reported, from outside its process group.
    let killer =
        "#!/bin/sh\nsetsid sh -c 'sleep 1; kill -9 $(pidof bosh-agent)' </dev/null >/dev/null 2>&1 &\n";
    let rendered = work.join("rendered.tgz");
    tgz(
        &rendered,
        &[
            file("tiny/monit", monit.as_bytes()),
            script("tiny/bin/ctl", ctl),
            script("tiny/bin/drain", "#!/bin/sh\necho 0\n"),
            file("tiny/config/tiny.conf", TINY_CONFIG.as_bytes()),
            script("probe/bin/run", probe),
            script("layout/bin/run", layout),
            script("killer/bin/run", killer),
            script("crash/bin/run", crash),
        ],
    );
    let put = |p: &Path| {
        let id = bosh_agent::ids::uuid_v4();
        blobs.put_blob(&dav_path(&id), &fs::read(p).expect("release blob"));
        (id, digests(p))
    };
    let (rid, (rsha1, _)) = put(&rendered);
    let (pid, (_, psha256)) = put(&pkg);
    json!({
        "deployment": "tiny-dep", "name": "tiny", "index": 0, "id": "tiny-0", "az": "z1",
        "job": {"name": "tiny", "templates": [
            {"name": "tiny", "version": "1"}, {"name": "probe", "version": "1"},
            {"name": "layout", "version": "1"}, {"name": "killer", "version": "1"},
            {"name": "crash", "version": "1"}
        ]},
        "packages": {"tinypkg": {"name": "tinypkg", "version": "1", "sha1": psha256, "blobstore_id": pid}},
        "configuration_hash": "tiny-1", "persistent_disk": 0,
        "rendered_templates_archive": {"blobstore_id": rid, "sha1": rsha1},
        // As the director sends a dynamic network: no address; the agent reports DHCP's.
        "networks": {"default": {"type": "dynamic", "default": ["dns", "gateway"]}}
    })
}

/// The tiny job's rendered config, which it reads as vcap and logs.
const TINY_CONFIG: &str = "greeting=hello from tiny's config";

/// A fresh ed25519 public key (`ssh-keygen`), the IaaS key the config drive carries.
fn ssh_public_key(dir: &Path) -> String {
    let key = dir.join("iaas_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "iaas-key@stemcell-test", "-f"])
        .arg(&key));
    fs::read_to_string(key.with_extension("pub")).expect("public key").trim().to_string()
}

/// The `key=value` lines of the `layout` errand.
fn layout_fields(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// What the `layout` errand reported, checked against what the issue asks of the agent.
fn check_layout(steps: &mut Steps, out: &str, ssh_key: &str) {
    let f = layout_fields(out);
    let get = |k: &str| f.get(k).cloned().unwrap_or_else(|| "(not reported)".into());
    let exact = |steps: &mut Steps, name: &str, key: &str, want: &str| {
        let seen = get(key);
        steps.check(name, seen == want, seen);
    };
    for (name, key, want) in [
        ("job bundle dir root:vcap 0750", "job-dir", "root:vcap 750"),
        ("job bin/ctl root:vcap 0750", "job-bin", "root:vcap 750"),
        ("job config root:vcap 0640", "job-config", "root:vcap 640"),
        ("sys/log/tiny root:vcap 0770", "log-dir", "root:vcap 770"),
        ("sys/run/tiny root:vcap 0770", "run-dir", "root:vcap 770"),
        ("data/tiny root:vcap 0770", "data-dir", "root:vcap 770"),
        ("/tmp root:vcap 1777", "tmp", "root:vcap 1777"),
        ("/var/tmp root:vcap 1777", "var-tmp", "root:vcap 1777"),
        ("job process runs as vcap", "process-user", "vcap"),
    ] {
        exact(steps, name, key, want);
    }
    for (name, key) in [
        ("vcap job wrote its pid file", "pid-file"),
        ("vcap job wrote its log", "log-file"),
        ("vcap job wrote its data file", "data-file"),
        ("vcap job wrote a file in /tmp", "tmp-file"),
    ] {
        let seen = get(key);
        steps.check(name, seen.starts_with("vcap:vcap "), seen);
    }
    let health = get("health");
    let state =
        serde_json::from_str::<Value>(&health).ok().and_then(|v| v["state"].as_str().map(String::from));
    steps.check("instance/health.json says running", state.as_deref() == Some("running"), health);
    exact(steps, "data/sys/run is a tmpfs", "run-fs", "tmpfs");
    let logrotate = get("logrotate");
    steps.check(
        "/etc/logrotate.d/vcap rotates job logs",
        logrotate.contains("sys/log/*.log")
            && logrotate.contains("copytruncate")
            && logrotate.contains("size"),
        logrotate,
    );
    let keys = get("keys");
    steps.check("config drive's SSH key in vcap's authorized_keys", keys.contains(ssh_key), keys);
    exact(steps, "vcap's ~/.ssh vcap:vcap 0700", "ssh-dir", "vcap:vcap 700");
    exact(steps, "vcap's authorized_keys vcap:vcap 0600", "authorized-keys", "vcap:vcap 600");
    let firewall = get("firewall");
    steps.check(
        "monit firewall (nft inet bosh_agent monit_access)",
        firewall.contains("jump monit_access_jobs") && firewall.contains("tcp dport 2822 drop"),
        firewall,
    );
    let access = get("monit-access");
    steps.check(
        "bosh-enable-monit-access (hard link) exits 0",
        access.starts_with("0 ") && access.contains("vcap (uid 1000)"),
        access,
    );
}

/// The log files of a `fetch_logs` tarball, name -> text.
fn unpack_logs(data: &[u8]) -> std::collections::BTreeMap<String, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(data));
    let mut out = std::collections::BTreeMap::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path().expect("entry path").to_string_lossy().into_owned();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut entry, &mut text);
        out.insert(name, text);
    }
    out
}

fn stemcell_tarball() -> PathBuf {
    let path = std::env::var_os("STEMCELL").map(PathBuf::from).unwrap_or_else(|| {
        panic!("STEMCELL is not set: build the stemcell and run this test with scripts/stemcell-test")
    });
    assert!(path.is_file(), "STEMCELL={} is not a file", path.display());
    path
}

fn heartbeat(hm: &HealthMonitor, id: &str, timeout: Duration) -> Option<Value> {
    hm.next(&format!("hm.agent.heartbeat.{id}"), timeout)
}

#[test]
#[ignore = "needs a built stemcell, qemu and genisoimage: run scripts/stemcell-test"]
fn stemcell_boots_and_runs_a_job_as_the_director_drives_it() {
    let tarball = stemcell_tarball();
    let mut steps = Steps::new();
    let work = tempfile::tempdir().expect("work dir");
    let manifest = steps.time("unpack the stemcell (tar, sha1)", || unpack_stemcell(&tarball, work.path()));
    assert!(manifest.contains("api_version: 3") && manifest.contains("openstack-qcow2"), "{manifest}");

    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let blobs = BlobServer::start(BlobServerOptions::default());
    let blob_port: u16 = blobs.url().rsplit(':').next().and_then(|p| p.parse().ok()).expect("blob port");
    let id = format!("stemcell-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let (cert, key) = pki.client(&format!("{id}.bootstrap.agent.bosh-internal"));
    let settings = json!({
        "agent_id": id,
        "mbus": format!("nats://{GUEST_FORWARD_IP}:{NATS_GUEST_PORT}"),
        "env": {"bosh": {"mbus": {"cert": {"ca": pki.ca_pem, "certificate": cert, "private_key": key}}}},
        "blobstore": {"provider": "dav", "options": {"endpoint": format!("http://{GUEST_FORWARD_IP}:{BLOBS_GUEST_PORT}")}},
        "networks": {"default": {"type": "dynamic", "mac": MAC, "default": ["dns", "gateway"]}},
        "vm": {"name": "vm-stemcell-test"},
        "disks": {"system": "/dev/vda", "ephemeral": "/dev/sdb", "persistent": {}},
        "ntp": []
    });
    let ssh_key = ssh_public_key(work.path());
    let disks = Disks::new(work.path(), config_drive(work.path(), &settings, &ssh_key));
    let hm = HealthMonitor::connect(&pki, &nats.url(), &id);
    let forwards = [(NATS_GUEST_PORT, nats.port()), (BLOBS_GUEST_PORT, blob_port)];

    let boot = Instant::now();
    let mut vm = Vm::boot(work.path(), &disks, &forwards);
    let accel = vm.accel;
    let vm_start = Instant::now();
    let mut phases = Phases::default();
    let first = steps.time(&format!("boot to first heartbeat ({accel})"), || {
        phases.watch(
            &vm,
            vm_start,
            || heartbeat(&hm, &id, Duration::from_millis(200)),
            Duration::from_secs(240),
        )
    });
    phases.print();
    let boot_to_heartbeat = vm_start.elapsed();
    assert!(first.is_some(), "no heartbeat from the VM in 240 s; console:\n{}", vm.console_tail());
    println!(
        "boot to first heartbeat: {:.1} s under {accel} ({:.1} s including any KVM probe)",
        boot_to_heartbeat.as_secs_f64(),
        boot.elapsed().as_secs_f64()
    );

    let mut d = Director::connect(&pki, &nats.url(), &id);
    let pong = steps.time("ping", || d.send("ping", json!([])));
    assert_eq!(pong, json!({"value": "pong"}));
    let state = steps.time("get_state", || d.send("get_state", json!([])));
    assert_eq!(state["value"]["agent_id"], id.as_str(), "{state}");
    // The network is dynamic: get_state reports what qemu's user network leased (issue 13).
    assert_dhcp_lease(&state["value"]["networks"]["default"]);
    // The ephemeral disk became swap and /var/vcap/data during bootstrap.
    let full = d.send("get_state", json!(["full"]));
    let vitals = &full["value"]["vitals"];
    assert!(vitals["disk"]["ephemeral"]["percent"].is_string(), "no ephemeral disk in the vitals: {vitals}");
    // The agent starts monit once it is connected; until monit answers, the state is "unknown".
    let mut state = Value::Null;
    let monit_up = steps.time("monit answering (job_state running)", || {
        wait_until(Duration::from_secs(60), || {
            state = d.send("get_state", json!([]));
            state["value"]["job_state"] == "running"
        })
    });
    assert!(monit_up, "a VM with nothing applied should be running once monit is up: {state}");

    let spec = tiny_release(&blobs, work.path());
    let applied = steps.time("apply (download, unpack, install)", || d.run_task("apply", json!([spec])));
    assert_eq!(applied, json!({"value": "applied"}), "console:\n{}", vm.console_tail());
    let started = steps.time("start", || d.send("start", json!([])));
    assert_eq!(started, json!({"value": "started"}));
    let mut running = Value::Null;
    let seen = steps.time("job running in a heartbeat", || {
        wait_until(Duration::from_secs(90), || {
            running = heartbeat(&hm, &id, Duration::from_secs(40)).unwrap_or(Value::Null);
            running["job_state"] == "running" && running["number_of_processes"] == 1
        })
    });
    steps.check("vcap job running in a heartbeat", seen && running["job"] == "tiny", running.to_string());

    let layout =
        steps.time("run_errand layout (what jobs assume)", || d.run_task("run_errand", json!(["layout"])));
    let layout_out = layout["value"]["stdout"].as_str().unwrap_or("").to_string();
    println!("layout errand:\n{layout_out}");
    steps.check(
        "layout errand exits 0",
        layout["value"]["exit_code"] == 0,
        layout["value"]["exit_code"].to_string(),
    );
    check_layout(&mut steps, &layout_out, &ssh_key);

    let logs = steps.time("fetch_logs job", || d.run_task("fetch_logs", json!(["job", ["tiny/*.log"]])));
    let blob = logs["value"]["blobstore_id"].as_str().and_then(|id| blobs.blob(&dav_path(id)));
    let files = blob.map(|b| unpack_logs(&b)).unwrap_or_default();
    let job_log = files.get("tiny/tiny.log").cloned().unwrap_or_default();
    steps.check(
        "fetch_logs returns the vcap job's log",
        job_log.contains(&format!("tiny: {TINY_CONFIG}")),
        format!("{:?}: {}", files.keys().collect::<Vec<_>>(), job_log.lines().next().unwrap_or("")),
    );

    let probe = steps.time("run_errand probe (agent memory)", || d.run_task("run_errand", json!(["probe"])));
    let out = probe["value"]["stdout"].as_str().unwrap_or("").to_string();
    assert_eq!(probe["value"]["exit_code"], 0, "{probe}");
    let rss_kb = kb_of(&out, "VmRSS").expect("VmRSS in the probe's output");
    let hwm_kb = kb_of(&out, "VmHWM").expect("VmHWM in the probe's output");
    // The agent came up on its first start: an error in the boot would have made systemd restart it.
    assert_eq!(probe_field(&out, "errors=").as_deref(), Some("0"), "the agent logged errors:\n{out}");
    assert!(out.contains("/dev/vdb1 "), "swap is not on the ephemeral disk's first partition:\n{out}");
    assert!(out.contains("/dev/vdb2 /var/vcap/data ext4"), "data is not on the ephemeral disk:\n{out}");
    println!("agent memory in the VM with the job running: VmRSS {rss_kb} kB now, VmHWM {hwm_kb} kB at most");
    assert!(hwm_kb < 20_000, "the agent's high-water mark in the VM is {hwm_kb} kB");

    // The agent dies: systemd starts it again, and it comes back with its state and monit's jobs.
    let pid = probe_field(&out, "pid=").expect("the agent's pid");
    assert_eq!(d.run_task("run_errand", json!(["killer"]))["value"]["exit_code"], 0);
    let pong = |d: &mut Director| d.request_within("ping", json!([]), Duration::from_secs(1)).is_ok();
    let died = wait_until(Duration::from_secs(20), || !pong(&mut d));
    assert!(died, "the agent kept answering after the killer errand");
    let back = steps.time("agent SIGKILLed until answering again", || {
        wait_until(Duration::from_secs(120), || pong(&mut d))
    });
    assert!(back, "the agent did not come back; console:\n{}", vm.console_tail());
    let again = d.run_task("run_errand", json!(["probe"]));
    let new_pid = probe_field(again["value"]["stdout"].as_str().unwrap_or(""), "pid=").unwrap_or_default();
    assert!(!new_pid.is_empty() && new_pid != pid, "pid {pid} then {new_pid}: {again}");
    let state = d.send("get_state", json!([]));
    assert_eq!(state["value"]["deployment"], "tiny-dep", "{state}");
    steps.check(
        "job still running after the agent's restart",
        state["value"]["job_state"] == "running",
        state["value"]["job_state"].to_string(),
    );
    // The applied spec's dynamic network got the lease at apply and keeps it.
    assert_dhcp_lease(&state["value"]["networks"]["default"]);
    let monit_before = probe_field(&out, "monit=").unwrap_or_default();
    let monit_after =
        probe_field(again["value"]["stdout"].as_str().unwrap_or(""), "monit=").unwrap_or_default();
    steps.check(
        "monit kept running across the agent's restart",
        !monit_before.is_empty() && monit_before == monit_after,
        format!("monit pid {monit_before} then {monit_after}"),
    );
    // tiny dies: monit, started before the agent's restart, mails the restarted agent.
    hm.drain();
    let alert_subject = format!("hm.agent.alert.{id}");
    let alert = steps.time("job killed until its alert (monit to the restarted agent)", || {
        let crash = d.run_task("run_errand", json!(["crash"]));
        if crash["value"]["exit_code"] != 0 {
            return Err(format!("the crash errand found no process to kill: {crash}"));
        }
        let is_it = |a: &Value| {
            a["title"].as_str().is_some_and(|t| t.starts_with("tiny ") && t.contains("Does not exist"))
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match hm.next(&alert_subject, deadline.saturating_duration_since(Instant::now())) {
                Some(a) if is_it(&a) => break Ok(a["title"].to_string()),
                Some(_) => continue,
                None => break Err("no alert in 90 s".to_string()),
            }
        }
    });
    steps.check("alert from monit after the agent's restart", alert.is_ok(), alert.unwrap_or_else(|e| e));
    let mut state = Value::Null;
    let again_running = wait_until(Duration::from_secs(90), || {
        state = d.send("get_state", json!([]));
        state["value"]["job_state"] == "running"
    });
    steps.check("monit restarted the killed job", again_running, state["value"]["job_state"].to_string());

    let drained = steps.time("drain shutdown", || d.run_task("drain", json!(["shutdown", {}])));
    assert_eq!(drained, json!({"value": 0}));
    let stopped = steps.time("stop", || d.run_task("stop", json!([])));
    assert_eq!(stopped, json!({"value": "stopped"}));
    let gone = steps.time("shutdown (until qemu exits)", || {
        // The reply races the VM powering off: an answer must be the right one, silence is fine.
        if let Ok(reply) = d.request_within("shutdown", json!([]), Duration::from_secs(2)) {
            assert_eq!(reply, json!({"value": ""}));
        }
        wait_until(Duration::from_secs(120), || vm.exited())
    });
    assert!(gone, "the VM did not power off; console:\n{}", vm.console_tail());
    steps.print();
    println!(
        "accelerator: {accel}; boot to first heartbeat {:.1} s; agent VmRSS {rss_kb} kB, VmHWM {hwm_kb} kB",
        boot_to_heartbeat.as_secs_f64()
    );
    steps.finish();
}

/// When the boot's milestones appeared on the serial console, seen from the host: where the time to
/// the first heartbeat goes (firmware and GRUB, kernel and initrd, systemd, the agent itself).
#[derive(Default)]
struct Phases {
    seen: Vec<(&'static str, Duration)>,
}

impl Phases {
    const MILESTONES: [(&'static str, &'static str); 4] = [
        ("Linux version", "kernel running (after BIOS, GRUB)"),
        ("Run /init", "initrd running"),
        ("Reached target local-fs", "root filesystem mounted"),
        ("Started bosh-agent.service", "systemd started the agent"),
    ];

    /// Polls `done` (which waits briefly itself) until it yields or `timeout` passes, noting each
    /// milestone's first appearance on the console in between.
    fn watch<T>(
        &mut self,
        vm: &Vm,
        start: Instant,
        mut done: impl FnMut() -> Option<T>,
        timeout: Duration,
    ) -> Option<T> {
        let deadline = start + timeout;
        while Instant::now() < deadline {
            let console = vm.console();
            for (marker, name) in Phases::MILESTONES {
                if !self.seen.iter().any(|(n, _)| *n == name) && console.contains(marker) {
                    self.seen.push((name, start.elapsed()));
                }
            }
            if let Some(v) = done() {
                self.seen.push(("first heartbeat received", start.elapsed()));
                return Some(v);
            }
        }
        None
    }

    fn print(&self) {
        for (name, at) in &self.seen {
            println!("  boot: {name:<28} at {:>6.2} s", at.as_secs_f64());
        }
    }
}

/// qemu's user network leases its first client 10.0.2.15/24. Restricted (`restrict=on`), it offers
/// no router, so there is no default route and no gateway to report (10.0.2.2 otherwise).
fn assert_dhcp_lease(network: &Value) {
    assert_eq!(
        (&network["ip"], &network["netmask"]),
        (&json!("10.0.2.15"), &json!("255.255.255.0")),
        "{network}"
    );
    let gateway = network["gateway"].as_str().unwrap_or_default();
    assert!(gateway.is_empty() || gateway == "10.0.2.2", "{network}");
}

/// The rest of the probe's output line that starts with `prefix`.
fn probe_field(out: &str, prefix: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().to_string())
}

/// The number of kB on the `/proc/<pid>/status` line named `key`.
fn kb_of(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
