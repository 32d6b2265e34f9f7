//! Message buses: NATS for the director and health monitor, HTTPS for bosh-cli.
//!
//! Architecture invariant: this module is the only one that knows the transports: NATS subjects,
//! TLS identities and HTTP routes. Both listeners hand request bodies to the dispatcher, which owns the
//! JSON envelope ([`crate::dispatch::Request`]); actions reach the bus only through the seam in
//! [`crate::bus`].

pub mod http;
pub mod https;
pub mod nats;
pub mod url;

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
