//! What the agent bench compares the agent with, each in a process of its own so that its CPU and
//! memory can be read from /proc like the agent's: the bare NATS echo responder (the floor no agent
//! can go under) and the Go bosh-agent (the agent ours replaces).
//!
//! Both extra processes are this bench binary started again with `BENCH_ROLE` set
//! ([`run_role_if_asked`] at the top of `main`): the echo responder, and the datagram sink the Go
//! agent's audit logger needs. Why a sink: the Go agent logs every request to syslog as well, and
//! without a socket at `/var/run/syslog` it retries (and logs an error) every 100 ms forever, which
//! would be measured as its idle and per-request cost. The sink lives in a private mount namespace
//! with a tmpfs on `/run`, so the host's own `/run` is never touched.

use super::{settings::nats_settings, ChildGuard, TestPki};
use bosh_agent::mbus::nats::{Inbox, Message, NatsConnection, NatsOptions};
use serde_json::json;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use tempfile::TempDir;

/// A process the bench measures: alive checks, its log for failure messages, its pid for /proc.
pub trait Peer {
    fn pid(&self) -> u32;
    /// Panics (with the log) when the process has exited.
    fn check_alive(&mut self);
    fn log(&self) -> String;
}

/// Runs the role this process was started for, if any, and exits; returns at once otherwise.
pub fn run_role_if_asked() {
    match std::env::var("BENCH_ROLE").as_deref() {
        Ok("echo") => run_echo(),
        Ok("syslog-sink") => run_sink(),
        _ => return,
    }
    std::process::exit(0);
}

/// Makes the kernel kill this process when the one that started it exits (so a helper never
/// outlives its bench, however the bench ends), then checks the parent is not gone already.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if std::os::unix::process::parent_id() == 1 {
        std::process::exit(0);
    }
}

/// The Go agent binary from `GO_AGENT_BIN`; `None`, with the reason printed, when it is not given or
/// cannot be run here (the bench then skips the Go column).
pub fn go_agent_binary() -> Option<PathBuf> {
    let Some(path) = std::env::var_os("GO_AGENT_BIN").map(PathBuf::from) else {
        println!(
            "GO_AGENT_BIN is not set: the Go agent column is skipped (set it to a Go bosh-agent binary)"
        );
        return None;
    };
    if !path.is_file() {
        println!("GO_AGENT_BIN={} is not a file: the Go agent column is skipped", path.display());
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("the Go agent needs root here (a mount namespace for its syslog sink): the Go agent column is skipped");
        return None;
    }
    Some(path)
}

/// A process the bench started, with its stderr in `<dir>/<log>`; what the echo responder and the
/// Go agent are.
pub struct Helper {
    what: &'static str,
    child: ChildGuard,
    dir: TempDir,
    log: &'static str,
}

impl Helper {
    /// Spawns `command` with its stderr in `<dir>/<log>`.
    fn spawn(what: &'static str, mut command: Command, dir: TempDir, log: &'static str) -> Helper {
        let file = std::fs::File::create(dir.path().join(log)).unwrap_or_else(|e| panic!("{what} log: {e}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the {what}: {e}"));
        Helper { what, child: ChildGuard::new(child), dir, log }
    }
}

impl Peer for Helper {
    fn pid(&self) -> u32 {
        self.child.pid()
    }
    fn check_alive(&mut self) {
        if let Some(status) = self.child.exited() {
            panic!("{} exited ({status}):\n{}", self.what, self.log());
        }
    }
    /// The last 40 lines (the Go agent's DEBUG log is long; its end says why it stopped).
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(self.log)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// The bare echo responder in a process of its own: answers every request on `agent.<id>` with
/// `{"value":"pong"}` on the NATS connection thread, parsing nothing but `reply_to`.
pub struct EchoProcess;

impl EchoProcess {
    pub fn start(pki: &TestPki, url: &str, id: &str) -> Helper {
        let dir = tempfile::tempdir().expect("echo directory");
        let (cert, key) = pki.client("echo.bosh-internal");
        for (name, text) in [("ca.pem", pki.ca_pem.as_str()), ("cert.pem", &cert), ("key.pem", &key)] {
            std::fs::write(dir.path().join(name), text).expect("echo PKI files");
        }
        let mut command = Command::new(std::env::current_exe().expect("the bench binary"));
        command.env("BENCH_ROLE", "echo").env("BENCH_ECHO", format!("{url} {id} {}", dir.path().display()));
        Helper::spawn("echo responder", command, dir, "echo.log")
    }
}

struct EchoInbox {
    conn: OnceLock<NatsConnection>,
}

impl Inbox for EchoInbox {
    fn deliver(&self, message: Message) -> bool {
        #[derive(serde::Deserialize)]
        struct Envelope {
            reply_to: String,
        }
        if let (Ok(request), Some(conn)) =
            (serde_json::from_slice::<Envelope>(&message.payload), self.conn.get())
        {
            let _ = conn.publish(&request.reply_to, br#"{"value":"pong"}"#);
        }
        true
    }
}

fn run_echo() {
    let spec = std::env::var("BENCH_ECHO").expect("BENCH_ECHO");
    let mut words = spec.splitn(3, ' ');
    let (url, id, dir) = (words.next().unwrap(), words.next().unwrap(), Path::new(words.next().unwrap()));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("echo PKI file");
    let tls =
        bosh_agent::tls::client::nats_client_config(&read("ca.pem"), &read("cert.pem"), &read("key.pem"))
            .expect("echo TLS config");
    let opts = NatsOptions {
        urls: vec![url.to_string()],
        tls: Some(tls),
        subscriptions: vec![format!("agent.{id}")],
        name: "bench-echo".into(),
    };
    die_with_parent();
    let inbox = Arc::new(EchoInbox { conn: OnceLock::new() });
    let conn = NatsConnection::start(opts, inbox.clone());
    let _ = inbox.conn.set(conn);
    // Nothing to do on this thread: the connection thread answers. Parked, it never wakes up.
    loop {
        std::thread::park();
    }
}

/// A datagram socket at the path given, reading and dropping whatever arrives until the process
/// that started it (the Go agent, after its shell exec'd) is gone.
fn run_sink() {
    die_with_parent();
    let path = std::env::args().nth(1).expect("socket path");
    let socket = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("binding {path}: {e}"));
    let mut buf = vec![0; 64 * 1024];
    loop {
        let _ = socket.recv(&mut buf);
    }
}

/// The Go bosh-agent, started as its stemcell starts it on the dummy platform (`-P dummy -M dummy
/// -b <base> -C agent.json` with a File settings source), with the same settings and certificates
/// as ours; its log (DEBUG, on stderr: it has no level flag) goes to a file.
pub struct GoAgent;

impl GoAgent {
    pub fn start(binary: &Path, pki: &TestPki, url: &str, id: &str) -> Helper {
        let dir = tempfile::tempdir().expect("Go agent directory");
        let p = |name: &str| dir.path().join(name);
        std::fs::create_dir_all(p("base/bosh")).expect("Go agent base");
        std::fs::create_dir_all(p("blobstore")).expect("Go agent blobstore");
        let mut settings = nats_settings(pki, id, url);
        settings["blobstore"] = json!({"provider": "local", "options": {"blobstore_path": p("blobstore").to_str().expect("UTF-8 path")}});
        std::fs::write(p("settings.json"), settings.to_string()).expect("Go agent settings");
        let config = json!({"Platform": {"Linux": {}},
            "Infrastructure": {"Settings": {"Sources": [{"Type": "File", "SettingsPath": p("settings.json")}]}}});
        std::fs::write(p("agent.json"), config.to_string()).expect("Go agent agent.json");
        // In a mount namespace of its own: a tmpfs on /run with the sink at /run/syslog (Go's syslog
        // package dials /var/run/syslog, which is /run/syslog), then exec, so the pid is the agent's.
        let script = r#"set -e
mount -t tmpfs -o size=1m,mode=755 tmpfs /run
BENCH_ROLE=syslog-sink "$0" /run/syslog </dev/null >/dev/null 2>&1 &
i=0; while [ ! -S /run/syslog ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done
cd "$1"; shift
exec "$@""#;
        let mut command = Command::new("unshare");
        command
            .args(["-m", "--propagation", "private", "--", "/bin/sh", "-c", script])
            .arg(std::env::current_exe().expect("the bench binary"))
            .arg(p("base"))
            .arg(binary)
            .args(["-P", "dummy", "-M", "dummy", "-b"])
            .arg(p("base"))
            .arg("-C")
            .arg(p("agent.json"));
        Helper::spawn("Go agent", command, dir, "agent.log")
    }
}
