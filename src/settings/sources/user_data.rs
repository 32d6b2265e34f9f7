//! User data as CPIs write it, shared by the metadata service and the config drive: either the
//! settings themselves (with a non-empty `agent_id`), or a pointer to a BOSH registry
//! (`{"registry":{"endpoint":...},"server":{"name":...},"dns":{"nameserver":[...]}}`).
//!
//! Why both shapes and several encodings: today's CPIs put settings straight into user data, older
//! ones and the Ruby agent's infrastructures go through the registry, and some clouds hand user data
//! back base64-encoded (raw or as a JSON string, standard or URL alphabet). Accepting all of them is
//! what lets one agent boot on every stemcell's cloud.

use super::Failure;
use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use base64::Engine as _;
use serde_json::{Map, Value};

/// Keys of the user-data envelope that are not settings.
const ENVELOPE: [&str; 3] = ["registry", "server", "dns"];

/// What the user data tells the agent to do.
#[derive(Debug, PartialEq)]
pub(crate) enum UserData {
    /// The settings are right here.
    Settings(Value),
    /// Fetch them from this registry endpoint; `server_name` may key the registry (OpenStack).
    Registry {
        /// `registry.endpoint`, possibly with `user:password@`.
        endpoint: String,
        /// `server.name`, if given.
        server_name: Option<String>,
    },
}

/// Parses user data in any of the accepted encodings into its JSON object.
pub(crate) fn parse(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return Err(Failure::Permanent("user data is empty".into()));
    }
    let decoded = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => return Ok(map),
        Ok(Value::String(inner)) => decode_base64(inner.trim()),
        Ok(other) => {
            return Err(Failure::Permanent(format!("user data is JSON but not an object: {}", kind(&other))))
        }
        Err(_) => decode_base64(text),
    };
    let bytes = decoded
        .ok_or_else(|| Failure::Permanent("user data is neither a JSON object nor base64 of one".into()))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Failure::Permanent(format!("decoded user data is not an object: {}", kind(&other)))),
        Err(e) => Err(Failure::Permanent(format!("decoded user data is not JSON: {e}"))),
    }
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD_PAD_INDIFFERENT.decode(&compact).or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(&compact)).ok()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decides between settings-in-user-data and the registry.
pub(crate) fn interpret(mut map: Map<String, Value>) -> Result<UserData, Failure> {
    let has_agent_id = map.get("agent_id").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    if has_agent_id {
        for key in ENVELOPE {
            map.remove(key);
        }
        return Ok(UserData::Settings(Value::Object(map)));
    }
    let endpoint = map
        .get("registry")
        .and_then(|r| r.get("endpoint"))
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(String::from);
    let server_name = map.get("server").and_then(|s| s.get("name")).and_then(Value::as_str).map(String::from);
    match endpoint {
        Some(endpoint) => Ok(UserData::Registry { endpoint, server_name }),
        None => Err(Failure::Permanent(
            "Metadata does not provide settings: user data has neither an agent_id nor a registry.endpoint"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_plain_quoted_base64_and_raw_base64() {
        let doc = json!({"agent_id": "a", "mbus": "nats://x", "registry": {"endpoint": "http://r"}});
        let plain = doc.to_string();
        let b64 = STANDARD_PAD_INDIFFERENT.encode(&plain);
        let url = URL_SAFE_PAD_INDIFFERENT.encode(&plain);
        for body in [plain.clone(), json!(b64).to_string(), json!(url).to_string(), b64] {
            let map = parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(
                interpret(map).unwrap(),
                UserData::Settings(json!({"agent_id": "a", "mbus": "nats://x"}))
            );
        }
    }

    #[test]
    fn registry_pointer_and_bad_input() {
        let map = parse(br#"{"registry":{"endpoint":"http://r:1"},"server":{"name":"vm-1"}}"#).unwrap();
        assert_eq!(
            interpret(map).unwrap(),
            UserData::Registry { endpoint: "http://r:1".into(), server_name: Some("vm-1".into()) }
        );
        assert!(
            matches!(interpret(Map::new()), Err(Failure::Permanent(m)) if m.contains("Metadata does not"))
        );
        assert!(matches!(parse(b"[1]"), Err(Failure::Permanent(m)) if m.contains("an array")));
        assert!(matches!(parse(b"%%%"), Err(Failure::Permanent(_))));
        assert!(matches!(parse(b"  "), Err(Failure::Permanent(m)) if m.contains("empty")));
    }
}
