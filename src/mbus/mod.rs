//! Message buses: NATS for the director and health monitor, HTTPS for bosh-cli.
//!
//! Architecture invariant: this module is the only one that knows the wire envelope, NATS subjects and
//! HTTP routes. Both listeners turn bytes into a [`Request`] and hand it to the dispatcher; actions
//! never see the bus.

pub mod envelope;
pub mod http;
pub mod https;
pub mod nats;
pub mod url;

pub use envelope::{Request, Response};
pub mod agent_https;
pub mod agent_nats;

use serde_json::Value;

/// The health monitor's topics; the only subjects the agent publishes on besides replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmTopic {
    /// `hm.agent.heartbeat.<agent_id>`.
    Heartbeat,
    /// `hm.agent.alert.<agent_id>`.
    Alert,
    /// `hm.agent.shutdown.<agent_id>`.
    Shutdown,
}

impl HmTopic {
    /// The NATS subject for this topic and agent.
    pub fn subject(self, agent_id: &str) -> String {
        let kind = match self {
            HmTopic::Heartbeat => "heartbeat",
            HmTopic::Alert => "alert",
            HmTopic::Shutdown => "shutdown",
        };
        format!("hm.agent.{kind}.{agent_id}")
    }
}

/// Sends events to the health monitor. The HTTPS bus has no health monitor, so its notifier is
/// [`Silent`].
pub trait Notifier: Send + Sync {
    /// Publishes one event.
    fn notify(&self, topic: HmTopic, payload: &Value) -> Result<(), String>;
}

/// A notifier that drops everything (create-env VMs have no health monitor).
pub struct Silent;

impl Notifier for Silent {
    fn notify(&self, _: HmTopic, _: &Value) -> Result<(), String> {
        Ok(())
    }
}
