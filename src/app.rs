//! Boot order: configuration → settings → platform, supervisor and task table → bus → resume persisted
//! tasks → worker pool → heartbeat → wait for a signal. Each step fails with a message naming what was
//! wrong; nothing here runs per request.

use crate::actions::Context;
use crate::alerts;
use crate::bus::{BusControl, Notifier, Silent};
use crate::cli::Options;
use crate::config::AgentConfig;
use crate::dirs::Dirs;
use crate::dispatch::{pool, Dispatcher};
use crate::error::Context as _;
use crate::heartbeat::Heartbeat;
use crate::mbus::{agent_https, agent_nats::NatsBus};
use crate::platform::{self, Platform};
use crate::settings::service::{Overrides, Patience, SettingsService};
use crate::settings::sources;
use crate::supervisor::monit::{MonitOptions, MonitSupervisor, MonitTimings};
use crate::supervisor::{DummySupervisor, JobSupervisor, SupervisorKind};
use crate::tasks::TaskTable;
use crate::vitals::Sampler;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest CPU vitals window: cpu is the share since the previous reading, at least this long
/// ago (the Go agent samples every 10 s).
pub const CPU_WINDOW: Duration = Duration::from_secs(10);

/// How long a start that fails lasts at least, by default: a supervisor restarting the agent at once
/// (systemd's default `RestartSec` is 100 ms) must never see the 5 starts in 10 s after which its
/// default start limit leaves the unit dead for good.
pub const MIN_FAILED_RUN: Duration = Duration::from_secs(10);

/// Runs the agent until SIGTERM or SIGINT. A start that fails logs its error and returns it no sooner than
/// [`MIN_FAILED_RUN`] (or `agent.json`'s `Infrastructure.Settings.Retry.MinFailedRunMs`) after the
/// process started, unless a signal asks it to stop first.
pub fn run(opts: Options) -> Result<(), String> {
    let started = Instant::now();
    let signals = signals::block()?;
    let mut min_failed_run = MIN_FAILED_RUN;
    let result = serve(opts, &signals, &mut min_failed_run);
    if let Err(e) = &result {
        // Logged here, once, so the log says why before it says how long the exit waits.
        log::error!("{e}");
        let left = min_failed_run.saturating_sub(started.elapsed());
        if !left.is_zero() {
            log::info!(
                "start failed; exiting in {:.1} s (a failed start lasts at least {:?}, so the service \
                 manager's restart limit is never reached)",
                left.as_secs_f64(),
                min_failed_run
            );
            if let Some(signal) = signals::wait_for(&signals, left) {
                log::info!("received signal {signal}: exiting now");
            }
        }
    }
    result
}

fn serve(opts: Options, signals: &signals::Set, min_failed_run: &mut Duration) -> Result<(), String> {
    let dirs = Dirs::new(&opts.base, &opts.root);
    log::info!("bosh-agent {} starting on stemcell {}", env!("CARGO_PKG_VERSION"), stemcell_version(&dirs));
    // The configuration first: a bad -C must fail before anything is created on disk.
    let config = match &opts.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    std::fs::create_dir_all(dirs.bosh()).with_context(|| format!("creating {}", dirs.bosh().display()))?;
    if let Some(ms) = config.settings.retry.min_failed_run_ms {
        *min_failed_run = Duration::from_millis(ms);
    }
    crate::config::keys::log_treatment(&config);
    let platform: Arc<dyn Platform> = platform::with_options(opts.platform, &dirs, &config.linux)?.into();
    let network: sources::NetworkHook = {
        let platform = platform.clone();
        Arc::new(move || platform.network_for_settings())
    };
    let setup = sources::select::Setup {
        policy: sources::retry::RetryPolicy::from_config(&config.settings.retry),
        network: Some(network),
    };
    let configured = opts.config.as_ref().map(|_| config.sources.as_slice());
    let srcs = sources::select(configured, opts.infrastructure.as_deref(), &dirs, &setup)?;
    let overrides = Overrides {
        agent_id: opts.agent_id.clone(),
        mbus: opts.mbus.clone(),
        blobstore: opts.blobstore.clone(),
    };
    let settings = SettingsService::new(dirs.clone(), srcs, overrides);
    let patience = Patience::from_config(&config.settings.retry);
    let effective = settings.load_at_boot(patience).context("loading settings")?;
    platform.bootstrap(&effective, opts.configure)?;
    // On the data disk the bootstrap mounted, before anything can use it.
    crate::jobs::startup::clean_temp_area(&dirs);
    crate::jobs::startup::repair_links(&dirs);
    // Every child from now on gets the data disk's temp dir, as the Go agent exports TMPDIR at boot.
    if dirs.data_tmp().is_dir() {
        crate::exec::set_child_tmpdir(dirs.data_tmp());
    }
    // The persistent disk comes back before any job can look for it; a vanished disk is logged.
    platform::disks::remount_last_disk(platform.as_ref(), &dirs, &effective);
    // The jobs' run directories are gone after a reboot (a tmpfs) before monit starts them.
    if let Err(e) = (crate::jobs::applier::Layout { dirs: &dirs }).restore_job_dirs() {
        log::warn!("restoring the jobs' directories: {e}");
    }
    let supervisor: Arc<dyn JobSupervisor> = match opts.supervisor {
        SupervisorKind::Dummy => Arc::new(DummySupervisor::default()),
        SupervisorKind::Monit => {
            Arc::new(MonitSupervisor::new(monit_options(&config, &dirs), MonitTimings::default())?)
        }
    };
    let requests = pool::Requests::new();
    let first_url = effective.mbus_urls().into_iter().next().unwrap_or_default();
    let log_url = crate::url::redact(&first_url);
    let (bus, notifier, _https): (Arc<dyn BusControl>, Arc<dyn Notifier>, _) =
        if first_url.starts_with("https://") {
            let server = agent_https::start(&effective, &dirs, requests.clone())?;
            log::info!("HTTPS bus listening on {} ({log_url})", server.local_addr());
            (Arc::new(agent_https::HttpsControl), Arc::new(Silent), Some(server))
        } else {
            let nats = Arc::new(NatsBus::start(&effective, requests.clone())?);
            log::info!("NATS bus connecting to {log_url} as agent {}", effective.settings.agent_id);
            (nats.clone(), nats, None)
        };
    let tasks = TaskTable::new(Some(dirs.tasks_json()));
    let ctx = Arc::new(Context {
        dirs,
        settings,
        platform,
        supervisor,
        tasks,
        vitals: Sampler::start(CPU_WINDOW),
        bus,
        notifier: notifier.clone(),
        jobs_lock: Default::default(),
    });
    let dispatcher = Arc::new(Dispatcher::new(ctx.clone()));
    dispatcher.resume_persisted();
    requests.start(dispatcher);
    // Monit mails its alerts; on the HTTPS bus there is no health monitor to tell.
    let monit = opts.supervisor == SupervisorKind::Monit;
    let _alerts = if monit && !opts.no_alerts && _https.is_none() {
        Some(alerts::start_monit_alerts(ctx.settings.clone(), &ctx.dirs, notifier.clone(), opts.smtp_port)?)
    } else {
        None
    };
    if monit {
        // After alerts.monitrc exists: the stemcell's monitrc includes it.
        let how = platform::monit_service::MonitStart::from_config(&config.linux);
        if let Err(e) = ctx.platform.start_monit(&how) {
            keep_starting_monit(ctx.clone(), how, &e);
        }
    }
    let _syslog = if ctx.platform.forwards_syslog() && !opts.no_alerts && _https.is_none() {
        alerts::start_login_alerts(notifier.clone())
    } else {
        None
    };
    let source = ctx.settings.source();
    let _heartbeat =
        Heartbeat::start(ctx, notifier, opts.heartbeat_interval).context("starting heartbeat")?;
    log::info!("agent {} ready (settings from {source})", effective.settings.agent_id);
    let signal = signals::wait(signals);
    log::info!("received signal {signal}: stopping");
    Ok(())
}

/// How long the agent waits between further rounds of monit starts once the first round failed.
const MONIT_RETRY: Duration = Duration::from_secs(30);

/// Monit did not start after the Go agent's ten tries. The Go agent exits here and its supervisor
/// restarts it, so the VM shows an unresponsive agent for as long as monit cannot start; this agent
/// keeps serving instead (the director sees the jobs' state as monit reports it, `unknown` without
/// monit, and can still `bosh ssh` in) and tries again every [`MONIT_RETRY`].
fn keep_starting_monit(ctx: Arc<Context>, how: platform::monit_service::MonitStart, first: &str) {
    log::error!("Starting monit: {first}; serving on, and trying again every {}s", MONIT_RETRY.as_secs());
    let started = retry_in_background("monit-start", MONIT_RETRY, move || {
        ctx.platform
            .start_monit(&how)
            .inspect_err(|e| log::warn!("Starting monit: {e}; trying again in {}s", MONIT_RETRY.as_secs()))
    });
    if let Err(e) = started {
        log::error!("Starting monit: cannot start the retry thread: {e}");
    }
}

/// Calls `attempt` every `every` on a thread of its own until it succeeds; the thread then ends.
fn retry_in_background(
    name: &str,
    every: Duration,
    mut attempt: impl FnMut() -> Result<(), String> + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(move || loop {
        std::thread::sleep(every);
        if attempt().is_ok() {
            break;
        }
    })
}

/// `bosh-enable-monit-access`: lets the calling bpm job, or else vcap, reach monit
/// (`platform::firewall`); returns what it did.
pub fn enable_monit_access(opts: &crate::cli::MonitAccessOptions) -> Result<String, String> {
    let passwd = Dirs::new("/var/vcap", &opts.root).under_root(platform::users::SYSTEM_PASSWD);
    platform::firewall::enable_monit_access(&passwd).map(|done| done.to_string())
}

/// The stemcell's version as its builder recorded it, or why it is unknown (a dev box has none).
fn stemcell_version(dirs: &Dirs) -> String {
    let path = dirs.stemcell_version();
    match std::fs::read_to_string(&path) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        Ok(_) => format!("unknown ({} is empty)", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("unknown (no {})", path.display()),
        Err(e) => format!("unknown ({}: {e})", path.display()),
    }
}

fn monit_options(config: &AgentConfig, dirs: &Dirs) -> MonitOptions {
    let bundled = dirs.bundled_monit();
    MonitOptions {
        address: config.monit.address.clone().unwrap_or_else(|| "127.0.0.1:2822".into()),
        monit_dir: dirs.monit(),
        control_file: config.monit.control_file.clone().unwrap_or_else(|| dirs.monitrc()),
        monit_binary: config.monit.binary.clone().unwrap_or_else(|| {
            if bundled.is_file() {
                bundled
            } else {
                "monit".into()
            }
        }),
    }
}

/// Signals are blocked in every thread and taken synchronously by the main thread, so no handler runs
/// in the middle of a worker's code. Child processes get a clean mask from std.
mod signals {
    use std::mem::MaybeUninit;

    pub struct Set(libc::sigset_t);

    pub fn block() -> Result<Set, String> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset before use; the calls only touch
        // the set and this thread's mask.
        unsafe {
            let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
            libc::sigemptyset(set.as_mut_ptr());
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(set.as_mut_ptr(), s);
            }
            let set = set.assume_init();
            match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                0 => Ok(Set(set)),
                e => Err(format!("blocking signals: error {e}")),
            }
        }
    }

    /// Waits up to `limit` for SIGTERM or SIGINT (SIGHUP is ignored); the signal's name, or `None`
    /// when the time ran out.
    pub fn wait_for(set: &Set, limit: std::time::Duration) -> Option<&'static str> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let ts = libc::timespec {
                // time_t by inference (the alias itself is deprecated on musl).
                tv_sec: left.as_secs().try_into().unwrap_or(i32::MAX.into()),
                tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
            };
            // SAFETY: the set was initialised in `block`; a null info pointer is allowed.
            let sig = unsafe { libc::sigtimedwait(&set.0, std::ptr::null_mut(), &ts) };
            match sig {
                libc::SIGTERM => return Some("TERM"),
                libc::SIGINT => return Some("INT"),
                _ => {}
            }
        }
    }

    /// Waits for SIGTERM or SIGINT (SIGHUP is logged and ignored) and returns its name.
    pub fn wait(set: &Set) -> &'static str {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: the set was initialised in `block`; sig is a valid out pointer.
            let rc = unsafe { libc::sigwait(&set.0, &mut sig) };
            match (rc, sig) {
                (0, libc::SIGTERM) => return "TERM",
                (0, libc::SIGINT) => return "INT",
                (0, libc::SIGHUP) => log::info!("SIGHUP ignored"),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_failed_start_is_retried_in_the_background_until_it_succeeds() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let thread = retry_in_background("retry-test", Duration::from_millis(5), move || {
            match counted.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("not yet".into()),
                _ => Ok(()),
            }
        })
        .unwrap();
        thread.join().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "two failures, then one success, then no more");
    }
    use super::*;

    /// systemd's default start limit is 5 starts in 10 s with 100 ms between restarts: failed starts
    /// of at least 10 s each can never reach it.
    #[test]
    fn a_failed_start_outlasts_the_default_start_limit() {
        let (burst, interval, restart) = (5u32, Duration::from_secs(10), Duration::from_millis(100));
        assert_eq!(MIN_FAILED_RUN, Duration::from_secs(10));
        assert!((MIN_FAILED_RUN + restart) * (burst - 1) > interval);
    }
}
