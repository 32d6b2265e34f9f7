//! A tiny real HTTP/1.1 blob server for integration tests (dav provider, signed URLs, log and
//! compile uploads).
//!
//! Why a real server over std::net rather than a mock: the agent's HTTP client (`http_client`: timeouts,
//! Content-Length streaming, Basic auth) is part of what is under test, so the
//! bytes must cross a socket. It stays deliberately small: one thread per connection, one request per
//! connection (`Connection: close`), blobs stored as files in a temp dir keyed by request path (the
//! query string is ignored for storage, as with signed URLs). Tests can require Basic auth or a header,
//! inspect every request, and make the next N requests fail with 500.

use super::http_listener::{read_head, HttpListener};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

/// What the server demands of clients; `Default` demands nothing.
#[derive(Debug, Clone, Default)]
pub struct BlobServerOptions {
    /// Require `Authorization: Basic` with this user and password (401 otherwise).
    pub basic_auth: Option<(String, String)>,
    /// Require this header (case-insensitive name) with exactly this value (403 otherwise).
    pub required_header: Option<(String, String)>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

struct State {
    dir: PathBuf,
    options: BlobServerOptions,
    requests: Mutex<Vec<RecordedRequest>>,
    fail_next: AtomicUsize,
}

/// The running server; stops accepting when dropped.
pub struct BlobServer {
    listener: HttpListener,
    state: Arc<State>,
    _dir: TempDir,
}

impl BlobServer {
    /// Starts a server on `127.0.0.1:<free port>`.
    pub fn start(options: BlobServerOptions) -> BlobServer {
        let dir = tempfile::tempdir().expect("blob server temp dir");
        let state = Arc::new(State {
            dir: dir.path().to_path_buf(),
            options,
            requests: Mutex::new(Vec::new()),
            fail_next: AtomicUsize::new(0),
        });
        let st = state.clone();
        let listener = HttpListener::start(move |conn| {
            let _ = handle(&st, conn);
        });
        BlobServer { listener, state, _dir: dir }
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.listener.addr())
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes the next `n` requests fail with 500 (after they are recorded).
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Stores `data` at `path` as if it had been PUT.
    pub fn put_blob(&self, path: &str, data: &[u8]) {
        std::fs::write(file_for(&self.state, path), data).expect("write blob");
    }

    /// The blob stored at `path`, if any.
    pub fn blob(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(file_for(&self.state, path)).ok()
    }
}

/// Blob file for a request path: hex of the path, so any path maps to one flat file name.
fn file_for(state: &State, path: &str) -> PathBuf {
    let name: String = path.bytes().map(|b| format!("{b:02x}")).collect();
    state.dir.join(name)
}

fn handle(state: &State, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let Some(head) = read_head(&mut reader)? else { return respond(&mut out, 400, b"") };
    let path = head.target.split_once('?').map_or(head.target.as_str(), |(p, _)| p).to_string();
    let headers = head.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    let req = RecordedRequest { method: head.method, path, headers };
    state.requests.lock().unwrap_or_else(|e| e.into_inner()).push(req.clone());

    let expect_continue = req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let status = rejection(state, &req);
    let mut body: Box<dyn Read + '_> =
        if req.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Box::new(Chunked { inner: &mut reader, left: 0, done: false })
        } else {
            let len = req.header("content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Box::new((&mut reader).take(len))
        };
    if let Some(status) = status {
        if !expect_continue {
            io::copy(&mut body, &mut io::sink())?;
        }
        return respond(&mut out, status, b"");
    }
    if expect_continue {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let file = file_for(state, &req.path);
    match req.method.as_str() {
        "GET" => match std::fs::File::open(&file) {
            Ok(mut f) => {
                let len = f.metadata()?.len();
                write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")?;
                io::copy(&mut f, &mut out)?;
                out.flush()
            }
            Err(_) => respond(&mut out, 404, b"not found"),
        },
        "PUT" => {
            let tmp = file.with_extension("upload");
            let mut f = std::fs::File::create(&tmp)?;
            io::copy(&mut body, &mut f)?;
            std::fs::rename(&tmp, &file)?;
            respond(&mut out, 201, b"")
        }
        "DELETE" => match std::fs::remove_file(&file) {
            Ok(()) => respond(&mut out, 204, b""),
            Err(_) => respond(&mut out, 404, b"not found"),
        },
        _ => respond(&mut out, 405, b""),
    }
}

/// The error status for a request the server refuses, if any: injected failures first, then auth.
fn rejection(state: &State, req: &RecordedRequest) -> Option<u16> {
    let failed =
        state.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if failed {
        return Some(500);
    }
    if let Some((user, password)) = &state.options.basic_auth {
        use base64::Engine as _;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        if req.header("authorization") != Some(want.as_str()) {
            return Some(401);
        }
    }
    if let Some((name, value)) = &state.options.required_header {
        if req.header(name) != Some(value.as_str()) {
            return Some(403);
        }
    }
    None
}

fn respond(out: &mut TcpStream, status: u16, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    write!(out, "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    out.write_all(body)?;
    out.flush()
}

/// A `Transfer-Encoding: chunked` body decoder (some clients send one for a body of unknown length).
struct Chunked<'a, R> {
    inner: &'a mut R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            self.left =
                u64::from_str_radix(size, 16).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if self.left == 0 {
                loop {
                    line.clear();
                    if self.inner.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                self.done = true;
                return Ok(0);
            }
        }
        let max = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

/// Where the dav client keeps blob `id`: under the first byte of sha1(id) as two hex digits.
pub fn dav_path(id: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, id.as_bytes());
    format!("/{:02x}/{id}", d.as_ref()[0])
}
