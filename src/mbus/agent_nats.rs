//! The agent's side of NATS: subscribe to `agent.<agent_id>`, hand each message to the dispatcher's
//! channel, publish replies to the request's `reply_to`, and publish health-monitor events. The NATS
//! client underneath knows nothing about BOSH.

use crate::error::Context as _;
use super::nats::{Message, NatsConnection, NatsOptions};
use crate::bus::{BusControl, HmTopic, Notifier};
use crate::dispatch::{Incoming, ReplySink};
use crate::settings::Effective;
use serde_json::Value;
use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;

/// The most a reply may carry even when the server allows more: the director's own NATS limit.
pub const MAX_REPLY: usize = 1 << 20;

/// The running NATS bus.
pub struct NatsBus {
    conn: NatsConnection,
    agent_id: String,
    fingerprint: Mutex<String>,
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
    /// Connects (in the background, retrying forever) and forwards requests to `requests`.
    pub fn start(settings: &Effective, requests: Sender<Incoming>) -> Result<NatsBus, String> {
        let opts = options(settings)?;
        let (inbox, messages) = mpsc::channel::<Message>();
        let conn = NatsConnection::start(opts, inbox);
        let bridge_conn = conn.clone();
        std::thread::Builder::new()
            .name("nats-listener".into())
            .spawn(move || {
                for msg in messages {
                    let reply = Box::new(NatsReply { conn: bridge_conn.clone() });
                    if requests.send(Incoming { body: msg.payload, reply }).is_err() {
                        break;
                    }
                }
            })
            .context("starting NATS listener thread")?;
        Ok(NatsBus {
            conn,
            agent_id: settings.settings.agent_id.clone(),
            fingerprint: Mutex::new(fingerprint(settings)),
        })
    }

}

impl Notifier for NatsBus {
    fn notify(&self, topic: HmTopic, payload: &Value) -> Result<(), String> {
        let body = payload.to_string();
        self.conn
            .publish(&super::hm_subject(topic, &self.agent_id), body.as_bytes())
            .map_err(|e| format!("{e:?}"))
    }
}

impl BusControl for NatsBus {
    /// Reconnects when the URLs or certificate changed (certificate rotation after bootstrap).
    fn settings_changed(&self, settings: &Effective) {
        let new = fingerprint(settings);
        let mut current = match self.fingerprint.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if *current == new {
            return;
        }
        match options(settings) {
            Ok(opts) => {
                log::info!("bus settings changed: reconnecting to NATS with the new certificate/URLs");
                self.conn.reconfigure(opts);
                *current = new;
            }
            Err(e) => log::error!("new bus settings are unusable, keeping the current connection: {e}"),
        }
    }
}

struct NatsReply {
    conn: NatsConnection,
}

impl ReplySink for NatsReply {
    fn limit(&self) -> Option<usize> {
        Some(self.conn.max_payload().min(MAX_REPLY))
    }
    fn send(self: Box<Self>, reply_to: Option<&str>, body: Vec<u8>) {
        match reply_to.filter(|r| !r.is_empty()) {
            Some(subject) => {
                if let Err(e) = self.conn.publish(subject, &body) {
                    log::warn!("publishing reply to {subject}: {e:?}");
                }
            }
            None => log::warn!("request without reply_to: the reply is dropped"),
        }
    }
}
