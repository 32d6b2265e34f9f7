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

use crate::bus::HmTopic;

/// The NATS subject of a health-monitor topic for this agent: `hm.agent.<topic>.<agent_id>`.
pub fn hm_subject(topic: HmTopic, agent_id: &str) -> String {
    let kind = match topic {
        HmTopic::Heartbeat => "heartbeat",
        HmTopic::Alert => "alert",
        HmTopic::Shutdown => "shutdown",
    };
    format!("hm.agent.{kind}.{agent_id}")
}
