//! The `dav` provider: a WebDAV-ish HTTP blobstore (the director's nginx `blobstore` job, or the
//! agent's own `/blobs` endpoint for create-env).
//!
//! Why native rather than the external `bosh-blobstore-dav` CLI: it is the default provider, and
//! doing it in-process streams straight into the verifying temp file without a helper binary. The
//! URL layout matches bosh-davcli so both agree on where a blob lives:
//! `<endpoint>/<first byte of sha1(id) as 2 hex digits>/<id>`; GET succeeds only on 200 and PUT only
//! on 201 or 204, as in davcli. Basic auth is sent when a user is configured; the password only ever
//! lives in the prepared `Authorization` header value.

use super::signed::{http_agent, retryable_status};
use super::{copy_stream, opt_str, Provider, ProviderError};
use crate::http_client::{Body, Client};
use base64::Engine as _;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// A dav endpoint with optional Basic credentials and CA.
pub struct Dav {
    agent: Client,
    endpoint: String,
    auth: Option<String>,
}

impl std::fmt::Debug for Dav {
    /// Shows the endpoint only; the credentials stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dav").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// `options.tls.cert.ca`, the CA for dav and signed URLs; an empty string means none.
pub fn ca_option(options: &serde_json::Map<String, serde_json::Value>) -> Result<Option<String>, String> {
    match options.get("tls").and_then(|t| t.get("cert")).and_then(|c| c.get("ca")) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err("blobstore option tls.cert.ca must be a string".into()),
    }
}

/// The shard prefix davcli puts before every id: the first byte of sha1(id) in lowercase hex.
pub fn shard(id: &str) -> String {
    super::digest::sha1_hex(id.as_bytes())[..2].to_string()
}

/// Percent-encodes everything outside RFC 3986's unreserved set, so an odd id stays one segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Dav {
    /// Reads `endpoint` (mandatory), `user`, `password` and `tls.cert.ca`.
    pub fn from_options(options: &serde_json::Map<String, serde_json::Value>) -> Result<Dav, String> {
        let endpoint = opt_str(options, "endpoint")
            .filter(|e| !e.is_empty())
            .ok_or("dav blobstore: option 'endpoint' is missing")?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "dav blobstore: endpoint must start with http:// or https://, got '{}'",
                crate::url::redact_url(endpoint)
            ));
        }
        let auth = opt_str(options, "user").filter(|u| !u.is_empty()).map(|user| {
            let password = opt_str(options, "password").unwrap_or("");
            let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {creds}")
        });
        let agent = http_agent(ca_option(options)?.as_deref())?;
        Ok(Dav { agent, endpoint: endpoint.trim_end_matches('/').to_string(), auth })
    }

    /// Where blob `id` lives.
    pub fn url(&self, id: &str) -> String {
        format!("{}/{}/{}", self.endpoint, shard(id), encode_segment(id))
    }

    /// The `Authorization` header, when a user is configured.
    fn auth_header(&self) -> Vec<(&str, &str)> {
        self.auth.iter().map(|a| ("Authorization", a.as_str())).collect()
    }

    fn status_error(&self, what: &str, id: &str, status: u16) -> ProviderError {
        let msg = format!("{what} dav blob {id}: Wrong response code: {status}");
        if retryable_status(status) {
            ProviderError::transient(msg)
        } else {
            ProviderError::permanent(msg)
        }
    }
}

impl Provider for Dav {
    fn get(&self, id: &str, out: &mut dyn Write, _scratch: &Path) -> Result<(), ProviderError> {
        let mut resp = self
            .agent
            .send("GET", &self.url(id), &self.auth_header(), Body::Empty, None)
            .map_err(|e| ProviderError::transient(format!("Getting dav blob {id}: {e}")))?;
        if resp.status != 200 {
            return Err(self.status_error("Getting", id, resp.status));
        }
        copy_stream(&mut resp, out)
            .map(|_| ())
            .map_err(|e| ProviderError::transient(format!("Getting dav blob {id}: reading body: {e}")))
    }

    fn put(&self, src: &Path, id: &str) -> Result<(), ProviderError> {
        let file = File::open(src).map_err(|e| {
            ProviderError::permanent(format!("Putting dav blob {id}: opening {}: {e}", src.display()))
        })?;
        // `File` bodies carry Content-Length from the file's metadata and stream from disk.
        let resp = self
            .agent
            .send("PUT", &self.url(id), &self.auth_header(), Body::File(file), None)
            .map_err(|e| ProviderError::transient(format!("Putting dav blob {id}: {e}")))?;
        match resp.status {
            201 | 204 => Ok(()),
            status => Err(self.status_error("Putting", id, status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_are_sharded_like_davcli() {
        let opts = json!({"endpoint": "http://h:25250/", "user": "u", "password": "p"});
        let dav = Dav::from_options(opts.as_object().unwrap()).unwrap();
        // sha1("some-id") = 4c2b...: the shard is the first byte.
        assert_eq!(shard("some-id"), &crate::blobstore::digest::sha1_hex(b"some-id")[..2]);
        assert_eq!(dav.url("some-id"), format!("http://h:25250/{}/some-id", shard("some-id")));
        assert_eq!(dav.url("a b"), format!("http://h:25250/{}/a%20b", shard("a b")));
        assert!(!format!("{dav:?}").contains("Basic"));
    }

    #[test]
    fn options_are_checked() {
        assert!(Dav::from_options(json!({}).as_object().unwrap()).is_err());
        assert!(Dav::from_options(json!({"endpoint": "ftp://x"}).as_object().unwrap()).is_err());
        let bad_ca = json!({"endpoint": "https://x", "tls": {"cert": {"ca": 5}}});
        assert!(Dav::from_options(bad_ca.as_object().unwrap()).is_err());
    }
}
