//! The monit job supervisor (owned by the monit helper; interface fixed here).
//!
//! INTERFACE CONTRACT:
//!
//! ```ignore
//! pub struct MonitOptions {
//!     pub address: String,        // "127.0.0.1:2822": monit's HTTP interface
//!     pub monit_dir: PathBuf,     // <base>/monit: monit.user, job/, stopped
//!     pub control_file: PathBuf,  // <base>/bosh/etc/monitrc (for `monit -c <file> reload|stop -g vcap`)
//!     pub monit_binary: PathBuf,  // "monit" resolved on PATH, or <base>/bosh/bin/monit
//! }
//! pub struct MonitSupervisor { .. }
//! impl MonitSupervisor {
//!     /// Reads (or creates as `vcap:<random hex>`) `<monit_dir>/monit.user`.
//!     pub fn new(opts: MonitOptions) -> Result<MonitSupervisor, String>;
//! }
//! impl super::JobSupervisor for MonitSupervisor { .. }   // bounded timeouts everywhere
//! ```

// TEMPORARY compile stubs until the monit branch lands.
#![allow(missing_docs, unused_variables, dead_code)]
use std::path::PathBuf;
pub struct MonitOptions {
    pub address: String,
    pub monit_dir: PathBuf,
    pub control_file: PathBuf,
    pub monit_binary: PathBuf,
}
pub struct MonitSupervisor;
impl MonitSupervisor {
    pub fn new(opts: MonitOptions) -> Result<MonitSupervisor, String> {
        Err("stub".into())
    }
}
impl super::JobSupervisor for MonitSupervisor {
    fn job_state(&self) -> String {
        "unknown".into()
    }
    fn processes(&self) -> Vec<super::Process> {
        Vec::new()
    }
    fn start(&self) -> Result<(), String> {
        Err("stub".into())
    }
    fn stop(&self, _: bool) -> Result<(), String> {
        Err("stub".into())
    }
    fn unmonitor(&self) -> Result<(), String> {
        Err("stub".into())
    }
    fn reload(&self) -> Result<(), String> {
        Err("stub".into())
    }
    fn add_job(&self, _: &str, _: usize, _: &std::path::Path) -> Result<(), String> {
        Err("stub".into())
    }
    fn remove_all_jobs(&self) -> Result<(), String> {
        Err("stub".into())
    }
}
