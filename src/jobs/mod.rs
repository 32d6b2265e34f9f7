//! Job supervision: the seam between the agent and whatever keeps job processes running (monit on a
//! stemcell). This release ships the `dummy` supervisor so the agent stands alone; monit plugs in behind
//! the same trait.

pub mod spec;

use serde::Serialize;

/// One supervised process, as `get_state` reports it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Process {
    /// Service name.
    pub name: String,
    /// `running`, `failing`, `starting`, ...
    pub state: String,
    /// Uptime, `{"secs":n}`.
    pub uptime: serde_json::Value,
    /// Memory, `{"kb":n,"percent":f}`.
    pub mem: serde_json::Value,
    /// CPU, `{"total":f}`.
    pub cpu: serde_json::Value,
}

/// What the agent needs from a job supervisor. Every method must answer within a bounded time, because
/// `get_state` and heartbeats call them.
pub trait JobSupervisor: Send + Sync {
    /// `running`, `failing`, `starting`, `stopped` or `unknown`.
    fn job_state(&self) -> String;
    /// The supervised processes.
    fn processes(&self) -> Vec<Process>;
}

/// A supervisor with nothing to supervise: always `running`, no processes (`-M dummy`).
pub struct DummySupervisor;

impl JobSupervisor for DummySupervisor {
    fn job_state(&self) -> String {
        "running".into()
    }
    fn processes(&self) -> Vec<Process> {
        Vec::new()
    }
}
