//! A cloud's metadata service and a BOSH registry served from the test process: EC2-style user data
//! with an optional IMDSv2 token, required headers (GCP's `Metadata-Flavor`), injected failures and
//! a mode that accepts requests and never answers. The one fake of the settings tests: the metadata
//! service at 169.254.169.254 cannot exist here, and the agent's HTTP client (timeouts, headers, the
//! IMDSv2 PUT) is part of what is tested, so the bytes must cross a socket. It speaks just enough
//! HTTP/1.1: one request per connection.

use super::http_listener::{read_head, Head, HttpListener};
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One request as the metadata server saw it (`target` is the path asked for).
pub type Seen = Head;

/// How the server behaves; `Default`: every route 404 until [`MetaServer::route`] adds it.
#[derive(Default)]
pub struct MetaState {
    /// Path → (status, body) of `GET` answers.
    pub routes: Mutex<HashMap<String, (u16, String)>>,
    /// IMDSv2: the token handed out on `PUT /latest/api/token`; GETs without it get 401.
    pub token: Option<String>,
    /// A header every request must carry (403 otherwise).
    pub required: Option<(String, String)>,
    /// Accept and read requests but never answer (the connections are kept open).
    pub hang: bool,
    /// The connections `hang` keeps open.
    pub held: Mutex<Vec<TcpStream>>,
    /// Every request, in arrival order.
    pub seen: Mutex<Vec<Seen>>,
    /// How many of the next requests get a 500.
    pub fail_next: AtomicUsize,
}

/// A metadata service and registry.
pub struct MetaServer {
    /// The listening socket.
    pub listener: HttpListener,
    /// The behaviour and what was seen.
    pub state: Arc<MetaState>,
}

impl MetaServer {
    /// Serves on a free loopback port.
    pub fn start(state: MetaState) -> MetaServer {
        MetaServer::start_on("127.0.0.1:0", state)
    }

    /// Serves on `addr` (`0.0.0.0:0` in a network namespace other machines reach).
    pub fn start_on(addr: &str, state: MetaState) -> MetaServer {
        let state = Arc::new(state);
        let st = state.clone();
        let listener = HttpListener::start_on(addr, move |conn| {
            let _ = serve(&st, conn);
        });
        MetaServer { listener, state }
    }

    /// `http://<address>:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listener.addr())
    }

    /// Answers `GET path` with `status` and `body` from now on.
    pub fn route(&self, path: &str, status: u16, body: &str) {
        self.state.routes.lock().unwrap().insert(path.to_string(), (status, body.to_string()));
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many requests asked for `path`.
    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.target == path).count()
    }
}

fn serve(st: &MetaState, stream: TcpStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let Some(head) = read_head(&mut reader)? else { return Ok(()) };
    std::io::copy(&mut (&mut reader).take(head.content_length()), &mut std::io::sink())?;
    let seen = head;
    st.seen.lock().unwrap().push(seen.clone());
    if st.hang {
        st.held.lock().unwrap().push(out);
        return Ok(());
    }
    let (status, body) = answer(st, &seen);
    write!(out, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    out.flush()
}

fn answer(st: &MetaState, req: &Seen) -> (u16, String) {
    if st.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return (500, "injected".into());
    }
    if let Some((name, value)) = &st.required {
        if req.header(name) != Some(value.as_str()) {
            return (403, format!("missing {name}"));
        }
    }
    if let Some(token) = &st.token {
        if req.method == "PUT" && req.target == "/latest/api/token" {
            return match req.header("X-aws-ec2-metadata-token-ttl-seconds") {
                Some(_) => (200, token.clone()),
                None => (400, "no ttl".into()),
            };
        }
        if req.target.starts_with("/latest/") && req.header("X-aws-ec2-metadata-token") != Some(token) {
            return (401, "token required".into());
        }
    }
    match (req.method.as_str(), st.routes.lock().unwrap().get(&req.target)) {
        ("GET", Some((status, body))) => (*status, body.clone()),
        _ => (404, "not found".into()),
    }
}
