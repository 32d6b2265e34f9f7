//! The monit job supervisor (`-M monit`): BOSH jobs are monit services in group `vcap`, driven through
//! monit's HTTP interface (`/_status2?format=xml` and `POST /<service>`), with monit's own CLI only
//! for `reload`, which the HTTP interface cannot do.
//!
//! Two promises shape the code. `status` feeds `get_state` and heartbeats, so it answers within
//! about 2 s whatever monit does (hung, restarting, gone): one read with one short deadline, no
//! retry, `unknown` on failure. Lifecycle operations (`start`, `stop`, `unmonitor`, `reload`) instead wait
//! for a busy or restarting monit, but always with a bound, so a task never hangs forever.

mod client;
pub mod status;

use self::client::{CallError, Client};
use self::status::Status;
use super::{JobStatus, JobSupervisor, Process};
use crate::error::Context as _;
use serde_json::json;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where monit and its files are.
#[derive(Clone, Debug)]
pub struct MonitOptions {
    /// `host:port` of monit's HTTP interface, `127.0.0.1:2822` on a stemcell.
    pub address: String,
    /// `<base>/monit`: `monit.user`, `job/` and the `stopped` marker.
    pub monit_dir: PathBuf,
    /// `<base>/bosh/etc/monitrc`, passed to `monit -c <file> reload`.
    pub control_file: PathBuf,
    /// The monit executable (`monit` on PATH, or `<base>/bosh/bin/monit`).
    pub monit_binary: PathBuf,
}

/// Bounds of every wait. The defaults are the production ones; tests shorten them.
#[derive(Clone, Debug)]
pub struct MonitTimings {
    /// Deadline of the one status read of `status` (1.5 s, under the 2 s promise).
    pub status_timeout: Duration,
    /// Deadline of one request made by a lifecycle operation (10 s).
    pub action_timeout: Duration,
    /// Attempts for a request that finds monit unreachable or busy (20).
    pub attempts: u32,
    /// Attempts while monit answers 503 to `stop` or `unmonitor` (300): a service still starting
    /// keeps monit busy, and a stop must win eventually.
    pub busy_attempts: u32,
    /// Pause between attempts (1 s).
    pub retry_delay: Duration,
    /// How long `stop(wait)` waits for the services to stop (5 min, as the director expects).
    pub stop_wait: Duration,
    /// How long `reload` waits for the new incarnation (60 s: monit reloads between checks, and a
    /// check may be stuck in a start program for up to 30 s).
    pub reload_wait: Duration,
    /// How long the `monit reload` command may take (30 s).
    pub command_timeout: Duration,
    /// Pause between status polls while waiting (500 ms).
    pub poll_interval: Duration,
}

impl Default for MonitTimings {
    fn default() -> Self {
        MonitTimings {
            status_timeout: Duration::from_millis(1500),
            action_timeout: Duration::from_secs(10),
            attempts: 20,
            busy_attempts: 300,
            retry_delay: Duration::from_secs(1),
            stop_wait: Duration::from_secs(300),
            reload_wait: Duration::from_secs(60),
            command_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Supervises jobs through one monit daemon.
pub struct MonitSupervisor {
    opts: MonitOptions,
    timings: MonitTimings,
    client: Client,
}

impl MonitSupervisor {
    /// A supervisor waiting within `timings` (the defaults in production; tests wait seconds, not
    /// minutes). Reads (or creates as `vcap:<random hex>`) `<monit_dir>/monit.user`, the credentials
    /// monit's `allow cleartext` line points at.
    pub fn new(opts: MonitOptions, timings: MonitTimings) -> Result<MonitSupervisor, String> {
        let (user, password) = client::credentials(&opts.monit_dir)?;
        let client =
            Client::new(&opts.address, &user, &password, timings.status_timeout, timings.action_timeout);
        Ok(MonitSupervisor { opts, timings, client })
    }

    /// Monit's current incarnation (its start or last reload time), retried like any lifecycle call.
    pub fn incarnation(&self) -> Result<String, String> {
        Ok(self.status_retried()?.incarnation)
    }

    fn stopped_marker(&self) -> PathBuf {
        self.opts.monit_dir.join("stopped")
    }

    fn jobs_dir(&self) -> PathBuf {
        self.opts.monit_dir.join("job")
    }

    /// Retries `call` while monit is unreachable (`attempts`) or busy (`busy` attempts).
    fn retried<T>(&self, busy: u32, mut call: impl FnMut() -> Result<T, CallError>) -> Result<T, String> {
        let (mut failures, mut busies) = (0, 0);
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(CallError::Transport(m)) if failures + 1 < self.timings.attempts => {
                    failures += 1;
                    log::debug!("monit unreachable, retrying: {m}");
                }
                Err(CallError::Busy(m)) if busies + 1 < busy => {
                    busies += 1;
                    log::debug!("monit busy, retrying: {m}");
                }
                Err(e) => return Err(e.into_message()),
            }
            std::thread::sleep(self.timings.retry_delay);
        }
    }

    fn status_retried(&self) -> Result<Status, String> {
        self.retried(self.timings.attempts, || self.client.status_patiently())
    }

    /// Sends `action` to every vcap service.
    fn act_on_vcap(&self, action: &str, busy: u32) -> Result<(), String> {
        let status = self.status_retried()?;
        for service in status.vcap_services() {
            self.retried(busy, || self.client.action(&service.name, action))
                .with_context(|| format!("{action} of monit service '{}'", service.name))?;
        }
        Ok(())
    }

    /// Polls until no vcap service has an action pending (bounded by the stop wait).
    fn wait_not_pending(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.timings.stop_wait;
        loop {
            let pending: Vec<String> = match self.client.status_patiently() {
                Ok(status) => {
                    status.vcap_services().filter(|s| s.pending()).map(|s| s.name.clone()).collect()
                }
                Err(e) => return Err(e.into_message()),
            };
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "Timed out waiting for services '{}' to no longer be pending after {} seconds",
                    pending.join(", "),
                    self.timings.stop_wait.as_secs()
                ));
            }
            std::thread::sleep(self.timings.poll_interval);
        }
    }

    /// Polls until no vcap service is monitored or pending, the end of a stop.
    fn wait_stopped(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.timings.stop_wait;
        loop {
            let (busy, errored) = match self.client.status_patiently() {
                Ok(status) => stopping(&status),
                Err(e) => (vec![format!("(status: {})", e.into_message())], Vec::new()),
            };
            if !errored.is_empty() {
                return Err(format!("Stopping services '[{}]' errored", errored.join(", ")));
            }
            if busy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "Timed out waiting for services '{}' to stop after {} seconds",
                    busy.join(", "),
                    self.timings.stop_wait.as_secs()
                ));
            }
            std::thread::sleep(self.timings.poll_interval);
        }
    }

    /// Runs `<monit> -c <control file> reload`, killed if it outlasts `command_timeout`.
    fn run_reload_command(&self) -> Result<(), String> {
        let mut cmd = Command::new(&self.opts.monit_binary);
        cmd.arg("-c").arg(&self.opts.control_file).arg("reload");
        crate::exec::run(&mut cmd, None, self.timings.command_timeout).map(|_| ())
    }
}

/// Vcap services still monitored or pending, and those monit reports errored while no action is
/// pending on them (their stop program failed, so waiting longer will not help).
fn stopping(status: &Status) -> (Vec<String>, Vec<String>) {
    let mut busy = Vec::new();
    let mut errored = Vec::new();
    for s in status.vcap_services() {
        if s.monitored() || s.pending() {
            busy.push(s.name.clone());
        }
        if s.monitored() && !s.pending() && s.errored() {
            errored.push(s.name.clone());
        }
    }
    (busy, errored)
}

/// The job state the director sees, from the vcap services: any starting → `starting`, else any
/// not running (including unmonitored) → `failing`, else `running` (also for an empty group).
fn group_state(status: &Status) -> &'static str {
    let mut state = "running";
    for s in status.vcap_services() {
        match s.state() {
            "starting" => return "starting",
            "running" => {}
            _ => state = "failing",
        }
    }
    state
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A job name usable as part of a file name under `job/` (no separators, no dot-only names).
fn valid_job_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\0') && name != "." && name != ".."
}

impl JobSupervisor for MonitSupervisor {
    fn status(&self) -> JobStatus {
        let status = match self.client.status() {
            Ok(s) => s,
            Err(e) => {
                log::debug!("job state unknown: {}", e.into_message());
                return JobStatus { state: "unknown".into(), processes: Vec::new() };
            }
        };
        let state = if self.stopped_marker().exists() { "stopped" } else { group_state(&status) };
        let processes = status
            .vcap_services()
            .map(|s| Process {
                name: s.name.clone(),
                state: s.state().into(),
                uptime: json!({ "secs": s.uptime }),
                mem: json!({ "kb": s.mem_kb, "percent": s.mem_percent }),
                cpu: json!({ "total": s.cpu_percent }),
            })
            .collect();
        JobStatus { state: state.into(), processes }
    }

    fn start(&self) -> Result<(), String> {
        self.act_on_vcap("start", self.timings.attempts)?;
        match fs::remove_file(self.stopped_marker()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(format!("removing {}: {e}", self.stopped_marker().display()))
            }
            _ => Ok(()),
        }
    }

    fn stop(&self, wait: bool) -> Result<(), String> {
        // Monit 5.33 treats `stop` of an unmonitored service (drain unmonitors them all) as done
        // without running its stop program, so processes would survive a "stopped" answer: let
        // pending actions finish, monitor such services again, then stop them.
        self.wait_not_pending()?;
        let status = self.status_retried()?;
        let unmonitored: Vec<String> =
            status.vcap_services().filter(|s| !s.monitored()).map(|s| s.name.clone()).collect();
        for name in &unmonitored {
            self.retried(self.timings.busy_attempts, || self.client.action(name, "monitor"))
                .with_context(|| format!("monitor of monit service '{name}'"))?;
        }
        if !unmonitored.is_empty() {
            self.wait_not_pending()?;
        }
        self.act_on_vcap("stop", self.timings.busy_attempts)?;
        crate::fsutil::write_atomic(&self.stopped_marker(), b"", 0o644)
            .with_context(|| format!("writing {}", self.stopped_marker().display()))?;
        if wait {
            self.wait_stopped()?;
        }
        Ok(())
    }

    fn unmonitor(&self) -> Result<(), String> {
        self.act_on_vcap("unmonitor", self.timings.busy_attempts)
    }

    fn reload(&self) -> Result<(), String> {
        let before = self.incarnation()?;
        // The incarnation has a resolution of one second: a reload within the second monit (re)started
        // would be invisible, so let that second pass first.
        if let Ok(b) = before.parse::<u64>() {
            let limit = Instant::now() + Duration::from_millis(1100);
            while unix_now() <= b && Instant::now() < limit {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.run_reload_command()?;
        let deadline = Instant::now() + self.timings.reload_wait;
        let mut after = before.clone();
        loop {
            // Monit does not answer while it re-reads its configuration; that is expected here.
            if let Ok(status) = self.client.status_patiently() {
                after = status.incarnation;
                if after != before {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("Failed to reload monit: before={before} after={after}"));
            }
            std::thread::sleep(self.timings.poll_interval.min(Duration::from_millis(200)));
        }
    }

    fn add_job(&self, name: &str, index: usize, config: &Path) -> Result<(), String> {
        if !valid_job_name(name) {
            return Err(format!("invalid job name '{name}'"));
        }
        let data = fs::read(config).with_context(|| format!("reading {}", config.display()))?;
        let target = self.jobs_dir().join(format!("{index:04}_{name}.monitrc"));
        crate::fsutil::write_atomic(&target, &data, 0o644)
            .with_context(|| format!("writing {}", target.display()))
    }

    fn remove_all_jobs(&self) -> Result<(), String> {
        match fs::remove_dir_all(self.jobs_dir()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(format!("removing {}: {e}", self.jobs_dir().display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(services: &[(&str, u64, u64)], vcap: &[&str]) -> Status {
        Status {
            incarnation: "1".into(),
            services: services
                .iter()
                .map(|&(name, monitor, st)| status::Service {
                    name: name.into(),
                    monitor,
                    status: st,
                    ..Default::default()
                })
                .collect(),
            vcap: vcap.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn group_state_follows_the_rules() {
        assert_eq!(group_state(&status(&[], &[])), "running");
        assert_eq!(group_state(&status(&[("a", 1, 0), ("b", 1, 0)], &["a", "b"])), "running");
        assert_eq!(group_state(&status(&[("a", 1, 0), ("b", 1, 512)], &["a", "b"])), "failing");
        assert_eq!(group_state(&status(&[("a", 0, 0), ("b", 1, 0)], &["a", "b"])), "failing");
        assert_eq!(group_state(&status(&[("a", 1, 512), ("b", 2, 0)], &["a", "b"])), "starting");
        // Services outside the group do not count.
        assert_eq!(group_state(&status(&[("a", 1, 0), ("x", 0, 512)], &["a"])), "running");
    }

    #[test]
    fn stopping_lists_busy_and_errored_services() {
        let mut s = status(&[("a", 1, 0), ("b", 0, 0), ("c", 1, 512)], &["a", "b", "c"]);
        s.services[2].status_message = "failed to stop".into();
        assert_eq!(stopping(&s), (vec!["a".into(), "c".into()], vec!["c".into()]));
        s.services[2].pending_action = 2;
        assert_eq!(stopping(&s).1, Vec::<String>::new());
    }

    fn supervisor(dir: &Path) -> MonitSupervisor {
        MonitSupervisor::new(
            MonitOptions {
                address: "127.0.0.1:1".into(),
                monit_dir: dir.join("monit"),
                control_file: dir.join("monitrc"),
                monit_binary: "monit".into(),
            },
            MonitTimings::default(),
        )
        .unwrap()
    }

    #[test]
    fn add_job_orders_files_and_remove_all_jobs_clears_them() {
        let dir = tempfile::tempdir().unwrap();
        let sup = supervisor(dir.path());
        let src = dir.path().join("src.monitrc");
        fs::write(&src, "check process web\n").unwrap();
        sup.add_job("web", 3, &src).unwrap();
        let installed = dir.path().join("monit/job/0003_web.monitrc");
        assert_eq!(fs::read_to_string(installed).unwrap(), "check process web\n");
        assert!(sup.add_job("../evil", 1, &src).is_err());
        assert!(sup.add_job("web", 1, &dir.path().join("missing")).is_err());
        sup.remove_all_jobs().unwrap();
        assert!(!dir.path().join("monit/job").exists());
        sup.remove_all_jobs().unwrap();
    }

    #[test]
    fn unreachable_monit_is_unknown_and_has_no_processes() {
        let dir = tempfile::tempdir().unwrap();
        let sup = supervisor(dir.path());
        let status = sup.status();
        assert_eq!(status.state, "unknown");
        assert!(status.processes.is_empty());
    }
}
