//! What the rest of the agent may ask of the message bus without knowing the wire: publish an event
//! to the health monitor ([`Notifier`]) and take up new bus settings ([`BusControl`]).
//!
//! Why a module of its own: actions (drain's shutdown notice, `update_settings`), heartbeats and
//! alerts all need these, and `mbus` implements them; a seam below both keeps every import pointing
//! down, as the Go agent keeps its topics in a package below both its bus and its agent. Subjects and
//! encodings stay in `mbus`.

use crate::settings::Effective;
use serde_json::Value;

/// The health monitor's topics: the only events the agent publishes besides replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmTopic {
    /// Liveness and vitals, every heartbeat interval.
    Heartbeat,
    /// A monit or SSH login alert.
    Alert,
    /// The VM is about to shut down (`drain shutdown`).
    Shutdown,
}

/// Sends events to the health monitor. The HTTPS bus has no health monitor, so its notifier is
/// [`Silent`].
pub trait Notifier: Send + Sync {
    /// Publishes one event.
    fn notify(&self, topic: HmTopic, payload: &Value) -> Result<(), String>;
    /// Whether events reach a health monitor at all (so a heartbeat is logged as sent).
    fn reaches_health_monitor(&self) -> bool {
        true
    }
}

/// A notifier that drops everything (create-env VMs have no health monitor).
pub struct Silent;

impl Notifier for Silent {
    fn notify(&self, _: HmTopic, _: &Value) -> Result<(), String> {
        Ok(())
    }
    fn reaches_health_monitor(&self) -> bool {
        false
    }
}

/// What the bus must do when `update_settings` changed the bus settings (new certificate or URLs).
pub trait BusControl: Send + Sync {
    /// Reconnects with the new settings if they differ from the ones in use.
    fn settings_changed(&self, settings: &Effective);
}
