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
