//! `prepare_network_change` (being written on the vm branch).

use super::{Action, Call};
use serde_json::Value;

/// `prepare_network_change`.
pub struct PrepareNetworkChange;
impl Action for PrepareNetworkChange {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(PrepareNetworkChange)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}
