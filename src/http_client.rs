//! The agent's HTTP/1.1 client: blob transfers (dav, signed URLs), metadata services and the
//! registry, monit's HTTP interface, and `bosh-agent call` over HTTPS.
//!
//! Why our own rather than ureq: the agent needs one request per connection, a streamed body each
//! way, `Content-Length` or chunked answers, bounded waits, redirects for GETs and proxies from the
//! environment, which is a few hundred lines on the `httparse` and rustls the binary already links
//! for its HTTPS server; ureq with its `http` types was 170 kB of a binary with a size budget
//! (ARCHITECTURE.md, "The release binary").
//!
//! What it does, as Go's `net/http` does for the Go agent:
//! - every request on a new connection with `Connection: close`, so nothing is pooled or idles;
//! - `Content-Length` for every body (object stores refuse chunked uploads), a file streamed from disk;
//! - answers framed by `Content-Length`, chunked, or the connection's end; 1xx answers skipped;
//! - an upload the server refuses before reading it (401, 413) gets the server's answer, not the
//!   broken write;
//! - GET and HEAD follow up to `max_redirects` redirects, dropping `Authorization` and `Cookie` when
//!   the host changes; other methods get the redirect as their answer;
//! - `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY` (either case) as Go reads them: loopback is never
//!   proxied, HTTPS goes through a `CONNECT` tunnel, proxy credentials in the proxy's URL;
//! - a connect timeout per address, an idle timeout per read or write, an optional deadline for the
//!   whole exchange (body included).
//!
//! Errors are strings that name the host and what failed; they never hold a URL's query string (the
//! credential of a signed URL) because only host and port are ever put in them.

use crate::tls::Trust;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Longest response head (status line and headers) read.
const MAX_HEAD: u64 = 64 << 10;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: u64 = 1 << 10;
/// Buffer for streaming a file body to the server.
const UPLOAD_BUFFER: usize = 64 << 10;
/// Buffer for reading answers: one TLS record. A caller reading a body into a larger buffer of its
/// own (a blob download) reads past it.
const ANSWER_BUFFER: usize = 16 << 10;

/// A client: whom it trusts, how long it waits, how many redirects it follows. Cheap to share
/// (`Sync`); every request opens its own connection.
#[derive(Debug)]
pub struct Client {
    trust: Trust,
    /// Built at the first HTTPS request, so a plain-HTTP client holds no roots.
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    io_timeout: Option<Duration>,
    max_redirects: u32,
    /// A proxy for every request instead of the environment's (tests only).
    proxy: Option<Proxy>,
}

/// A request body.
pub enum Body<'a> {
    /// No body (`Content-Length: 0` for methods that carry one).
    Empty,
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file streamed from disk; its length comes from its metadata.
    File(std::fs::File),
}

impl Client {
    /// A client trusting `trust`, with a 30 s connect timeout, no idle timeout and 10 redirects.
    pub fn new(trust: Trust) -> Client {
        Client {
            trust,
            tls: OnceLock::new(),
            connect_timeout: Duration::from_secs(30),
            io_timeout: None,
            max_redirects: 10,
            proxy: None,
        }
    }

    /// How long connecting to one address may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Client {
        self.connect_timeout = timeout;
        self
    }

    /// How long any single read or write may stall.
    pub fn io_timeout(mut self, timeout: Duration) -> Client {
        self.io_timeout = Some(timeout);
        self
    }

    /// How many redirects a GET follows (0: a redirect is the answer).
    pub fn max_redirects(mut self, redirects: u32) -> Client {
        self.max_redirects = redirects;
        self
    }

    /// Sends every request through `proxy` (`http://[user:password@]host[:port]`) instead of the one
    /// the environment names: for tests, whose servers are on loopback, which an environment's proxy
    /// never serves.
    #[cfg(feature = "internals")]
    pub fn proxy(mut self, proxy: &str) -> Result<Client, String> {
        self.proxy = Some(parse_proxy(proxy)?);
        Ok(self)
    }

    /// Sends `method url` with `headers` and `body`; the whole exchange ends by `deadline` when given.
    /// Any status is an answer; an error means there was none (or a broken one).
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        deadline: Option<Instant>,
    ) -> Result<Response, String> {
        let mut target = Target::parse(url)?;
        let mut headers: Vec<(String, String)> =
            headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let follows = matches!(method, "GET" | "HEAD");
        let mut body = Some(body);
        let mut redirects = 0;
        loop {
            let sent = body.take().unwrap_or(Body::Empty);
            let response = self.exchange(method, &target, &headers, sent, deadline)?;
            let location = match response.status {
                301 | 302 | 303 | 307 | 308 if follows && redirects < self.max_redirects => {
                    response.header("location").map(str::to_string)
                }
                _ => None,
            };
            let Some(location) = location else { return Ok(response) };
            drop(response);
            redirects += 1;
            let next = target.join(&location)?;
            if next.authority() != target.authority() {
                headers.retain(|(k, _)| {
                    !k.eq_ignore_ascii_case("authorization") && !k.eq_ignore_ascii_case("cookie")
                });
            }
            target = next;
        }
    }

    /// One request and the head of its answer, on a new connection.
    fn exchange(
        &self,
        method: &str,
        target: &Target,
        headers: &[(String, String)],
        body: Body<'_>,
        deadline: Option<Instant>,
    ) -> Result<Response, String> {
        let at = target.authority();
        let proxy = match &self.proxy {
            Some(fixed) => Some(fixed.clone()),
            None => proxy_for(target)?,
        };
        let (host, port) = match &proxy {
            Some(p) => (p.host.as_str(), p.port),
            None => (target.host.as_str(), target.port),
        };
        let tcp =
            self.connect(host, port, deadline).map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let mut conn = Conn { stream: Stream::Plain(tcp), deadline, io_timeout: self.io_timeout };
        conn.arm().map_err(|e| format!("{at}: {e}"))?;
        if let (Some(p), true) = (&proxy, target.https) {
            tunnel(&mut conn, p, &at).map_err(|e| format!("proxy {}:{} to {at}: {e}", p.host, p.port))?;
        }
        if target.https {
            conn = self.secure(conn, &target.host)?;
        }
        // Through a proxy, plain HTTP names the whole URL (absolute form); otherwise the path.
        let absolute = proxy.is_some() && !target.https;
        let named = target.host_header();
        let request_target =
            if absolute { format!("http://{named}{}", target.path) } else { target.path.clone() };
        let mut head =
            format!("{method} {request_target} HTTP/1.1\r\nHost: {named}\r\nConnection: close\r\n");
        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        for (name, default) in [("User-Agent", "bosh-agent"), ("Accept", "*/*")] {
            if !has(name) {
                head.push_str(&format!("{name}: {default}\r\n"));
            }
        }
        for (k, v) in headers {
            if k.bytes().chain(v.bytes()).any(|b| b == b'\r' || b == b'\n') {
                return Err(format!("{at}: header {k} holds a line break"));
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let (Some(auth), false) = (&target.basic_auth, has("authorization")) {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        if let (Some(auth), true) = (proxy.as_ref().and_then(|p| p.auth.as_ref()), absolute) {
            head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        let length = match &body {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File(f) => f.metadata().map_err(|e| format!("{at}: reading the body's size: {e}"))?.len(),
        };
        if length > 0 || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
            head.push_str(&format!("Content-Length: {length}\r\n"));
        }
        head.push_str("\r\n");
        let head_only = method == "HEAD";
        if let Err(sending) = send_request(&mut conn, head.as_bytes(), body) {
            // A server may answer before it has read the body (a refused upload: 401, 413) and close;
            // its answer says more than the broken write does.
            return Response::read(conn, head_only)
                .map_err(|_| format!("{at}: sending the request: {sending}"));
        }
        Response::read(conn, head_only).map_err(|e| format!("{at}: reading the answer: {e}"))
    }

    /// A TCP connection to the first address of `host` that answers.
    fn connect(&self, host: &str, port: u16, deadline: Option<Instant>) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
        for addr in (host, port).to_socket_addrs()? {
            let timeout = match deadline {
                Some(d) => self.connect_timeout.min(left(d)?),
                None => self.connect_timeout,
            };
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `conn` with TLS to `host` on top.
    fn secure(&self, conn: Conn, host: &str) -> Result<Conn, String> {
        let config = match self.tls.get() {
            Some(config) => Arc::clone(config),
            None => {
                let config = crate::tls::http_client_config(&self.trust)?;
                let _ = self.tls.set(Arc::clone(&config));
                config
            }
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: not a name TLS can check: {e}"))?;
        let session = rustls::ClientConnection::new(config, name).map_err(|e| format!("{host}: TLS: {e}"))?;
        let Conn { stream: Stream::Plain(tcp), deadline, io_timeout } = conn else {
            return Err(format!("{host}: TLS inside TLS"));
        };
        let tls = rustls::StreamOwned::new(session, tcp);
        let mut conn = Conn { stream: Stream::Tls(Box::new(tls)), deadline, io_timeout };
        // The handshake now, so that its failure reads as one (not as a failed write of the request).
        loop {
            conn.arm().map_err(|e| format!("{host}: {e}"))?;
            let Stream::Tls(tls) = &mut conn.stream else { break };
            let rustls::StreamOwned { conn: session, sock } = &mut **tls;
            if !session.is_handshaking() {
                break;
            }
            session.complete_io(sock).map_err(|e| format!("{host}: TLS handshake: {e}"))?;
        }
        Ok(conn)
    }
}

/// Time left until `deadline`, or an error once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "out of time"))
    } else {
        Ok(left)
    }
}

/// A connection, plain or TLS, whose reads and writes are bounded by the idle timeout and deadline.
struct Conn {
    stream: Stream,
    deadline: Option<Instant>,
    io_timeout: Option<Duration>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    /// Sets the socket's timeouts for the next read or write: the idle timeout, or less when the
    /// deadline is nearer.
    fn arm(&self) -> io::Result<()> {
        let timeout = match (self.deadline, self.io_timeout) {
            (Some(d), Some(io)) => Some(left(d)?.min(io)),
            (Some(d), None) => Some(left(d)?),
            (None, io) => io,
        };
        self.socket().set_read_timeout(timeout)?;
        self.socket().set_write_timeout(timeout)
    }

    /// Re-arms only when a deadline shrinks the time left; the idle timeout alone is set once.
    fn rearm(&self) -> io::Result<()> {
        if self.deadline.is_some() {
            self.arm()
        } else {
            Ok(())
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rearm()?;
        match &mut self.stream {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => match tls.read(buf) {
                // A server that closes without TLS's close_notify: the answer's framing decides
                // whether anything is missing.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.rearm()?;
        match &mut self.stream {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.rearm()?;
        match &mut self.stream {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// Writes the head and streams the body.
fn send_request(conn: &mut Conn, head: &[u8], body: Body<'_>) -> io::Result<()> {
    match body {
        Body::Empty => conn.write_all(head)?,
        Body::Bytes(bytes) => {
            conn.write_all(&[head, bytes].concat())?;
        }
        Body::File(mut file) => {
            conn.write_all(head)?;
            let mut buf = vec![0u8; UPLOAD_BUFFER];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                conn.write_all(&buf[..n])?;
            }
        }
    }
    conn.flush()
}

/// A `CONNECT` tunnel through `proxy` to `authority`.
fn tunnel(conn: &mut Conn, proxy: &Proxy, authority: &str) -> io::Result<()> {
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = &proxy.auth {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.flush()?;
    // Read the answer byte by byte: whatever follows its head is the TLS handshake's.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() as u64 >= MAX_HEAD || conn.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the proxy's answer ended early"));
        }
        answer.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&answer) {
        Ok(httparse::Status::Complete(_)) if parsed.code.is_some_and(|c| (200..300).contains(&c)) => Ok(()),
        Ok(httparse::Status::Complete(_)) => {
            Err(io::Error::other(format!("the proxy refused the tunnel with {}", parsed.code.unwrap_or(0))))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "the proxy's answer is not HTTP")),
    }
}

/// An answer: its status and headers, and its body to read.
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<Conn>,
    framing: Framing,
}

/// How the body's end is known.
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: bytes left in the current chunk, and whether its CRLF is still to be read.
    Chunked { left: u64, crlf: bool },
    /// Until the server closes the connection.
    UntilClose,
    /// Nothing more.
    Done,
}

impl Response {
    /// Reads the head of the answer (skipping 1xx ones) and works out the body's framing.
    fn read(conn: Conn, head_only: bool) -> io::Result<Response> {
        let mut reader = BufReader::with_capacity(ANSWER_BUFFER, conn);
        loop {
            let mut head = Vec::new();
            loop {
                let before = head.len();
                (&mut reader).take(MAX_HEAD - head.len() as u64).read_until(b'\n', &mut head)?;
                let line = &head[before..];
                if line == b"\r\n" || line == b"\n" {
                    break;
                }
                if line.is_empty() || head.len() as u64 >= MAX_HEAD {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "the answer's head ended early"));
                }
            }
            let mut slots = [httparse::EMPTY_HEADER; 100];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&head) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) | Err(_) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "the answer is not HTTP/1.x"))
                }
            }
            let status = parsed.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string()))
                .collect();
            let value =
                |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
            let framing = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
                Framing::Done
            } else if value("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
                Framing::Chunked { left: 0, crlf: false }
            } else if let Some(length) = value("content-length") {
                Framing::Length(length.parse().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("Content-Length '{length}' is not a length"),
                    )
                })?)
            } else {
                Framing::UntilClose
            };
            return Ok(Response { status, headers, reader, framing });
        }
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The whole body, refused when longer than `limit` bytes.
    pub fn read_to_vec(&mut self, limit: u64) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        self.by_ref().take(limit + 1).read_to_end(&mut body)?;
        if body.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the body is longer than {limit} bytes"),
            ));
        }
        Ok(body)
    }

    /// The next chunk's size, after the previous chunk's CRLF; 0 ends the body (trailers skipped).
    fn next_chunk(&mut self, crlf: bool) -> io::Result<u64> {
        let mut line = Vec::new();
        if crlf {
            (&mut self.reader).take(2).read_until(b'\n', &mut line)?;
            if line != b"\r\n" && line != b"\n" {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a chunk does not end with CRLF"));
            }
            line.clear();
        }
        (&mut self.reader).take(MAX_CHUNK_LINE).read_until(b'\n', &mut line)?;
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size '{size}'")))?;
        if size == 0 {
            loop {
                line.clear();
                (&mut self.reader).take(MAX_HEAD).read_until(b'\n', &mut line)?;
                if line.is_empty() || line == b"\r\n" || line == b"\n" {
                    break;
                }
            }
        }
        Ok(size)
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let early =
            || io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed before the body's end");
        match self.framing {
            Framing::Done | Framing::Length(0) => Ok(0),
            Framing::UntilClose => self.reader.read(buf),
            Framing::Length(left) => {
                let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..max])?;
                if n == 0 && !buf.is_empty() {
                    return Err(early());
                }
                self.framing = Framing::Length(left - n as u64);
                Ok(n)
            }
            Framing::Chunked { left: 0, crlf } => {
                let size = self.next_chunk(crlf)?;
                self.framing =
                    if size == 0 { Framing::Done } else { Framing::Chunked { left: size, crlf: true } };
                self.read(buf)
            }
            Framing::Chunked { left, crlf } => {
                let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..max])?;
                if n == 0 && !buf.is_empty() {
                    return Err(early());
                }
                self.framing = Framing::Chunked { left: left - n as u64, crlf };
                Ok(n)
            }
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
    /// `Basic ...` from the URL's userinfo.
    basic_auth: Option<String>,
    /// Whether the URL names its port.
    port_given: bool,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let shown = crate::url::redact_url(url);
        // A space or control character would let a URL write its own request line or headers.
        if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("{shown}: the URL holds a space or control character"));
        }
        let https = match url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()) {
            Some(s) if s == "https" => true,
            Some(s) if s == "http" => false,
            _ => return Err(format!("{shown}: not an http:// or https:// URL")),
        };
        let parts = crate::url::parts(url).map_err(|e| format!("{shown}: {e:?}"))?;
        if parts.host.is_empty() {
            return Err(format!("{shown}: no host"));
        }
        let port = match parts.port {
            None | Some("") => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p.parse().map_err(|_| format!("{shown}: port '{p}' is not a number"))?,
        };
        let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
        let path = match rest.find(['/', '?']) {
            Some(i) => rest[i..].split('#').next().unwrap_or("/").to_string(),
            None => "/".to_string(),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path };
        let basic_auth = parts.user.map(|user| {
            use base64::Engine as _;
            let creds = format!(
                "{}:{}",
                crate::url::percent_decode(user),
                crate::url::percent_decode(parts.password.unwrap_or(""))
            );
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(creds))
        });
        let port_given = !matches!(parts.port, None | Some(""));
        Ok(Target { https, host: parts.host.to_string(), port, path, basic_auth, port_given })
    }

    /// `host:port` as the `Host` header and `CONNECT` name it (IPv6 in brackets).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `Host` header: the URL's host and port as written, so a URL without a port sends none. A
    /// signed URL's signature covers this header, and object stores sign it without a default port.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port_given {
            format!("{host}:{}", self.port)
        } else {
            host
        }
    }

    /// Where a `Location` points, from here.
    fn join(&self, location: &str) -> Result<Target, String> {
        let scheme = if self.https { "https" } else { "http" };
        let url = if location.contains("://") {
            location.to_string()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{scheme}://{}{location}", self.authority())
        } else {
            let dir = self.path.split('?').next().unwrap_or("/");
            let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
            format!("{scheme}://{}{dir}{location}", self.authority())
        };
        let mut next = Target::parse(&url)?;
        if next.basic_auth.is_none() && next.authority() == self.authority() {
            next.basic_auth = self.basic_auth.clone();
        }
        Ok(next)
    }
}

/// A proxy from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Proxy {
    host: String,
    port: u16,
    /// `Basic ...` from the proxy URL's userinfo.
    auth: Option<String>,
}

/// The proxy for `target`, read from the environment as Go's `ProxyFromEnvironment` reads it.
fn proxy_for(target: &Target) -> Result<Option<Proxy>, String> {
    let var = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()));
    let chosen =
        if target.https { var(["HTTPS_PROXY", "https_proxy"]) } else { var(["HTTP_PROXY", "http_proxy"]) };
    let no_proxy = var(["NO_PROXY", "no_proxy"]).unwrap_or_default();
    match chosen {
        Some(proxy) if uses_proxy(&target.host, target.port, &no_proxy) => parse_proxy(&proxy).map(Some),
        _ => Ok(None),
    }
}

/// Whether a request to `host:port` goes through a proxy, given `NO_PROXY`: never for loopback;
/// not for `*`, a listed name or its subdomains (a leading `.` means subdomains only), a listed IP or
/// a CIDR holding the host's IP; a `:port` on an entry limits it to that port.
fn uses_proxy(host: &str, port: u16, no_proxy: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let ip = host.parse::<IpAddr>().ok();
    if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
        return false;
    }
    for entry in no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()) {
        if entry == "*" {
            return false;
        }
        if let Some((net, bits)) = entry.split_once('/') {
            if let (Some(ip), Ok(net), Ok(bits)) = (ip, net.parse::<IpAddr>(), bits.parse::<u32>()) {
                if in_cidr(ip, net, bits) {
                    return false;
                }
            }
            continue;
        }
        let (name, entry_port) = match entry.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, p.parse::<u16>().ok()),
            _ => (entry.as_str(), None),
        };
        if entry_port.is_some_and(|p| p != port) {
            continue;
        }
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let matches = match name.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == name || host.ends_with(&format!(".{name}")),
        };
        if matches {
            return false;
        }
    }
    true
}

/// Whether `ip` is in `net/bits`.
fn in_cidr(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A proxy URL: `http://[user:password@]host[:port]`, the scheme optional (Go assumes http).
fn parse_proxy(proxy: &str) -> Result<Proxy, String> {
    let url = if proxy.contains("://") { proxy.to_string() } else { format!("http://{proxy}") };
    let shown = crate::url::redact_url(&url);
    if !url.to_ascii_lowercase().starts_with("http://") {
        return Err(format!("proxy {shown}: only http:// proxies are supported"));
    }
    let target = Target::parse(&url).map_err(|e| format!("proxy {e}"))?;
    Ok(Proxy { host: target.host, port: target.port, auth: target.basic_auth })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_split_into_where_and_what() {
        let t = Target::parse("https://u:p%40ss@blobs.example:8443/a/b?X-Amz-Signature=s#frag").unwrap();
        assert!(t.https);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("blobs.example", 8443, "/a/b?X-Amz-Signature=s")
        );
        assert_eq!(t.basic_auth.as_deref(), Some("Basic dTpwQHNz"));
        let t = Target::parse("http://[fd00::1]?q").unwrap();
        assert_eq!((t.authority().as_str(), t.path.as_str()), ("[fd00::1]:80", "/?q"));
        assert_eq!(t.host_header(), "[fd00::1]", "no port in the URL, none in Host");
        let signed = Target::parse("https://bucket.s3.amazonaws.com/key?X-Amz-Signature=s").unwrap();
        assert_eq!((signed.host_header().as_str(), signed.port), ("bucket.s3.amazonaws.com", 443));
        assert_eq!(Target::parse("http://h:8080/").unwrap().host_header(), "h:8080");
        assert!(Target::parse("ftp://h/x").is_err());
        assert!(Target::parse("http:///x").is_err());
        assert!(Target::parse("http://h/x HTTP/1.1\r\nX-Evil: 1").is_err());
        let err = Target::parse("http://h:x/?sig=secret").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn redirects_resolve_against_the_request() {
        let t = Target::parse("http://u:p@h:1/dir/file?x").unwrap();
        assert_eq!(t.join("/other").unwrap().path, "/other");
        assert_eq!(t.join("sib").unwrap().path, "/dir/sib");
        assert_eq!(t.join("sib").unwrap().basic_auth, t.basic_auth, "same host keeps its credentials");
        let away = t.join("https://elsewhere/x").unwrap();
        assert_eq!((away.https, away.host.as_str(), away.basic_auth), (true, "elsewhere", None));
        assert_eq!(t.join("//cdn:9/y").unwrap().authority(), "cdn:9");
    }

    #[test]
    fn no_proxy_is_read_as_go_reads_it() {
        assert!(uses_proxy("blobs.example", 80, ""));
        assert!(!uses_proxy("127.0.0.1", 2822, ""), "loopback never");
        assert!(!uses_proxy("localhost", 80, ""));
        assert!(!uses_proxy("any", 80, "*"));
        assert!(!uses_proxy("example.com", 80, "example.com"));
        assert!(!uses_proxy("a.example.com", 80, "example.com"));
        assert!(uses_proxy("example.com", 80, ".example.com"), "a leading dot: subdomains only");
        assert!(!uses_proxy("a.example.com", 80, ".example.com"));
        assert!(!uses_proxy("10.1.2.3", 80, "192.168.0.0/16, 10.0.0.0/8"));
        assert!(uses_proxy("11.1.2.3", 80, "10.0.0.0/8"));
        assert!(!uses_proxy("h", 25250, "h:25250"));
        assert!(uses_proxy("h", 443, "h:25250"), "the entry's port limits it");
        assert!(!uses_proxy("fd00::5", 80, "fd00::/64"));
    }

    #[test]
    fn proxies_are_http_urls_with_optional_credentials() {
        let p = parse_proxy("proxy.corp:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port, p.auth), ("proxy.corp", 3128, None));
        let p = parse_proxy("http://me:pw@proxy.corp").unwrap();
        assert_eq!((p.port, p.auth.as_deref()), (80, Some("Basic bWU6cHc=")));
        assert!(parse_proxy("socks5://p:1080").is_err());
        assert!(!parse_proxy("https://me:secret@p").unwrap_err().contains("secret"));
    }

    /// A one-shot server: answers the first connection with `answer` and hands back what it was sent.
    fn serve_once(answer: &'static [u8]) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).unwrap();
            got
        });
        (url, handle)
    }

    #[test]
    fn chunked_answers_are_decoded_and_trailers_skipped() {
        let (url, server) = serve_once(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        );
        let mut r = Client::new(Trust::Nobody)
            .send("GET", &format!("{url}/x?y"), &[("X-A", "b")], Body::Empty, None)
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.read_to_vec(100).unwrap(), b"hello, world");
        let sent = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(sent.starts_with("GET /x?y HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\nX-A: b\r\n") && sent.contains("Connection: close"), "{sent}");
        assert_eq!(sent.matches("Accept:").count(), 1, "a default header only when not given: {sent}");
        assert!(!sent.contains("Content-Length"), "a GET without a body says no length: {sent}");
    }

    #[test]
    fn through_a_proxy_plain_http_names_the_whole_url_and_the_proxys_credentials() {
        let (proxy, server) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let mut client = Client::new(Trust::Nobody);
        client.proxy = Some(parse_proxy(&proxy.replace("http://", "http://me:pw@")).unwrap());
        let r = client.send("GET", "http://blobs.example:25250/ab/c?d", &[], Body::Empty, None).unwrap();
        assert_eq!(r.status, 204);
        let sent = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(sent.starts_with("GET http://blobs.example:25250/ab/c?d HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\nHost: blobs.example:25250\r\n"), "{sent}");
        assert!(sent.contains("\r\nProxy-Authorization: Basic bWU6cHc=\r\n"), "{sent}");
    }

    #[test]
    fn an_upload_refused_before_its_body_is_read_gets_the_servers_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/big", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n").unwrap();
            // Closing with unread data makes the kernel reset the connection under the writer.
        });
        let big = vec![7u8; 32 << 20];
        let r = Client::new(Trust::Nobody).send("PUT", &url, &[], Body::Bytes(&big), None);
        server.join().unwrap();
        assert_eq!(r.map(|r| r.status), Ok(413), "the answer, not the broken write");
    }

    #[test]
    fn a_body_cut_short_is_an_error_and_a_long_one_is_refused() {
        let (url, _server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort");
        let mut r = Client::new(Trust::Nobody).send("GET", &url, &[], Body::Empty, None).unwrap();
        assert_eq!(r.read_to_vec(100).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let (url, _server) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n0123456789");
        let mut r = Client::new(Trust::Nobody).send("GET", &url, &[], Body::Empty, None).unwrap();
        assert!(r.read_to_vec(5).is_err());
    }

    #[test]
    fn bodies_carry_their_length_and_a_silent_server_ends_at_the_deadline() {
        let (url, server) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let r = Client::new(Trust::Nobody).send("PUT", &url, &[], Body::Bytes(b"abc"), None).unwrap();
        assert_eq!(r.status, 204);
        assert!(String::from_utf8(server.join().unwrap()).unwrap().contains("Content-Length: 3\r\n"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let deadline = Instant::now() + Duration::from_millis(300);
        let err =
            Client::new(Trust::Nobody).send("GET", &url, &[], Body::Empty, Some(deadline)).err().unwrap();
        assert!(err.contains("reading the answer"), "{err}");
        drop(listener);
    }
}
