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

/// The bare echo responder in a process of its own: answers every request on `agent.<id>` with
/// `{"value":"pong"}` on the NATS connection thread, parsing nothing but `reply_to`.
pub struct EchoProcess {
    child: ChildGuard,
    dir: TempDir,
}

impl EchoProcess {
    pub fn start(pki: &TestPki, url: &str, id: &str) -> EchoProcess {
        let dir = tempfile::tempdir().expect("echo directory");
        let (cert, key) = pki.client("echo.bosh-internal");
        for (name, text) in [("ca.pem", pki.ca_pem.as_str()), ("cert.pem", &cert), ("key.pem", &key)] {
            std::fs::write(dir.path().join(name), text).expect("echo PKI files");
        }
        let log = std::fs::File::create(dir.path().join("echo.log")).expect("echo log");
        let child = Command::new(std::env::current_exe().expect("the bench binary"))
            .env("BENCH_ROLE", "echo")
            .env("BENCH_ECHO", format!("{url} {id} {}", dir.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning the echo responder");
        EchoProcess { child: ChildGuard::new(child), dir }
    }
}

impl Peer for EchoProcess {
    fn pid(&self) -> u32 {
        self.child.pid()
    }
    fn check_alive(&mut self) {
        if let Some(status) = self.child.exited() {
            panic!("echo responder exited ({status}):\n{}", self.log());
        }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("echo.log")).unwrap_or_default()
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
pub struct GoAgent {
    child: ChildGuard,
    dir: TempDir,
}

impl GoAgent {
    pub fn start(binary: &Path, pki: &TestPki, url: &str, id: &str) -> GoAgent {
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
        let log = std::fs::File::create(p("agent.log")).expect("Go agent log");
        // In a mount namespace of its own: a tmpfs on /run with the sink at /run/syslog (Go's syslog
        // package dials /var/run/syslog, which is /run/syslog), then exec, so the pid is the agent's.
        let script = r#"set -e
mount -t tmpfs -o size=1m,mode=755 tmpfs /run
BENCH_ROLE=syslog-sink "$0" /run/syslog </dev/null >/dev/null 2>&1 &
i=0; while [ ! -S /run/syslog ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done
cd "$1"; shift
exec "$@""#;
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "--", "/bin/sh", "-c", script])
            .arg(std::env::current_exe().expect("the bench binary"))
            .arg(p("base"))
            .arg(binary)
            .args(["-P", "dummy", "-M", "dummy", "-b"])
            .arg(p("base"))
            .arg("-C")
            .arg(p("agent.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning the Go agent through unshare");
        GoAgent { child: ChildGuard::new(child), dir }
    }
}

impl Peer for GoAgent {
    fn pid(&self) -> u32 {
        self.child.pid()
    }
    fn check_alive(&mut self) {
        if let Some(status) = self.child.exited() {
            panic!("Go agent exited ({status}):\n{}", self.log());
        }
    }
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        // Its DEBUG log is long: the end says why it stopped.
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}
