//! Installing and running jobs: the apply spec ([`spec`]), the bundles it names under
//! `data/{packages,jobs}` ([`applier`]), package compilation ([`compiler`]), the jobs' own scripts
//! ([`scripts`]), the `health.json` jobs' neighbours read ([`health`]) and what a start after a kill
//! puts right ([`startup`]). Keeping the processes running is the supervisor's (`supervisor`), which
//! the actions drive.

pub mod applier;
pub mod compiler;
pub mod health;
pub mod scripts;
pub mod spec;
pub mod startup;
