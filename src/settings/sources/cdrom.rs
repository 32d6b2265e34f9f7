//! The `CDROM` source: vSphere attaches an ISO whose `env` file is the settings document.
//!
//! Why the device is configurable (`DevicePath`, our extension; default `/dev/sr0` as the Go agent
//! hard-codes): it lets a host with the disc elsewhere, or a test with a directory or an image file,
//! use the same code path.

use super::mount::{read_file, read_from};
use super::{Attempt, Failure, Fetched};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

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
        let bytes =
            read_from(&self.device_path, &self.scratch, deadline, |dir| read_file(dir, &self.file_name))?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(settings @ Value::Object(_)) => Ok(Fetched { settings, public_key: None }),
            Ok(_) => Err(Failure::Permanent(format!("{} is not a JSON object", self.file_name))),
            Err(e) => Err(Failure::Permanent(format!("{} is not JSON: {e}", self.file_name))),
        }
    }
}
