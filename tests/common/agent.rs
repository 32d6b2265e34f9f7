//! The agent binary under test, started exactly as a stemcell would start it (`-C agent.json` with a
//! File settings source) in a scratch base directory, and a director-side client to talk to it.

use super::certs::TestPki;
use super::settings::nats_settings;
use super::wait_until;
use bosh_agent::client::{Nats, Transport};
use bosh_agent::mbus::nats::{Message, NatsConnection, NatsOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A running agent process; killed on drop.
pub struct TestAgent {
    child: Option<Child>,
    dir: TempDir,
    base: PathBuf,
    /// The agent id, unique per test.
    pub agent_id: String,
    args: Vec<String>,
    wrapper: Vec<String>,
    env: Vec<(String, String)>,
}

impl TestAgent {
    /// Writes `settings` and an `agent.json` pointing at them, then starts the agent on the dummy
    /// platform and supervisor with a 1 s heartbeat (unless `extra` has its own `-P` or `-h`).
    pub fn start(settings: &Value, extra: &[&str]) -> TestAgent {
        TestAgent::launch(settings, Launch { extra, ..Launch::default() })
    }

    /// Starts the agent with more control: base dir, supervisor and `agent.json` additions.
    pub fn launch(settings: &Value, how: Launch) -> TestAgent {
        let dir = tempfile::tempdir().expect("agent scratch dir");
        let base = how.base.map(Path::to_path_buf).unwrap_or_else(|| dir.path().join("base"));
        Self::prepare(dir.path(), &base, settings, how.agent_json);
        let agent_id = settings["agent_id"].as_str().unwrap_or("").to_string();
        let supervisor = how.supervisor.unwrap_or("dummy");
        // `-P dummy` unless the caller picks the platform (`extra: &["-P", "linux"]`).
        let platform = if how.extra.contains(&"-P") { Vec::new() } else { vec!["-P", "dummy"] };
        let mut args: Vec<String> = platform.into_iter().map(String::from).collect();
        args.extend(["-M", supervisor, "-l", "debug"].map(String::from));
        // A 1 s heartbeat unless the caller sets one (`extra: &["-h", "3600"]`).
        if !how.extra.contains(&"-h") {
            args.extend(["-h", "1"].map(String::from));
        }
        args.extend(["-C".into(), path(&dir.path().join("agent.json"))]);
        args.extend(["-b".into(), path(&base)]);
        args.extend(how.extra.iter().map(|s| s.to_string()));
        let wrapper = how.wrapper.to_vec();
        let mut agent = TestAgent { child: None, dir, base, agent_id, args, wrapper, env: how.env };
        agent.spawn();
        agent
    }

    fn prepare(dir: &Path, base: &Path, settings: &Value, extra: Option<Value>) {
        std::fs::create_dir_all(base.join("bosh")).expect("base dir");
        std::fs::write(dir.join("settings.json"), settings.to_string()).expect("settings");
        // A failed start lasts 1 s here, not the agent's 10 s, so tests of refused starts stay quick.
        let mut cfg = json!({"Platform": {"Linux": {}}, "Infrastructure": {"Settings": {"Sources": [
            {"Type": "File", "SettingsPath": path(&dir.join("settings.json"))}],
            "Retry": {"MinFailedRunMs": 1000}}}});
        if let Some(more) = extra {
            merge(&mut cfg, more);
        }
        std::fs::write(dir.join("agent.json"), cfg.to_string()).expect("agent.json");
    }

    fn spawn(&mut self) {
        let log =
            std::fs::File::options().create(true).append(true).open(self.log_path()).expect("agent log");
        let binary = env!("CARGO_BIN_EXE_bosh-agent");
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning bosh-agent");
        self.child = Some(child);
    }

    /// The base directory (`-b`).
    pub fn base(&self) -> PathBuf {
        self.base.clone()
    }

    /// The settings file its File source reads: rewrite it to play a CPI changing the settings.
    pub fn settings_path(&self) -> PathBuf {
        self.dir.path().join("settings.json")
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Kills the agent (as a crash would) and starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the agent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and returns the exit status once it exits (bounded).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        None
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
        // On the Linux platform the agent mounts (a tmpfs on data/sys/run, binds under `-r`).
        let root = self.args.iter().position(|a| a == "-r").and_then(|i| self.args.get(i + 1));
        let mut dirs = vec![self.dir.path(), self.base.as_path()];
        dirs.extend(root.map(Path::new));
        super::mounts::unmount_under(&dirs);
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// How to launch a [`TestAgent`] beyond its settings.
#[derive(Default)]
pub struct Launch<'a> {
    /// `-b`; a fresh directory when `None`.
    pub base: Option<&'a Path>,
    /// `-M`; `dummy` when `None`.
    pub supervisor: Option<&'a str>,
    /// Keys merged into `agent.json` (e.g. `Monit`), object by object: `{"Infrastructure":
    /// {"Settings": {"Retry": ..}}}` keeps the File source, `.. {"Sources": [..]}` replaces it.
    pub agent_json: Option<Value>,
    /// More command-line arguments.
    pub extra: &'a [&'a str],
    /// A command the agent binary and its arguments are appended to (e.g. entering a network
    /// namespace); empty: the binary runs directly.
    pub wrapper: &'a [String],
    /// Environment variables set for the agent (e.g. a `PATH` with fake tools first).
    pub env: Vec<(String, String)>,
}

/// Merges `more` into `into`: objects key by key, anything else replaced.
fn merge(into: &mut Value, more: Value) {
    match (into, more) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_string()
}

/// The `value` of a reply envelope; anything else fails the test, showing the reply.
pub fn value(reply: &Value) -> &Value {
    reply.get("value").unwrap_or_else(|| panic!("expected a value, got {reply}"))
}

/// The exception message of a reply envelope; anything else fails the test, showing the reply.
pub fn exception(reply: &Value) -> String {
    reply["exception"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an exception, got {reply}"))
        .to_string()
}

/// The director's side: protocol 3 requests with `director.<uuid>.<agent_id>.<uuid>` reply subjects.
pub struct Director {
    nats: Nats,
}

impl Director {
    /// Connects with a director certificate.
    pub fn connect(pki: &TestPki, url: &str, agent_id: &str) -> Director {
        let tls = pki.nats_tls("director.bosh-internal");
        let deadline = Instant::now() + super::CONNECT_WITHIN;
        Director { nats: Nats::connect(url, Some(tls), agent_id, deadline).expect("director connects") }
    }

    /// One request; the reply envelope.
    pub fn request(&mut self, method: &str, args: Value) -> Result<Value, String> {
        self.request_within(method, args, Duration::from_secs(10))
    }

    /// One request answered within `timeout`, for probing an agent that may be down.
    pub fn request_within(&mut self, method: &str, args: Value, timeout: Duration) -> Result<Value, String> {
        let args = args.as_array().cloned().unwrap_or_default();
        self.nats.request(method, &args, Instant::now() + timeout)
    }

    /// One request that must be answered. Like the director (its agent client), `get_task`,
    /// `get_state` and `upload_blob` are sent again with a new `reply_to` when no reply came in time
    /// (4, 2 and 3 times); nothing else is.
    pub fn send(&mut self, method: &str, args: Value) -> Value {
        let retries = match method {
            "get_task" => 4,
            "get_state" => 2,
            "upload_blob" => 3,
            _ => 0,
        };
        let mut attempt = 0;
        loop {
            match self.request(method, args.clone()) {
                Ok(reply) => return reply,
                Err(e) if attempt < retries && e.contains("timed out") => attempt += 1,
                Err(e) => panic!("{method}: {e}"),
            }
        }
    }

    /// Retries `ping` until the agent answers (it connects in the background).
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            let args: Vec<Value> = Vec::new();
            match self.nats.request("ping", &args, Instant::now() + left) {
                Ok(v) if v == json!({"value": "pong"}) => return true,
                // Not subscribed yet: the server says so at once ("no reply"), so pace the retries.
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }

    /// Sends an async request and polls `get_task` until it is no longer running.
    pub fn run_task(&mut self, method: &str, args: Value) -> Value {
        let first = self.send(method, args);
        let id = first["value"]["agent_task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} gave no task: {first}"))
            .to_string();
        assert_eq!(first["value"]["state"], "running");
        self.wait_task(&id, Duration::from_secs(20))
    }

    /// Polls `get_task` until the task finishes.
    pub fn wait_task(&mut self, id: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let done = wait_until(timeout, || {
            last = self.send("get_task", json!([id]));
            last["value"]["state"] != "running" || last["value"]["agent_task_id"] != id
        });
        assert!(done, "task {id} still running: {last}");
        last
    }
}

/// A health-monitor-side subscriber to `hm.agent.*.<agent_id>`.
pub struct HealthMonitor {
    conn: NatsConnection,
    rx: Receiver<Message>,
}

impl HealthMonitor {
    /// Subscribes with the health monitor's certificate.
    pub fn connect(pki: &TestPki, url: &str, agent_id: &str) -> HealthMonitor {
        let (tx, rx) = mpsc::channel();
        let opts = NatsOptions {
            urls: vec![url.to_string()],
            tls: Some(pki.nats_tls("default.hm.bosh-internal")),
            subscriptions: vec![format!("hm.agent.*.{agent_id}")],
            name: "hm".into(),
        };
        let conn = NatsConnection::start(opts, tx);
        assert!(conn.wait_connected(super::CONNECT_WITHIN), "health monitor connects");
        assert!(conn.flush(Duration::from_secs(5)), "subscription registered");
        HealthMonitor { conn, rx }
    }

    /// The next message on `subject` within `timeout`.
    pub fn next(&self, subject: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.rx.recv_timeout(deadline.checked_duration_since(Instant::now())?).ok()?;
            if m.subject == subject {
                return serde_json::from_slice(&m.payload).ok();
            }
        }
    }

    /// Drops everything received so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.conn.shutdown();
    }
}

/// An agent on the dummy platform over a fresh mTLS nats-server, with a blobstore (a local directory
/// unless given), already answering `ping`: the usual start of a lifecycle or data test.
pub struct AgentEnv {
    /// The test PKI (for more clients).
    pub pki: TestPki,
    /// The nats-server.
    pub nats: super::nats_server::NatsServer,
    /// The agent.
    pub agent: TestAgent,
    /// The local blobstore directory (unused when another blobstore was given).
    pub blobs: TempDir,
    /// A director connection.
    pub d: Director,
}

impl AgentEnv {
    /// Starts everything; `tag` prefixes the agent id.
    pub fn start(
        tag: &str,
        nats: super::nats_server::NatsServerOptions,
        blobstore: Option<Value>,
    ) -> AgentEnv {
        let pki = TestPki::new();
        let nats = super::nats_server::NatsServer::start(&pki, nats);
        let id = format!("{tag}-{}", &bosh_agent::ids::uuid_v4()[..8]);
        let blobs = tempfile::tempdir().expect("blobstore dir");
        let mut settings = nats_settings(&pki, &id, &nats.url());
        settings["blobstore"] = blobstore
            .unwrap_or_else(|| json!({"provider": "local", "options": {"blobstore_path": blobs.path()}}));
        let agent = TestAgent::start(&settings, &[]);
        let mut d = Director::connect(&pki, &nats.url(), &id);
        assert!(d.wait_ready(Duration::from_secs(15)), "agent never answered:\n{}", agent.log());
        AgentEnv { pki, nats, agent, blobs, d }
    }
}
