//! The connection thread: connect, serve, reconnect — forever, until shutdown.
//!
//! Why one long-lived thread: BOSH needs the agent to keep trying for as long as it runs (its NATS
//! user may not exist yet, NATS may be restarting, the certificate may be swapped); this loop is the
//! only place that owns that policy. State shared with publishers lives in [`State`] behind one
//! mutex, with a condvar to wake waiters on connect, reconfigure and shutdown.

use super::protocol::{self, ConnectInfo, Parser, ServerInfo, ServerOp};
use super::url::NatsUrl;
use super::wire::{self, Reader, Wire};
use super::{Inbox, Message, NatsOptions, PENDING_MAX_BYTES, PENDING_MAX_MESSAGES};
use crate::error::Context as _;
use crate::sync::{lock, wait_timeout};
use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// First reconnect delay; short so a NATS restart costs the director little.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Reconnect delay cap, matching the Go agent's 10 s so the director's retry budget still fits.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// TCP connect timeout per resolved address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on INFO, TLS handshake and the CONNECT/PING→PONG exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Silence after which we PING the server; two unanswered PINGs mean the connection is dead.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Unanswered PINGs tolerated before reconnecting.
const MAX_PINGS_OUT: u64 = 2;
/// A publisher blocked this long on a full socket treats the connection as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the connection thread and the handles share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Signalled on connect, disconnect, reconfigure and shutdown.
    pub(crate) changed: Condvar,
}

/// Mutable connection state, guarded by [`Shared::state`].
pub(crate) struct State {
    pub(crate) opts: NatsOptions,
    /// Bumped by reconfigure so the thread can tell its attempt is stale.
    pub(crate) generation: u64,
    pub(crate) shutdown: bool,
    /// The live connection's sending half; `Some` exactly while connected.
    pub(crate) wire: Option<Arc<Wire>>,
    /// The socket of the current attempt or connection, so reconfigure/shutdown can abort it.
    pub(crate) socket: Option<TcpStream>,
    pub(crate) max_payload: usize,
    /// Encoded PUB frames waiting for a connection.
    pub(crate) pending: VecDeque<Vec<u8>>,
    pub(crate) pending_bytes: usize,
    /// Incremented on every installed connection, so flush waiters notice a reconnect.
    pub(crate) connection_id: u64,
    /// PINGs sent on the current connection (keepalive and flush), counted under the lock in wire
    /// order; with `pongs_received` it tells both liveness and which flush has been answered.
    pub(crate) pings_sent: u64,
    /// PONGs received on the current connection.
    pub(crate) pongs_received: u64,
    /// Subscriptions (sids `1..=subscribed`) on the current connection, so they can be withdrawn.
    pub(crate) subscribed: u64,
    /// Why the last attempt to connect failed, for a caller that reports it rather than retries.
    pub(crate) last_failure: Option<String>,
}

impl State {
    /// The state of a connection that has not connected yet, with `opts` and `max_payload` assumed
    /// until a server's INFO says otherwise.
    pub(crate) fn new(opts: NatsOptions, max_payload: usize) -> State {
        State {
            opts,
            generation: 0,
            shutdown: false,
            wire: None,
            socket: None,
            max_payload,
            pending: VecDeque::new(),
            pending_bytes: 0,
            connection_id: 0,
            pings_sent: 0,
            pongs_received: 0,
            subscribed: 0,
            last_failure: None,
        }
    }

    /// Queues a frame for the next connection, dropping the oldest beyond the bounds.
    pub(crate) fn buffer(&mut self, frame: Vec<u8>) {
        self.pending_bytes += frame.len();
        self.pending.push_back(frame);
        while self.pending.len() > 1
            && (self.pending.len() > PENDING_MAX_MESSAGES || self.pending_bytes > PENDING_MAX_BYTES)
        {
            if let Some(old) = self.pending.pop_front() {
                self.pending_bytes = self.pending_bytes.saturating_sub(old.len());
                log::warn!("NATS: disconnected buffer full, dropped the oldest message");
            }
        }
    }

    /// Aborts the current socket (connected or mid-handshake); the thread notices and moves on.
    pub(crate) fn kill_socket(&mut self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    /// Re-buffers a frame whose send failed on `failed`, unless a newer connection already exists,
    /// in which case it is sent there (once).
    pub(crate) fn requeue(&self, failed: &Arc<Wire>, frame: Vec<u8>) {
        let mut state = lock(&self.state);
        match state.wire.clone() {
            Some(newer) if !Arc::ptr_eq(&newer, failed) => {
                drop(state);
                if let Err(e) = newer.send(&frame) {
                    log::warn!("NATS: publish failed again ({e}); message dropped");
                    newer.close();
                }
            }
            _ => state.buffer(frame),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// An established connection, before it is installed for publishers.
struct Established {
    wire: Arc<Wire>,
    reader: Reader,
    parser: Parser,
    info: ServerInfo,
    sids: u64,
}

/// The connection thread's body.
pub(crate) fn run(shared: &Shared, inbox: &dyn Inbox) {
    let mut backoff = BACKOFF_INITIAL;
    let mut attempt: usize = 0;
    let mut inbox_gone_logged = false;
    loop {
        let (opts, generation) = {
            let state = shared.lock();
            if state.shutdown {
                return;
            }
            (state.opts.clone(), state.generation)
        };
        if opts.urls.is_empty() {
            log::error!("NATS: no URLs configured; waiting for reconfigure");
            wait_for_change(shared, generation, None);
            continue;
        }
        let url_text = &opts.urls[attempt % opts.urls.len()];
        attempt = attempt.wrapping_add(1);
        match NatsUrl::parse(url_text) {
            Err(e) => {
                log::error!("NATS: {e}");
                failed(shared, e);
            }
            Ok(url) => match establish(shared, generation, &url, &opts) {
                Err(e) => {
                    log::warn!("NATS: connecting to {url} failed: {e}");
                    failed(shared, format!("connecting to {url}: {e}"));
                }
                Ok(conn) => {
                    if let Some(reason) = serve(shared, generation, &url, conn, inbox, &mut inbox_gone_logged)
                    {
                        log::warn!("NATS: disconnected from {url}: {reason}");
                    }
                    // A successful connect resets the backoff.
                    backoff = BACKOFF_INITIAL;
                }
            },
        }
        {
            let mut state = shared.lock();
            state.wire = None;
            state.socket = None;
            shared.changed.notify_all();
        }
        if wait_for_change(shared, generation, Some(backoff)) {
            // Reconfigured or shut down: try the new options at once.
            backoff = BACKOFF_INITIAL;
            attempt = 0;
        } else {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Records why an attempt failed and wakes whoever waits for the connection.
fn failed(shared: &Shared, why: String) {
    let mut state = shared.lock();
    state.last_failure = Some(why);
    shared.changed.notify_all();
}

/// Waits up to `timeout` (forever when `None`); true when options changed or shutdown was requested.
fn wait_for_change(shared: &Shared, generation: u64, timeout: Option<Duration>) -> bool {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut state = shared.lock();
    loop {
        if state.shutdown || state.generation != generation {
            return true;
        }
        let wait = match deadline {
            None => Duration::from_secs(3600),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return false;
                }
                d - now
            }
        };
        state = wait_timeout(&shared.changed, state, wait).0;
    }
}

/// TCP connect, INFO, optional TLS upgrade, CONNECT, PING→PONG, SUBs.
fn establish(
    shared: &Shared,
    generation: u64,
    url: &NatsUrl,
    opts: &NatsOptions,
) -> Result<Established, String> {
    let tcp = tcp_connect(url)?;
    {
        let mut state = shared.lock();
        if state.shutdown || state.generation != generation {
            return Err("aborted: options changed".into());
        }
        state.socket = Some(tcp.try_clone().context("cloning socket")?);
    }
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
        .context("setting socket timeouts")?;

    // INFO arrives in clear text even when TLS follows.
    let mut parser = Parser::new();
    let mut plain = Reader::plain(tcp.try_clone().context("cloning socket")?);
    let info = loop {
        match parser.next_op().map_err(|e| e.to_string())? {
            Some(ServerOp::Info(info)) => break info,
            Some(other) => return Err(format!("expected INFO, got {}", op_name(&other))),
            None => {
                if !retry_interrupted(|| plain.fill(&mut parser, None))
                    .map_err(|e| io_text("reading INFO", &e))?
                {
                    return Err("server closed the connection before INFO".into());
                }
            }
        }
    };
    if parser.buffered() > 0 && opts.tls.is_some() {
        return Err("unexpected data after INFO".into());
    }

    let (wire, mut reader) = match &opts.tls {
        Some(config) => wire::tls_pair(tcp, config.clone(), &url.host)?,
        None => {
            if info.tls_required {
                return Err("server requires TLS but no TLS configuration was given".into());
            }
            drop(plain);
            wire::plain_pair(tcp).context("cloning socket")?
        }
    };
    let wire = Arc::new(wire);

    let mut hello = protocol::encode_connect(&ConnectInfo {
        name: &opts.name,
        tls_required: opts.tls.is_some(),
        user: url.user.as_deref(),
        pass: url.pass.as_deref(),
    });
    hello.extend_from_slice(protocol::PING);
    wire.send(&hello).map_err(|e| io_text("sending CONNECT", &e))?;
    let mut info = info;
    loop {
        match parser.next_op().map_err(|e| e.to_string())? {
            Some(ServerOp::Pong) => break,
            Some(ServerOp::Err(text)) => return Err(format!("server said: {text}")),
            Some(ServerOp::Info(newer)) => info = newer,
            Some(ServerOp::Ping) => wire.send(protocol::PONG).map_err(|e| io_text("sending PONG", &e))?,
            Some(ServerOp::Ok) | Some(ServerOp::Msg { .. }) => {}
            None => {
                let filled = retry_interrupted(|| reader.fill(&mut parser, Some(&wire)));
                if !filled.map_err(|e| io_text("waiting for PONG", &e))? {
                    return Err("server closed the connection after CONNECT".into());
                }
            }
        }
    }

    let mut subs = Vec::new();
    let mut sid = 0u64;
    for subject in &opts.subscriptions {
        if let Err(e) = protocol::validate_subject(subject) {
            log::error!("NATS: not subscribing: {e}");
            continue;
        }
        sid += 1;
        subs.extend_from_slice(&protocol::encode_sub(subject, sid));
    }
    if !subs.is_empty() {
        wire.send(&subs).map_err(|e| io_text("sending SUB", &e))?;
    }
    let socket = shared.lock().socket.as_ref().and_then(|s| s.try_clone().ok());
    if let Some(s) = socket {
        s.set_read_timeout(Some(PING_INTERVAL))
            .and_then(|()| s.set_write_timeout(Some(WRITE_TIMEOUT)))
            .context("setting socket timeouts")?;
    }
    Ok(Established { wire, reader, parser, info, sids: sid })
}

/// Resolves the host afresh (DNS may have moved) and connects to the first address that answers.
fn tcp_connect(url: &NatsUrl) -> Result<TcpStream, String> {
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", url.host))?
        .collect();
    let mut last = format!("{} resolved to no address", url.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// Installs the connection for publishers (flushing the buffer first, so order is kept) and reads
/// until it fails. Returns why it ended, or `None` for a requested shutdown/reconfigure.
fn serve(
    shared: &Shared,
    generation: u64,
    url: &NatsUrl,
    conn: Established,
    inbox: &dyn Inbox,
    inbox_gone_logged: &mut bool,
) -> Option<String> {
    let Established { wire, mut reader, mut parser, info, sids } = conn;
    {
        let mut state = shared.lock();
        if state.shutdown || state.generation != generation {
            wire.close();
            return None;
        }
        if let Some(max) = info.max_payload {
            state.max_payload = max;
        }
        let flushed = state.pending.len();
        while let Some(frame) = state.pending.pop_front() {
            state.pending_bytes = state.pending_bytes.saturating_sub(frame.len());
            if let Err(e) = wire.send(&frame) {
                state.pending.push_front(frame);
                state.pending_bytes = state.pending.iter().map(Vec::len).sum();
                wire.close();
                return Some(io_text("flushing buffered messages", &e));
            }
        }
        state.wire = Some(wire.clone());
        state.connection_id += 1;
        state.pings_sent = 0;
        state.pongs_received = 0;
        state.subscribed = sids;
        shared.changed.notify_all();
        log::info!(
            "NATS: connected to {url} (server {} {}, tls {}, {} subscription(s), {flushed} buffered message(s) sent)",
            info.server_id,
            info.version,
            reader_is_tls(&state),
            sids
        );
    }

    loop {
        let op = match parser.next_op() {
            Ok(op) => op,
            Err(e) => {
                wire.close();
                return Some(e.to_string());
            }
        };
        match op {
            None => match reader.fill(&mut parser, Some(&wire)) {
                Ok(true) => {}
                // A stop signal and SIGCONT (or a ptrace attach) interrupt a read with a timeout even
                // under SA_RESTART: nothing was lost, read again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(false) => return stop_reason(shared, generation, "server closed the connection"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
                    let mut state = shared.lock();
                    let outstanding = state.pings_sent.saturating_sub(state.pongs_received);
                    if outstanding >= MAX_PINGS_OUT {
                        drop(state);
                        wire.close();
                        return Some(format!("{outstanding} PINGs unanswered"));
                    }
                    state.pings_sent += 1;
                    if let Err(e) = wire.send(protocol::PING) {
                        drop(state);
                        wire.close();
                        return Some(io_text("sending PING", &e));
                    }
                }
                Err(e) => {
                    wire.close();
                    return stop_reason(shared, generation, &io_text("reading", &e));
                }
            },
            Some(ServerOp::Msg { subject, sid, reply, payload, status }) => {
                if sid == 0 || sid > sids {
                    log::debug!("NATS: message for unknown sid {sid} ignored");
                    continue;
                }
                let message = Message { subject, reply, payload, status };
                if !inbox.deliver(message) && !*inbox_gone_logged {
                    *inbox_gone_logged = true;
                    log::warn!("NATS: inbox receiver dropped; incoming messages are discarded");
                }
            }
            Some(ServerOp::Ping) => {
                if let Err(e) = wire.send(protocol::PONG) {
                    wire.close();
                    return Some(io_text("sending PONG", &e));
                }
            }
            Some(ServerOp::Pong) => {
                let mut state = shared.lock();
                state.pongs_received += 1;
                shared.changed.notify_all();
            }
            Some(ServerOp::Ok) => {}
            Some(ServerOp::Info(newer)) => {
                if let Some(max) = newer.max_payload {
                    shared.lock().max_payload = max;
                }
            }
            Some(ServerOp::Err(text)) => {
                if text.to_ascii_lowercase().contains("permissions violation") {
                    log::error!("NATS: server refused an operation: {text}");
                } else {
                    wire.close();
                    return Some(format!("server error: {text}"));
                }
            }
        }
    }
}

/// Runs `read` again while it fails with `Interrupted` (EINTR after a stop signal).
fn retry_interrupted<T>(mut read: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match read() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `None` when the connection ended because we asked for it (shutdown/reconfigure), else `why`.
fn stop_reason(shared: &Shared, generation: u64, why: &str) -> Option<String> {
    let state = shared.lock();
    if state.shutdown || state.generation != generation {
        None
    } else {
        Some(why.to_string())
    }
}

fn reader_is_tls(state: &State) -> bool {
    state.opts.tls.is_some()
}

fn op_name(op: &ServerOp) -> &'static str {
    match op {
        ServerOp::Info(_) => "INFO",
        ServerOp::Msg { .. } => "MSG",
        ServerOp::Ping => "PING",
        ServerOp::Pong => "PONG",
        ServerOp::Ok => "+OK",
        ServerOp::Err(_) => "-ERR",
    }
}

fn io_text(what: &str, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
        format!("{what}: timed out")
    } else {
        format!("{what}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new(NatsOptions { urls: vec![], tls: None, subscriptions: vec![], name: String::new() }, 0)
    }

    #[test]
    fn buffer_drops_oldest_beyond_message_bound() {
        let mut s = state();
        for i in 0..PENDING_MAX_MESSAGES + 10 {
            s.buffer(i.to_string().into_bytes());
        }
        assert_eq!(s.pending.len(), PENDING_MAX_MESSAGES);
        assert_eq!(s.pending.front().map(Vec::as_slice), Some(&b"10"[..]));
        assert_eq!(s.pending_bytes, s.pending.iter().map(Vec::len).sum::<usize>());
    }

    #[test]
    fn buffer_drops_oldest_beyond_byte_bound() {
        let mut s = state();
        let chunk = PENDING_MAX_BYTES / 3;
        for i in 0..5u8 {
            s.buffer(vec![i; chunk]);
        }
        assert_eq!(s.pending.len(), 3);
        assert_eq!(s.pending.front().map(|f| f[0]), Some(2));
        // A single frame above the byte bound is still kept (it fit max_payload).
        s.buffer(vec![9; PENDING_MAX_BYTES + 1]);
        assert_eq!(s.pending.len(), 1);
    }

    #[test]
    fn unreachable_server_never_connects_and_shuts_down_promptly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let (tx, _rx) = std::sync::mpsc::channel();
        let conn = super::super::NatsConnection::start(
            NatsOptions {
                urls: vec![format!("nats://127.0.0.1:{port}"), "nats://bad url:x".into()],
                tls: None,
                subscriptions: vec!["a".into()],
                name: "t".into(),
            },
            tx,
        );
        assert!(!conn.wait_connected(Duration::from_millis(300)));
        conn.publish("a", b"x").unwrap();
        let started = Instant::now();
        conn.shutdown();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!conn.is_connected());
    }
}
