//! A real nats-server child process for integration tests, configured like BOSH's: TLS with client
//! certificate verification, optional user/password and max_payload.
//!
//! Why a real server: the client's value is interoperating with nats-server 2.9 (INFO then TLS
//! upgrade, auth errors, PING cadence), which a fake would only assume. The binary comes from
//! `NATS_SERVER`, else `PATH`, else /usr/sbin; a missing binary fails the test loudly rather than
//! skipping it, so a broken CI image cannot turn the suite green.

use super::certs::TestPki;
use super::poll::wait_until;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// Knobs of the server configuration; `Default` gives a free port, no users, default max_payload.
#[derive(Debug, Clone, Default)]
pub struct NatsServerOptions {
    /// Port to listen on (127.0.0.1); `None` picks a free one.
    pub port: Option<u16>,
    /// `authorization { user, password }` when set.
    pub users: Option<(String, String)>,
    /// `max_payload` in bytes when set.
    pub max_payload: Option<usize>,
    /// Subjects the user of `users` may publish to (a NATS `permissions` block); others get
    /// `-ERR 'Permissions Violation ...'`. Ignored without `users`.
    pub publish_allow: Option<Vec<String>>,
    /// Server certificate and key files to use instead of the PKI's default server certificate.
    pub server_cert: Option<(PathBuf, PathBuf)>,
    /// Run without TLS (plain `nats://`); the PKI is then unused.
    pub plain: bool,
    /// Map client certificates to these users (`verify_and_map`), by subject DN such as
    /// `CN=<id>.agent.bosh-internal,O=Cloud Foundry`, as the BOSH nats job does; others are refused.
    pub mapped_users: Option<Vec<MappedUser>>,
    /// Listen on every interface (of the network namespace it starts in), not only 127.0.0.1.
    pub listen_all: bool,
}

/// A user identified by its client certificate's subject, with optional publish/subscribe allow-lists.
#[derive(Debug, Clone, Default)]
pub struct MappedUser {
    /// Subject DN, e.g. `CN=x.agent.bosh-internal,O=Cloud Foundry,C=USA`.
    pub dn: String,
    /// Subjects this user may publish to (all when `None`).
    pub publish: Option<Vec<String>>,
    /// Subjects this user may subscribe to (all when `None`).
    pub subscribe: Option<Vec<String>>,
}

impl MappedUser {
    /// A user for the certificate with CommonName `cn` made by `TestPki`.
    pub fn cn(cn: &str, publish: Option<&[String]>, subscribe: Option<&[String]>) -> MappedUser {
        MappedUser {
            dn: format!("CN={cn},O=Cloud Foundry,C=USA"),
            publish: publish.map(<[String]>::to_vec),
            subscribe: subscribe.map(<[String]>::to_vec),
        }
    }
}

/// A running nats-server; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    config: PathBuf,
}

impl NatsServer {
    /// Writes the configuration, spawns the server and waits (bounded) until it accepts connections.
    pub fn start(pki: &TestPki, opts: NatsServerOptions) -> NatsServer {
        let port = opts.port.unwrap_or_else(free_port);
        let dir = tempfile::tempdir().expect("temporary directory for nats-server");
        let conf = config_text(pki, port, &opts);
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, conf).expect("writing nats-server config");
        let mut server = NatsServer { child: None, port, dir, config };
        server.spawn();
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The listening port (stable across [`NatsServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's combined stdout/stderr so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Kills the server and waits for it to exit; its clients see the connection drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Rewrites the configuration and makes the running server reload it (SIGHUP), as bosh-nats-sync
    /// does when it changes the users; connections whose user disappeared are closed by the server.
    pub fn reload(&mut self, pki: &TestPki, opts: &NatsServerOptions) {
        std::fs::write(&self.config, config_text(pki, self.port, opts))
            .expect("rewriting nats-server config");
        let pid = self.child.as_ref().expect("server running").id();
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0, "signalling nats-server");
    }

    /// Stops the server if running and starts it again on the same port with the same config.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let binary = nats_server_binary();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("opening nats-server log");
        let log2 = log.try_clone().expect("cloning log handle");
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        self.child = Some(child);
        let port = self.port;
        let up = wait_until(Duration::from_secs(10), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("nats-server exited early ({status}):\n{}", self.log());
                }
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "nats-server did not listen on {port} within 10 s:\n{}", self.log());
    }
}

/// The nats-server configuration for these options.
fn config_text(pki: &TestPki, port: u16, opts: &NatsServerOptions) -> String {
    let (cert, key) = opts
        .server_cert
        .clone()
        .unwrap_or_else(|| (pki.server_cert_file.clone(), pki.server_key_file.clone()));
    let host = if opts.listen_all { "0.0.0.0" } else { "127.0.0.1" };
    let mut conf = format!("listen: {host}:{port}\n");
    if !opts.plain {
        conf.push_str(&format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  {verify}\n  timeout: 5\n}}\n",
            quote_path(&cert),
            quote_path(&key),
            quote_path(&pki.ca_file),
            verify = if opts.mapped_users.is_some() { "verify_and_map: true" } else { "verify: true" },
        ));
    }
    if let Some(max) = opts.max_payload {
        conf.push_str(&format!("max_payload: {max}\n"));
    }
    match (&opts.users, &opts.publish_allow) {
        (Some((user, pass)), None) => conf.push_str(&format!(
            "authorization {{\n  user: {}\n  password: {}\n}}\n",
            quote(user),
            quote(pass)
        )),
        (Some((user, pass)), Some(allow)) => {
            let allow: Vec<String> = allow.iter().map(|s| quote(s)).collect();
            conf.push_str(&format!(
                "authorization {{\n  users = [\n    {{ user: {}, password: {}, permissions: {{ publish: [{}] }} }}\n  ]\n}}\n",
                quote(user),
                quote(pass),
                allow.join(", ")
            ));
        }
        (None, _) => {}
    }
    if let Some(users) = &opts.mapped_users {
        let list = |l: &[String]| l.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
        let users: Vec<String> = users
            .iter()
            .map(|u| {
                let mut perms = Vec::new();
                if let Some(p) = &u.publish {
                    perms.push(format!("publish: [{}]", list(p)));
                }
                if let Some(s) = &u.subscribe {
                    perms.push(format!("subscribe: [{}]", list(s)));
                }
                format!("    {{ user: {}, permissions: {{ {} }} }}", quote(&u.dn), perms.join(", "))
            })
            .collect();
        conf.push_str(&format!("authorization {{\n  users = [\n{}\n  ]\n}}\n", users.join("\n")));
    }
    conf
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port")
}

/// Locates nats-server: `NATS_SERVER`, then `PATH`, then /usr/sbin and /usr/local/bin. Panics with
/// instructions when absent, so the suite fails instead of silently skipping.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "NATS_SERVER={} is not a file", path.display());
        return path;
    }
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path_dirs)
        .chain(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from));
    for dir in candidates {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "nats-server binary not found: these tests need a real nats-server (v2.9+). Install it \
         (Debian: apt-get install nats-server) or set NATS_SERVER=/path/to/nats-server"
    );
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("JSON-quoting a string")
}

fn quote_path(p: &Path) -> String {
    quote(p.to_str().expect("temporary paths are UTF-8"))
}
