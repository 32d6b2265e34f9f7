//! Shared pieces of the real-block-device tests (persistent and ephemeral disks on loop devices).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// Loop devices are few and global: the real-device tests of one binary take turns.
pub static DEVICES: Mutex<()> = Mutex::new(());

/// Runs a command that must succeed; its stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this machine can run a real-device test needing `tools`: loud when not, and a failure
/// under `CI=true` (CI runs as root with loop devices, so a skip there would hide a regression).
pub fn devices_available(test: &str, tools: &[&str]) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let loop_ok = Path::new("/dev/loop-control").exists()
        && Command::new("losetup").arg("-f").output().is_ok_and(|o| o.status.success());
    let have = tools.iter().all(|t| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
    });
    if root && loop_ok && have {
        return true;
    }
    let why = format!("root={root} loop devices={loop_ok} disk tools={have}");
    eprintln!(
        "\n!!!!!!!! {test}: NOT RUN — needs root, loop devices and {} ({why}) !!!!!!!!\n",
        tools.join("/")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} cannot run under CI: {why}");
    false
}

/// This test's turn with the loop devices (taken in order with every other real-device test), if
/// the machine can run it: `None` when [`devices_available`] says it cannot.
pub fn turn(test: &str, tools: &[&str]) -> Option<std::sync::MutexGuard<'static, ()>> {
    let g = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    devices_available(test, tools).then_some(g)
}

/// Detaches a loop device and waits (bounded) until the kernel has let go of it: a detach is
/// deferred while anything still holds the device open, and a test that goes on to restart an agent
/// must not have it find the "vanished" disk still there.
pub fn detach(dev: &Path) {
    let _ = Command::new("losetup").arg("-d").arg(dev).status();
    let name = dev.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    let gone = super::wait_until(std::time::Duration::from_secs(20), || !backing.exists());
    // Not a second panic while a failing test unwinds through a Drop.
    if !gone && !std::thread::panicking() {
        panic!("{} still attached 20 s after losetup -d", dev.display());
    }
}

/// A loop device on a sparse image of its own. On drop, whatever is mounted from it or its
/// partitions is lazily unmounted, it is detached, and the partition nodes the kernel no longer backs
/// (made by mknod in udev-less containers) are removed.
pub struct LoopDevice {
    _dir: tempfile::TempDir,
    dev: std::path::PathBuf,
}

impl LoopDevice {
    /// Attaches a fresh sparse image of `mb` MiB.
    pub fn new(mb: u64) -> LoopDevice {
        let dir = tempfile::tempdir().expect("image dir");
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).expect("image").set_len(mb << 20).expect("size");
        let dev = sh(Command::new("losetup").args(["-f", "--show", "-P"]).arg(&img));
        LoopDevice { _dir: dir, dev: std::path::PathBuf::from(dev.trim()) }
    }

    /// The device node.
    pub fn path(&self) -> &Path {
        &self.dev
    }

    /// Partition `n`'s node.
    pub fn part(&self, n: usize) -> std::path::PathBuf {
        bosh_agent::platform::disks::prepare::partition_path_n(&self.dev, n)
    }

    /// Makes the disk `mb` MiB bigger and tells the kernel (`losetup -c`), as an IaaS growing a
    /// disk, or the director resizing one, leaves it.
    pub fn grow(&self, mb: u64) {
        let img = self._dir.path().join("disk.img");
        let len = std::fs::metadata(&img).expect("image").len();
        let f = std::fs::File::options().write(true).open(&img).expect("image");
        f.set_len(len + (mb << 20)).expect("grow");
        sh(Command::new("losetup").arg("-c").arg(&self.dev));
    }

    /// Lazily unmounts everything mounted from the device or its partitions (a "reboot").
    pub fn unmount_all(&self) {
        use bosh_agent::platform::disks::mount;
        for n in [self.part(1), self.part(2), self.part(3), self.part(4), self.dev.clone()] {
            if let (Ok(num), Ok(table)) = (mount::device_number(&n), mount::mounts()) {
                for p in mount::mount_points_of(&table, num).iter().rev() {
                    let _ = Command::new("umount").arg("-l").arg(p).status();
                }
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        self.unmount_all();
        detach(&self.dev);
        for n in 1..=4 {
            let p = self.part(n);
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if p.exists() && !Path::new("/sys/class/block").join(name).exists() {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}
