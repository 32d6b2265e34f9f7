//! `upload_blob`: rendered templates delivered over NATS instead of the blobstore. The payload is
//! credentials-bearing configuration, so the action is registered not loggable and nothing here logs
//! the payload or its size-revealing contents.

use super::{bind, Action, Call};
use crate::blobstore::{check_id, MultiDigest};
use crate::error::Context as _;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

/// The single argument of `upload_blob`.
#[derive(Deserialize)]
struct Upload {
    blob_id: String,
    checksum: String,
    payload: String,
}

/// `upload_blob [{"blob_id","checksum","payload"}]` → the blob id, stored under `data/sensitive_blobs`
/// where apply's blob cascade looks first.
pub struct UploadBlob {
    id: String,
    checksum: MultiDigest,
    payload: String,
}

impl Action for UploadBlob {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (u,): (Upload,) = bind(args)?;
        check_id(&u.blob_id).context("Extracting method arguments from payload: blob_id")?;
        let checksum =
            MultiDigest::parse(&u.checksum).context("Extracting method arguments from payload: checksum")?;
        Ok(UploadBlob { id: u.blob_id, checksum, payload: u.payload })
    }

    fn run(self, call: &Call) -> Result<Value, String> {
        // The director's base64 carries line breaks every 60 characters.
        let compact: Vec<u8> = self.payload.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let data = base64::engine::general_purpose::STANDARD.decode(&compact).context("Decoding payload")?;
        self.checksum.verify_bytes(&data).map_err(|e| {
            format!("Payload corrupted. Checksum mismatch. Expected '{}': {e}", self.checksum)
        })?;
        let path = call.ctx.dirs.sensitive_blobs().join(&self.id);
        crate::fsutil::write_atomic(&path, &data, 0o600)
            .with_context(|| format!("Storing blob {}", self.id))?;
        Ok(json!(self.id))
    }
}
