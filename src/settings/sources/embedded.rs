//! The embedded default: what `bosh-agent` without `-C` or `-I` runs on, so it starts with nothing
//! configured (and `bosh-agent call` finds it without options).

use super::SettingsSource;
use crate::dirs::Dirs;
use crate::error::Context as _;
use serde_json::Value;

/// The embedded default's bus: HTTPS on loopback with fixed credentials.
pub const EMBEDDED_MBUS: &str = "https://bosh:bosh@127.0.0.1:6868";

/// The embedded default's settings: an HTTPS bus on loopback with a self-signed certificate made on
/// first start and kept under `<base>/bosh`, so `bosh-agent` runs with nothing configured.
pub struct EmbeddedSource {
    /// Where the certificate and key are kept (under `<base>/bosh`).
    pub dirs: Dirs,
}

impl SettingsSource for EmbeddedSource {
    fn name(&self) -> String {
        "embedded default".into()
    }
    fn fetch(&self) -> Result<Value, String> {
        let (cert, key) = self.certificate()?;
        Ok(serde_json::json!({
            "agent_id": "embedded-agent",
            "mbus": EMBEDDED_MBUS,
            "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}},
            "networks": {"default": {"type": "manual", "ip": "127.0.0.1", "netmask": "255.0.0.0",
                                     "default": ["dns", "gateway"]}},
            "vm": {"name": "embedded-agent"}
        }))
    }
}

impl EmbeddedSource {
    fn certificate(&self) -> Result<(String, String), String> {
        let (cert_path, key_path) = self.dirs.embedded_cert();
        if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
            return Ok((c, k));
        }
        let names = ["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert, key) = crate::tls::server::self_signed(&names)?;
        crate::fsutil::write_atomic(&key_path, key.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", key_path.display()))?;
        crate::fsutil::write_atomic(&cert_path, cert.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", cert_path.display()))?;
        log::info!("created a self-signed certificate for the embedded HTTPS bus: {}", cert_path.display());
        Ok((cert, key))
    }
}
