//! Starting monit the way each stemcell kind runs it, and monit's alerts across agent restarts.
//!
//! - **runit** (Jammy): a real `runsvdir` from Debian's runit supervises a scratch root's
//!   `etc/service`, whose `monit` link the stemcell's `delay_monit_start` removed (or pointed
//!   elsewhere); `etc/sv/monit` runs a real monit and has a `down` file, as on the stemcell. The
//!   agent's start makes the link again and `sv start`s it, absorbing runsvdir's 5 s rescan with its
//!   retries.
//! - **systemd** (ours, Noble): **A STAND-IN `systemctl`, NOT SYSTEMD.** systemd cannot run as PID 1
//!   inside a test, so a shell script named `systemctl` records its arguments, refuses the first two
//!   calls and then starts a real monit. It proves the command and the retries, nothing about
//!   systemd itself; the stemcell VM test (`stemcell_boot`) starts monit through the real systemd.
//! - **alerts**: a real monit keeps running while the agent restarts; the alerts of a job it watches
//!   reach the health monitor before and after, through the stemcell's `alerts.monitrc` as shipped
//!   (no credentials) or, where the stemcell has none, the agent's own.

use crate::common::agent::{Director, HealthMonitor};
use crate::common::certs::TestPki;
use crate::common::monit_daemon::{alive, free_port, monit_binary, MonitDaemon};
use crate::common::nats_server::{NatsServer, NatsServerOptions};
use crate::common::settings::nats_settings;
use crate::common::wait_until;
use bosh_agent::dirs::Dirs;
use bosh_agent::platform::monit_service::{MonitService, ServiceManager};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch root laid out like a stemcell for monit: `var/vcap/bosh/etc/monitrc` (HTTP on a free
/// port, `allow cleartext` from `var/vcap/monit/monit.user`, its pid file in the scratch root) and
/// `etc/sv/monit` (`run` starts that monit in the foreground, `down` keeps runsv from starting it on
/// its own). Whatever monit it started is killed on drop.
struct Scratch {
    root: tempfile::TempDir,
    dirs: Dirs,
    port: u16,
    password: String,
}

impl Scratch {
    fn new() -> Scratch {
        let root = tempfile::tempdir().expect("scratch root");
        let dirs = Dirs::new(root.path().join("var/vcap"), root.path());
        let port = free_port();
        let password = bosh_agent::ids::uuid_v4().replace('-', "")[..16].to_string();
        let monit_dir = dirs.monit();
        fs::create_dir_all(&monit_dir).expect("monit dir");
        fs::write(monit_dir.join("monit.user"), format!("vcap:{password}")).expect("monit.user");
        let r = root.path().display();
        let control = format!(
            "set daemon 1\nset logfile {r}/monit.log\nset pidfile {r}/monit.pid\nset idfile {r}/monit.id\n\
             set statefile {r}/monit.state\nset httpd port {port} and use address 127.0.0.1\n\
             \x20   allow cleartext {m}/monit.user\ninclude {m}/*.monitrc\n",
            m = monit_dir.display()
        );
        let monitrc = dirs.monitrc();
        fs::create_dir_all(monitrc.parent().expect("etc")).expect("bosh/etc");
        fs::write(&monitrc, control).expect("monitrc");
        fs::set_permissions(&monitrc, fs::Permissions::from_mode(0o700)).expect("chmod monitrc");
        let sv = dirs.under_root("/etc/sv/monit");
        fs::create_dir_all(&sv).expect("etc/sv/monit");
        let run = format!("#!/bin/sh\nexec {} -I -c {}\n", monit_binary().display(), monitrc.display());
        executable(&sv.join("run"), &run);
        fs::write(sv.join("down"), "").expect("down file");
        fs::create_dir_all(dirs.under_root("/etc/service")).expect("etc/service");
        Scratch { root, dirs, port, password }
    }

    /// The pid of the running monit, from its pid file.
    fn monit_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.root.path().join("monit.pid")).ok()?;
        text.trim().parse().ok().filter(|&p| alive(p))
    }

    /// Whether monit's HTTP interface answers the status request with the credentials.
    fn monit_answers(&self) -> bool {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("vcap:{}", self.password));
        let agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().new_agent();
        agent
            .get(&format!("http://127.0.0.1:{}/_status2?format=xml", self.port))
            .header("Authorization", &format!("Basic {auth}"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    }

    fn wait_monit(&self, what: &str) {
        let up = wait_until(Duration::from_secs(15), || self.monit_answers() && self.monit_pid().is_some());
        let log = fs::read_to_string(self.root.path().join("monit.log")).unwrap_or_default();
        assert!(up, "monit does not answer {what}; monit log:\n{log}");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(pid) = self.monit_pid() {
            // SAFETY: plain signal to the monit this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
}

/// A private `runsvdir -P <root>/etc/service` (Debian's runit); on drop it is sent SIGHUP, on which
/// it stops every runsv, and runsv its service, before it exits.
struct RunSvDir {
    child: Child,
}

impl RunSvDir {
    fn start(service_dir: &Path) -> RunSvDir {
        let child = Command::new("runsvdir")
            .arg("-P")
            .arg(service_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting runsvdir: runit is not installed (scripts/prerequisites installs it)");
        RunSvDir { child }
    }
}

impl Drop for RunSvDir {
    fn drop(&mut self) {
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        if !wait_until(Duration::from_secs(10), || !matches!(self.child.try_wait(), Ok(None))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn runit_starts_monit(stale_link: Option<&str>) {
    let s = Scratch::new();
    let link = s.dirs.under_root("/etc/service/monit");
    if let Some(target) = stale_link {
        std::os::unix::fs::symlink(s.dirs.under_root(target), &link).expect("stale link");
    }
    let _runsvdir = RunSvDir::start(&s.dirs.under_root("/etc/service"));
    let started = Instant::now();
    MonitService::new(ServiceManager::Runit).start(&s.dirs).expect("monit started through runit");
    println!("sv start succeeded after {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(fs::read_link(&link).expect("the link is back"), s.dirs.under_root("/etc/sv/monit"));
    s.wait_monit("after sv start");
    let pid = s.monit_pid().expect("monit's pid");
    // A second start (an agent restart) leaves the running monit alone.
    MonitService::new(ServiceManager::Runit).start(&s.dirs).expect("second start");
    assert_eq!(s.monit_pid(), Some(pid), "monit was restarted");
    assert!(s.monit_answers());
}

#[test]
fn runit_starts_monit_after_delay_monit_start_removed_its_link() {
    runit_starts_monit(None);
}

#[test]
fn runit_starts_monit_when_its_link_points_elsewhere() {
    runit_starts_monit(Some("/etc/sv/gone"));
}

#[test]
fn runit_start_gives_up_after_its_attempts_without_a_runsv() {
    let s = Scratch::new();
    let started = Instant::now();
    let e = MonitService::new(ServiceManager::Runit)
        .with_retries(3, Duration::from_millis(300))
        .start(&s.dirs)
        .expect_err("no runsvdir supervises the service");
    assert!(started.elapsed() >= Duration::from_millis(600), "two pauses between three attempts");
    assert!(e.starts_with("starting monit (runit): 3 attempts failed, the last with: "), "{e}");
    assert!(e.contains("supervise"), "sv's own complaint: {e}");
    assert!(s.monit_pid().is_none());
    // Without the stemcell's service directory nothing is tried at all.
    fs::remove_dir_all(s.dirs.under_root("/etc/sv/monit")).expect("rm etc/sv/monit");
    let e = MonitService::new(ServiceManager::Runit).start(&s.dirs).expect_err("no etc/sv/monit");
    assert!(e.contains("etc/sv/monit is missing"), "{e}");
}

/// **NOT SYSTEMD**: see the module documentation. The stand-in `systemctl` refuses its first two calls
/// (as a unit that fails to start would), then starts monit as a daemon unless it already runs.
#[test]
fn systemd_starts_monit_through_a_stand_in_systemctl() {
    let s = Scratch::new();
    let calls = s.root.path().join("systemctl.calls");
    let systemctl = s.root.path().join("systemctl");
    let pidfile = s.root.path().join("monit.pid");
    executable(
        &systemctl,
        &format!(
            "#!/bin/sh\n# STAND-IN for systemctl in a test: no systemd runs here.\n\
             echo \"$*\" >>{calls}\n\
             [ \"$(wc -l <{calls})\" -ge 3 ] || {{ echo 'Job for monit.service failed (stand-in)' >&2; exit 1; }}\n\
             [ \"$*\" = 'start monit' ] || exit 2\n\
             if [ -f {pidfile} ] && kill -0 \"$(cat {pidfile})\" 2>/dev/null; then exit 0; fi\n\
             exec {monit} -c {rc} </dev/null >/dev/null 2>&1\n",
            calls = calls.display(),
            pidfile = pidfile.display(),
            monit = monit_binary().display(),
            rc = s.dirs.monitrc().display()
        ),
    );
    let started = Instant::now();
    MonitService::new(ServiceManager::Systemd)
        .with_systemctl(&systemctl)
        .start(&s.dirs)
        .expect("monit started through the stand-in");
    assert!(started.elapsed() >= Duration::from_secs(2), "two failed attempts, 1 s apart");
    s.wait_monit("after systemctl start");
    let pid = s.monit_pid().expect("monit's pid");
    MonitService::new(ServiceManager::Systemd).with_systemctl(&systemctl).start(&s.dirs).expect("again");
    assert_eq!(fs::read_to_string(&calls).expect("calls"), "start monit\n".repeat(4));
    assert_eq!(s.monit_pid(), Some(pid), "a running monit is left alone");
    assert!(!s.dirs.under_root("/etc/service/monit").exists(), "systemd needs no runit link");
}

// ---- alerts while monit outlives the agent ----

/// The official stemcells' `alerts.monitrc` (`shared/reference/stemcell/alerts.monitrc`), on the
/// test's port and with its event queue in the scratch monit dir.
fn stemcell_alerts_monitrc(port: u16, monit_dir: &Path) -> String {
    format!(
        "set alert agent@local\n\nset mailserver localhost port {port}\n     with timeout 15 seconds\n\n\
         set eventqueue\n    basedir {}/events\n    slots 5000\n\n\
         set mail-format {{\n  from: monit@localhost\n  subject: Monit Alert\n  message: Service: $SERVICE\n  \
         Event: $EVENT\n  Action: $ACTION\n  Date: $DATE\n  Description: $DESCRIPTION\n}}\n",
        monit_dir.display()
    )
}

fn alerts_survive_an_agent_restart(stemcell_ships_one: bool) {
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, NatsServerOptions::default());
    let smtp = free_port();
    let monit = if stemcell_ships_one {
        MonitDaemon::start_with_file(&["web"], "alerts.monitrc", |d| stemcell_alerts_monitrc(smtp, d))
    } else {
        MonitDaemon::start(&["web"])
    };
    let alerts_file = monit.monit_dir().join("alerts.monitrc");
    let shipped = fs::read(&alerts_file).ok();
    let id = format!("alerts-{}", &bosh_agent::ids::uuid_v4()[..8]);
    let settings = nats_settings(&pki, &id, &nats.url());
    let mut agent = monit.launch_agent(&settings, smtp);
    let hm = HealthMonitor::connect(&pki, &nats.url(), &id);
    let mut d = Director::connect(&pki, &nats.url(), &id);
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());
    // The bus answers from its own thread while the main thread may still be writing the file.
    assert!(
        wait_until(Duration::from_secs(15), || alerts_file.exists()),
        "no alerts.monitrc:\n{}",
        agent.log()
    );
    let written = fs::read(&alerts_file).expect("alerts.monitrc");
    if stemcell_ships_one {
        assert_eq!(Some(&written), shipped.as_ref(), "the stemcell's alerts.monitrc is used as shipped");
    } else {
        let text = String::from_utf8_lossy(&written);
        assert!(text.starts_with(bosh_agent::alerts::MONITRC_MARKER), "{text}");
        assert!(text.contains(&format!("port {smtp}\n")) && !text.contains("password"), "{text}");
        // On a stemcell monit starts after the agent wrote it; here monit already runs: reload it.
        // The incarnation counts seconds: a reload within monit's first second would not show.
        let before = monit.incarnation();
        let now =
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let since: u64 = before.as_deref().and_then(|i| i.parse().ok()).expect("numeric incarnation");
        assert!(wait_until(Duration::from_secs(5), || now() > since));
        let out = Command::new(monit_binary())
            .arg("-c")
            .arg(monit.control_file())
            .arg("reload")
            .output()
            .expect("monit reload");
        assert!(out.status.success(), "monit reload: {}", String::from_utf8_lossy(&out.stderr));
        assert!(wait_until(Duration::from_secs(10), || monit
            .incarnation()
            .is_some_and(|i| Some(&i) != before.as_ref())));
    }
    let incarnation = monit.incarnation().expect("monit's incarnation");
    let alert_subject = format!("hm.agent.alert.{id}");
    let kill_web_and_see_alert = |who: &str| {
        // Killed before monit saw it run, the process would raise no event: wait for monit to watch it.
        let watched = || monit.watched_pid("web").filter(|&p| monit.live_pid("web") == Some(p));
        assert!(wait_until(Duration::from_secs(20), || watched().is_some()), "web runs under monit's eye");
        let pid = watched().expect("web pid");
        hm.drain();
        // SAFETY: killing the test's own job process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let alert = hm.next(&alert_subject, left).unwrap_or_else(|| {
                panic!(
                    "no alert through {who} for the killed job (pid {pid}, killed {:?} ago); {}\nmonit log:\n{}",
                    killed.elapsed(),
                    monit.process_report(),
                    monit.log()
                )
            });
            let title = alert["title"].as_str().unwrap_or("");
            if title.starts_with("web ") && title.contains(" - Does not exist - ") {
                break;
            }
        }
        assert!(wait_until(Duration::from_secs(20), || watched().is_some_and(|p| p != pid)), "web restarted");
    };
    kill_web_and_see_alert("the first agent");
    agent.restart();
    assert!(d.wait_ready(Duration::from_secs(15)), "agent never came back:\n{}", agent.log());
    assert_eq!(fs::read(&alerts_file).expect("alerts.monitrc"), written, "unchanged by the restart");
    kill_web_and_see_alert("the restarted agent");
    assert_eq!(monit.incarnation(), Some(incarnation), "monit was neither restarted nor reloaded");
}

#[test]
fn alerts_keep_flowing_across_an_agent_restart_through_the_stemcells_alerts_monitrc() {
    alerts_survive_an_agent_restart(true);
}

#[test]
fn alerts_keep_flowing_across_an_agent_restart_through_the_agents_alerts_monitrc() {
    alerts_survive_an_agent_restart(false);
}
