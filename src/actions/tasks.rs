//! `get_task` and `cancel_task`: answered straight from the task table, never queued behind tasks.

use super::{bind, Action, Call};
use crate::tasks::{CancelOutcome, TaskState, POLL_WAIT};
use serde_json::{json, Value};

/// `get_task [id]`: the running handle, the raw result, or the failure. A running task is given up to
/// [`POLL_WAIT`] to finish first, so the poll that follows a quick task's request finds it done.
pub struct GetTask {
    id: String,
}
impl Action for GetTask {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (id,): (String,) = bind(args)?;
        Ok(GetTask { id })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        match call.ctx.tasks.get_waiting(&self.id, POLL_WAIT) {
            Some(TaskState::Running) => Ok(json!({ "agent_task_id": self.id, "state": "running" })),
            Some(TaskState::Done(v)) => Ok(v),
            Some(TaskState::Failed(e)) => Err(format!("Task {} result: {e}", self.id)),
            None => Err(not_found(call, &self.id)),
        }
    }
}

/// The Go agent's words, and whether the task's result expired or there never was such a task.
fn not_found(call: &Call, id: &str) -> String {
    if call.ctx.tasks.expired(id) {
        format!("Task with id {id} could not be found: its result expired")
    } else {
        format!("Task with id {id} could not be found: no task ever had this id")
    }
}

/// `cancel_task [id]`: asks a cancelable task to stop; it still finishes with a normal result.
pub struct CancelTask {
    id: String,
}
impl Action for CancelTask {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (id,): (String,) = bind(args)?;
        Ok(CancelTask { id })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        match call.ctx.tasks.cancel(&self.id) {
            CancelOutcome::Canceled => Ok(json!("canceled")),
            CancelOutcome::NotSupported => Err("not supported".into()),
            CancelOutcome::NotFound => Err(not_found(call, &self.id)),
        }
    }
}
