//! What the tests' and benchmarks' small HTTP servers share (the blob server, the metadata services):
//! an accept loop with one thread per connection on `127.0.0.1:<free port>`, until the listener is
//! dropped, and the reading of a request's head.

use std::io::{self, BufRead};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A listening socket whose connections are handed, each on its own thread, to one handler.
pub struct HttpListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl HttpListener {
    /// Binds a free loopback port and serves every connection with `handle`.
    pub fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> HttpListener {
        HttpListener::start_on("127.0.0.1:0", handle)
    }

    /// Binds `addr` (`0.0.0.0:0`: every interface of the calling thread's network namespace, a free
    /// port) and serves every connection with `handle`.
    pub fn start_on(addr: &str, handle: impl Fn(TcpStream) + Send + Sync + 'static) -> HttpListener {
        let listener = TcpListener::bind(addr).expect("bind test HTTP server");
        let addr = listener.local_addr().expect("test HTTP server address");
        let stop = Arc::new(AtomicBool::new(false));
        let (handle, stopped) = (Arc::new(handle), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let handle = handle.clone();
                    std::thread::spawn(move || handle(conn));
                }
            }
        });
        HttpListener { addr, stop }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect(wake); // wake the accept loop
    }
}

/// A request line and its headers (names as sent).
#[derive(Clone, Debug)]
pub struct Head {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target, query string included.
    pub target: String,
    /// Headers in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `Content-Length`, 0 when absent.
    pub fn content_length(&self) -> u64 {
        self.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// Reads a request line and headers up to the blank line; `None` when the client closed the
/// connection first or the request line is not `METHOD TARGET ...`.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else { return Ok(None) };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        match line.trim_end().split_once(':') {
            Some((k, v)) => headers.push((k.trim().to_string(), v.trim().to_string())),
            None => break,
        }
    }
    Ok(Some(Head { method, target, headers }))
}
