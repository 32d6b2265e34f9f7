//! Boot benchmark: from spawning the release agent to its first heartbeat reaching the health
//! monitor, with settings from an EC2-style HTTP metadata source (IMDSv2 token, user data, SSH key)
//! served by this process, against the same boot with a File source.
//!
//! Why to the first heartbeat: that is when the director and the health monitor first see a new VM,
//! so it is the boot time that matters to a deploy. Why the metadata server's own time is subtracted:
//! the real service's latency belongs to the cloud, not to the agent; the server measures how long it
//! spends on each request (accept to last byte written) and the bench reports the boot net of it, and
//! shows it. Why the File boots: interleaved with the HTTP boots they show how much the HTTP source
//! itself adds on this machine at this moment.

mod support;

use bosh_agent::mbus::nats::NatsConnection;
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::http_listener::read_head;
use support::{agent_binary, interleave, nats_settings, AgentProcess, NatsServer, Report, Samples, TestPki};

/// Boots per source: the median of 9 is stable enough on a noisy 2-core machine.
const BOOTS: usize = 9;
/// The design card's target for a boot with settings from the metadata service.
const TARGET_BOOT: Duration = Duration::from_millis(300);
/// A boot slower than this is a failure, not a sample.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);

fn main() {
    let started = Instant::now();
    let binary = agent_binary();
    let pki = TestPki::new();
    let nats = NatsServer::start(&pki, support::NatsServerOptions::default());
    let url = nats.url();
    let metadata = MetadataServer::start();
    let hm = HealthMonitor::connect(&pki, &url);

    let mut server_time = Vec::new();
    let mut raw_http = Vec::new();
    let (net_http, file) = interleave(
        BOOTS,
        || {
            let id = format!("boot-{}", &bosh_agent::ids::uuid_v4()[..8]);
            let settings = nats_settings(&pki, &id, &url);
            metadata.serve(&settings);
            let sources = json!([{"Type": "HTTP", "URI": metadata.url(),
                "UserDataPath": "/latest/user-data", "InstanceIDPath": "/latest/meta-data/instance-id",
                "SSHKeysPath": "/latest/meta-data/public-keys/0/openssh-key",
                "TokenPath": "/latest/api/token"}]);
            let raw = boot(&hm, &id, || {
                AgentProcess::start_with_sources(&binary, &settings, Some(sources), "warn")
            });
            let spent = metadata.take_time();
            server_time.push(spent);
            raw_http.push(raw);
            raw.saturating_sub(spent)
        },
        || {
            let id = format!("boot-{}", &bosh_agent::ids::uuid_v4()[..8]);
            let settings = nats_settings(&pki, &id, &url);
            boot(&hm, &id, || AgentProcess::start_with_sources(&binary, &settings, None, "warn"))
        },
    );
    let (server_time, raw_http) = (Samples::new(server_time), Samples::new(raw_http));

    let mut report = Report::new("file");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let ratio = net_http.p50().as_secs_f64() / file.p50().as_secs_f64();
    report.row(
        "boot to 1st heartbeat, HTTP source, net (p50)",
        ms(net_http.p50()),
        ms(file.p50()),
        format!("{ratio:.2}x"),
        format!("< {} ms", TARGET_BOOT.as_millis()),
        Some(net_http.p50() < TARGET_BOOT),
    );
    report.row(
        "  min - max",
        format!("{} - {}", ms(net_http.min()), ms(net_http.max())),
        format!("{} - {}", ms(file.min()), ms(file.max())),
        "".into(),
        "-".into(),
        None,
    );
    report.info("  raw, incl. metadata server (p50)", ms(raw_http.p50()));
    report.info("  metadata server time per boot (p50, 3 requests)", ms(server_time.p50()));
    report.info("  metadata server time per boot (max)", ms(server_time.max()));
    report.print(
        &[
            format!("Boot to first heartbeat: {BOOTS} boots per source, interleaved, release agent"),
            "HTTP: IMDSv2 token PUT + user-data + SSH key from a local server, its own time subtracted"
                .into(),
        ],
        started.elapsed(),
    );
}

/// Starts an agent with `start` and returns the time until its first heartbeat arrives.
fn boot(hm: &HealthMonitor, id: &str, start: impl FnOnce() -> AgentProcess) -> Duration {
    hm.drain();
    let t0 = Instant::now();
    let mut agent = start();
    let subject = format!("hm.agent.heartbeat.{id}");
    let deadline = t0 + BOOT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match hm.rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(m) if m.subject == subject => return t0.elapsed(),
            Ok(_) => {}
            Err(_) if left.is_zero() => {
                panic!("no heartbeat from {id} within {BOOT_TIMEOUT:?}\n--- agent log ---\n{}", agent.log())
            }
            Err(_) => agent.check_alive(),
        }
    }
}

/// A health-monitor-side subscriber to every agent's heartbeats.
struct HealthMonitor {
    conn: NatsConnection,
    rx: Receiver<bosh_agent::mbus::nats::Message>,
}

impl HealthMonitor {
    fn connect(pki: &TestPki, url: &str) -> HealthMonitor {
        let (conn, rx) = support::subscriber(pki, url, "default.hm.bosh-internal", "hm.agent.heartbeat.*");
        HealthMonitor { conn, rx }
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.conn.shutdown();
    }
}

/// An EC2-style metadata service on loopback: `PUT /latest/api/token`, then user data (the current
/// boot's settings) and an SSH key, both requiring the token. It adds up the time it spends on each
/// request so the bench can take it out of the boot time.
struct MetadataServer {
    addr: SocketAddr,
    user_data: Arc<Mutex<String>>,
    nanos: Arc<AtomicU64>,
}

const TOKEN: &str = "bench-token";

impl MetadataServer {
    fn start() -> MetadataServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind metadata server");
        let addr = listener.local_addr().expect("metadata server address");
        let user_data = Arc::new(Mutex::new(String::new()));
        let nanos = Arc::new(AtomicU64::new(0));
        let (ud, ns) = (user_data.clone(), nanos.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let t = Instant::now();
                let _ = handle(conn, &ud);
                ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::SeqCst);
            }
        });
        MetadataServer { addr, user_data, nanos }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, settings: &Value) {
        *self.user_data.lock().unwrap_or_else(|e| e.into_inner()) = settings.to_string();
        self.nanos.store(0, Ordering::SeqCst);
    }

    /// Time spent on requests since [`MetadataServer::serve`].
    fn take_time(&self) -> Duration {
        Duration::from_nanos(self.nanos.swap(0, Ordering::SeqCst))
    }
}

fn handle(stream: TcpStream, user_data: &Mutex<String>) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let Some(head) = read_head(&mut reader)? else { return Ok(()) };
    std::io::copy(&mut (&mut reader).take(head.content_length()), &mut std::io::sink())?;
    let authorised = head.header("x-aws-ec2-metadata-token") == Some(TOKEN);
    let (status, body) = match (head.method.as_str(), head.target.as_str()) {
        ("PUT", "/latest/api/token") => (200, TOKEN.to_string()),
        (_, _) if !authorised => (401, String::new()),
        ("GET", "/latest/user-data") => (200, user_data.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        ("GET", "/latest/meta-data/public-keys/0/openssh-key") => (200, "ssh-ed25519 AAAA bench".into()),
        _ => (404, String::new()),
    };
    write!(out, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    out.flush()
}
