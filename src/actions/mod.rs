//! The actions the director and bosh-cli can invoke, and the registry that names them.
//!
//! Each action is a small type that binds its own typed arguments ([`Action::bind`]) and runs with a
//! [`Call`]. The [`registry::REGISTRY`] table shows at a glance which actions are asynchronous,
//! cancelable, persistent and loggable; the dispatcher reads nothing else.

mod agent;
mod args;
mod blobs;
mod compile;
mod disks;
mod dns;
mod dummy;
mod jobs;
mod logs;
mod network;
mod registry;
mod settings;
mod ssh;
mod system;
mod tasks;

pub use args::bind;
/// Every action, for the tests that drive each of them (the argument fuzz).
#[cfg(feature = "internals")]
pub use registry::REGISTRY;
pub use registry::{lookup, ActionSpec, Bound, Quick};

use crate::bus::{BusControl, Notifier};
use crate::cancel::CancelToken;
use crate::dirs::Dirs;
use crate::platform::Platform;
use crate::settings::service::SettingsService;
use crate::supervisor::JobSupervisor;
use crate::tasks::TaskTable;
use crate::vitals::Sampler;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Shared handles every action may use. Cheap to share: everything is behind `Arc`s.
pub struct Context {
    /// Directory layout.
    pub dirs: Dirs,
    /// Current settings.
    pub settings: SettingsService,
    /// The platform layer (real Linux or dummy).
    pub platform: Arc<dyn Platform>,
    /// Job supervision (monit or dummy).
    pub supervisor: Arc<dyn JobSupervisor>,
    /// The task table, for `get_task` and `cancel_task`.
    pub tasks: TaskTable,
    /// What vitals keep between collections (the cpu window, open /proc files).
    pub vitals: Sampler,
    /// The bus, told about settings changes.
    pub bus: Arc<dyn BusControl>,
    /// Health-monitor events (the shutdown notice of `drain shutdown`).
    pub notifier: Arc<dyn Notifier>,
    /// Serialises the actions that change installed jobs (apply, prepare, start), so two never
    /// interleave their symlink switches.
    pub jobs_lock: Mutex<()>,
}

/// One invocation of an action.
pub struct Call<'a> {
    /// Shared handles.
    pub ctx: &'a Context,
    /// The request's protocol version.
    pub protocol: u64,
    /// Cancellation for asynchronous actions (never triggered for synchronous ones).
    pub cancel: &'a CancelToken,
}

/// An action with typed arguments.
pub trait Action: Sized + Send + 'static {
    /// Checks and converts the `arguments` array; errors name the bad argument.
    fn bind(args: &[Value]) -> Result<Self, String>;
    /// Does the work.
    fn run(self, call: &Call) -> Result<Value, String>;
    /// Finishes a persistent task interrupted by a restart; by default runs it again.
    fn resume(self, call: &Call) -> Result<Value, String> {
        self.run(call)
    }
}
