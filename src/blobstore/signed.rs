//! Signed-URL transfers (`*_with_signed_url` actions) and the HTTP client shared with `dav`.
//!
//! Why separate from the providers: the director signs a URL for one object and may add headers
//! (`blobstore_headers`, e.g. server-side encryption keys); the agent just GETs or PUTs it. The query
//! string *is* the credential, so it is cut from every message this module produces, including ureq's
//! own error texts.

use super::{copy_stream, ProviderError};
use crate::error::Context as _;
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

/// The HTTP agent for blob transfers: verifies servers against `ca_pem` when given, otherwise against
/// the public web roots; 4xx/5xx are returned as responses so callers can word the error.
pub fn http_agent(ca_pem: Option<&str>) -> Result<ureq::Agent, String> {
    let certs = match ca_pem {
        Some(pem) => Some(crate::tls::parse_certs(pem).context("blobstore option tls.cert.ca")?),
        None => None,
    };
    Ok(configured(crate::tls::http_tls(certs.as_deref())))
}

/// The agent without a custom CA (cannot fail).
pub fn default_agent() -> ureq::Agent {
    configured(crate::tls::http_tls(None))
}

fn configured(tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(IO_TIMEOUT))
        .timeout_per_write(Some(IO_TIMEOUT))
        .build()
        .new_agent()
}

/// Whether an HTTP status may change on a retry (server trouble, throttling, timeouts).
pub fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// GETs `url` with `headers` and streams a 200 body into `out`.
pub fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &BTreeMap<String, String>,
    out: &mut dyn Write,
) -> Result<(), ProviderError> {
    let shown = redact_url(url);
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp =
        req.call().map_err(|e| ProviderError::transient(scrub(&format!("GET {shown}: {e}"), url)))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let msg = format!("GET {shown}: unexpected response status {status}");
        return Err(if retryable_status(status) {
            ProviderError::transient(msg)
        } else {
            ProviderError::permanent(msg)
        });
    }
    let mut body = resp.body_mut().as_reader();
    copy_stream(&mut body, out)
        .map(|_| ())
        .map_err(|e| ProviderError::transient(scrub(&format!("GET {shown}: reading body: {e}"), url)))
}

/// PUTs the file `src` to `url` with `headers`; the body streams from disk with an explicit
/// `Content-Length` (object stores refuse chunked uploads). Any 2xx is success.
pub fn put(
    agent: &ureq::Agent,
    url: &str,
    headers: &BTreeMap<String, String>,
    src: &Path,
) -> Result<(), ProviderError> {
    let shown = redact_url(url);
    let file = File::open(src)
        .map_err(|e| ProviderError::permanent(format!("PUT {shown}: opening {}: {e}", src.display())))?;
    // A `File` body makes ureq send `Content-Length` from the file's metadata and stream from disk.
    let mut req = agent.put(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp =
        req.send(file).map_err(|e| ProviderError::transient(scrub(&format!("PUT {shown}: {e}"), url)))?;
    let status = resp.status().as_u16();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ca_must_hold_a_certificate() {
        assert!(http_agent(Some("not a pem")).is_err());
        assert!(http_agent(None).is_ok());
    }
}
