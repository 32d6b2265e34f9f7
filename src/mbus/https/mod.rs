//! The HTTPS bus for `bosh create-env`: bosh-cli POSTs agent requests to `/agent` and uploads blobs to
//! `/blobs/<prefix>/<id>` (the wire contract of bosh-cli's `agentclient/http` and dav blobstore, and of the Go agent's `mbus/https_handler.go`).
//!
//! The surface: [`HttpsServer::start`] listens with a rustls server config and hands every `POST /agent`
//! body to an [`AgentEndpoint`], whose returned bytes are the 200 reply; blobs are streamed to and from
//! `blobs_dir` without the endpoint's involvement.
//!
//! Design (why it looks like this): the agent is synchronous, so an authenticated connection gets a
//! thread of its own, capped at `max_connections` (over the cap it is answered 503). Nothing
//! unauthenticated holds such a slot: one poll thread accepts every connection and carries it,
//! non-blocking, through the TLS handshake and its first request head, many at once, under one
//! tight deadline ([`PENDING_DEADLINE`]); only a complete head with the right credentials is handed
//! to a connection thread. A client that trickles its ClientHello or head, or goes silent after the
//! handshake, therefore costs one entry in the poll set until the deadline, and when that set is full
//! ([`MAX_PENDING`]) the oldest entry makes room for the newest, so such clients cannot lock others
//! out. Wrong credentials and malformed heads are answered by a few separately capped threads.
//! Every later phase that waits on the client has a bound (each head, each body read, each write).
//! HTTP framing lives in [`super::http`]; the blob directory in `blobs`.

mod blobs;

use super::http::{self, Body, BodyReader, Framing, Head};
use crate::sync::lock;
use base64::Engine;
use blobs::{BlobStore, PutError};
use rustls::{ServerConnection, StreamOwned};
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// From accepting a connection until its TLS handshake and first request head are complete,
/// however the client trickles bytes: bosh-cli sends both at once.
pub const PENDING_DEADLINE: Duration = Duration::from_secs(10);
/// Connections in the handshake-and-first-head phase at once; beyond, the oldest is dropped.
pub const MAX_PENDING: usize = 512;
/// From starting to wait for a later request on a kept-alive connection until its head is complete.
const HEAD_DEADLINE: Duration = Duration::from_secs(30);
/// Each read of a request body and each write of a response must progress within this.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a connection waiting for a request head, and the poll thread, check whether the
/// server is shutting down.
const STOP_POLL: Duration = Duration::from_millis(250);
/// `POST /agent` bodies are small JSON; anything bigger is refused with 413 instead of buffered.
const MAX_AGENT_BODY: u64 = 16 * 1024 * 1024;
/// Unread body bytes the server discards to keep a connection reusable after an early answer.
const DRAIN_LIMIT: u64 = 64 * 1024;
/// How long draining may wait for each read before giving up on reuse.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// After answering early and closing, keep reading (and discarding) for this long so the client reads
/// our answer instead of a TCP reset caused by its unread upload.
const LINGER: Duration = Duration::from_secs(2);
/// …and for at most this many bytes.
const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// Threads that may exist at once just to answer 401, 503 or a malformed head; beyond, the
/// connection is dropped.
const MAX_REJECTERS: usize = 8;
/// Rejecting is cheap by design: short read and write deadlines.
const REJECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Fixed buffer for streaming blobs out.
const STREAM_BUF: usize = 64 * 1024;

/// One TLS connection over TCP; `StreamOwned` is also the buffered reader (`BufRead`) of plaintext.
type Tls = StreamOwned<ServerConnection, TcpStream>;

/// What the HTTPS bus hands `POST /agent` bodies to: the agent's dispatcher in production, a stub in
/// tests. Kept to bytes in, bytes out so the bus knows nothing about agent messages.
pub trait AgentEndpoint: Send + Sync + 'static {
    /// Body of `POST /agent` in, JSON reply body out (always a JSON object).
    fn handle(&self, body: Vec<u8>) -> Vec<u8>;
}

/// Everything the server needs, derived by the caller from the agent's `mbus` URL and settings.
pub struct HttpsOptions {
    /// `host:port` to listen on, from the mbus URL (`0.0.0.0:6868` in bosh-deployment).
    pub listen: String,
    /// Basic-auth user name expected on every request (percent-decoded from the URL).
    pub user: String,
    /// Basic-auth password expected on every request (percent-decoded from the URL).
    pub password: String,
    /// TLS server configuration, see [`crate::tls::server::server_config`].
    pub tls: Arc<rustls::ServerConfig>,
    /// Directory blobs are stored in (`<base>/data/blobs`); created on first upload.
    pub blobs_dir: PathBuf,
    /// Connections served at once; more get 503. Zero is treated as one.
    pub max_connections: usize,
}

/// A running HTTPS bus. Dropping it shuts it down.
pub struct HttpsServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// State shared by the accept thread and every connection thread.
struct Shared {
    tls: Arc<rustls::ServerConfig>,
    /// The exact `Authorization` value expected: `Basic base64(user:password)`.
    auth: Vec<u8>,
    endpoint: Arc<dyn AgentEndpoint>,
    blobs: BlobStore,
    stop: AtomicBool,
    active: Arc<AtomicUsize>,
    rejecting: Arc<AtomicUsize>,
    max_connections: usize,
}

impl HttpsServer {
    /// Binds the listener and starts the accept thread; returns once the port is bound, so
    /// [`HttpsServer::local_addr`] is immediately connectable.
    pub fn start(opts: HttpsOptions, endpoint: Arc<dyn AgentEndpoint>) -> io::Result<HttpsServer> {
        let listener = TcpListener::bind(opts.listen.as_str())?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let credentials = format!("{}:{}", opts.user, opts.password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        let shared = Arc::new(Shared {
            tls: opts.tls,
            auth: format!("Basic {encoded}").into_bytes(),
            endpoint,
            blobs: BlobStore::new(opts.blobs_dir),
            stop: AtomicBool::new(false),
            active: Arc::new(AtomicUsize::new(0)),
            rejecting: Arc::new(AtomicUsize::new(0)),
            max_connections: opts.max_connections.max(1),
        });
        let for_thread = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("https-accept".into())
            .spawn(move || poll_loop(listener, for_thread))?;
        log::info!("https: listening on {local_addr}");
        Ok(HttpsServer { local_addr, shared, accept: Mutex::new(Some(accept)) })
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for the poll thread to end (within [`STOP_POLL`]). Idle
    /// connections close within a poll interval; a request in progress is finished first. Safe to
    /// call more than once.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let handle = lock(&self.accept).take();
        let Some(handle) = handle else { return };
        let _ = handle.join();
        log::info!("https: stopped listening on {}", self.local_addr);
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A taken place under a counter cap, given back on drop (also when a thread panics or fails to start).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn acquire(counter: &Arc<AtomicUsize>, cap: usize) -> Option<Slot> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < cap).then_some(n + 1))
            .ok()
            .map(|_| Slot(Arc::clone(counter)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection between accept and its first complete request head, driven without blocking.
struct Pending {
    tcp: TcpStream,
    conn: ServerConnection,
    head: Vec<u8>,
    deadline: Instant,
}

/// Where a pending connection stands after reading what arrived.
enum Progress {
    Waiting,
    Closed,
    Head(Box<Head>),
    Bad(u16),
}

impl Pending {
    /// Reads and decrypts whatever arrived, answers the handshake, and looks for a complete head.
    fn progress(&mut self) -> Progress {
        while self.conn.wants_read() {
            match self.conn.read_tls(&mut self.tcp) {
                Ok(0) => return Progress::Closed,
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        log::debug!("https: TLS handshake failed: {e}");
                        let _ = self.flush();
                        return Progress::Closed;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Closed,
            }
        }
        if self.flush().is_err() {
            return Progress::Closed;
        }
        if self.conn.is_handshaking() {
            return Progress::Waiting;
        }
        let mut reader = self.conn.reader();
        loop {
            let avail = match reader.fill_buf() {
                Ok(avail) => avail,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(_) => return Progress::Closed,
            };
            if avail.is_empty() {
                return if self.head.is_empty() { Progress::Closed } else { Progress::Bad(400) };
            }
            let before = self.head.len();
            let take = avail.len().min(http::MAX_HEAD_BYTES + 1 - before);
            self.head.extend_from_slice(&avail[..take]);
            match http::parse_head(&self.head) {
                Ok(Some((head, end))) => {
                    reader.consume(end.saturating_sub(before));
                    return Progress::Head(Box::new(head));
                }
                Ok(None) => reader.consume(take),
                Err(e) => return Progress::Bad(e.status()),
            }
        }
    }

    /// Writes what TLS has to send, as far as the socket takes it now.
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The connection as a blocking stream for a connection thread; decrypted bytes after the head
    /// stay buffered in it.
    fn into_stream(self) -> io::Result<Tls> {
        self.tcp.set_nonblocking(false)?;
        Ok(StreamOwned::new(self.conn, self.tcp))
    }
}

/// The poll thread: accepts, and carries every new connection through its handshake and first head
/// (see the module doc), until the server stops.
fn poll_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        fds.clear();
        fds.push(libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        for p in &pending {
            let events = if p.conn.wants_write() { libc::POLLIN | libc::POLLOUT } else { libc::POLLIN };
            fds.push(libc::pollfd { fd: p.tcp.as_raw_fd(), events, revents: 0 });
        }
        let now = Instant::now();
        let wait =
            pending.iter().map(|p| p.deadline.saturating_duration_since(now)).min().unwrap_or(STOP_POLL);
        let wait_ms = wait.min(STOP_POLL).as_millis().max(1) as libc::c_int;
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfd entries for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log::warn!("https: poll failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
            continue;
        }
        // Connections first (their indices match `fds`), then new ones.
        let now = Instant::now();
        let mut i = pending.len();
        while i > 0 {
            i -= 1;
            let revents = fds[i + 1].revents;
            let outcome = if revents != 0 { pending[i].progress() } else { Progress::Waiting };
            match outcome {
                Progress::Waiting if pending[i].deadline > now => {}
                Progress::Waiting | Progress::Closed => {
                    pending.swap_remove(i);
                }
                Progress::Head(head) => {
                    let p = pending.swap_remove(i);
                    hand_off(&shared, p, *head);
                }
                Progress::Bad(status) => {
                    let p = pending.swap_remove(i);
                    reject(&shared, p, Rejection::Status(status));
                }
            }
        }
        if fds[0].revents != 0 {
            accept_all(&listener, &shared, &mut pending);
        }
    }
}

/// Accepts every connection waiting on the listener into `pending`, making room by dropping the
/// oldest pending ones when the set is full.
fn accept_all(listener: &TcpListener, shared: &Shared, pending: &mut Vec<Pending>) {
    loop {
        let tcp = match listener.accept() {
            Ok((tcp, _)) => tcp,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("https: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                return;
            }
        };
        let conn = match ServerConnection::new(Arc::clone(&shared.tls)) {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("https: cannot create TLS session: {e}");
                continue;
            }
        };
        if tcp.set_nonblocking(true).is_err() {
            continue;
        }
        let _ = tcp.set_nodelay(true);
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = (0..pending.len()).min_by_key(|&i| pending[i].deadline) {
                pending.swap_remove(oldest);
                log::debug!("https: {MAX_PENDING} connections pending; dropped the oldest");
            }
        }
        pending.push(Pending { tcp, conn, head: Vec::new(), deadline: Instant::now() + PENDING_DEADLINE });
    }
}

/// Gives a connection with a complete first head to a connection thread when its credentials are
/// right and a slot is free; otherwise it is answered 401 or 503.
fn hand_off(shared: &Arc<Shared>, p: Pending, head: Head) {
    if !authorized(&shared.auth, &head) {
        return reject(shared, p, Rejection::Unauthorized(Box::new(head)));
    }
    let Some(slot) = Slot::acquire(&shared.active, shared.max_connections) else {
        log::warn!("https: {} connections already served; answering 503", shared.max_connections);
        return reject(shared, p, Rejection::Status(503));
    };
    let stream = match p.into_stream() {
        Ok(stream) => stream,
        Err(e) => return log::debug!("https: cannot hand the connection over: {e}"),
    };
    let for_thread = Arc::clone(shared);
    let spawned = thread::Builder::new().name("https-conn".into()).spawn(move || {
        let _slot = slot;
        serve(&for_thread, stream, head);
    });
    if let Err(e) = spawned {
        log::warn!("https: cannot start connection thread: {e}");
    }
}

/// Why a connection is answered and closed without being served.
enum Rejection {
    /// Wrong or missing credentials: routed as usual, which answers 401 with the challenge.
    Unauthorized(Box<Head>),
    /// Over the cap (503) or a malformed head (4xx).
    Status(u16),
}

/// Answers a rejected connection on one of a few capped threads with short deadlines, reading no
/// more of it than that takes; with every rejecter busy the connection is dropped.
fn reject(shared: &Arc<Shared>, p: Pending, why: Rejection) {
    let Some(slot) = Slot::acquire(&shared.rejecting, MAX_REJECTERS) else {
        return log::warn!("https: rejecters busy; dropping a connection");
    };
    let Ok(mut stream) = p.into_stream() else { return };
    let _ = stream.sock.set_read_timeout(Some(REJECT_TIMEOUT));
    let _ = stream.sock.set_write_timeout(Some(REJECT_TIMEOUT));
    let for_thread = Arc::clone(shared);
    let spawned = thread::Builder::new().name("https-reject".into()).spawn(move || {
        let _slot = slot;
        match why {
            Rejection::Unauthorized(head) => {
                // The connection closes after this answer: say so, or a client would reuse it.
                let outcome = handle(&for_thread, &mut stream, &head, false);
                close(stream, outcome.unread_body);
            }
            Rejection::Status(status) => {
                let headers: &[(&str, &str)] = if status == 503 { &[("Retry-After", "1")] } else { &[] };
                let _ = http::write_head(&mut stream, status, headers, 0, true).and_then(|()| stream.flush());
                close(stream, true);
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("https: cannot start a rejecting thread: {e}");
    }
}

/// Serves an authenticated connection, starting with its first request, until it closes, errs,
/// times out or the server stops.
fn serve(shared: &Shared, mut stream: Tls, first: Head) {
    let _ = stream.sock.set_write_timeout(Some(IO_TIMEOUT));
    let mut linger = false;
    let mut next = Some(first);
    loop {
        let head = match next.take() {
            Some(head) => head,
            None if shared.stop.load(Ordering::SeqCst) => break,
            None => match read_head(&mut stream, HEAD_DEADLINE, Some(&shared.stop)) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(status) => {
                    log::debug!("https: malformed or incomplete request head -> {status}");
                    let _ = http::write_head(&mut stream, status, &[], 0, true).and_then(|()| stream.flush());
                    linger = true;
                    break;
                }
            },
        };
        let outcome = handle(shared, &mut stream, &head, true);
        if !outcome.keep_alive {
            linger = outcome.unread_body;
            break;
        }
    }
    close(stream, linger);
}

/// Time left before `deadline`, or `None` once it has passed (never `Some(0)`, which sockets refuse).
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

/// Socket timeouts surface as `WouldBlock` on Unix and `TimedOut` elsewhere.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads one request head within `limit`.
///
/// `Ok(None)` means close quietly: the client closed or went idle between requests, or the server is
/// stopping. `Err(status)` means answer `status` and close (malformed, too large, or a head that
/// stalled half-way). Bytes after the head stay buffered in the stream for the body.
fn read_head(stream: &mut Tls, limit: Duration, stop: Option<&AtomicBool>) -> Result<Option<Head>, u16> {
    let deadline = Instant::now() + limit;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(left) = remaining(deadline) else {
            return if buf.is_empty() { Ok(None) } else { Err(408) };
        };
        let _ = stream.sock.set_read_timeout(Some(left.min(STOP_POLL)));
        let avail = match stream.fill_buf() {
            Ok(avail) => avail,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                if buf.is_empty() && stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                    return Ok(None);
                }
                continue;
            }
            Err(_) => return Ok(None),
        };
        if avail.is_empty() {
            return if buf.is_empty() { Ok(None) } else { Err(400) };
        }
        let before = buf.len();
        let take = avail.len().min(http::MAX_HEAD_BYTES + 1 - before);
        buf.extend_from_slice(&avail[..take]);
        match http::parse_head(&buf) {
            Ok(Some((head, end))) => {
                stream.consume(end.saturating_sub(before));
                return Ok(Some(head));
            }
            Ok(None) => stream.consume(take),
            Err(e) => return Err(e.status()),
        }
    }
}

/// What the connection loop needs to know after a request.
struct Outcome {
    keep_alive: bool,
    /// The client may still be sending body bytes we did not read.
    unread_body: bool,
}

/// One request/response exchange: owns the body decoder and remembers what was answered.
struct Exchange<'a> {
    stream: &'a mut Tls,
    body: Body,
    framing: Framing,
    /// `Expect: 100-continue` seen and `100 Continue` not yet sent.
    continue_pending: bool,
    keep_alive: bool,
    status: Option<u16>,
}

impl<'a> Exchange<'a> {
    /// The request body, after telling a waiting client to go ahead.
    fn body(&mut self) -> io::Result<BodyReader<'_, Tls>> {
        if self.continue_pending && !self.body.is_done() {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            self.stream.flush()?;
        }
        self.continue_pending = false;
        Ok(self.body.reader(self.stream))
    }

    /// Makes the connection reusable if the unread body is small; false means it must close.
    fn settle(&mut self) -> bool {
        if self.body.is_done() {
            return true;
        }
        if self.continue_pending || self.body.known_remaining().is_some_and(|n| n > DRAIN_LIMIT) {
            return false;
        }
        // A client that is not sending is not worth waiting for: close instead.
        let _ = self.stream.sock.set_read_timeout(Some(DRAIN_TIMEOUT));
        let mut sink = [0u8; 8 * 1024];
        let mut drained = 0u64;
        while drained <= DRAIN_LIMIT {
            match self.body.read_from(self.stream, &mut sink) {
                Ok(0) => return true,
                Ok(n) => drained += n as u64,
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends a complete response with an in-memory body.
    fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
        self.respond_stream(status, headers, body.len() as u64, &mut &body[..])
    }

    /// Sends a response whose body of exactly `len` bytes is streamed from `body` through a fixed buffer.
    fn respond_stream(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        len: u64,
        body: &mut dyn Read,
    ) -> io::Result<()> {
        self.keep_alive = self.keep_alive && self.settle();
        self.status = Some(status);
        http::write_head(self.stream, status, headers, len, !self.keep_alive)?;
        let mut buf = vec![0u8; STREAM_BUF.min(usize::try_from(len).unwrap_or(STREAM_BUF))];
        let mut sent = 0u64;
        while sent < len {
            let want = usize::try_from(len - sent).unwrap_or(usize::MAX).min(buf.len());
            let n = body.read(&mut buf[..want])?;
            if n == 0 {
                // The promised length cannot be delivered; only closing tells the client.
                self.keep_alive = false;
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "response body short"));
            }
            self.stream.write_all(&buf[..n])?;
            sent += n as u64;
        }
        self.stream.flush()
    }
}

/// Runs one request through authentication and routing, and logs it. With `may_keep_alive` false
/// the answer carries `Connection: close` whatever the client asked for.
fn handle(shared: &Shared, stream: &mut Tls, head: &Head, may_keep_alive: bool) -> Outcome {
    let started = Instant::now();
    let result = match head.framing() {
        Ok(framing) => {
            let _ = stream.sock.set_read_timeout(Some(IO_TIMEOUT));
            let mut ex = Exchange {
                stream,
                body: Body::new(framing),
                framing,
                continue_pending: head.expects_continue(),
                keep_alive: may_keep_alive && head.keep_alive(),
                status: None,
            };
            let routed = route(shared, &mut ex, head);
            let keep_alive = routed.is_ok() && ex.keep_alive;
            (ex.status, keep_alive, !ex.body.is_done())
        }
        Err(e) => {
            let status = e.status();
            let _ = http::write_head(stream, status, &[], 0, true).and_then(|()| stream.flush());
            (Some(status), false, true)
        }
    };
    let (status, keep_alive, unread_body) = result;
    log::debug!(
        "https: {} {} -> {} in {} ms",
        head.method,
        head.path(),
        status.map_or_else(|| "no response".to_string(), |s| s.to_string()),
        started.elapsed().as_millis()
    );
    Outcome { keep_alive, unread_body }
}

/// Constant-time check of the single `Authorization` header against the expected value.
fn authorized(expected: &[u8], head: &Head) -> bool {
    let mut values = head.values("authorization");
    match (values.next(), values.next()) {
        (Some(value), None) => bool::from(value.ct_eq(expected)),
        _ => false,
    }
}

/// Authentication first (every route, like the Go agent), then the three routes.
fn route(shared: &Shared, ex: &mut Exchange<'_>, head: &Head) -> io::Result<()> {
    if !authorized(&shared.auth, head) {
        let peer = ex.stream.sock.peer_addr().map_or_else(|_| "an unknown peer".into(), |a| a.to_string());
        log::info!(
            "https: 401 for {} {} from {peer}: wrong or missing mbus credentials",
            head.method,
            head.path()
        );
        return ex.respond(401, &[("WWW-Authenticate", "Basic realm=\"\"")], b"");
    }
    let path = head.path();
    match (head.method.as_str(), path) {
        ("POST", "/agent") => post_agent(shared, ex),
        (method @ ("PUT" | "GET"), _) if path.starts_with("/blobs/") => {
            let id = path.rsplit('/').next().unwrap_or_default();
            if !blobs::valid_id(id) {
                ex.respond(400, &[], b"invalid blob id\n")
            } else if method == "PUT" {
                put_blob(shared, ex, id)
            } else {
                get_blob(shared, ex, id)
            }
        }
        _ => ex.respond(404, &[], b""),
    }
}

/// `POST /agent`: bounded body in, endpoint reply out as JSON.
fn post_agent(shared: &Shared, ex: &mut Exchange<'_>) -> io::Result<()> {
    let declared = match ex.framing {
        Framing::Length(n) if n > MAX_AGENT_BODY => return ex.respond(413, &[], b""),
        Framing::Length(n) => n,
        Framing::Chunked => 0,
    };
    let mut body = Vec::with_capacity(usize::try_from(declared.min(64 * 1024)).unwrap_or(0));
    let read = ex.body()?.take(MAX_AGENT_BODY + 1).read_to_end(&mut body);
    if let Err(e) = read {
        log::debug!("https: reading /agent body failed: {e}");
        return ex.respond(400, &[], b"");
    }
    if body.len() as u64 > MAX_AGENT_BODY {
        return ex.respond(413, &[], b"");
    }
    let endpoint = &shared.endpoint;
    match catch_unwind(AssertUnwindSafe(|| endpoint.handle(body))) {
        Ok(reply) => ex.respond(200, &[("Content-Type", "application/json")], &reply),
        Err(_) => {
            log::error!("https: agent endpoint panicked");
            ex.respond(500, &[], b"")
        }
    }
}

/// `PUT /blobs/.../<id>`: stream the body into the blob store.
fn put_blob(shared: &Shared, ex: &mut Exchange<'_>, id: &str) -> io::Result<()> {
    let result = {
        let mut body = ex.body()?;
        shared.blobs.put(id, &mut body)
    };
    match result {
        Ok(bytes) => {
            log::debug!("https: stored blob {id} ({bytes} bytes)");
            ex.respond(201, &[], b"")
        }
        Err(PutError::Body(e)) => {
            log::debug!("https: upload of blob {id} failed: {e}");
            ex.respond(400, &[], b"")
        }
        Err(PutError::Store(e)) => {
            log::error!("https: storing blob {id} failed: {e}");
            ex.respond(500, &[], format!("storing blob: {e}\n").as_bytes())
        }
    }
}

/// `GET /blobs/.../<id>`: stream the blob out with its length.
fn get_blob(shared: &Shared, ex: &mut Exchange<'_>, id: &str) -> io::Result<()> {
    match shared.blobs.open(id) {
        Ok(Some((file, len))) => {
            let headers = [("Content-Type", "application/octet-stream")];
            ex.respond_stream(200, &headers, len, &mut file.take(len))
        }
        Ok(None) => ex.respond(404, &[], b""),
        Err(e) => {
            log::error!("https: opening blob {id} failed: {e}");
            ex.respond(500, &[], b"")
        }
    }
}

/// Ends a connection politely: close_notify, then (if the client may still be uploading) a bounded
/// read-and-discard so our last answer is not lost to a TCP reset.
fn close(mut stream: Tls, linger: bool) {
    stream.conn.send_close_notify();
    while stream.conn.wants_write() {
        match stream.conn.write_tls(&mut stream.sock) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if !linger {
        return;
    }
    let _ = stream.sock.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = vec![0u8; STREAM_BUF];
    let mut total = 0u64;
    while let Some(left) = remaining(deadline) {
        let _ = stream.sock.set_read_timeout(Some(left));
        match stream.sock.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
        if total > LINGER_BYTES {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_with(headers: &[(&str, &str)]) -> Head {
        Head {
            method: "GET".into(),
            target: "/".into(),
            minor_version: 1,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
        }
    }

    #[test]
    fn authorization_must_match_exactly_and_only_once() {
        let expected = b"Basic bWJ1czpwdw==";
        assert!(authorized(expected, &head_with(&[("authorization", "Basic bWJ1czpwdw==")])));
        assert!(!authorized(expected, &head_with(&[])));
        assert!(!authorized(expected, &head_with(&[("Authorization", "Basic bWJ1czpwdw")])));
        assert!(!authorized(expected, &head_with(&[("Authorization", "basic bWJ1czpwdw==")])));
        let twice = [("Authorization", "Basic bWJ1czpwdw=="), ("Authorization", "Basic bWJ1czpwdw==")];
        assert!(!authorized(expected, &head_with(&twice)));
    }

    #[test]
    fn slots_are_capped_and_given_back() {
        let counter = Arc::new(AtomicUsize::new(0));
        let first = Slot::acquire(&counter, 2);
        let second = Slot::acquire(&counter, 2);
        assert!(first.is_some() && second.is_some());
        assert!(Slot::acquire(&counter, 2).is_none());
        drop(first);
        assert!(Slot::acquire(&counter, 2).is_some());
        assert_eq!(counter.load(Ordering::SeqCst), 1);
    }
}
