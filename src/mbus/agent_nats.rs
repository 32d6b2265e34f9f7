//! The agent's side of NATS: subscribe to `agent.<agent_id>`, hand each message to the dispatcher
//! right on the connection thread (quick requests are answered there, the rest queue for a worker:
//! no thread hop of our own between the socket and the dispatcher), publish replies to the request's
//! `reply_to`, and publish health-monitor events. The NATS client underneath knows nothing about BOSH.

use super::nats::{Inbox, Message, NatsConnection, NatsOptions};
use crate::bus::{BusControl, HmTopic, Notifier};
use crate::dispatch::pool::Requests;
use crate::dispatch::{Incoming, ReplySink};
use crate::error::Context as _;
use crate::settings::Effective;
use crate::sync::{lock, read, write};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// The most a reply may carry even when the server allows more: the director's own NATS limit.
pub const MAX_REPLY: usize = 1 << 20;

/// How long `update_settings` waits for the new connection to take over before it reports done
/// anyway (the switch still happens in the background once the new connection is up).
const ROTATION_WAIT: Duration = Duration::from_secs(10);

/// How long the old connection may take to confirm its unsubscribe before it is closed regardless.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after a switch requests are still checked for a second delivery: both connections were
/// subscribed for a moment, and the server may have routed one request to each.
const DEDUP_WINDOW: Duration = Duration::from_secs(5);

/// The connection replies and events go out on. Replaced under the write lock when a rotation
/// completes; publishers hold the read lock while they write, so nothing is published on a
/// connection that is being retired.
type Live = Arc<RwLock<NatsConnection>>;

/// The running NATS bus.
pub struct NatsBus {
    live: Live,
    inbox: Arc<AgentInbox>,
    agent_id: String,
    rotation: Arc<Mutex<Rotation>>,
    dedup: Arc<Dedup>,
}

/// What the bus is connected with, and the connection being brought up to replace it, if any.
struct Rotation {
    fingerprint: String,
    /// Bumped by every settings change, so a superseded rotation gives up.
    generation: u64,
    candidate: Option<NatsConnection>,
}

/// Builds client options from settings: URLs by precedence, mutual TLS when a client certificate is
/// configured, and the single subscription the per-agent NATS permissions allow.
pub fn options(settings: &Effective) -> Result<NatsOptions, String> {
    let urls: Vec<String> = settings.mbus_urls();
    if urls.is_empty() || urls.iter().any(|u| !(u.starts_with("nats://") || u.starts_with("tls://"))) {
        return Err(format!(
            "NATS bus needs nats:// URLs, got {}",
            urls.iter().map(|u| crate::url::redact(u)).collect::<Vec<_>>().join(", ")
        ));
    }
    // A URL the connection thread could never use is refused here, naming it, rather than retried forever.
    for url in &urls {
        super::nats::url::NatsUrl::parse(url)
            .with_context(|| format!("mbus URL {}", crate::url::redact(url)))?;
    }
    let cert = settings.mbus_cert();
    let tls = if cert.certificate.is_empty() {
        None
    } else {
        Some(crate::tls::client::nats_client_config(&cert.ca, &cert.certificate, &cert.private_key)?)
    };
    Ok(NatsOptions {
        urls,
        tls,
        subscriptions: vec![format!("agent.{}", settings.settings.agent_id)],
        name: format!("bosh-agent/{}", env!("CARGO_PKG_VERSION")),
    })
}

fn fingerprint(settings: &Effective) -> String {
    let c = settings.mbus_cert();
    format!("{:?}|{}|{}|{}", settings.mbus_urls(), c.ca, c.certificate, c.private_key)
}

impl NatsBus {
    /// Connects (in the background, retrying forever) and hands requests to `requests`.
    pub fn start(settings: &Effective, requests: Requests) -> Result<NatsBus, String> {
        let opts = options(settings)?;
        let dedup = Arc::new(Dedup::default());
        let inbox = Arc::new(AgentInbox { live: OnceLock::new(), dedup: dedup.clone(), requests });
        let live: Live = Arc::new(RwLock::new(NatsConnection::start(opts, inbox.clone())));
        let _ = inbox.live.set(live.clone());
        let rotation = Rotation { fingerprint: fingerprint(settings), generation: 0, candidate: None };
        Ok(NatsBus {
            live,
            inbox,
            agent_id: settings.settings.agent_id.clone(),
            rotation: Arc::new(Mutex::new(rotation)),
            dedup,
        })
    }
}

/// What every connection of the bus (the live one, and a rotation's candidate beside it) hands its
/// messages to, on its own thread: the duplicate check, then the dispatcher.
struct AgentInbox {
    /// Set right after the first connection is started (it is built with this inbox).
    live: OnceLock<Live>,
    dedup: Arc<Dedup>,
    requests: Requests,
}

impl Inbox for AgentInbox {
    fn deliver(&self, msg: Message) -> bool {
        if !self.dedup.first_delivery(&msg) {
            return true;
        }
        let live = loop {
            match self.live.get() {
                Some(live) => break live.clone(),
                // A message arrives only after a TLS handshake, long after `start` has set this;
                // should it ever come first, it waits the moment rather than being lost.
                None => std::thread::yield_now(),
            }
        };
        self.requests.submit(Incoming { body: msg.payload, reply: Box::new(NatsReply { live }) });
        true
    }
}

impl Notifier for NatsBus {
    fn notify(&self, topic: HmTopic, payload: &Value) -> Result<(), String> {
        let body = payload.to_string();
        read(&self.live)
            .publish(&super::hm_subject(topic, &self.agent_id), body.as_bytes())
            .map_err(|e| format!("{e:?}"))
    }
}

impl BusControl for NatsBus {
    /// Switches to new URLs or a new certificate (rotation after bootstrap) make-before-break: a new
    /// connection connects and subscribes with the new identity while the current one keeps serving;
    /// only once the server has confirmed the new subscription are replies moved to it and the old
    /// connection retired, after the messages routed to it have been read. A request the server
    /// delivered on both connections during the overlap is handled once. Waits up to
    /// [`ROTATION_WAIT`] for the switch, so the director's next step (nats-sync revoking the
    /// bootstrap user) finds the new identity in use; a switch that takes longer finishes in the
    /// background.
    fn settings_changed(&self, settings: &Effective) {
        let new = fingerprint(settings);
        let (candidate, generation) = {
            let mut rotation = lock(&self.rotation);
            if rotation.fingerprint == new {
                return;
            }
            let opts = match options(settings) {
                Ok(opts) => opts,
                Err(e) => {
                    log::error!("new bus settings are unusable, keeping the current connection: {e}");
                    return;
                }
            };
            log::info!(
                "bus settings changed: reconnecting to NATS with the new certificate/URLs \
                 (the current connection serves until the new one has subscribed)"
            );
            if let Some(stale) = rotation.candidate.take() {
                stale.shutdown();
            }
            rotation.fingerprint = new;
            rotation.generation += 1;
            self.dedup.open();
            let candidate = NatsConnection::start(opts, self.inbox.clone());
            rotation.candidate = Some(candidate.clone());
            (candidate, rotation.generation)
        };
        let (done, switched) = mpsc::channel();
        let (live, rotation, dedup) = (self.live.clone(), self.rotation.clone(), self.dedup.clone());
        let spawned = std::thread::Builder::new().name("nats-rotate".into()).spawn(move || {
            if switch_when_subscribed(&live, &rotation, &dedup, &candidate, generation) {
                let _ = done.send(());
            }
        });
        if let Err(e) = spawned {
            log::error!("NATS: cannot start the connection switch: {e}; keeping the current connection");
            return;
        }
        if switched.recv_timeout(ROTATION_WAIT).is_err() {
            log::warn!(
                "NATS: the new connection is not up after {}s; the current one keeps serving and the \
                 switch happens once the new one has subscribed",
                ROTATION_WAIT.as_secs()
            );
        }
    }
}

/// Waits until `candidate` is connected with its subscription confirmed, then makes it the live
/// connection and retires the old one. False when a newer settings change superseded this one.
fn switch_when_subscribed(
    live: &Live,
    rotation: &Mutex<Rotation>,
    dedup: &Dedup,
    candidate: &NatsConnection,
    generation: u64,
) -> bool {
    let current = || lock(rotation).generation == generation;
    // Connected means CONNECT was acknowledged and SUB written; the PING/PONG after it proves the
    // server has registered the subscription.
    while !(candidate.wait_connected(Duration::from_secs(1)) && candidate.flush(RETIRE_TIMEOUT)) {
        if !current() {
            return false;
        }
    }
    let old = {
        let mut rotation = lock(rotation);
        if rotation.generation != generation {
            return false;
        }
        rotation.candidate = None;
        let mut live = write(live);
        std::mem::replace(&mut *live, candidate.clone())
    };
    let buffered = old.retire(RETIRE_TIMEOUT);
    read(live).send_frames(buffered);
    dedup.close_after(DEDUP_WINDOW);
    log::info!("NATS: switched to the new connection; the previous one is closed");
    true
}

/// Recognises a request delivered twice while two connections were subscribed, by its `reply_to`
/// (the director makes one per request). Costs nothing outside a switch.
#[derive(Default)]
struct Dedup {
    state: Mutex<DedupState>,
}

#[derive(Default)]
struct DedupState {
    /// `None` outside a switch; `Some(t)`: check deliveries until `t`.
    until: Option<Instant>,
    /// `reply_to` of requests seen in the window, with when they were seen.
    seen: HashMap<String, Instant>,
}

/// The one field the duplicate check reads from a request body.
#[derive(serde::Deserialize)]
struct ReplyTo {
    reply_to: Option<String>,
}

impl Dedup {
    /// A switch starts: check every delivery until [`Dedup::close_after`].
    fn open(&self) {
        lock(&self.state).until = Instant::now().checked_add(Duration::from_secs(365 * 24 * 3600));
    }

    /// The switch is done: keep checking for `window` (late copies), then stop.
    fn close_after(&self, window: Duration) {
        lock(&self.state).until = Instant::now().checked_add(window);
    }

    /// False for a second delivery of a request already handed on.
    fn first_delivery(&self, msg: &Message) -> bool {
        let mut state = lock(&self.state);
        let Some(until) = state.until else {
            return true;
        };
        let now = Instant::now();
        if now >= until {
            state.until = None;
            state.seen.clear();
            return true;
        }
        let Some(reply_to) = serde_json::from_slice::<ReplyTo>(&msg.payload).ok().and_then(|r| r.reply_to)
        else {
            return true; // the dispatcher explains what is wrong with it
        };
        state.seen.retain(|_, at| now.duration_since(*at) < DEDUP_WINDOW);
        if state.seen.insert(reply_to.clone(), now).is_some() {
            log::debug!("NATS: request for {reply_to} arrived on both connections; handled once");
            return false;
        }
        true
    }
}

/// Replies on whichever connection is live when the reply is ready, so a request read from a
/// retired connection is still answered.
struct NatsReply {
    live: Live,
}

impl ReplySink for NatsReply {
    fn limit(&self) -> Option<usize> {
        Some(read(&self.live).max_payload().min(MAX_REPLY))
    }
    fn send(self: Box<Self>, reply_to: Option<&str>, body: Vec<u8>) {
        match reply_to.filter(|r| !r.is_empty()) {
            Some(subject) => {
                if let Err(e) = read(&self.live).publish(subject, &body) {
                    log::warn!("publishing reply to {}: {e}", crate::dispatch::loggable(subject, 200));
                }
            }
            None => log::warn!("request without reply_to: the reply is dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(reply_to: &str) -> Message {
        let body = serde_json::json!({"method": "ping", "arguments": [], "reply_to": reply_to});
        Message {
            subject: "agent.x".into(),
            reply: None,
            payload: body.to_string().into_bytes(),
            status: None,
        }
    }

    #[test]
    fn outside_a_switch_every_delivery_passes() {
        let dedup = Dedup::default();
        assert!(dedup.first_delivery(&request("director.a")));
        assert!(dedup.first_delivery(&request("director.a")));
    }

    #[test]
    fn during_a_switch_a_second_delivery_is_dropped_once() {
        let dedup = Dedup::default();
        dedup.open();
        assert!(dedup.first_delivery(&request("director.a")));
        assert!(!dedup.first_delivery(&request("director.a")));
        assert!(dedup.first_delivery(&request("director.b")));
        let garbage =
            Message { subject: "agent.x".into(), reply: None, payload: b"{not json".to_vec(), status: None };
        assert!(dedup.first_delivery(&garbage), "the dispatcher answers malformed requests");
        assert!(dedup.first_delivery(&garbage));
        dedup.close_after(Duration::ZERO);
        assert!(dedup.first_delivery(&request("director.a")), "window over: checks stop");
        assert!(lock(&dedup.state).seen.is_empty());
    }
}
