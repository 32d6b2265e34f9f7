//! Where settings come from. Each infrastructure is one small type behind [`SettingsSource`], so
//! metadata services, config drives and CD-ROMs slot in without touching the rest of the agent.
//!
//! Network and disk sources are wrapped in [`retry::Retrying`]; which sources a start reads is
//! decided in `select.rs`, and the embedded default lives in `embedded.rs`.

mod cdrom;
mod config_drive;
mod embedded;
mod guest_info;
mod http;
mod http_metadata;
mod instance_metadata;
mod mount;
mod registry;
pub mod retry;
pub mod select;
mod user_data;

pub use embedded::EMBEDDED_MBUS;
pub use select::select;

use crate::error::Context as _;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What the sources that need the network (`HTTP`, `InstanceMetadata`) call before each try: on a
/// VM none of whose NICs is configured yet, the platform brings up DHCP (the Go agent's minimal
/// network setup; stemcells ship no DHCP configuration). Failures are the platform's to log: the
/// request that follows says whether the network works.
pub type NetworkHook = Arc<dyn Fn() + Send + Sync>;

/// A place the agent can read its settings from.
pub trait SettingsSource: Send + Sync {
    /// Short name for log lines and errors.
    fn name(&self) -> String;
    /// Fetches the raw settings document.
    fn fetch(&self) -> Result<Value, String>;
    /// The infrastructure's OpenSSH key for `vcap`, if the last successful fetch found one (metadata
    /// services and config drives carry one; the bootstrap installs it).
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

/// A source that can be tried once within a deadline; [`retry::Retrying`] makes it a [`SettingsSource`].
pub trait Attempt: Send + Sync {
    /// Short name for log lines and errors.
    fn name(&self) -> String;
    /// One try; everything it does must end by `deadline`.
    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure>;
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
        let data = std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", self.path.display()))
    }
}
