//! The `CDROM` source: vSphere attaches an ISO whose `env` file is the settings document.
//!
//! A real drive is handled as the Go agent handles `/dev/sr0`: the device is read until it answers
//! (a fresh medium takes a moment), `udevadm settle` lets udev finish with it, the disc is mounted,
//! read and unmounted, and then ejected (`eject -v`), so the vSphere CPI can insert the next `env`
//! (it changes on every disk attach) and every settings load reads the current one. `udevadm` and
//! `eject` are taken from PATH; either missing is logged, not fatal.
//!
//! Why the device is configurable (`DevicePath`, our extension; default `/dev/sr0` as the Go agent
//! hard-codes): it lets a host with the disc elsewhere, or a test with a directory or an image file,
//! use the same code path.

use super::mount::{read_file, read_from};
use super::{Attempt, Failure, Fetched};
use serde_json::Value;
use std::io::Read as _;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Reads of one byte before a drive counts as not ready, and the pause after each failed one.
const PROBES: u32 = 5;
const PROBE_PAUSE: Duration = Duration::from_millis(500);

/// The settings file on a CD-ROM.
pub struct CdromSource {
    /// The file on the disc (`env`).
    pub file_name: String,
    /// Device, image file or directory.
    pub device_path: PathBuf,
    /// Where the temporary mount point is made (`<base>/bosh`).
    pub scratch: PathBuf,
}

impl Attempt for CdromSource {
    fn name(&self) -> String {
        format!("CDROM({}:{})", self.device_path.display(), self.file_name)
    }

    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure> {
        let drive = std::fs::metadata(&self.device_path).is_ok_and(|m| m.file_type().is_block_device());
        if drive {
            wait_for_medium(&self.device_path, deadline)?;
        }
        let bytes =
            read_from(&self.device_path, &self.scratch, deadline, |dir| read_file(dir, &self.file_name))?;
        if drive {
            best_effort(Command::new("eject").arg("-v").arg(&self.device_path), deadline);
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(settings @ Value::Object(_)) => Ok(Fetched { settings, public_key: None }),
            Ok(_) => Err(Failure::Permanent(format!("{} is not a JSON object", self.file_name))),
            Err(e) => Err(Failure::Permanent(format!("{} is not JSON: {e}", self.file_name))),
        }
    }
}

/// Reads one byte of `device`: whether the drive has a readable medium.
fn readable(device: &Path) -> bool {
    let mut byte = [0u8; 1];
    std::fs::File::open(device).and_then(|mut f| f.read(&mut byte)).is_ok_and(|n| n == 1)
}

/// Kicks the drive with reads until it answers, lets udev settle, and checks it is still readable.
fn wait_for_medium(device: &Path, deadline: Instant) -> Result<(), Failure> {
    let probe = || {
        for n in 1..=PROBES {
            if readable(device) {
                return true;
            }
            if n < PROBES && Instant::now() + PROBE_PAUSE < deadline {
                std::thread::sleep(PROBE_PAUSE);
            }
        }
        false
    };
    if !probe() {
        log::info!("CD-ROM {}: no readable medium yet; asking udev to settle", device.display());
    }
    best_effort(Command::new("udevadm").arg("settle"), deadline);
    if probe() {
        Ok(())
    } else {
        Err(Failure::Transient(format!("CD-ROM {}: no readable medium", device.display())))
    }
}

/// Runs a helper whose failure only costs a log line (udev may not run, the drive may not eject).
fn best_effort(cmd: &mut Command, deadline: Instant) {
    let limit = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    match crate::exec::run(cmd, None, limit) {
        Ok(_) => log::info!("{cmd:?}: done"),
        Err(e) => log::info!("{cmd:?} (best effort): {e}"),
    }
}
