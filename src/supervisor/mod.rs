//! Job supervision: the seam between the agent and whatever keeps job processes running (monit on a
//! stemcell, `-M monit`), plus the `dummy` supervisor (`-M dummy`) that lets the agent stand alone.

mod dummy;
pub mod monit;

pub use dummy::DummySupervisor;

use serde::Serialize;
use std::path::Path;

/// The job supervisor `-M` names, parsed once on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorKind {
    /// `-M monit`: monit on a stemcell.
    Monit,
    /// `-M dummy`: nothing to supervise.
    Dummy,
}

impl SupervisorKind {
    /// The kind `-M <name>` names, if any.
    pub fn parse(name: &str) -> Option<SupervisorKind> {
        match name {
            "monit" => Some(SupervisorKind::Monit),
            "dummy" => Some(SupervisorKind::Dummy),
            _ => None,
        }
    }
}

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

/// What `get_state` and heartbeats report about the jobs, from one read of the supervisor.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    /// `running`, `failing`, `starting`, `stopped` or `unknown`.
    pub state: String,
    /// The supervised processes.
    pub processes: Vec<Process>,
}

/// What the agent needs from a job supervisor. `status` must answer within a bounded time (about
/// 2 s at most), because `get_state` and heartbeats call it and a director marks a VM "unresponsive
/// agent" when `get_state` times out; it is one read, so that bound is the whole cost.
pub trait JobSupervisor: Send + Sync {
    /// The job state and the supervised processes.
    fn status(&self) -> JobStatus;
    /// Starts every job service and clears the stopped marker.
    fn start(&self) -> Result<(), String>;
    /// Stops every job service and sets the stopped marker; with `wait` (protocol 3 and later) returns
    /// only once they are stopped.
    fn stop(&self, wait: bool) -> Result<(), String>;
    /// Stops monitoring every job service (before drain scripts run).
    fn unmonitor(&self) -> Result<(), String>;
    /// Makes the supervisor re-read its job configuration.
    fn reload(&self) -> Result<(), String>;
    /// Installs a job's supervisor configuration file under a name ordered by `index`.
    fn add_job(&self, name: &str, index: usize, config: &Path) -> Result<(), String>;
    /// Removes every installed job configuration.
    fn remove_all_jobs(&self) -> Result<(), String>;
}
