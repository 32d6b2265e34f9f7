//! The BOSH registry: `GET <endpoint>/instances/<id>/settings` answering
//! `{"status":"ok","settings":"<settings as a JSON string>"}` (as the Ruby agent's infrastructures read it).
//!
//! Why still here: VMs created by older CPIs, and the Ruby agent's `-I aws` and `-I openstack`, put
//! only a registry pointer in user data. The endpoint may carry `user:password@`; those credentials
//! are moved into an `Authorization` header and never appear in a log line or error.

use super::http::{join, Http};
use super::Failure;
use base64::Engine as _;
use serde_json::Value;

/// Fetches this instance's settings from the registry at `endpoint`.
pub(crate) fn fetch(http: &Http, endpoint: &str, id: &str) -> Result<Value, Failure> {
    let (url, auth) = split_credentials(endpoint)
        .ok_or_else(|| Failure::Permanent("registry endpoint must start with http:// or https://".into()))?;
    let url = join(&url, &format!("instances/{}/settings", encode_segment(id)));
    let mut headers = vec![("Accept".to_string(), "application/json".to_string())];
    headers.extend(auth.map(|a| ("Authorization".to_string(), a)));
    let body = http.get(&url, &headers).map_err(|f| f.map(|m| format!("registry: {m}")))?;
    let shown = crate::url::redact_url(&url);
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| Failure::Permanent(format!("registry {shown}: answer is not JSON: {e}")))?;
    let settings = match doc.get("settings") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|e| Failure::Permanent(format!("registry {shown}: settings are not JSON: {e}")))?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => return Err(Failure::Permanent(format!("registry {shown}: answer has no 'settings' string"))),
    };
    if settings.is_object() {
        Ok(settings)
    } else {
        Err(Failure::Permanent(format!("registry {shown}: settings are not a JSON object")))
    }
}

/// The endpoint without user info, and the Basic `Authorization` value made from it.
fn split_credentials(endpoint: &str) -> Option<(String, Option<String>)> {
    endpoint.split_once("://").filter(|(s, _)| *s == "http" || *s == "https")?;
    let (url, credentials) = crate::url::take_credentials(endpoint)?;
    let auth = credentials.map(|(user, password)| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    });
    Some((url, auth))
}

/// Percent-encodes everything outside RFC 3986's unreserved set, so an id stays one path segment.
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_move_into_a_header() {
        let (url, auth) = split_credentials("http://ad%40min:pw@10.0.0.5:25777/r").unwrap();
        assert_eq!(url, "http://10.0.0.5:25777/r");
        let want = base64::engine::general_purpose::STANDARD.encode("ad@min:pw");
        assert_eq!(auth, Some(format!("Basic {want}")));
        assert_eq!(split_credentials("http://h:1").unwrap(), ("http://h:1".into(), None));
        assert!(split_credentials("ftp://h").is_none());
        assert_eq!(encode_segment("i-1/x y"), "i-1%2Fx%20y");
    }
}
