//! Signed-URL transfers (`*_with_signed_url` actions) and the HTTP client shared with `dav`.
//!
//! Why separate from the providers: the director signs a URL for one object and may add headers
//! (`blobstore_headers`, e.g. server-side encryption keys); the agent just GETs or PUTs it. The query
//! string *is* the credential, so it is cut from every message this module produces, including the
//! HTTP client's own error texts.

use super::{copy_stream, ProviderError};
use crate::error::Context as _;
use crate::http_client::{Body, Client};
use crate::tls::Trust;
use crate::url::{redact_url, scrub};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How long to wait for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long any single read or write may stall before the transfer is abandoned. Per operation, not
/// per transfer, so multi-GiB blobs are fine on a slow but live link.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// The HTTP client for blob transfers: verifies servers against `ca_pem` when given, otherwise
/// against the system's roots; every status is an answer, so callers can word the error.
pub fn http_agent(ca_pem: Option<&str>) -> Result<Client, String> {
    let trust = match ca_pem {
        Some(pem) => Trust::roots(&crate::tls::parse_certs(pem).context("blobstore option tls.cert.ca")?)
            .context("blobstore option tls.cert.ca")?,
        None => Trust::System,
    };
    Ok(configured(trust))
}

/// The client without a custom CA (cannot fail).
pub fn default_agent() -> Client {
    configured(Trust::System)
}

fn configured(trust: Trust) -> Client {
    Client::new(trust).connect_timeout(CONNECT_TIMEOUT).io_timeout(IO_TIMEOUT)
}

/// Whether an HTTP status may change on a retry (server trouble, throttling, timeouts).
pub fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// GETs `url` with `headers` and streams a 200 body into `out`.
pub fn get(
    agent: &Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    out: &mut dyn Write,
) -> Result<(), ProviderError> {
    let shown = redact_url(url);
    let mut resp = agent
        .send("GET", url, &pairs(headers), Body::Empty, None)
        .map_err(|e| ProviderError::transient(scrub(&format!("GET {shown}: {e}"), url)))?;
    let status = resp.status;
    if status != 200 {
        let msg = format!("GET {shown}: unexpected response status {status}");
        return Err(if retryable_status(status) {
            ProviderError::transient(msg)
        } else {
            ProviderError::permanent(msg)
        });
    }
    copy_stream(&mut resp, out)
        .map(|_| ())
        .map_err(|e| ProviderError::transient(scrub(&format!("GET {shown}: reading body: {e}"), url)))
}

/// PUTs the file `src` to `url` with `headers`; the body streams from disk with an explicit
/// `Content-Length` (object stores refuse chunked uploads). Any 2xx is success.
pub fn put(
    agent: &Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    src: &Path,
) -> Result<(), ProviderError> {
    let shown = redact_url(url);
    let file = File::open(src)
        .map_err(|e| ProviderError::permanent(format!("PUT {shown}: opening {}: {e}", src.display())))?;
    // A `File` body is sent with `Content-Length` from the file's metadata and streamed from disk.
    let resp = agent
        .send("PUT", url, &pairs(headers), Body::File(file), None)
        .map_err(|e| ProviderError::transient(scrub(&format!("PUT {shown}: {e}"), url)))?;
    let status = resp.status;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        let msg = format!("PUT {shown}: unexpected response status {status}");
        Err(if retryable_status(status) {
            ProviderError::transient(msg)
        } else {
            ProviderError::permanent(msg)
        })
    }
}

/// Header pairs as the HTTP client takes them.
pub fn pairs(headers: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ca_must_hold_a_certificate() {
        assert!(http_agent(Some("not a pem")).is_err());
        assert!(http_agent(None).is_ok());
    }
}
