//! Persistent disks end to end, driven over NATS as the director drives them.
//!
//! The real-device tests use loop devices on sparse image files and the agent on `-P linux`: they
//! need root. When root or loop devices are missing they print a loud message and return, except under
//! `CI=true`, where they fail: CI runs as root and a silent skip there would hide a broken feature.
//!
//! Partition nodes: some container kernels neither rescan a loop device's table nor have udev make
//! `/dev/loopNp1`; the fixture (like the agent) runs `partx -u` and mknods the node from sysfs, and
//! removes the node it leaves behind when it detaches the device.

use crate::common::agent::{exception, Director, Launch, TestAgent};
use crate::common::certs::TestPki;
use crate::common::loopdev::{devices_available, sh, turn, DEVICES};
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use bosh_agent::dirs::Dirs;
use bosh_agent::platform::disks::{self, mount, prepare};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The tools these tests drive.
const TOOLS: &[&str] = &["sfdisk", "mkfs.ext4", "blkid", "partx"];

/// A loop device on a sparse image; detached (and its mounts lazily unmounted) on drop.
struct LoopDisk {
    _dir: tempfile::TempDir,
    dev: Option<PathBuf>,
}

impl LoopDisk {
    fn new(mb: u64) -> LoopDisk {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(mb << 20).unwrap();
        let dev = sh(Command::new("losetup").args(["-f", "--show", "-P"]).arg(&img));
        LoopDisk { _dir: dir, dev: Some(PathBuf::from(dev.trim())) }
    }

    fn dev(&self) -> &Path {
        self.dev.as_deref().expect("attached")
    }

    fn p1(&self) -> PathBuf {
        prepare::partition_path(self.dev())
    }

    /// One partition with an ext4 filesystem holding `hello.txt`.
    fn with_partitioned_data(self) -> LoopDisk {
        sh(Command::new("sfdisk")
            .arg("-q")
            .arg(self.dev())
            .stdin(std::fs::File::open(self.script()).unwrap()));
        assert_eq!(prepare::sync_partitions(self.dev()).unwrap(), 1);
        self.put_file(&self.p1());
        self
    }

    fn script(&self) -> PathBuf {
        let p = self._dir.path().join("table");
        std::fs::write(&p, "label: gpt\n,,L\n").unwrap();
        p
    }

    /// An ext4 filesystem on the whole device holding `hello.txt`.
    fn with_whole_device_data(self) -> LoopDisk {
        self.put_file(self.dev());
        self
    }

    fn put_file(&self, target: &Path) {
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(target));
        let mnt = self._dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        sh(Command::new("mount").arg(target).arg(&mnt));
        std::fs::write(mnt.join("hello.txt"), "precious").unwrap();
        sh(Command::new("umount").arg(&mnt));
    }

    fn detach(&mut self) {
        let Some(dev) = self.dev.take() else { return };
        for node in [prepare::partition_path(&dev), dev.clone()] {
            if let (Ok(n), Ok(table)) = (mount::device_number(&node), mount::mounts()) {
                for p in mount::mount_points_of(&table, n).iter().rev() {
                    let _ = Command::new("umount").arg("-l").arg(p).status();
                }
            }
        }
        crate::common::loopdev::detach(&dev);
        let p1 = prepare::partition_path(&dev);
        let name = p1.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if p1.exists() && !Path::new("/sys/class/block").join(name).exists() {
            let _ = std::fs::remove_file(&p1);
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        self.detach();
    }
}

struct Env {
    _pki: TestPki,
    _nats: NatsServer,
    root: tempfile::TempDir,
    agent: TestAgent,
    d: Director,
}

fn start(tag: &str, platform: &str) -> Env {
    start_with(tag, platform, Opts::default())
}

/// What a test changes about the agent it starts.
#[derive(Default)]
struct Opts {
    /// agent.json's `Platform.Linux`.
    linux: Value,
    /// The agent's environment (a `PATH` with fake tools first).
    env: Vec<(String, String)>,
    /// `env.persistent_disk_fs` in the settings.
    fs: Option<&'static str>,
}

fn start_with(tag: &str, platform: &str, opts: Opts) -> Env {
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let id = format!("{tag}-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let mut settings = nats_settings(&pki, &id, &nats.url());
    if platform != "dummy" {
        settings["disks"] = json!({"persistent": {}});
    }
    if let Some(fs) = opts.fs {
        settings["env"]["persistent_disk_fs"] = json!(fs);
    }
    let linux = if opts.linux.is_null() { json!({}) } else { opts.linux };
    let env = opts.env;
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_str().unwrap().to_string();
    let agent = TestAgent::launch(
        &settings,
        Launch {
            extra: &["-P", platform, "-r", &root_arg],
            agent_json: Some(json!({"Platform": {"Linux": linux}})),
            env,
            ..Launch::default()
        },
    );
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());
    Env { _pki: pki, _nats: nats, root, agent, d }
}

impl Env {
    fn store(&self) -> PathBuf {
        self.agent.base().join("store")
    }
    fn target(&self) -> PathBuf {
        self.agent.base().join("store_migration_target")
    }
    fn task(&mut self, method: &str, args: Value) -> Value {
        self.d.run_task(method, args)
    }
    fn ok(&mut self, method: &str, args: Value) -> Value {
        let r = self.task(method, args);
        assert!(r.get("exception").is_none(), "{method} failed: {r}\n{}", self.agent.log());
        r["value"].clone()
    }
    fn list(&mut self) -> Value {
        self.task("list_disk", json!([]))["value"].clone()
    }
    fn managed(&self) -> String {
        std::fs::read_to_string(self.agent.base().join("bosh/managed_disk_settings.json")).unwrap_or_default()
    }
    fn dirs(&self) -> Dirs {
        Dirs::new(self.agent.base(), self.root.path())
    }
}

/// The device mounted at `dir` according to the kernel, as a node's numbers.
fn mounted_at(dir: &Path) -> Option<(u64, u64)> {
    mount::device_at(&mount::mounts().unwrap(), dir)
}

fn in_proc_mounts(dir: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap();
    text.lines().any(|l| l.split_whitespace().nth(1) == dir.to_str())
}

#[test]
fn blank_disk_is_partitioned_formatted_mounted_listed_and_unmounted() {
    if !devices_available("blank_disk_is_partitioned_formatted_mounted_listed_and_unmounted", TOOLS) {
        return;
    }
    let _turn = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    let mut disk = LoopDisk::new(128);
    let mut env = start("disk-blank", "linux");
    env.ok("add_persistent_disk", json!(["disk-a", {"path": disk.dev(), "volume_id": "3"}]));
    let hints: Value = serde_json::from_slice(
        &std::fs::read(env.agent.base().join("bosh/persistent_disk_hints.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(hints["disk-a"]["Path"], disk.dev().to_str().unwrap());
    assert_eq!(env.list(), json!([]));

    env.ok("mount_disk", json!(["disk-a"]));
    assert!(in_proc_mounts(&env.store()), "store not in /proc/self/mounts");
    assert_eq!(mounted_at(&env.store()), Some(mount::device_number(&disk.p1()).unwrap()));
    let blkid = sh(Command::new("blkid").args(["-p", "-o", "export"]).arg(disk.p1()));
    assert!(blkid.contains("TYPE=ext4"), "{blkid}");
    assert_eq!(env.managed(), "disk-a");
    assert_eq!(env.list(), json!(["disk-a"]));
    // Mounting again is a no-op.
    env.ok("mount_disk", json!(["disk-a"]));

    // A process holding a file open: a clear error naming it, and the disk stays mounted.
    std::fs::write(env.store().join("busy"), "x").unwrap();
    let mut holder = Command::new("sleep")
        .arg("120")
        .stdin(std::fs::File::open(env.store().join("busy")).unwrap())
        .spawn()
        .unwrap();
    let r = env.task("unmount_disk", json!(["disk-a"]));
    let e = exception(&r);
    assert!(e.contains("busy") && e.contains(&format!("pid {}", holder.id())), "{e}");
    assert!(in_proc_mounts(&env.store()), "unmounted although busy");
    let _ = holder.kill();
    let _ = holder.wait();

    let r = env.ok("unmount_disk", json!(["disk-a"]));
    let dev = disk.dev().display();
    assert_eq!(
        r["message"],
        format!(
            "Unmounted partition of {{ID:disk-a DeviceID: VolumeID:3 Lun: HostDeviceID: Path:{dev} \
             ISCSISettings:{{InitiatorName: Username: Target: Password:}} FileSystemType:ext4 MountOptions:[] \
             Partitioner:}}"
        )
    );
    assert!(!in_proc_mounts(&env.store()));
    let r = env.ok("unmount_disk", json!(["disk-a"]));
    assert!(r["message"].as_str().unwrap().starts_with("Partition of {ID:disk-a"), "{r}");
    assert_eq!(env.list(), json!([]));
    assert_eq!(env.managed(), "disk-a", "unmount_disk keeps the record, as in the Go agent");

    // Boot step 21: the recorded disk comes back on store, unformatted.
    std::fs::write(env.dirs().data().join("marker"), "").ok();
    let platform = bosh_agent::platform::new(bosh_agent::platform::PlatformKind::Linux, &env.dirs());
    let settings = bosh_agent::settings::Effective::default();
    assert_eq!(
        disks::remount_last_disk(platform.as_ref(), &env.dirs(), &settings).as_deref(),
        Some("disk-a")
    );
    assert!(env.store().join("busy").exists(), "remount lost data");
    sh(Command::new("umount").arg(env.store()));

    // The disk vanishes (detached): the agent still boots, answers list_disk with [], and the boot
    // remount logs and carries on.
    disk.detach();
    env.agent.restart();
    assert!(env.d.wait_ready(Duration::from_secs(15)), "agent did not boot:\n{}", env.agent.log());
    assert_eq!(env.list(), json!([]));
    assert_eq!(disks::remount_last_disk(platform.as_ref(), &env.dirs(), &settings), None);
    assert!(!in_proc_mounts(&env.store()));
}

#[test]
fn disks_holding_data_are_never_reformatted() {
    if !devices_available("disks_holding_data_are_never_reformatted", TOOLS) {
        return;
    }
    let _turn = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    let mut env = start("disk-data", "linux");

    // A filesystem on the whole device: mounted as it is.
    let whole = LoopDisk::new(64).with_whole_device_data();
    env.ok("add_persistent_disk", json!(["disk-whole", whole.dev()]));
    env.ok("mount_disk", json!(["disk-whole"]));
    assert_eq!(std::fs::read_to_string(env.store().join("hello.txt")).unwrap(), "precious");
    assert_eq!(env.list(), json!(["disk-whole"]));
    env.ok("unmount_disk", json!(["disk-whole"]));

    // A partition table with a filesystem: partition 1 mounted as it is.
    let parted = LoopDisk::new(64).with_partitioned_data();
    env.ok("add_persistent_disk", json!(["disk-parted", parted.dev()]));
    env.ok("mount_disk", json!(["disk-parted"]));
    assert_eq!(std::fs::read_to_string(env.store().join("hello.txt")).unwrap(), "precious");
    assert_eq!(mounted_at(&env.store()), Some(mount::device_number(&parted.p1()).unwrap()));
    env.ok("unmount_disk", json!(["disk-parted"]));

    // Unrecognised bytes: refused, untouched.
    let junk = LoopDisk::new(64);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(junk.dev()).unwrap();
        f.write_all_at(b"customer data without a signature", 4096).unwrap();
        f.sync_all().unwrap();
    }
    env.ok("add_persistent_disk", json!(["disk-junk", junk.dev()]));
    let e = exception(&env.task("mount_disk", json!(["disk-junk"])));
    assert!(e.contains("refusing to format"), "{e}");
    let mut buf = [0u8; 33];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(junk.dev()).unwrap().read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"customer data without a signature");
    assert!(!in_proc_mounts(&env.store()));

    let e = exception(&env.task("mount_disk", json!(["disk-unknown"])));
    assert!(e.contains("Persistent disk with volume id 'disk-unknown' could not be found"), "{e}");
}

#[test]
fn migrate_disk_moves_everything_to_the_new_disk() {
    if !devices_available("migrate_disk_moves_everything_to_the_new_disk", TOOLS) {
        return;
    }
    let _turn = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    let old = LoopDisk::new(256);
    let new = LoopDisk::new(384);
    let mut env = start("disk-migrate", "linux");
    env.ok("add_persistent_disk", json!(["disk-old", old.dev()]));
    env.ok("mount_disk", json!(["disk-old"]));

    let s = env.store();
    std::fs::create_dir_all(s.join("dir/sub")).unwrap();
    std::fs::write(s.join("dir/sub/file.txt"), "data").unwrap();
    std::fs::write(s.join(".hidden"), "dot").unwrap();
    std::fs::set_permissions(s.join("dir/sub/file.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(s.join("dir"), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(s.join("dir/sub/file.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(s.join("dir"), Some(42), Some(43)).unwrap();
    std::os::unix::fs::symlink("sub/file.txt", s.join("dir/link")).unwrap();
    std::fs::hard_link(s.join("dir/sub/file.txt"), s.join("hard")).unwrap();
    let big = vec![7u8; 3 << 20];
    std::fs::write(s.join("big.bin"), &big).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(s.join("sparse.img")).unwrap();
        f.set_len(200 << 20).unwrap();
        f.write_all_at(b"middle", 100 << 20).unwrap();
    }

    env.ok("add_persistent_disk", json!(["disk-new", new.dev()]));
    env.ok("mount_disk", json!(["disk-new"]));
    assert_eq!(mounted_at(&env.target()), Some(mount::device_number(&new.p1()).unwrap()));
    assert_eq!(env.managed(), "disk-old", "the migration target is not the disk to remount at boot");

    env.ok("migrate_disk", json!(["disk-old", "disk-new"]));
    assert_eq!(mounted_at(&s), Some(mount::device_number(&new.p1()).unwrap()), "new disk not on store");
    assert_eq!(mounted_at(&env.target()), None);
    let table = mount::mounts().unwrap();
    assert!(
        mount::mount_points_of(&table, mount::device_number(&old.p1()).unwrap()).is_empty(),
        "old still mounted"
    );
    assert_eq!(env.managed(), "disk-new");
    assert_eq!(env.list(), json!(["disk-new"]));

    assert_eq!(std::fs::read_to_string(s.join("dir/sub/file.txt")).unwrap(), "data");
    assert_eq!(std::fs::read_to_string(s.join(".hidden")).unwrap(), "dot");
    let m = std::fs::metadata(s.join("dir/sub/file.txt")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1234, 5678));
    let m = std::fs::symlink_metadata(s.join("dir")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o711, 42, 43));
    assert_eq!(std::fs::read_link(s.join("dir/link")).unwrap(), PathBuf::from("sub/file.txt"));
    assert_eq!(
        std::fs::metadata(s.join("hard")).unwrap().ino(),
        std::fs::metadata(s.join("dir/sub/file.txt")).unwrap().ino()
    );
    assert_eq!(std::fs::read(s.join("big.bin")).unwrap(), big);
    let m = std::fs::metadata(s.join("sparse.img")).unwrap();
    assert_eq!(m.len(), 200 << 20);
    assert!(m.blocks() * 512 < 1 << 20, "sparse file filled in: {} bytes allocated", m.blocks() * 512);
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 6];
    std::fs::File::open(s.join("sparse.img")).unwrap().read_exact_at(&mut buf, 100 << 20).unwrap();
    assert_eq!(&buf, b"middle");

    let r = env.ok("unmount_disk", json!(["disk-old"]));
    assert!(r["message"].as_str().unwrap().starts_with("Partition of {ID:disk-old"), "{r}");
    env.ok("remove_persistent_disk", json!(["disk-old"]));
    env.ok("unmount_disk", json!(["disk-new"]));
}

#[test]
fn dummy_platform_records_the_disk_conversation() {
    let mut env = start("disk-dummy", "dummy");
    let base = env.agent.base();
    // Settings name disk-1 (/dev/sdc, which need not exist): every known disk counts as mounted.
    assert_eq!(env.list(), json!(["disk-1"]));
    env.ok("mount_disk", json!(["disk-1"]));
    env.ok("add_persistent_disk", json!(["disk-2", {"path": "/dev/sdd", "volume_id": "4"}]));
    env.ok("mount_disk", json!(["disk-2"]));
    let state: Value =
        serde_json::from_slice(&std::fs::read(base.join("bosh/dummy_mounts.json")).unwrap()).unwrap();
    assert_eq!(state["mounts"][0]["DiskCid"], "disk-1");
    assert_eq!(state["mounts"][1]["MountDir"], env.target().to_str().unwrap());
    assert_eq!(env.list(), json!(["disk-1", "disk-2"]));
    assert_eq!(env.managed(), "disk-1");

    env.ok("migrate_disk", json!(["disk-1", "disk-2"]));
    assert_eq!(env.managed(), "disk-2");
    let r = env.ok("unmount_disk", json!(["disk-1"]));
    assert!(r["message"].as_str().unwrap().starts_with("Partition of {ID:disk-1 "), "{r}");
    let r = env.ok("unmount_disk", json!(["disk-2"]));
    assert_eq!(
        r["message"],
        "Unmounted partition of {ID:disk-2 DeviceID: VolumeID:4 Lun: HostDeviceID: Path:/dev/sdd \
         ISCSISettings:{InitiatorName: Username: Target: Password:} FileSystemType:ext4 MountOptions:[] Partitioner:}"
    );
    env.ok("remove_persistent_disk", json!(["disk-2"]));
    assert_eq!(env.list(), json!(["disk-1"]));

    env.ok("add_dynamic_disk", json!(["dyn-1", "/dev/sde"]));
    let r = env.d.send("remove_dynamic_disk", json!(["dyn-1"]));
    assert_eq!(r, json!({"value": {}}));
    let e = exception(&env.task("add_persistent_disk", json!(["../evil", "/dev/sdf"])));
    assert!(e.contains("invalid disk CID"), "{e}");

    // A recorded disk that no longer exists anywhere: the agent still boots and answers.
    std::fs::write(base.join("bosh/managed_disk_settings.json"), "disk-gone").unwrap();
    env.agent.restart();
    assert!(env.d.wait_ready(Duration::from_secs(15)), "agent did not boot:\n{}", env.agent.log());
    assert_eq!(env.list(), json!(["disk-1"]));
}

/// Bytes the filesystem mounted at `dir` spans (statvfs blocks × fragment size).
fn fs_bytes(dir: &Path) -> u64 {
    let out = sh(Command::new("stat").args(["-f", "-c", "%b %S"]).arg(dir));
    let v: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    v[0] * v[1]
}

const MIB: u64 = 1 << 20;

#[test]
fn warden_directory_disks_are_bind_mounted_listed_migrated_and_remounted() {
    if !devices_available("warden_directory_disks_are_bind_mounted_listed_migrated_and_remounted", &["mount"])
    {
        return;
    }
    // bosh-lite's agent.json: the "disk" is a directory the warden CPI made.
    let warden = json!({"UsePreformattedPersistentDisk": true, "BindMountPersistentDisk": true,
                        "SkipDiskSetup": true, "UseDefaultTmpDir": true});
    let mut env = start_with("disk-warden", "linux", Opts { linux: warden, ..Opts::default() });
    let disks = tempfile::tempdir().unwrap();
    let (a, b) = (disks.path().join("disk-a"), disks.path().join("disk-b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("hello.txt"), "from the host").unwrap();
    env.ok("add_persistent_disk", json!(["disk-a", a]));
    env.ok("add_persistent_disk", json!(["disk-b", {"path": b}]));
    assert_eq!(env.list(), json!([]));

    env.ok("mount_disk", json!(["disk-a"]));
    assert!(in_proc_mounts(&env.store()), "store not mounted");
    assert_eq!(std::fs::read_to_string(env.store().join("hello.txt")).unwrap(), "from the host");
    std::fs::write(env.store().join("job.data"), "written by a job").unwrap();
    assert_eq!(std::fs::read_to_string(a.join("job.data")).unwrap(), "written by a job", "not a bind mount");
    assert_eq!(env.managed(), "disk-a");
    assert_eq!(env.list(), json!(["disk-a"]));
    env.ok("mount_disk", json!(["disk-a"]));
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let store = env.store();
    let on_store = table.lines().filter(|l| l.split_whitespace().nth(1) == store.to_str()).count();
    assert_eq!(on_store, 1, "mounting again stacked a second bind mount");

    // Migration to the second directory disk.
    env.ok("mount_disk", json!(["disk-b"]));
    assert!(in_proc_mounts(&env.target()));
    env.ok("migrate_disk", json!(["disk-a", "disk-b"]));
    assert_eq!(std::fs::read_to_string(b.join("job.data")).unwrap(), "written by a job");
    assert_eq!(std::fs::read_to_string(env.store().join("hello.txt")).unwrap(), "from the host");
    assert!(!in_proc_mounts(&env.target()));
    assert_eq!(env.managed(), "disk-b");
    assert_eq!(env.list(), json!(["disk-b"]));

    // A restarted container: the recorded directory is bound again at boot.
    sh(Command::new("umount").arg(env.store()));
    env.agent.restart();
    assert!(env.d.wait_ready(Duration::from_secs(15)), "agent did not boot:\n{}", env.agent.log());
    assert_eq!(env.list(), json!(["disk-b"]));
    assert_eq!(std::fs::read_to_string(env.store().join("job.data")).unwrap(), "written by a job");

    env.ok("unmount_disk", json!(["disk-b"]));
    assert!(!in_proc_mounts(&env.store()));
    assert_eq!(env.list(), json!([]));
    assert!(b.join("job.data").exists(), "unmounting touched the directory");
}

#[test]
fn preformatted_disks_are_mounted_as_given_and_never_formatted() {
    let Some(_turn) = turn("preformatted_disks_are_mounted_as_given_and_never_formatted", TOOLS) else {
        return;
    };
    let linux = json!({"UsePreformattedPersistentDisk": true});
    let mut env = start_with("disk-preformatted", "linux", Opts { linux, ..Opts::default() });
    let whole = LoopDisk::new(64).with_whole_device_data();
    env.ok("add_persistent_disk", json!(["disk-whole", whole.dev()]));
    env.ok("mount_disk", json!(["disk-whole"]));
    assert_eq!(std::fs::read_to_string(env.store().join("hello.txt")).unwrap(), "precious");
    assert_eq!(mounted_at(&env.store()), Some(mount::device_number(whole.dev()).unwrap()));
    env.ok("unmount_disk", json!(["disk-whole"]));

    // A blank disk is not partitioned or formatted: mounting it fails and it stays blank.
    let blank = LoopDisk::new(64);
    env.ok("add_persistent_disk", json!(["disk-blank", blank.dev()]));
    let e = exception(&env.task("mount_disk", json!(["disk-blank"])));
    assert!(e.contains("mount"), "{e}");
    let probe = Command::new("blkid").arg("-p").arg(blank.dev()).output().unwrap();
    assert!(
        probe.stdout.is_empty(),
        "the blank disk was written: {}",
        String::from_utf8_lossy(&probe.stdout)
    );
    assert!(!in_proc_mounts(&env.store()));
}

/// Grows the loop device's image by `mb` and tells the kernel (`losetup -c`), as a resize by the
/// director (detach, resize, attach) leaves the disk.
fn grow_loop(disk: &LoopDisk, mb: u64) {
    let img = disk._dir.path().join("disk.img");
    let len = std::fs::metadata(&img).unwrap().len();
    std::fs::File::options().write(true).open(&img).unwrap().set_len(len + (mb << 20)).unwrap();
    sh(Command::new("losetup").arg("-c").arg(disk.dev()));
}

fn resized_disk_grows_on_mount(fs: &'static str, mb: u64) {
    let mut env = start_with(&format!("disk-resize-{fs}"), "linux", Opts { fs: Some(fs), ..Opts::default() });
    let disk = LoopDisk::new(mb);
    env.ok("add_persistent_disk", json!(["disk-r", disk.dev()]));
    env.ok("mount_disk", json!(["disk-r"]));
    let blkid = sh(Command::new("blkid").args(["-p", "-o", "value", "-s", "TYPE"]).arg(disk.p1()));
    assert_eq!(blkid.trim(), fs);
    std::fs::write(env.store().join("kept.txt"), "before the resize").unwrap();
    let before = fs_bytes(&env.store());
    let uuid = sh(Command::new("blkid").args(["-p", "-o", "value", "-s", "UUID"]).arg(disk.p1()));
    env.ok("unmount_disk", json!(["disk-r"]));

    grow_loop(&disk, mb);
    env.ok("mount_disk", json!(["disk-r"]));
    let p1 = prepare::size_of(&disk.p1()).unwrap();
    assert!(p1 > (2 * mb - 2) * MIB, "partition 1 is {} MiB of a {} MiB disk", p1 / MIB, 2 * mb);
    let after = fs_bytes(&env.store());
    assert!(after > before + (mb - 40) * MIB, "{fs} not grown: {} -> {} MiB", before / MIB, after / MIB);
    assert_eq!(std::fs::read_to_string(env.store().join("kept.txt")).unwrap(), "before the resize");
    let uuid_after = sh(Command::new("blkid").args(["-p", "-o", "value", "-s", "UUID"]).arg(disk.p1()));
    assert_eq!(uuid_after, uuid, "the disk was reformatted");

    // Mounting again (already grown, already mounted) changes nothing.
    env.ok("mount_disk", json!(["disk-r"]));
    assert_eq!(fs_bytes(&env.store()), after);
    env.ok("unmount_disk", json!(["disk-r"]));
}

#[test]
fn a_resized_ext4_disk_grows_on_mount() {
    let tools = [TOOLS, &["resize2fs", "e2fsck"]].concat();
    let Some(_turn) = turn("a_resized_ext4_disk_grows_on_mount", &tools) else { return };
    resized_disk_grows_on_mount("ext4", 200);
}

#[test]
fn a_resized_xfs_disk_grows_on_mount() {
    if !devices_available("a_resized_xfs_disk_grows_on_mount", &[TOOLS, &["mkfs.xfs", "xfs_growfs"]].concat())
    {
        return;
    }
    resized_disk_grows_on_mount("xfs", 320);
}

/// An agent with `DevicePathResolutionType` `kind`, and a blank loop disk for it to find.
fn resolving(kind: &str) -> (Env, LoopDisk) {
    let linux = json!({ "DevicePathResolutionType": kind });
    (start_with(&format!("disk-{kind}"), "linux", Opts { linux, ..Opts::default() }), LoopDisk::new(64))
}

/// A fake SCSI device in a fake sysfs under `root`: `devices/.../<addr>/block/<name>` plus the bus
/// link, as the kernel lays it out, and `/dev/<name>` under the root leading to a real loop device.
/// (No test can make the kernel grow a SCSI host; the loop device stands in for the disk.)
fn fake_scsi_disk(root: &Path, addr: &str, name: &str, dev: &Path) {
    let real = root.join("sys/devices/pci0000:00/host2").join(addr);
    std::fs::create_dir_all(real.join("block").join(name)).unwrap();
    let bus = root.join("sys/bus/scsi/devices");
    std::fs::create_dir_all(&bus).unwrap();
    std::os::unix::fs::symlink(&real, bus.join(addr)).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::os::unix::fs::symlink(dev, root.join("dev").join(name)).unwrap();
}

#[test]
fn scsi_disks_appear_after_the_rescan_the_agent_triggers() {
    let Some(_turn) = turn("scsi_disks_appear_after_the_rescan_the_agent_triggers", TOOLS) else { return };
    let (mut env, disk) = resolving("scsi");
    // FAKE SYSFS: two SCSI hosts whose `scan` files record what the agent writes.
    let root = env.root.path().to_path_buf();
    for host in ["host0", "host2"] {
        let dir = root.join("sys/class/scsi_host").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("scan"), "").unwrap();
    }
    // The "hypervisor": the disk shows up as 2:0:3:0 only once host2 was asked to scan.
    let (r, dev) = (root.clone(), disk.dev().to_path_buf());
    let attach = std::thread::spawn(move || {
        let scan = r.join("sys/class/scsi_host/host2/scan");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(&scan).unwrap_or_default() != "- - -" {
            assert!(std::time::Instant::now() < deadline, "the agent never rescanned host2");
            std::thread::sleep(Duration::from_millis(20));
        }
        fake_scsi_disk(&r, "2:0:3:0", "sdq", &dev);
    });
    env.ok("add_persistent_disk", json!(["disk-scsi", {"volume_id": "3"}]));
    env.ok("mount_disk", json!(["disk-scsi"]));
    attach.join().unwrap();
    assert_eq!(std::fs::read_to_string(root.join("sys/class/scsi_host/host0/scan")).unwrap(), "- - -");
    assert_eq!(mounted_at(&env.store()), Some(mount::device_number(&disk.p1()).unwrap()));
    assert_eq!(env.list(), json!(["disk-scsi"]));
    env.ok("unmount_disk", json!(["disk-scsi"]));
    assert_eq!(env.list(), json!([]));
}

#[test]
fn virtio_disks_are_found_by_their_cid_under_by_id() {
    let Some(_turn) = turn("virtio_disks_are_found_by_their_cid_under_by_id", TOOLS) else { return };
    let (mut env, disk) = resolving("virtio");
    // FAKE UDEV: KVM's by-id link, the serial cut to 20 characters, to a real loop device.
    let cid = "6f2b1c3a-9d4e-4f5a-8b7c-0d1e2f3a4b5c";
    let by_id = env.root.path().join("dev/disk/by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    std::os::unix::fs::symlink(disk.dev(), by_id.join(format!("virtio-{}", &cid[..20]))).unwrap();
    // The CPI's path names a device that does not exist here: the by-id name wins.
    env.ok("add_persistent_disk", json!([cid, {"path": "/dev/sdzz"}]));
    env.ok("mount_disk", json!([cid]));
    assert_eq!(mounted_at(&env.store()), Some(mount::device_number(&disk.p1()).unwrap()));
    assert_eq!(env.list(), json!([cid]));
    env.ok("unmount_disk", json!([cid]));
}

/// FAKE iscsiadm and dmsetup: this kernel has no device-mapper and there is no iSCSI target, so
/// `iscsiadm -m node -l` "logs in" by linking `<root>/dev/mapper/<wwid>` to a real loop device (the
/// LUN), and `dmsetup ls` lists the links in `<root>/dev/mapper` as maps — adding `<wwid>-part1`,
/// as multipathd would, once the LUN has a partition. Every iscsiadm call is logged to `calls`.
fn fake_iscsi_tools(bin: &Path, root: &Path, lun: &Path, wwid: &str, calls: &Path) {
    let mapper = root.join("dev/mapper");
    std::fs::create_dir_all(&mapper).unwrap();
    let lun_name = lun.file_name().unwrap().to_str().unwrap();
    let iscsiadm = format!(
        "#!/bin/sh\n# FAKE iscsiadm (test stand-in: no iSCSI target exists here)\necho \"$*\" >> '{calls}'\n\
         case \"$*\" in\n  '-m session') echo 'iscsiadm: No active sessions.' >&2; exit 21 ;;\n  \
         '-m node -l') ln -sf '{lun}' '{mapper}/{wwid}' ;;\nesac\nexit 0\n",
        calls = calls.display(),
        lun = lun.display(),
        mapper = mapper.display(),
    );
    let dmsetup = format!(
        "#!/bin/sh\n# FAKE dmsetup (test stand-in: this kernel has no device-mapper)\n[ \"$1\" = ls ] || exit 1\n\
         [ -e '{mapper}/{wwid}' ] && partx -u /dev/{lun_name} 2>/dev/null\n\
         p=/sys/class/block/{lun_name}p1\n\
         if [ -e '{mapper}/{wwid}' ] && [ -e $p ]; then\n  \
           [ -b /dev/{lun_name}p1 ] || mknod /dev/{lun_name}p1 b $(cut -d: -f1 $p/dev) $(cut -d: -f2 $p/dev)\n  \
           ln -sf /dev/{lun_name}p1 '{mapper}/{wwid}-part1'\nfi\n\
         n=0\nfor f in '{mapper}'/*; do [ -e \"$f\" ] || continue; n=$((n+1)); printf '%s\\t(253:%s)\\n' \"${{f##*/}}\" $n; done\n\
         [ $n -gt 0 ] || echo 'No devices found'\n",
        mapper = mapper.display(),
    );
    for (name, text) in [("iscsiadm", iscsiadm), ("dmsetup", dmsetup)] {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn iscsi_disks_are_logged_in_and_found_as_multipath_maps() {
    let Some(_turn) = turn("iscsi_disks_are_logged_in_and_found_as_multipath_maps", TOOLS) else { return };
    eprintln!(
        "\n!!!!!!!! iscsi test: iscsiadm and dmsetup are FAKE scripts on PATH and the LUN is a loop device \
         (no iSCSI target or device-mapper here) !!!!!!!!\n"
    );
    let disk = LoopDisk::new(64);
    let bin = tempfile::tempdir().unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let linux = json!({"DevicePathResolutionType": "iscsi"});
    let mut env = start_with(
        "disk-iscsi",
        "linux",
        Opts { linux, env: vec![("PATH".into(), path)], ..Opts::default() },
    );
    let wwid = "3600a09803830447a4f244c4657616f6f";
    let calls = bin.path().join("calls");
    fake_iscsi_tools(bin.path(), env.root.path(), disk.dev(), wwid, &calls);
    let hint = json!({"id": "vol-1", "iscsi_settings": {"initiator_name": "iqn.2024-01.com.example:vm-1",
        "username": "chap-user", "password": "chap-secret", "target": "10.1.2.3"}});
    env.ok("add_persistent_disk", json!(["disk-iscsi", hint]));
    env.ok("mount_disk", json!(["disk-iscsi"]));
    assert_eq!(mounted_at(&env.store()), Some(mount::device_number(&disk.p1()).unwrap()));
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "-m discovery -t sendtargets -p 10.1.2.3\n-m session\n-m node -l\n"
    );
    let etc = env.root.path().join("etc/iscsi");
    assert_eq!(
        std::fs::read_to_string(etc.join("initiatorname.iscsi")).unwrap(),
        "InitiatorName=iqn.2024-01.com.example:vm-1\n"
    );
    let conf = std::fs::read_to_string(etc.join("iscsid.conf")).unwrap();
    assert!(conf.contains("node.session.auth.username = chap-user\n"), "{conf}");
    assert!(conf.contains("discovery.sendtargets.auth.password = chap-secret\n"), "{conf}");
    let mode = std::fs::metadata(etc.join("iscsid.conf")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the CHAP secret is readable by others");
    assert!(!env.agent.log().contains("chap-secret"), "the CHAP secret was logged");

    // A restarted agent has no cache: the partitioned map of the recorded disk is it, no new login.
    env.agent.restart();
    assert!(env.d.wait_ready(Duration::from_secs(15)), "agent did not boot:\n{}", env.agent.log());
    assert_eq!(env.list(), json!(["disk-iscsi"]));
    env.ok("unmount_disk", json!(["disk-iscsi"]));
    assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 3, "logged in again");
    assert_eq!(env.list(), json!([]));
}
