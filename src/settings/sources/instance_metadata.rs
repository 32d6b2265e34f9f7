//! The `InstanceMetadata` source: one settings document at `URI+SettingsPath` (GCP, SoftLayer).
//!
//! Why separate from `HTTP`: no user-data envelope, no registry and no token, just a GET with the
//! configured headers (GCP refuses requests without `Metadata-Flavor: Google`).

use super::http::{join, Http};
use super::{Attempt, Failure, Fetched, NetworkHook};
use serde_json::Value;
use std::time::Instant;

/// A settings document served by a metadata service.
pub struct InstanceMetadataSource {
    /// Base URL of the service.
    pub uri: String,
    /// Headers sent with the request.
    pub headers: Vec<(String, String)>,
    /// Path of the settings under `uri`.
    pub settings_path: String,
    /// Called before each try (see [`NetworkHook`]).
    pub network: Option<NetworkHook>,
}

impl Attempt for InstanceMetadataSource {
    fn name(&self) -> String {
        format!("InstanceMetadata({})", crate::url::redact_url(&self.uri))
    }

    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure> {
        if let Some(up) = &self.network {
            up();
        }
        let body = Http::new(deadline).get(&join(&self.uri, &self.settings_path), &self.headers)?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(settings @ Value::Object(_)) => Ok(Fetched { settings, public_key: None }),
            Ok(_) => Err(Failure::Permanent("settings document is not a JSON object".into())),
            Err(e) => Err(Failure::Permanent(format!("settings document is not JSON: {e}"))),
        }
    }
}
