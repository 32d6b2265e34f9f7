//! `prepare_network_change`: sent by the director before it moves a VM to other networks (a CPI that
//! re-creates the NIC). As the original Ruby agent did, it forgets the
//! udev rule that pinned the old NIC's MAC to `eth0`, so the new NIC gets the same name on the next
//! boot, and answers `true`. Deleting a file that is already gone is success, so a retry is harmless;
//! the dummy platform has no NICs and only answers (the work is the platform's).

use super::{bind, Action, Call};
use serde_json::Value;

/// `prepare_network_change []`.
pub struct PrepareNetworkChange;
impl Action for PrepareNetworkChange {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| PrepareNetworkChange)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        call.ctx.platform.prepare_network_change()?;
        Ok(Value::Bool(true))
    }
}
