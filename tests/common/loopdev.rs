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
