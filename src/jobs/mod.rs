//! Installing and running jobs: the apply spec ([`spec`]), the bundles it names under
//! `data/{packages,jobs}` ([`applier`]), package compilation ([`compiler`]) and the jobs' own scripts
//! ([`scripts`]), and what a start after a kill puts right ([`startup`]). Keeping the processes running is the supervisor's
//! (`supervisor`), which the actions drive.

pub mod applier;
pub mod compiler;
pub mod scripts;
pub mod spec;
pub mod startup;
