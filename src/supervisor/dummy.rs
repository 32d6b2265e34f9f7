//! The supervisor of `-M dummy`: nothing to supervise, so the agent stands alone (the embedded
//! default, tests and benchmarks).

use super::{JobStatus, JobSupervisor};
use crate::sync::lock;
use std::path::Path;
use std::sync::Mutex;

/// A supervisor with nothing to supervise (`-M dummy`): `running` until stopped, no processes.
#[derive(Default)]
pub struct DummySupervisor {
    stopped: Mutex<bool>,
}

impl DummySupervisor {
    fn set_stopped(&self, v: bool) {
        *lock(&self.stopped) = v;
    }
}

impl JobSupervisor for DummySupervisor {
    fn status(&self) -> JobStatus {
        let stopped = *lock(&self.stopped);
        JobStatus { state: if stopped { "stopped" } else { "running" }.into(), processes: Vec::new() }
    }
    fn start(&self) -> Result<(), String> {
        self.set_stopped(false);
        Ok(())
    }
    fn stop(&self, _wait: bool) -> Result<(), String> {
        self.set_stopped(true);
        Ok(())
    }
    fn unmonitor(&self) -> Result<(), String> {
        Ok(())
    }
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
    fn add_job(&self, _: &str, _: usize, _: &Path) -> Result<(), String> {
        Ok(())
    }
    fn remove_all_jobs(&self) -> Result<(), String> {
        Ok(())
    }
}
