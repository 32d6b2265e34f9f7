//! `prepare_network_change`: sent by the director before it moves a VM to other networks (a CPI that
//! re-creates the NIC). As the original agent did (seed-ruby-agent.md §3.4, §4.5), it forgets the
//! udev rule that pinned the old NIC's MAC to `eth0`, so the new NIC gets the same name on the next
//! boot, and answers `true`. Deleting a file that is already gone is success, so a retry is harmless;
//! the dummy platform has no NICs and only answers.

use super::{bind, Action, Call};
use crate::dirs::Dirs;
use serde_json::Value;

/// Where udev persists interface names on the stemcells that still use it.
pub const PERSISTENT_NET_RULES: &str = "/etc/udev/rules.d/70-persistent-net.rules";

/// `prepare_network_change []`.
pub struct PrepareNetworkChange;
impl Action for PrepareNetworkChange {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| PrepareNetworkChange)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        if !call.ctx.platform.is_dummy() {
            remove_persistent_net_rules(&call.ctx.dirs)?;
        }
        Ok(Value::Bool(true))
    }
}

/// Removes `<root>/etc/udev/rules.d/70-persistent-net.rules` if present.
pub fn remove_persistent_net_rules(dirs: &Dirs) -> Result<(), String> {
    let path = dirs.under_root(PERSISTENT_NET_RULES);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            log::info!("removed {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_rules_file_and_tolerates_its_absence() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(root.path().join("base"), root.path());
        let rules = dirs.under_root(PERSISTENT_NET_RULES);
        crate::fsutil::write_atomic(&rules, b"SUBSYSTEM==\"net\"\n", 0o644).unwrap();
        remove_persistent_net_rules(&dirs).unwrap();
        assert!(!rules.exists());
        remove_persistent_net_rules(&dirs).unwrap();
    }
}
