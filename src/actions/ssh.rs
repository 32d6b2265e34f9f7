//! `ssh` setup and cleanup (being written on the vm branch).

use super::{Action, Call};
use serde_json::Value;

/// `ssh [setup|cleanup, {...}]`.
pub struct Ssh;
impl Action for Ssh {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(Ssh)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("not implemented yet".into())
    }
}
