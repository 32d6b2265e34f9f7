//! A small blocking core-NATS client over rustls.
//!
//! Why our own client: the agent's design card forbids an async runtime, and the agent needs only a
//! sliver of NATS (one subscription, publishes, TLS, reconnect). The client is synchronous and
//! threaded: one connection thread per [`NatsConnection`] connects, reads and reconnects forever;
//! publishers write straight to the socket from their own thread so replies leave without a hop.
//!
//! The surface: [`NatsConnection::start`] spawns the connection thread, which hands every MSG on its
//! subscriptions to an [`Inbox`] on that same thread (an mpsc `Sender` is one; the agent's own inbox
//! answers quick requests right there, so a ping costs no thread hop); [`NatsConnection::publish`] refuses payloads over the server's
//! max_payload (nothing sent, connection kept) and, while disconnected, buffers a bounded number of
//! messages that are sent after the next connect; `NatsConnection::reconfigure` drops the connection
//! and reconnects with new options; [`NatsConnection::retire`] withdraws a connection's subscriptions
//! and closes it once everything routed to it has been read, so a replacement started beside it
//! (certificate rotation, make-before-break) takes over without losing a message;
//! [`NatsConnection::flush`] is a PING/PONG round trip proving the server has processed everything
//! sent before it.
//!
//! Behaviour worth knowing (details in `connection.rs`): reconnects start after 0.5 s and double up
//! to 10 s, reset after a successful connect; host names are re-resolved on every attempt; an
//! `-ERR 'Permissions Violation…'` is logged and the connection kept, any other `-ERR` reconnects;
//! the client PINGs after 20 s of silence and gives up after two unanswered PINGs.

mod connection;
pub mod protocol;
pub mod url;
mod wire;

use crate::sync::{lock, wait_timeout};
use connection::{Shared, State};
use std::fmt;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// nats-server's default `max_payload` (and BOSH's `nats.max_payload_mb` default): the limit we
/// assume until the server's INFO tells us otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// How many publishes are kept while disconnected: enough for heartbeats and a few replies across
/// a NATS restart, bounded so an unreachable server cannot eat the VM's memory.
pub const PENDING_MAX_MESSAGES: usize = 256;

/// Byte bound of the disconnected buffer (see [`PENDING_MAX_MESSAGES`]).
pub const PENDING_MAX_BYTES: usize = 4 * 1024 * 1024;

/// What to connect to and how; given once to [`NatsConnection::start`].
#[derive(Clone)]
pub struct NatsOptions {
    /// `nats://[user:pass@]host:port` URLs, tried in turn (cluster members or repeated retries).
    pub urls: Vec<String>,
    /// `Some` upgrades to TLS right after INFO (mutual TLS for BOSH); `None` stays plain.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Subjects subscribed after every (re)connect (for the agent: `agent.<agent_id>`).
    pub subscriptions: Vec<String>,
    /// CONNECT `name`, shown in the server's monitoring to identify the VM.
    pub name: String,
}

impl fmt::Debug for NatsOptions {
    /// Written by hand so URLs print without their userinfo: options end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| match url::NatsUrl::parse(u) {
                Ok(parsed) => parsed.to_string(),
                Err(_) => "<unparsable url>".to_string(),
            })
            .collect();
        f.debug_struct("NatsOptions")
            .field("urls", &urls)
            .field("tls", &self.tls.is_some())
            .field("subscriptions", &self.subscriptions)
            .field("name", &self.name)
            .finish()
    }
}

/// A message received on one of our subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published to.
    pub subject: String,
    /// The NATS reply subject, if the publisher set one (the director uses `reply_to` in the body
    /// instead, but other clients may not).
    pub reply: Option<String>,
    /// The raw body.
    pub payload: Vec<u8>,
    /// The server's status for a message with headers: 503 when a request found no subscriber.
    pub status: Option<u16>,
}

/// Where a connection hands each message it receives. Called on the connection thread, between
/// reads: whatever it does before returning delays the next message and the PONG to the server's
/// PING, so an inbox does only quick work there and hands anything that may block to another thread.
/// It must never wait for this connection's own reads (a [`NatsConnection::flush`] of it would).
pub trait Inbox: Send + Sync + 'static {
    /// Takes one message; false when nobody listens any more (the connection logs it once and
    /// drops later messages).
    fn deliver(&self, message: Message) -> bool;
}

impl Inbox for Sender<Message> {
    fn deliver(&self, message: Message) -> bool {
        self.send(message).is_ok()
    }
}

impl<T: Inbox + ?Sized> Inbox for Arc<T> {
    fn deliver(&self, message: Message) -> bool {
        (**self).deliver(message)
    }
}

/// Why a publish was refused. Transient disconnection is not an error: the message is buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The payload exceeds the server's `max_payload`; sending it would make the server drop the
    /// connection, so nothing was sent and the connection is untouched.
    TooLarge {
        /// Payload size in bytes.
        size: usize,
        /// The server's limit.
        max_payload: usize,
    },
    /// The subject is empty or contains whitespace, which would corrupt the protocol stream.
    InvalidSubject(String),
    /// The `PUB` line would exceed the server's control-line limit, which would make the server drop
    /// the connection; nothing was sent or buffered.
    ControlLineTooLong {
        /// The line's length in bytes.
        len: usize,
        /// The limit ([`protocol::SERVER_MAX_CONTROL_LINE`]).
        max: usize,
    },
    /// [`NatsConnection::shutdown`] was called.
    Closed,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::TooLarge { size, max_payload } => {
                write!(f, "NATS payload of {size} bytes exceeds the server's max_payload of {max_payload}")
            }
            PublishError::InvalidSubject(why) => write!(f, "invalid NATS subject: {why}"),
            PublishError::ControlLineTooLong { len, max } => {
                write!(f, "NATS PUB line of {len} bytes exceeds the server's control line limit of {max}")
            }
            PublishError::Closed => write!(f, "NATS connection was shut down"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Handle on a self-healing NATS connection; cheap to clone, all clones drive the same connection.
#[derive(Clone)]
pub struct NatsConnection {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConnection").field("connected", &self.is_connected()).finish()
    }
}

impl NatsConnection {
    /// Spawns the connection thread; it connects and reconnects forever, handing MSGs to `inbox`.
    /// The thread runs until [`NatsConnection::shutdown`], even if every handle is dropped. Never fails: an unreachable server, bad URL or rejected certificate are logged and retried,
    /// because the agent must keep trying until the director's NATS accepts it.
    pub fn start(opts: NatsOptions, inbox: impl Inbox) -> NatsConnection {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(opts, DEFAULT_MAX_PAYLOAD)),
            changed: Condvar::new(),
        });
        let worker = shared.clone();
        let spawned =
            std::thread::Builder::new().name("nats".into()).spawn(move || connection::run(&worker, &inbox));
        let thread = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                log::error!("NATS: cannot spawn the connection thread: {e}");
                None
            }
        };
        NatsConnection { shared, thread: Arc::new(Mutex::new(thread)) }
    }

    /// Publishes `payload` to `subject`, written to the socket before returning when connected.
    /// Err(PublishError::TooLarge{..}) when payload > max_payload (nothing sent, connection kept);
    /// while disconnected, buffers a bounded number of messages (oldest dropped) flushed after
    /// reconnect and resubscribe.
    pub fn publish(&self, subject: &str, payload: &[u8]) -> Result<(), PublishError> {
        self.publish_inner(subject, None, payload)
    }

    /// Like [`NatsConnection::publish`] but sets the NATS reply subject, for peers that use NATS
    /// request/reply (the director does not: it puts `reply_to` in the body). `bosh-agent call` sets
    /// it too, so the server answers at once with a 503 status when no agent listens.
    pub fn publish_with_reply(&self, subject: &str, reply: &str, payload: &[u8]) -> Result<(), PublishError> {
        protocol::validate_subject(reply).map_err(PublishError::InvalidSubject)?;
        self.publish_inner(subject, Some(reply), payload)
    }

    fn publish_inner(&self, subject: &str, reply: Option<&str>, payload: &[u8]) -> Result<(), PublishError> {
        protocol::validate_subject(subject).map_err(PublishError::InvalidSubject)?;
        // Checked before anything is written or buffered: the server would drop the connection, and
        // a buffered copy would drop the next one too.
        let line = protocol::pub_line_len(subject, reply, payload.len());
        if line > protocol::SERVER_MAX_CONTROL_LINE {
            return Err(PublishError::ControlLineTooLong {
                len: line,
                max: protocol::SERVER_MAX_CONTROL_LINE,
            });
        }
        let wire = {
            let state = lock(&self.shared.state);
            if state.shutdown {
                return Err(PublishError::Closed);
            }
            if payload.len() > state.max_payload {
                return Err(PublishError::TooLarge { size: payload.len(), max_payload: state.max_payload });
            }
            state.wire.clone()
        };
        self.write(wire, protocol::encode_pub(subject, reply, payload));
        Ok(())
    }

    /// Writes one encoded frame on `wire` (the live connection when this was read), or buffers it
    /// while disconnected.
    fn write(&self, wire: Option<Arc<wire::Wire>>, frame: Vec<u8>) {
        match wire {
            Some(wire) => {
                if let Err(e) = wire.send(&frame) {
                    log::warn!("NATS: publish failed ({e}); buffering and reconnecting");
                    wire.close();
                    self.shared.requeue(&wire, frame);
                }
            }
            None => lock(&self.shared.state).buffer(frame),
        }
    }

    /// Sends publishes another connection had buffered (see [`NatsConnection::retire`]), in order.
    pub fn send_frames(&self, frames: Vec<Vec<u8>>) {
        for frame in frames {
            let wire = lock(&self.shared.state).wire.clone();
            self.write(wire, frame);
        }
    }

    /// Retires this connection after its replacement has subscribed (make-before-break): withdraws
    /// its subscriptions and waits (up to `timeout`) for the server's PONG, so every message the
    /// server routed here before the UNSUB has been handed to the inbox; then shuts down. Returns the
    /// publishes still buffered (when it was disconnected) so the caller can send them on the
    /// replacement instead of losing them.
    pub fn retire(&self, timeout: Duration) -> Vec<Vec<u8>> {
        let unsubscribed = {
            let state = lock(&self.shared.state);
            match &state.wire {
                Some(wire) => {
                    let unsubs: Vec<u8> = (1..=state.subscribed).flat_map(protocol::encode_unsub).collect();
                    unsubs.is_empty() || wire.send(&unsubs).is_ok()
                }
                None => false,
            }
        };
        if unsubscribed && !self.flush(timeout) {
            log::warn!("NATS: the retiring connection did not confirm its unsubscribe; closing it anyway");
        }
        let pending: Vec<Vec<u8>> = {
            let mut state = lock(&self.shared.state);
            state.pending_bytes = 0;
            state.pending.drain(..).collect()
        };
        self.shutdown();
        pending
    }

    /// Round-trips a PING to the server and waits for its PONG: true once the server has processed
    /// everything sent before (subscriptions, publishes). Lets the agent make sure a last message
    /// (the shutdown notice) reached the server, and lets tests order events without sleeping.
    /// False when not connected, on timeout, or when the connection changes meanwhile.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = deadline_after(timeout);
        let mut state = lock(&self.shared.state);
        let Some(wire) = state.wire.clone() else {
            return false;
        };
        let connection = state.connection_id;
        state.pings_sent += 1;
        let target = state.pings_sent;
        // Sent under the state lock so PING numbering matches wire order (PONGs come back in order).
        if wire.send(protocol::PING).is_err() {
            wire.close();
            return false;
        }
        loop {
            if state.connection_id != connection || state.wire.is_none() || state.shutdown {
                return false;
            }
            if state.pongs_received >= target {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = wait_timeout(&self.shared.changed, state, deadline - now).0;
        }
    }

    /// The server's `max_payload` from INFO; [`DEFAULT_MAX_PAYLOAD`] until a server has told us.
    pub fn max_payload(&self) -> usize {
        lock(&self.shared.state).max_payload
    }

    /// True while a connection is established (CONNECT acknowledged, subscriptions sent).
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.state).wire.is_some()
    }

    /// Blocks until connected or `timeout` passes; returns whether connected. Lets callers (and
    /// tests) wait for the connection without sleeping blindly.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = deadline_after(timeout);
        let mut state = lock(&self.shared.state);
        loop {
            if state.wire.is_some() {
                return true;
            }
            let now = Instant::now();
            if state.shutdown || now >= deadline {
                return false;
            }
            state = wait_timeout(&self.shared.changed, state, deadline - now).0;
        }
    }

    /// Blocks until connected, until an attempt to connect has failed, or until `timeout` passes:
    /// for a caller that reports why it cannot connect as soon as it knows, instead of retrying.
    pub fn wait_first_attempt(&self, timeout: Duration) -> Result<(), String> {
        let deadline = deadline_after(timeout);
        let mut state = lock(&self.shared.state);
        loop {
            if state.wire.is_some() {
                return Ok(());
            }
            if let Some(why) = &state.last_failure {
                return Err(why.clone());
            }
            let now = Instant::now();
            if state.shutdown || now >= deadline {
                return Err("no answer from the server in time".into());
            }
            state = wait_timeout(&self.shared.changed, state, deadline - now).0;
        }
    }

    /// Drops the current connection and reconnects with `opts` right away (used to hot-swap the
    /// client certificate after `update_settings`, since the bootstrap identity is about to be
    /// revoked). Buffered publishes are kept and sent on the new connection. Only the client's tests
    /// call it since rotation became make-before-break (a second connection beside the first).
    #[cfg(feature = "internals")]
    pub fn reconfigure(&self, opts: NatsOptions) {
        let mut state = lock(&self.shared.state);
        log::info!("NATS: reconfiguring ({opts:?})");
        state.opts = opts;
        state.generation += 1;
        state.kill_socket();
        self.shared.changed.notify_all();
    }

    /// Closes the connection and stops the connection thread; later publishes return `Closed`.
    pub fn shutdown(&self) {
        {
            let mut state = lock(&self.shared.state);
            state.shutdown = true;
            state.pending.clear();
            state.pending_bytes = 0;
            state.kill_socket();
            self.shared.changed.notify_all();
        }
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() && handle.join().is_err() {
                log::error!("NATS: connection thread panicked");
            }
        }
    }
}

/// `now + timeout`, saturating (about a century ahead) so callers may pass `Duration::MAX`.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}
