//! The `ConfigDrive` source: OpenStack's config drive (a disk labelled `config-2`), read from the
//! first of `DiskPaths` that works. A settings file on the drive wins; otherwise user data gives the
//! settings or a registry pointer, and the meta-data gives the instance id and the OpenSSH key.
//!
//! Why a list of paths: the label's case differs between clouds (`config-2`, `CONFIG-2`), and tests
//! or unusual hosts hand over a directory or an image file instead of a device.

use super::http::Http;
use super::mount::{read_file, read_from};
use super::user_data::{self, UserData};
use super::{Attempt, Failure, Fetched};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

/// Where OpenStack puts the meta-data on the drive.
pub const DEFAULT_META_DATA_PATH: &str = "openstack/latest/meta_data.json";
/// Where OpenStack puts the user data on the drive.
pub const DEFAULT_USER_DATA_PATH: &str = "openstack/latest/user_data";

/// A config drive.
pub struct ConfigDriveSource {
    /// Devices, image files or directories, tried in order.
    pub disk_paths: Vec<PathBuf>,
    /// Meta-data file on the drive.
    pub meta_data_path: String,
    /// User-data file on the drive.
    pub user_data_path: String,
    /// Settings file on the drive, read directly when present (empty: none).
    pub settings_path: String,
    /// Where temporary mount points are made (`<base>/bosh`).
    pub scratch: PathBuf,
}

/// What one drive held.
struct Drive {
    settings: Option<Value>,
    user_data: Option<Vec<u8>>,
    meta: Option<Value>,
}

impl ConfigDriveSource {
    fn read_drive(&self, dir: &std::path::Path) -> Result<Drive, Failure> {
        if !self.settings_path.is_empty() && dir.join(self.settings_path.trim_start_matches('/')).is_file() {
            let settings = serde_json::from_slice(&read_file(dir, &self.settings_path)?)
                .map_err(|e| Failure::Permanent(format!("{}: not JSON: {e}", self.settings_path)))?;
            return Ok(Drive { settings: Some(settings), user_data: None, meta: None });
        }
        let user_path = or_default(&self.user_data_path, DEFAULT_USER_DATA_PATH);
        let user_data = read_file(dir, user_path)?;
        let meta_path = or_default(&self.meta_data_path, DEFAULT_META_DATA_PATH);
        let meta = match read_file(dir, meta_path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| Failure::Permanent(format!("{meta_path}: not JSON: {e}")))?,
            ),
            Err(f) => {
                log::info!("config drive: no meta-data ({})", f.message());
                None
            }
        };
        Ok(Drive { settings: None, user_data: Some(user_data), meta })
    }
}

fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

/// The instance id in either meta-data dialect: OpenStack's `uuid` or EC2's `instance-id`.
fn instance_id(meta: &Value) -> Option<String> {
    ["uuid", "instance-id"].iter().find_map(|k| meta.get(*k).and_then(Value::as_str)).map(String::from)
}

/// The OpenSSH key: `public-keys["0"]["openssh-key"]` of EC2-style meta-data (the key the Go agent
/// reads), the same under `public_keys`, or OpenStack's `public_keys{name: key}`.
fn public_key(meta: &Value) -> Option<String> {
    let keys = meta.get("public-keys").or_else(|| meta.get("public_keys"))?.as_object()?;
    keys.get("0").into_iter().chain(keys.values()).find_map(|v| match v {
        Value::String(k) => Some(k.clone()),
        Value::Object(o) => o.get("openssh-key").and_then(Value::as_str).map(String::from),
        _ => None,
    })
}

impl Attempt for ConfigDriveSource {
    fn name(&self) -> String {
        let paths: Vec<String> = self.disk_paths.iter().map(|p| p.display().to_string()).collect();
        format!("ConfigDrive({})", paths.join(", "))
    }

    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure> {
        let mut errors = Vec::new();
        let mut transient = false;
        let mut drive = None;
        for path in &self.disk_paths {
            match read_from(path, &self.scratch, deadline, |dir| self.read_drive(dir)) {
                Ok(d) => {
                    drive = Some(d);
                    break;
                }
                Err(f) => {
                    transient |= matches!(f, Failure::Transient(_));
                    errors.push(format!("{}: {}", path.display(), f.message()));
                }
            }
        }
        let Some(drive) = drive else {
            let message =
                if errors.is_empty() { "no DiskPaths configured".to_string() } else { errors.join("; ") };
            return Err(if transient { Failure::Transient(message) } else { Failure::Permanent(message) });
        };
        let public_key = drive.meta.as_ref().and_then(public_key);
        if let Some(settings) = drive.settings {
            return Ok(Fetched { settings, public_key });
        }
        let raw = drive.user_data.unwrap_or_default();
        let settings = match user_data::interpret(user_data::parse(&raw)?)? {
            UserData::Settings(s) => s,
            UserData::Registry { endpoint, server_name } => {
                let id =
                    server_name.or_else(|| drive.meta.as_ref().and_then(instance_id)).ok_or_else(|| {
                        Failure::Permanent(
                            "user data names a registry but no server.name or instance id".into(),
                        )
                    })?;
                super::registry::fetch(&Http::new(deadline), &endpoint, &id)?
            }
        };
        Ok(Fetched { settings, public_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meta_data_dialects() {
        let os = json!({"uuid": "u-1", "public_keys": {"mykey": "ssh-rsa AAA"}});
        let ec2 = json!({"instance-id": "i-1", "public_keys": {"0": {"openssh-key": "ssh-rsa BBB"}}});
        assert_eq!((instance_id(&os), public_key(&os)), (Some("u-1".into()), Some("ssh-rsa AAA".into())));
        assert_eq!((instance_id(&ec2), public_key(&ec2)), (Some("i-1".into()), Some("ssh-rsa BBB".into())));
        assert_eq!(public_key(&json!({})), None);
        let go = json!({"public-keys": {"1": {"openssh-key": "ssh-rsa ONE"}, "0": {"openssh-key": "ssh-rsa ZERO"}}});
        assert_eq!(public_key(&go), Some("ssh-rsa ZERO".into()));
    }
}
