//! Where settings come from. Each infrastructure is one small type behind [`SettingsSource`], so
//! metadata services, config drives and CD-ROMs slot in without touching the rest of the agent.
//!
//! Network and disk sources are wrapped in [`Retrying`]: at boot a metadata service or a CD-ROM may
//! not be ready yet, but a VM whose source is truly gone must still fall back to the cached settings
//! quickly, so every source gets a few attempts with a short backoff, every request and mount a
//! timeout, and all sources of one load together a deadline.

mod cdrom;
mod config_drive;
mod http;
mod http_metadata;
mod instance_metadata;
mod mount;
mod registry;
mod user_data;

pub use cdrom::CdromSource;
pub use config_drive::ConfigDriveSource;
pub use http_metadata::HttpMetadataSource;
pub use instance_metadata::InstanceMetadataSource;

use crate::config::{HttpSourceConfig, SourceConfig};
use crate::dirs::Dirs;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A place the agent can read its settings from.
pub trait SettingsSource: Send + Sync {
    /// Short name for log lines and errors.
    fn name(&self) -> String;
    /// Fetches the raw settings document.
    fn fetch(&self) -> Result<Value, String>;
    /// The infrastructure's OpenSSH key for `vcap`, if the last successful fetch found one (metadata
    /// services and config drives carry one; the platform installs it).
    fn public_key(&self) -> Option<String> {
        None
    }
}

/// Why one attempt failed, and so whether another may succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Not reachable, timed out, overloaded, not mounted yet: try again.
    Transient(String),
    /// Missing, malformed or refused: another attempt would fail the same way.
    Permanent(String),
}

impl Failure {
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Permanent(m) => m,
        }
    }

    /// The same kind of failure with the message rewritten (to add context).
    pub fn map(self, f: impl FnOnce(String) -> String) -> Failure {
        match self {
            Failure::Transient(m) => Failure::Transient(f(m)),
            Failure::Permanent(m) => Failure::Permanent(f(m)),
        }
    }
}

/// What one successful attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The settings document.
    pub settings: Value,
    /// The infrastructure's OpenSSH key, if it has one.
    pub public_key: Option<String>,
}

/// A source that can be tried once within a deadline; [`Retrying`] makes it a [`SettingsSource`].
pub trait Attempt: Send + Sync {
    /// Short name for log lines and errors.
    fn name(&self) -> String;
    /// One try; everything it does must end by `deadline`.
    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure>;
}

/// How hard to try. The defaults keep a dead source's cost to seconds while riding out a metadata
/// service or drive that needs a moment at boot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per source per load.
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub backoff: Duration,
    /// Bound on one attempt (all its requests or its mount).
    pub attempt_timeout: Duration,
    /// Bound on one load across all the retrying sources of a list.
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(10),
            total: Duration::from_secs(60),
        }
    }
}

/// The deadline shared by the sources of one list: the first retrying source starts it on every
/// load (sources are always tried in order), the others only read it.
#[derive(Debug)]
struct Round {
    deadline: Mutex<Instant>,
}

/// A source tried up to `policy.attempts` times, with backoff, within the list's deadline.
pub struct Retrying<A: Attempt> {
    inner: A,
    policy: RetryPolicy,
    round: Arc<Round>,
    leads: bool,
    key: Mutex<Option<String>>,
}

impl<A: Attempt> Retrying<A> {
    /// A lone retrying source with its own deadline.
    pub fn new(inner: A, policy: RetryPolicy) -> Retrying<A> {
        let round = Arc::new(Round { deadline: Mutex::new(Instant::now() + policy.total) });
        Retrying { inner, policy, round, leads: true, key: Mutex::new(None) }
    }

    fn deadline(&self) -> Instant {
        let mut d = self.round.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if self.leads {
            *d = Instant::now() + self.policy.total;
        }
        *d
    }
}

impl<A: Attempt> SettingsSource for Retrying<A> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn fetch(&self) -> Result<Value, String> {
        let deadline = self.deadline();
        let mut wait = self.policy.backoff;
        let mut last = String::from("not tried: the settings deadline had already passed");
        for n in 1..=self.policy.attempts.max(1) {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "{last} (gave up: settings deadline of {:?} reached)",
                    self.policy.total
                ));
            }
            match self.inner.attempt(deadline.min(now + self.policy.attempt_timeout)) {
                Ok(fetched) => {
                    *self.key.lock().unwrap_or_else(|e| e.into_inner()) = fetched.public_key;
                    return Ok(fetched.settings);
                }
                Err(Failure::Permanent(m)) => return Err(m),
                Err(Failure::Transient(m)) => {
                    log::info!("settings source {} attempt {n}/{}: {m}", self.name(), self.policy.attempts);
                    last = m;
                }
            }
            if n < self.policy.attempts {
                if Instant::now() + wait >= deadline {
                    return Err(format!(
                        "{last} (gave up: settings deadline of {:?} reached)",
                        self.policy.total
                    ));
                }
                std::thread::sleep(wait);
                wait = wait.saturating_mul(2);
            }
        }
        Err(format!("{last} (after {} attempts)", self.policy.attempts.max(1)))
    }

    fn public_key(&self) -> Option<String> {
        self.key.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Settings in a local JSON file (tests, warden/docker CPIs, and the embedded default).
pub struct FileSource {
    /// The file to read.
    pub path: PathBuf,
}

impl SettingsSource for FileSource {
    fn name(&self) -> String {
        format!("File({})", self.path.display())
    }
    fn fetch(&self) -> Result<Value, String> {
        let data = std::fs::read(&self.path).map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        serde_json::from_slice(&data).map_err(|e| format!("parsing {}: {e}", self.path.display()))
    }
}

/// Builds the sources named in `agent.json` with the default [`RetryPolicy`]; `<base>/bosh` holds
/// temporary mount points.
pub fn from_config(configs: &[SourceConfig], dirs: &Dirs) -> Vec<Box<dyn SettingsSource>> {
    build(configs, dirs, RetryPolicy::default())
}

/// Builds the sources with `policy`, skipping (with a warning) the types this release does not
/// implement yet so a stemcell listing several still boots from the ones it has. Local files are
/// read once: retrying them cannot help.
pub fn build(configs: &[SourceConfig], dirs: &Dirs, policy: RetryPolicy) -> Vec<Box<dyn SettingsSource>> {
    let round = Arc::new(Round { deadline: Mutex::new(Instant::now() + policy.total) });
    let mut leads = true;
    let mut retrying = |inner: Box<dyn Attempt>| -> Box<dyn SettingsSource> {
        let source = Retrying { inner, policy, round: round.clone(), leads, key: Mutex::new(None) };
        leads = false;
        Box::new(source)
    };
    let scratch = dirs.bosh();
    let mut out: Vec<Box<dyn SettingsSource>> = Vec::new();
    for c in configs {
        match c {
            SourceConfig::File { settings_path } => {
                out.push(Box::new(FileSource { path: settings_path.clone() }))
            }
            SourceConfig::Http(h) => out.push(retrying(Box::new(HttpMetadataSource::new(h.clone())))),
            SourceConfig::InstanceMetadata { uri, headers, settings_path } => {
                out.push(retrying(Box::new(InstanceMetadataSource {
                    uri: uri.clone(),
                    headers: headers.clone(),
                    settings_path: settings_path.clone(),
                })))
            }
            SourceConfig::ConfigDrive { disk_paths, meta_data_path, user_data_path, settings_path } => out
                .push(retrying(Box::new(ConfigDriveSource {
                    disk_paths: disk_paths.clone(),
                    meta_data_path: meta_data_path.clone(),
                    user_data_path: user_data_path.clone(),
                    settings_path: settings_path.clone(),
                    scratch: scratch.clone(),
                }))),
            SourceConfig::Cdrom { file_name, device_path } => out.push(retrying(Box::new(CdromSource {
                file_name: file_name.clone(),
                device_path: device_path.clone(),
                scratch: scratch.clone(),
            }))),
            SourceConfig::Unsupported { kind } => {
                log::warn!("settings source type '{kind}' is not supported by this agent yet; skipped")
            }
        }
    }
    out
}

impl Attempt for Box<dyn Attempt> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure> {
        (**self).attempt(deadline)
    }
}

/// The environment variable that replaces `http://169.254.169.254` for `-I aws` and `-I openstack`.
/// For tests only: on a real VM the metadata service is always at the link-local address.
pub const METADATA_URL_ENV: &str = "BOSH_AGENT_TEST_METADATA_URL";
/// EC2's (and OpenStack's) metadata service.
pub const EC2_METADATA_URL: &str = "http://169.254.169.254";

/// The sources the Ruby agent's `-I <infrastructure>` implied (seed-ruby-agent.md §2.3), for a
/// stemcell started without `-C`. `metadata_url` replaces the link-local metadata address (tests).
pub fn infrastructure_configs(
    name: &str,
    dirs: &Dirs,
    metadata_url: Option<&str>,
) -> Result<Vec<SourceConfig>, String> {
    let ec2 = |use_server_name: bool| {
        SourceConfig::Http(HttpSourceConfig {
            uri: metadata_url.unwrap_or(EC2_METADATA_URL).trim_end_matches('/').to_string(),
            headers: Vec::new(),
            user_data_path: "/latest/user-data".into(),
            instance_id_path: "/latest/meta-data/instance-id".into(),
            ssh_keys_path: "/latest/meta-data/public-keys/0/openssh-key".into(),
            token_path: String::new(),
            use_server_name,
        })
    };
    match name {
        "aws" => Ok(vec![ec2(false)]),
        "openstack" => Ok(vec![
            SourceConfig::ConfigDrive {
                disk_paths: vec!["/dev/disk/by-label/config-2".into(), "/dev/disk/by-label/CONFIG-2".into()],
                meta_data_path: config_drive::DEFAULT_META_DATA_PATH.into(),
                user_data_path: config_drive::DEFAULT_USER_DATA_PATH.into(),
                settings_path: String::new(),
            },
            ec2(true),
        ]),
        "vsphere" | "vcloud" => {
            Ok(vec![SourceConfig::Cdrom { file_name: "env".into(), device_path: "/dev/sr0".into() }])
        }
        "dummy" => Ok(vec![
            // The Ruby dummy infrastructure's file first, then the agent's own settings file.
            SourceConfig::File { settings_path: dirs.bosh().join("dummy-cpi-agent-env.json") },
            SourceConfig::File { settings_path: dirs.bosh().join("settings.json") },
        ]),
        other => Err(format!(
            "-I {other}: this agent has no built-in settings sources for it; give -C agent.json instead"
        )),
    }
}

/// [`infrastructure_configs`] built with the default [`RetryPolicy`].
pub fn for_infrastructure(
    name: &str,
    dirs: &Dirs,
    metadata_url: Option<&str>,
) -> Result<Vec<Box<dyn SettingsSource>>, String> {
    Ok(from_config(&infrastructure_configs(name, dirs, metadata_url)?, dirs))
}

/// The embedded default's settings: an HTTPS bus on loopback with a self-signed certificate made on
/// first start and kept under `<base>/bosh`, so `bosh-agent` runs with nothing configured.
pub struct EmbeddedSource {
    /// Where the certificate and key are kept.
    pub bosh_dir: PathBuf,
}

impl SettingsSource for EmbeddedSource {
    fn name(&self) -> String {
        "embedded default".into()
    }
    fn fetch(&self) -> Result<Value, String> {
        let (cert, key) = self.certificate()?;
        Ok(serde_json::json!({
            "agent_id": "embedded-agent",
            "mbus": crate::cli::EMBEDDED_MBUS,
            "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}},
            "networks": {"default": {"type": "manual", "ip": "127.0.0.1", "netmask": "255.0.0.0",
                                     "default": ["dns", "gateway"]}},
            "vm": {"name": "embedded-agent"}
        }))
    }
}

impl EmbeddedSource {
    fn certificate(&self) -> Result<(String, String), String> {
        let cert_path = self.bosh_dir.join("embedded-mbus.crt");
        let key_path = self.bosh_dir.join("embedded-mbus.key");
        if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
            return Ok((c, k));
        }
        let names = ["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert, key) = crate::tls::server::self_signed(&names)?;
        crate::fsutil::write_atomic(&key_path, key.as_bytes(), 0o600)
            .map_err(|e| format!("writing {}: {e}", key_path.display()))?;
        crate::fsutil::write_atomic(&cert_path, cert.as_bytes(), 0o644)
            .map_err(|e| format!("writing {}: {e}", cert_path.display()))?;
        log::info!("created a self-signed certificate for the embedded HTTPS bus: {}", cert_path.display());
        Ok((cert, key))
    }
}
