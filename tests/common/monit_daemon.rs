//! A real monit daemon child for integration tests, set up like a stemcell's (HTTP interface on
//! 127.0.0.1 with `allow cleartext <monit_dir>/monit.user`, jobs included from `<monit_dir>/job/`),
//! but with a 1 s cycle and everything inside one temporary directory.
//!
//! Why a real monit: the supervisor's worth is agreeing with monit 5.33 on CSRF tokens, redirects,
//! status numbers, pending actions and reload incarnations, which a fake would only assume. The binary
//! comes from `MONIT`, else /usr/bin/monit, else `PATH`; a missing binary fails the test loudly.
//!
//! Job processes are shell loops that exit on their own once the temporary directory is gone, so a
//! test that dies halfway leaves nothing running for long.

use super::agent::{Launch, TestAgent};
use super::wait_until;
use bosh_agent::supervisor::monit::MonitOptions;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// One monit daemon (`monit -I -c <dir>/monitrc`), stopped with its job processes on drop.
pub struct MonitDaemon {
    dir: TempDir,
    child: Option<Child>,
    port: u16,
    user: String,
    password: String,
}

/// The monit executable the tests use; panics (failing the test) when there is none.
pub fn monit_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MONIT") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::iter::once(PathBuf::from("/usr/bin/monit"))
        .chain(std::env::split_paths(&path).map(|d| d.join("monit")));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!("monit is not installed (no $MONIT, /usr/bin/monit or monit on PATH): these tests need a real monit 5.33");
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding a free port").port()
}

/// Whether process `pid` exists (and is not a zombie we would be fooled by).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    let exists = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(false);
    exists && !zombie
}

impl MonitDaemon {
    /// Starts monit with one sleeping job process per name, all in group `vcap`, and waits until its
    /// HTTP interface answers.
    pub fn start(jobs: &[&str]) -> MonitDaemon {
        MonitDaemon::start_with(jobs, |_| String::new())
    }

    /// Like [`start`](Self::start), plus top-level monitrc text (e.g. an `alerts.monitrc`) made from
    /// the monit dir and installed as `<monit_dir>/extra.monitrc`.
    pub fn start_with(jobs: &[&str], extra: impl FnOnce(&Path) -> String) -> MonitDaemon {
        MonitDaemon::start_with_file(jobs, "extra.monitrc", extra)
    }

    /// Like [`start_with`](Self::start_with), with the extra text in `<monit_dir>/<name>` (e.g. a
    /// stemcell's `alerts.monitrc`).
    pub fn start_with_file(jobs: &[&str], name: &str, extra: impl FnOnce(&Path) -> String) -> MonitDaemon {
        let binary = monit_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let monit_dir = root.join("monit");
        fs::create_dir_all(monit_dir.join("job")).expect("monit dir");
        fs::create_dir_all(root.join("run")).expect("run dir");
        fs::set_permissions(&monit_dir, fs::Permissions::from_mode(0o700)).expect("chmod monit dir");
        let (user, password) =
            ("vcap".to_string(), bosh_agent::ids::uuid_v4().replace('-', "")[..16].to_string());
        write_private(&monit_dir.join("monit.user"), &format!("{user}:{password}\n"));
        let script = "#!/bin/sh\n# job.sh <pidfile> <dir>: a job process that lives while <dir> exists\n\
                      echo $$ > \"$1\"\nwhile [ -d \"$2\" ]; do sleep 0.2; done\n";
        fs::write(root.join("job.sh"), script).expect("job script");
        fs::set_permissions(root.join("job.sh"), fs::Permissions::from_mode(0o755)).expect("chmod job.sh");
        let mut daemon = MonitDaemon { dir, child: None, port: free_port(), user, password };
        for (i, name) in jobs.iter().enumerate() {
            let file = monit_dir.join("job").join(format!("{i:04}_{name}.monitrc"));
            fs::write(file, daemon.job_snippet(name)).expect("job monitrc");
        }
        fs::write(monit_dir.join(name), extra(&monit_dir)).expect("extra monitrc");
        let r = root.display();
        let control = format!(
            "set daemon 1\nset logfile {r}/monit.log\nset pidfile {r}/monit.pid\nset idfile {r}/monit.id\n\
             set statefile {r}/monit.state\n\
             set httpd port {} and use address 127.0.0.1\n    allow cleartext {r}/monit/monit.user\n\
             include {r}/monit/*.monitrc\ninclude {r}/monit/job/*.monitrc\n",
            daemon.port
        );
        write_private(&daemon.control_file(), &control);
        let child = Command::new(&binary)
            .arg("-I")
            .arg("-c")
            .arg(daemon.control_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        daemon.child = Some(child);
        if !wait_until(Duration::from_secs(10), || daemon.exited() || daemon.incarnation().is_some())
            || daemon.exited()
        {
            panic!("monit did not come up on port {}; log:\n{}", daemon.port, daemon.log());
        }
        daemon
    }

    /// A `check process` for a sleeping job `name` in group `vcap` (what `add_job` tests install).
    pub fn job_snippet(&self, name: &str) -> String {
        let r = self.dir.path().display();
        format!(
            "check process {name} with pidfile {r}/run/{name}.pid\n\
             \x20 start program = \"/bin/sh -c '{r}/job.sh {r}/run/{name}.pid {r} </dev/null >/dev/null 2>&1 &'\" with timeout 10 seconds\n\
             \x20 stop program = \"/bin/sh -c 'kill $(cat {r}/run/{name}.pid)'\" with timeout 10 seconds\n\
             \x20 group vcap\n"
        )
    }

    /// The temporary directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/monit`: `monit.user`, `job/`, `stopped`.
    pub fn monit_dir(&self) -> PathBuf {
        self.dir.path().join("monit")
    }

    /// The control file (mode 0600, as monit requires).
    pub fn control_file(&self) -> PathBuf {
        self.dir.path().join("monitrc")
    }

    /// `127.0.0.1:<port>` of the HTTP interface.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Options for a `MonitSupervisor` of this daemon.
    pub fn options(&self) -> MonitOptions {
        MonitOptions {
            address: self.address(),
            monit_dir: self.monit_dir(),
            control_file: self.control_file(),
            monit_binary: monit_binary(),
        }
    }

    /// The pid job `name` last wrote, if any.
    pub fn pid(&self, name: &str) -> Option<i32> {
        fs::read_to_string(self.dir.path().join("run").join(format!("{name}.pid"))).ok()?.trim().parse().ok()
    }

    /// The pid of job `name` if that process is alive.
    pub fn live_pid(&self, name: &str) -> Option<i32> {
        self.pid(name).filter(|&p| alive(p))
    }

    /// The pid monit itself last saw for process `name`, once it saw it running and healthy (status
    /// 0), read over HTTP. A test that kills a job to see monit react must wait for this: a process
    /// killed before monit noticed it running is no state change to monit, so it raises no event.
    pub fn watched_pid(&self, name: &str) -> Option<i32> {
        let xml = self.status_xml()?;
        let service = xml.split("<service ").find(|s| s.starts_with(&format!("name=\"{name}\">")))?;
        let field = |tag: &str| {
            let start = service.find(&format!("<{tag}>"))? + tag.len() + 2;
            service[start..].split('<').next()?.trim().parse::<i64>().ok()
        };
        (field("status") == Some(0)).then(|| field("pid")).flatten().and_then(|p| i32::try_from(p).ok())
    }

    /// Monit's incarnation read directly over HTTP (independent of the code under test).
    pub fn incarnation(&self) -> Option<String> {
        let xml = self.status_xml()?;
        let start = xml.find("incarnation=\"")? + "incarnation=\"".len();
        Some(xml[start..].split('"').next()?.to_string())
    }

    /// The raw status document, if monit answers.
    pub fn status_xml(&self) -> Option<String> {
        use base64::Engine as _;
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password));
        let agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().new_agent();
        let mut resp = agent
            .get(&format!("http://{}/_status2?format=xml", self.address()))
            .header("Authorization", &format!("Basic {auth}"))
            .call()
            .ok()?;
        resp.body_mut().read_to_string().ok()
    }

    /// Starts the agent with `-M monit` driving this monit (its directory as the base dir; its
    /// address, control file and binary in `agent.json`), with monit's alert listener on `smtp_port`.
    pub fn launch_agent(&self, settings: &serde_json::Value, smtp_port: u16) -> TestAgent {
        let monit_cfg = serde_json::json!({"Monit": {
            "Address": self.address(), "ControlFile": self.control_file(), "Binary": monit_binary()
        }});
        let smtp = smtp_port.to_string();
        TestAgent::launch(
            settings,
            Launch {
                base: Some(self.dir()),
                supervisor: Some("monit"),
                agent_json: Some(monit_cfg),
                extra: &["-t", &smtp],
                ..Launch::default()
            },
        )
    }

    /// Monit's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("monit.log")).unwrap_or_default()
    }

    /// What monit's process is doing (for failure messages): its state, the kernel function it
    /// waits in, its current system call, and the TCP sockets it holds open.
    pub fn process_report(&self) -> String {
        let Some(pid) = self.child.as_ref().map(Child::id) else { return "monit: not started".into() };
        let read =
            |f: &str| fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_else(|e| format!("({e})"));
        let stat = read("stat");
        let state = stat.rsplit_once(')').map_or("?", |(_, rest)| rest.trim_start().get(..1).unwrap_or("?"));
        let ss = Command::new("ss")
            .args(["-tnpa"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(&format!("pid={pid},")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        format!(
            "monit pid {pid} state {state} wchan {} syscall {}\nmonit sockets:\n{ss}",
            read("wchan"),
            read("syscall").trim()
        )
    }

    fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the monit daemon (SIGTERM, then SIGKILL after 5 s); job processes keep running.
    pub fn kill_monit(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        if !wait_until(Duration::from_secs(5), || !matches!(child.try_wait(), Ok(None))) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for MonitDaemon {
    fn drop(&mut self) {
        self.kill_monit();
        if let Ok(entries) = fs::read_dir(self.dir.path().join("run")) {
            for e in entries.flatten() {
                let pid = fs::read_to_string(e.path()).ok().and_then(|s| s.trim().parse::<i32>().ok());
                if let Some(pid) = pid.filter(|&p| p > 1) {
                    // SAFETY: plain signal to a job process this fixture started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}
