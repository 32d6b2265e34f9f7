//! The one HTTP client the network sources share: every request is bounded by the attempt's
//! deadline, the body by a size cap, and every failure is one to try again.
//!
//! Why one small wrapper: metadata services and the registry are reached at boot, before anything
//! else works, so a hanging or chatty server must never stall the agent; putting the deadline and the
//! status policy in one place means every source gets them the same way.

use super::Failure;
use crate::http_client::{Body, Client};
use crate::tls::Trust;
use std::time::{Duration, Instant};

/// Largest metadata or registry answer read; settings are a few kilobytes.
const MAX_BODY: u64 = 1 << 20;
/// Connecting to a link-local service is instant or never; don't spend the attempt's budget on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A client whose requests all end by `deadline`.
pub(crate) struct Http {
    http: Client,
    deadline: Instant,
}

impl Http {
    /// A client for one attempt.
    pub(crate) fn new(deadline: Instant) -> Http {
        let http = Client::new(Trust::System).max_redirects(3).connect_timeout(CONNECT_TIMEOUT);
        Http { http, deadline }
    }

    /// `GET url` with `headers`; the body of a 2xx answer.
    pub(crate) fn get(&self, url: &str, headers: &[(String, String)]) -> Result<Vec<u8>, Failure> {
        self.call("GET", url, headers)
    }

    /// `PUT url` with `headers` and an empty body; the body of a 2xx answer.
    pub(crate) fn put(&self, url: &str, headers: &[(String, String)]) -> Result<Vec<u8>, Failure> {
        self.call("PUT", url, headers)
    }

    fn call(&self, method: &str, url: &str, headers: &[(String, String)]) -> Result<Vec<u8>, Failure> {
        let shown = crate::url::redact_url(url);
        if self.deadline <= Instant::now() {
            return Err(Failure::Transient(format!("{method} {shown}: out of time")));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let scrub = |e: &dyn std::fmt::Display| crate::url::scrub(&e.to_string(), url);
        let mut resp = self
            .http
            .send(method, url, &headers, Body::Empty, Some(self.deadline))
            .map_err(|e| Failure::Transient(format!("{method} {shown}: {}", scrub(&e))))?;
        let status = resp.status;
        let body = resp.read_to_vec(MAX_BODY).map_err(|e| {
            Failure::Transient(format!("{method} {shown}: reading the answer: {}", scrub(&e)))
        })?;
        match status {
            200..=299 => Ok(body),
            // Any other answer is retried, as the Go agent does: at boot a metadata service answers
            // 404 until the cloud has attached the user data, 401 for an expired IMDSv2 token, 5xx
            // when overloaded; the tries are bounded anyway.
            _ => Err(Failure::Transient(format!("{method} {shown}: HTTP {status}{}", excerpt(&body)))),
        }
    }
}

/// The start of an error body, for the message (servers often say why).
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

/// `base` and `path` joined with exactly one slash.
pub(crate) fn join(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}
