//! Where settings come from. Each infrastructure is one small type behind [`SettingsSource`], so the
//! metadata services, config drives and CD-ROMs of later releases slot in without touching the rest.

use crate::config::SourceConfig;
use serde_json::Value;
use std::path::PathBuf;

/// A place the agent can read its settings from.
pub trait SettingsSource: Send + Sync {
    /// Short name for log lines and errors.
    fn name(&self) -> String;
    /// Fetches the raw settings document.
    fn fetch(&self) -> Result<Value, String>;
}

/// Settings in a local JSON file (tests, warden/docker CPIs, and the embedded default).
pub struct FileSource {
    /// The file to read.
    pub path: PathBuf,
}

impl SettingsSource for FileSource {
    fn name(&self) -> String {
        format!("File({})", self.path.display())
    }
    fn fetch(&self) -> Result<Value, String> {
        let data = std::fs::read(&self.path).map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        serde_json::from_slice(&data).map_err(|e| format!("parsing {}: {e}", self.path.display()))
    }
}

/// Builds the sources named in `agent.json`, skipping (with a warning) the types this release does not
/// implement yet so a stemcell listing several still boots from the ones it has.
pub fn from_config(configs: &[SourceConfig]) -> Vec<Box<dyn SettingsSource>> {
    let mut out: Vec<Box<dyn SettingsSource>> = Vec::new();
    for c in configs {
        match c {
            SourceConfig::File { settings_path } => {
                out.push(Box::new(FileSource { path: settings_path.clone() }))
            }
            SourceConfig::Unsupported { kind } => {
                log::warn!("settings source type '{kind}' is not supported by this agent yet; skipped")
            }
        }
    }
    out
}

/// The embedded default's settings: an HTTPS bus on loopback with a self-signed certificate made on
/// first start and kept under `<base>/bosh`, so `bosh-agent` runs with nothing configured.
pub struct EmbeddedSource {
    /// Where the certificate and key are kept.
    pub bosh_dir: PathBuf,
}

impl SettingsSource for EmbeddedSource {
    fn name(&self) -> String {
        "embedded default".into()
    }
    fn fetch(&self) -> Result<Value, String> {
        let (cert, key) = self.certificate()?;
        Ok(serde_json::json!({
            "agent_id": "embedded-agent",
            "mbus": crate::cli::EMBEDDED_MBUS,
            "env": {"bosh": {"mbus": {"cert": {"ca": cert, "certificate": cert, "private_key": key}}}},
            "networks": {"default": {"type": "manual", "ip": "127.0.0.1", "netmask": "255.0.0.0",
                                     "default": ["dns", "gateway"]}},
            "vm": {"name": "embedded-agent"}
        }))
    }
}

impl EmbeddedSource {
    fn certificate(&self) -> Result<(String, String), String> {
        let cert_path = self.bosh_dir.join("embedded-mbus.crt");
        let key_path = self.bosh_dir.join("embedded-mbus.key");
        if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
            return Ok((c, k));
        }
        let names = ["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert, key) = crate::tls::server::self_signed(&names)?;
        crate::fsutil::write_atomic(&key_path, key.as_bytes(), 0o600)
            .map_err(|e| format!("writing {}: {e}", key_path.display()))?;
        crate::fsutil::write_atomic(&cert_path, cert.as_bytes(), 0o644)
            .map_err(|e| format!("writing {}: {e}", cert_path.display()))?;
        log::info!("created a self-signed certificate for the embedded HTTPS bus: {}", cert_path.display());
        Ok((cert, key))
    }
}
