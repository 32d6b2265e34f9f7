//! The `VsphereGuestInfo` source: the settings in vSphere's `guestinfo.userdata` variable, read
//! with VMware Tools: `vmware-rpctool "info-get guestinfo.userdata"`, falling back to `vmtoolsd
//! --cmd "..."` (older tools, or no rpctool on the image). The value is base64 of the settings JSON,
//! optionally gzipped (whatever `guestinfo.userdata.encoding` claims, as the Go agent reads it);
//! plain JSON is accepted too.
//!
//! Why the variables are cleared after a successful read (`info-set guestinfo.userdata ---`, and
//! the encoding emptied): any process in the guest can read guestinfo, and the settings carry the
//! bus credentials. A later read then fails and the agent boots from its cached `settings.json`,
//! as the Go agent does.

use super::{Attempt, Failure, Fetched};
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use base64::Engine as _;
use serde_json::Value;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// VMware Tools' small RPC client, found on PATH unless `RpcToolPath` names it.
pub const DEFAULT_RPC_TOOL: &str = "vmware-rpctool";
/// The tools daemon, whose `--cmd` runs the same RPC, found on PATH unless `VmToolsdPath` names it.
pub const DEFAULT_VMTOOLSD: &str = "vmtoolsd";
/// Largest settings document accepted after decompression.
const MAX_SETTINGS: u64 = 1 << 20;
/// Bound on one clearing call; they are best effort.
const CLEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// vSphere guestinfo through VMware Tools.
pub struct GuestInfoSource {
    rpc_tool: PathBuf,
    vmtoolsd: PathBuf,
}

impl GuestInfoSource {
    /// A source running `rpc_tool` (else [`DEFAULT_RPC_TOOL`]) and `vmtoolsd` (else
    /// [`DEFAULT_VMTOOLSD`]).
    pub fn new(rpc_tool: &str, vmtoolsd: &str) -> GuestInfoSource {
        let or = |p: &str, d: &str| PathBuf::from(if p.is_empty() { d } else { p });
        GuestInfoSource { rpc_tool: or(rpc_tool, DEFAULT_RPC_TOOL), vmtoolsd: or(vmtoolsd, DEFAULT_VMTOOLSD) }
    }

    /// Runs one guest RPC: `vmware-rpctool <rpc>`, else `vmtoolsd --cmd <rpc>`; their stdout.
    fn rpc(&self, rpc: &str, limit: Duration) -> Result<String, String> {
        let started = Instant::now();
        crate::exec::run(Command::new(&self.rpc_tool).arg(rpc), None, limit).or_else(|first| {
            let left = limit.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
            crate::exec::run(Command::new(&self.vmtoolsd).arg("--cmd").arg(rpc), None, left)
                .map_err(|second| format!("{first}; {second}"))
        })
    }
}

/// The settings in a guestinfo value: JSON, or base64 (line breaks allowed) of JSON or of gzipped
/// JSON.
fn decode(value: &str) -> Result<Value, Failure> {
    let text = value.trim();
    let bytes = if text.starts_with('{') {
        text.as_bytes().to_vec()
    } else {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let raw = STANDARD_PAD_INDIFFERENT
            .decode(compact.as_bytes())
            .map_err(|e| Failure::Permanent(format!("guestinfo.userdata is not base64: {e}")))?;
        if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .take(MAX_SETTINGS)
                .read_to_end(&mut out)
                .map_err(|e| Failure::Permanent(format!("guestinfo.userdata: gunzip: {e}")))?;
            out
        } else {
            raw
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Failure::Permanent("guestinfo.userdata is not a JSON object".into())),
        Err(e) => Err(Failure::Permanent(format!("guestinfo.userdata is not JSON: {e}"))),
    }
}

impl Attempt for GuestInfoSource {
    fn name(&self) -> String {
        format!("VsphereGuestInfo({})", self.rpc_tool.display())
    }

    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        // VMware Tools not up yet, or the variable not set yet: worth another try.
        let value = self.rpc("info-get guestinfo.userdata", left).map_err(Failure::Transient)?;
        let settings = decode(&value)?;
        for clear in ["info-set guestinfo.userdata ---", "info-set guestinfo.userdata.encoding ''"] {
            match self.rpc(clear, CLEAR_TIMEOUT) {
                Ok(_) => log::info!("{}: cleared with '{clear}'", self.name()),
                Err(e) => log::warn!("{}: clearing the settings from guestinfo failed: {e}", self.name()),
            }
        }
        Ok(Fetched { settings, public_key: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write as _;

    #[test]
    fn decodes_json_base64_and_gzipped_base64() {
        let doc = json!({"agent_id": "a", "mbus": "nats://x"});
        let text = doc.to_string();
        let b64 = STANDARD_PAD_INDIFFERENT.encode(&text);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let gz64 = STANDARD_PAD_INDIFFERENT.encode(gz.finish().unwrap());
        let wrapped = format!("{}\n{}\n", &gz64[..10], &gz64[10..]);
        for value in [text.clone(), b64, wrapped] {
            assert_eq!(decode(&value).unwrap(), doc, "{value}");
        }
        assert!(matches!(decode("---"), Err(Failure::Permanent(m)) if m.contains("not base64")));
        let array = STANDARD_PAD_INDIFFERENT.encode("[1]");
        assert!(matches!(decode(&array), Err(Failure::Permanent(m)) if m.contains("not a JSON object")));
    }
}
