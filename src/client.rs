//! `bosh-agent call`: a client in the same binary that talks to an agent the way the director (NATS,
//! protocol 3) or bosh-cli (HTTPS) does, polls `get_task` for asynchronous answers, and returns the
//! final reply envelope. Used by operators, tests and the benchmark.

use crate::cli::CallOptions;
use crate::error::Context as _;
use crate::mbus::nats::{Message, NatsConnection, NatsOptions};
use crate::mbus::url::MbusUrl;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// How often a running task is polled (the director polls every second; a person waits less gladly).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// One request/reply exchange with an agent.
pub trait Transport {
    /// Sends one request and returns the reply envelope.
    fn request(&mut self, method: &str, arguments: &[Value], deadline: Instant) -> Result<Value, String>;
}

/// Sends the call and follows a task handle to its result; returns the final envelope.
pub fn call(opts: &CallOptions) -> Result<Value, String> {
    let deadline = Instant::now() + opts.timeout;
    let mut transport = connect(opts, deadline)?;
    call_with(transport.as_mut(), &opts.method, &opts.arguments, deadline)
}

/// [`call`] over an already-open transport.
pub fn call_with(
    t: &mut dyn Transport,
    method: &str,
    args: &[Value],
    deadline: Instant,
) -> Result<Value, String> {
    let mut reply = t.request(method, args, deadline)?;
    while let Some(id) = running_task(&reply) {
        if Instant::now() + POLL_INTERVAL > deadline {
            return Err(format!("task {id} still running at the deadline"));
        }
        std::thread::sleep(POLL_INTERVAL);
        reply = t.request("get_task", &[json!(id)], deadline)?;
    }
    Ok(reply)
}

/// The task id when a reply is a running-task handle.
pub fn running_task(reply: &Value) -> Option<String> {
    let v = reply.get("value")?;
    (v.get("state")?.as_str()? == "running").then(|| v.get("agent_task_id")?.as_str().map(String::from))?
}

/// Opens the transport the URL's scheme names.
pub fn connect(opts: &CallOptions, deadline: Instant) -> Result<Box<dyn Transport>, String> {
    let url = MbusUrl::parse(&opts.mbus)?;
    let read = |p: &Option<std::path::PathBuf>| -> Result<Option<String>, String> {
        p.as_ref()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
            .transpose()
    };
    let ca = read(&opts.ca)?;
    if url.scheme == "https" {
        return Ok(Box::new(Https::new(&url, ca.as_deref())?));
    }
    let agent_id = opts.agent_id.clone().ok_or("--agent-id is required for NATS")?;
    let tls = match (read(&opts.cert)?, read(&opts.key)?) {
        (Some(cert), Some(key)) => {
            Some(crate::tls::client::nats_client_config(ca.as_deref().unwrap_or(""), &cert, &key)?)
        }
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    Ok(Box::new(Nats::connect(&opts.mbus, tls, &agent_id, deadline)?))
}

/// bosh-cli's side of the HTTPS bus: `POST /agent` with Basic auth.
pub struct Https {
    http: crate::http_client::Client,
    endpoint: String,
    auth: String,
}

impl Https {
    /// A client for `url`, verifying the agent against `ca` when given, otherwise accepting any
    /// certificate as bosh-cli does without a CA.
    pub fn new(url: &MbusUrl, ca: Option<&str>) -> Result<Https, String> {
        let trust = match ca {
            Some(pem) => crate::tls::Trust::roots(&crate::tls::parse_certs(pem)?)?,
            None => crate::tls::Trust::Anybody,
        };
        let http = crate::http_client::Client::new(trust).connect_timeout(Duration::from_secs(30));
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", url.user, url.password));
        Ok(Https {
            http,
            endpoint: format!("https://{}/agent", url.host_port()),
            auth: format!("Basic {creds}"),
        })
    }
}

impl Transport for Https {
    fn request(&mut self, method: &str, arguments: &[Value], _deadline: Instant) -> Result<Value, String> {
        let body =
            json!({ "method": method, "arguments": arguments, "reply_to": "bosh-agent-call" }).to_string();
        let headers = [("Authorization", self.auth.as_str()), ("Content-Type", "application/json")];
        let mut resp = self
            .http
            .send("POST", &self.endpoint, &headers, crate::http_client::Body::Bytes(body.as_bytes()), None)
            .map_err(|e| format!("POST {}: {}", self.endpoint, explain(&e, false)))?;
        let status = resp.status;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut resp, &mut text).context("reading reply")?;
        if status == 401 {
            return Err("wrong mbus credentials: the agent answered 401 Unauthorized to the user and \
                        password in --mbus"
                .into());
        }
        if status != 200 {
            return Err(format!("Agent responded with non-successful status code: {status}"));
        }
        serde_json::from_str(&text).context("reply is not JSON")
    }
}

/// Says what a failed connection attempt means for someone typing `bosh-agent call`; `plain` is
/// whether no client certificate was given.
fn explain(why: &str, plain: bool) -> String {
    let hint = if why.contains("requires TLS") && plain {
        "the server requires mutual TLS: give --ca, --cert and --key"
    } else if why.contains("received fatal alert") {
        "the server refused the TLS handshake: is --cert signed by a CA the server trusts?"
    } else if why.contains("invalid peer certificate") {
        "the server's certificate is not trusted: is --ca the CA that signed it?"
    } else if why.contains("Connection refused") {
        "nothing listens there: are the host and port right, and is the server running?"
    } else {
        return why.to_string();
    };
    format!("{hint} ({why})")
}

/// The director's side of NATS: publish to `agent.<id>` with a `director.<uuid>.<id>.<uuid>` reply.
pub struct Nats {
    conn: NatsConnection,
    replies: Receiver<Message>,
    agent_id: String,
    inbox: String,
}

impl Nats {
    /// Connects and subscribes to a private reply inbox.
    pub fn connect(
        url: &str,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
        agent_id: &str,
        deadline: Instant,
    ) -> Result<Nats, String> {
        let inbox = format!("director.{}", crate::ids::uuid_v4());
        let (tx, replies) = mpsc::channel();
        let opts = NatsOptions {
            urls: vec![url.to_string()],
            tls,
            subscriptions: vec![format!("{inbox}.>")],
            name: "bosh-agent-call".into(),
        };
        let plain = opts.tls.is_none();
        let conn = NatsConnection::start(opts, tx);
        let left = || deadline.saturating_duration_since(Instant::now());
        // Connected and the reply subscription acknowledged by the server (PING/PONG), so no reply can
        // arrive before the server knows where to deliver it. The first failed attempt is the answer:
        // the connection would only retry the same thing.
        let connected = conn.wait_first_attempt(left()).and_then(|()| {
            conn.flush(left()).then_some(()).ok_or_else(|| "the server did not answer PING".to_string())
        });
        if let Err(why) = connected {
            conn.shutdown();
            return Err(format!("cannot connect to {}: {}", crate::url::redact(url), explain(&why, plain)));
        }
        Ok(Nats { conn, replies, agent_id: agent_id.to_string(), inbox })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.conn.shutdown();
    }
}

impl Transport for Nats {
    fn request(&mut self, method: &str, arguments: &[Value], deadline: Instant) -> Result<Value, String> {
        let reply_to = format!("{}.{}.{}", self.inbox, self.agent_id, crate::ids::uuid_v4());
        let body = json!({ "protocol": 3, "method": method, "arguments": arguments, "reply_to": reply_to })
            .to_string();
        let subject = format!("agent.{}", self.agent_id);
        // The NATS reply subject is the body's `reply_to`: the agent answers there either way, and
        // the server answers there with a 503 status when nobody subscribes to the agent's subject.
        self.conn.publish_with_reply(&subject, &reply_to, body.as_bytes()).context("publishing")?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(m) if m.subject == reply_to && m.status == Some(503) => {
                    return Err(format!(
                        "no reply from {subject}: nothing listens there (is the agent id right, and is \
                         the agent connected to this NATS server?)"
                    ))
                }
                Ok(m) if m.subject == reply_to => {
                    return serde_json::from_slice(&m.payload).context("reply is not JSON")
                }
                Ok(_) => continue, // a late reply to an earlier request
                Err(_) => return Err(format!("no reply from {subject} to {method}: timed out")),
            }
        }
    }
}
