//! The registry: every action's wire name, mode and flags in one table, read by the dispatcher.

use super::{agent, blobs, compile, disks, dns, dummy, jobs, logs, network, settings, ssh, system, tasks};
use super::{Action, Call};
use serde_json::Value;

/// How an action answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The reply carries the result.
    Sync,
    /// The reply is a task handle; the result comes from `get_task`.
    Async,
    /// Async when the request's protocol is at least 3 (the director), sync otherwise (bosh-cli).
    AsyncFromProtocol3,
}

/// Whether a listener's own thread may answer the action (see `Dispatcher::accept`): it takes
/// microseconds and never waits, so handing it to a worker would cost more than running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quick {
    /// It may block: a worker answers it.
    No,
    /// Always quick.
    Yes,
    /// `get_task`: quick unless the task is still running (a poll then waits for it a little).
    UnlessTaskRunning,
}

/// An action bound to its arguments, ready to run.
pub type Bound = Box<dyn FnOnce(&Call, bool) -> Result<Value, String> + Send>;

/// One registry row.
pub struct ActionSpec {
    /// The method name on the wire.
    pub name: &'static str,
    /// Sync or async.
    pub mode: Mode,
    /// Whether `cancel_task` can stop it.
    pub cancelable: bool,
    /// Whether its task survives an agent restart (recorded in `tasks.json`).
    pub persistent: bool,
    /// Whether its arguments may be logged (false when they carry secrets).
    pub loggable: bool,
    /// Only offered on the dummy platform (test and benchmark helpers).
    pub dummy_only: bool,
    /// Whether the listener's thread may answer it.
    pub quick: Quick,
    bind: fn(&[Value]) -> Result<Bound, String>,
}

impl ActionSpec {
    /// Binds the arguments; the result runs the action, or resumes it when its flag is set.
    pub fn bind(&self, args: &[Value]) -> Result<Bound, String> {
        (self.bind)(args)
    }
    /// Whether a request with this protocol version gets a task handle.
    pub fn is_async(&self, protocol: u64) -> bool {
        match self.mode {
            Mode::Sync => false,
            Mode::Async => true,
            Mode::AsyncFromProtocol3 => protocol >= 3,
        }
    }
}

fn binder<A: Action>(args: &[Value]) -> Result<Bound, String> {
    let action = A::bind(args)?;
    Ok(Box::new(move |call: &Call, resume: bool| if resume { action.resume(call) } else { action.run(call) }))
}

const fn row(
    name: &'static str,
    mode: Mode,
    [cancelable, persistent, loggable]: [bool; 3],
    bind: fn(&[Value]) -> Result<Bound, String>,
) -> ActionSpec {
    ActionSpec { name, mode, cancelable, persistent, loggable, dummy_only: false, quick: Quick::No, bind }
}

const NO: bool = false;
const YES: bool = true;
use Mode::{Async, AsyncFromProtocol3, Sync as Synchronous};

/// Every action the agent answers. Columns after the mode: cancelable, persistent, loggable.
pub static REGISTRY: &[ActionSpec] = &[
    ActionSpec { quick: Quick::Yes, ..row("ping", Synchronous, [NO, NO, YES], binder::<agent::Ping>) },
    ActionSpec { quick: Quick::Yes, ..row("noop", Synchronous, [NO, NO, YES], binder::<agent::Noop>) },
    ActionSpec { quick: Quick::Yes, ..row("info", Synchronous, [NO, NO, YES], binder::<agent::Info>) },
    row("get_state", Synchronous, [NO, NO, YES], binder::<agent::GetState>),
    row("state", Synchronous, [NO, NO, YES], binder::<agent::GetState>),
    ActionSpec {
        quick: Quick::UnlessTaskRunning,
        ..row("get_task", Synchronous, [NO, NO, YES], binder::<tasks::GetTask>)
    },
    ActionSpec {
        quick: Quick::Yes,
        ..row("cancel_task", Synchronous, [NO, NO, YES], binder::<tasks::CancelTask>)
    },
    row("list_disk", AsyncFromProtocol3, [NO, NO, YES], binder::<disks::ListDisk>),
    row("remove_file", Synchronous, [NO, NO, YES], binder::<system::RemoveFile>),
    row("shutdown", Synchronous, [NO, NO, YES], binder::<system::Shutdown>),
    row("prepare", Async, [NO, NO, YES], binder::<jobs::Prepare>),
    row("apply", Async, [NO, NO, YES], binder::<jobs::Apply>),
    row("start", Synchronous, [NO, NO, YES], binder::<jobs::Start>),
    row("stop", Async, [NO, NO, YES], binder::<jobs::Stop>),
    row("drain", Async, [YES, NO, YES], binder::<jobs::Drain>),
    row("run_script", Async, [NO, NO, YES], binder::<jobs::RunScript>),
    row("run_errand", Async, [YES, NO, YES], binder::<jobs::RunErrand>),
    row("compile_package", Async, [NO, NO, YES], binder::<compile::CompilePackage>),
    row(
        "compile_package_with_signed_url",
        Async,
        [NO, NO, YES],
        binder::<compile::CompilePackageWithSignedUrl>,
    ),
    row("fetch_logs", Async, [NO, NO, YES], binder::<logs::FetchLogs>),
    row("fetch_logs_with_signed_url", Async, [NO, NO, YES], binder::<logs::FetchLogsWithSignedUrl>),
    row("bundle_logs", Synchronous, [NO, NO, YES], binder::<logs::BundleLogs>),
    row("upload_blob", Async, [NO, NO, NO], binder::<blobs::UploadBlob>),
    row("sync_dns", Synchronous, [NO, NO, YES], binder::<dns::SyncDns>),
    row("sync_dns_with_signed_url", Synchronous, [NO, NO, YES], binder::<dns::SyncDnsWithSignedUrl>),
    row("delete_arp_entries", Synchronous, [NO, NO, YES], binder::<dns::DeleteArpEntries>),
    row("mount_disk", Async, [NO, NO, YES], binder::<disks::MountDisk>),
    row("unmount_disk", Async, [NO, NO, YES], binder::<disks::UnmountDisk>),
    row("migrate_disk", Async, [NO, NO, YES], binder::<disks::MigrateDisk>),
    row("add_persistent_disk", Async, [NO, NO, YES], binder::<disks::AddPersistentDisk>),
    row("remove_persistent_disk", Async, [NO, NO, YES], binder::<disks::RemovePersistentDisk>),
    row("add_dynamic_disk", Async, [NO, NO, YES], binder::<disks::AddDynamicDisk>),
    row("remove_dynamic_disk", Synchronous, [NO, NO, YES], binder::<disks::RemoveDynamicDisk>),
    row("ssh", Synchronous, [NO, NO, NO], binder::<ssh::Ssh>),
    row("prepare_network_change", Synchronous, [NO, NO, YES], binder::<network::PrepareNetworkChange>),
    row("update_settings", Async, [NO, YES, NO], binder::<settings::UpdateSettingsAction>),
    ActionSpec { dummy_only: true, ..row("dummy_sleep", Async, [YES, NO, YES], binder::<dummy::Sleep>) },
    ActionSpec { dummy_only: true, ..row("dummy_panic", Synchronous, [NO, NO, YES], binder::<dummy::Panic>) },
];

/// Finds the action for a method name; the dummy-only rows only when `test_actions` are offered.
pub fn lookup(method: &str, test_actions: bool) -> Option<&'static ActionSpec> {
    REGISTRY.iter().find(|s| s.name == method && (test_actions || !s.dummy_only))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_flags_match_the_contract() {
        let flags = |n: &str| {
            let s = lookup(n, true).unwrap();
            (s.is_async(3), s.is_async(0), s.cancelable, s.persistent, s.loggable)
        };
        assert_eq!(flags("ping"), (false, false, false, false, true));
        assert_eq!(flags("get_task"), (false, false, false, false, true));
        assert_eq!(flags("list_disk"), (true, false, false, false, true));
        assert_eq!(flags("update_settings"), (true, true, false, true, false));
        assert_eq!(flags("dummy_sleep"), (true, true, true, false, true));
        assert_eq!(flags("upload_blob"), (true, true, false, false, false));
        assert_eq!(flags("sync_dns"), (false, false, false, false, true));
        assert_eq!(flags("bundle_logs"), (false, false, false, false, true));
        assert_eq!(flags("run_errand"), (true, true, true, false, true));
        let quick: Vec<_> = REGISTRY.iter().filter(|s| s.quick != Quick::No).map(|s| s.name).collect();
        assert_eq!(
            quick,
            ["ping", "noop", "info", "get_task", "cancel_task"],
            "only lookups answer on a listener"
        );
        assert!(lookup("dummy_sleep", false).is_none());
        assert!(lookup("no_such", true).is_none());
        let mut names: Vec<_> = REGISTRY.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len(), "duplicate method names");
    }
}
