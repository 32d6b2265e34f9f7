//! The JSON envelope shared by both buses (as the director's `nats_rpc.rb` and bosh-cli's `agentclient/http` send it): requests carry `protocol` (NATS only),
//! `method`, `arguments` and `reply_to`; replies are exactly `{"value":...}` or
//! `{"exception":{"message":...}}`, never empty, because the director cannot merge an empty reply.

use serde_json::Value;

/// A request after envelope checks; arguments are still untyped JSON, each action binds its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Protocol version (3 from today's director; 0 when absent, as from bosh-cli).
    pub protocol: u64,
    /// Action name.
    pub method: String,
    /// Positional arguments.
    pub arguments: Vec<Value>,
    /// Where the reply goes on NATS; ignored over HTTPS.
    pub reply_to: String,
}

/// A reply to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// Success.
    Value(Value),
    /// Failure, with a message naming what went wrong.
    Exception(String),
}

/// Why a body could not become a [`Request`]: the message for the exception, and the `reply_to` if one
/// could still be read so the sender can be told.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopeError {
    /// Human-readable problem.
    pub message: String,
    /// The `reply_to`, when the body was at least a JSON object carrying one.
    pub reply_to: Option<String>,
}

impl Request {
    /// Parses and checks an envelope; every failure names the offending field.
    pub fn parse(body: &[u8]) -> Result<Request, EnvelopeError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| EnvelopeError {
            message: format!("malformed request: body is not valid JSON: {e}"),
            reply_to: readable_reply_to(body),
        })?;
        let Value::Object(mut obj) = value else {
            return Err(EnvelopeError {
                message: "malformed request: body must be a JSON object".into(),
                reply_to: None,
            });
        };
        // Fields are moved out of the parsed object, not copied.
        let reply_to = match obj.remove("reply_to") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(EnvelopeError {
                    message: "malformed request: 'reply_to' must be a string".into(),
                    reply_to: None,
                })
            }
        };
        let fail = |m: &str| EnvelopeError {
            message: format!("malformed request: {m}"),
            reply_to: Some(reply_to.clone()).filter(|r| !r.is_empty()),
        };
        let method = match obj.remove("method") {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::String(_)) => return Err(fail("'method' is empty")),
            None | Some(Value::Null) => return Err(fail("'method' is missing")),
            Some(_) => return Err(fail("'method' must be a string")),
        };
        let protocol = match obj.get("protocol") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or_else(|| fail("'protocol' must be a non-negative integer"))?,
        };
        let arguments = match obj.remove("arguments") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(fail("'arguments' must be an array")),
        };
        Ok(Request { protocol, method, arguments, reply_to })
    }
}

/// The `reply_to` of a body that did not parse as a whole: JSON that is well-formed but holds what
/// `serde_json` refuses as a value elsewhere (`1e400`, a lone `\ud800`) still names where the
/// exception should go. Other members are skipped without being converted, so only the `reply_to`
/// itself has to be readable.
fn readable_reply_to(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ReplyOnly {
        reply_to: Option<String>,
    }
    serde_json::from_slice::<ReplyOnly>(body).ok()?.reply_to.filter(|r| !r.is_empty())
}

/// The marker placed where an oversized exception message was cut.
const TRUNCATED: &str = "\n...[truncated]...\n";

impl Response {
    /// Shorthand for an exception.
    pub fn exception(message: impl Into<String>) -> Response {
        Response::Exception(message.into())
    }

    /// The reply as JSON text: `{"value":...}` or `{"exception":{"message":...}}`, written straight
    /// from the value (no copy of it into an envelope first).
    fn to_bytes(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        enum Envelope<'a> {
            #[serde(rename = "value")]
            Value(&'a Value),
            #[serde(rename = "exception")]
            Exception { message: &'a str },
        }
        let envelope = match self {
            Response::Value(v) => Envelope::Value(v),
            Response::Exception(m) => Envelope::Exception { message: m },
        };
        // A Value or a string always serialises (its map keys are strings).
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    /// Serialises the reply, keeping it within `limit` bytes: an oversized exception keeps the head and
    /// tail of its message, anything else becomes an exception saying the reply was too long. Going over
    /// the NATS server's max_payload would otherwise cost the connection.
    pub fn encode(&self, limit: Option<usize>) -> Vec<u8> {
        let full = self.to_bytes();
        let Some(limit) = limit else { return full };
        if full.len() <= limit {
            return full;
        }
        if let Response::Exception(message) = self {
            let overhead = full.len() - message.len();
            let mut budget = limit.saturating_sub(overhead + TRUNCATED.len());
            while budget > 0 {
                let head = floor_char(message, budget / 2);
                let tail = ceil_char(message, message.len() - (budget - budget / 2));
                let cut = format!("{}{TRUNCATED}{}", &message[..head], &message[tail..]);
                let encoded = Response::Exception(cut).to_bytes();
                if encoded.len() <= limit {
                    return encoded;
                }
                // JSON escaping made it longer than the raw budget: shrink and retry.
                budget = budget.saturating_sub((encoded.len() - limit).max(16));
            }
        }
        Response::exception("Response exceeded maximum allowed length").to_bytes()
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_director_and_cli_envelopes() {
        let r = Request::parse(
            br#"{"protocol":3,"method":"get_state","arguments":["full"],"reply_to":"director.x.a.y"}"#,
        )
        .unwrap();
        assert_eq!((r.protocol, r.method.as_str(), r.arguments.len()), (3, "get_state", 1));
        let c = Request::parse(br#"{"method":"ping","arguments":[],"reply_to":"bosh-cli"}"#).unwrap();
        assert_eq!(c.protocol, 0);
        let bare = Request::parse(br#"{"method":"ping"}"#).unwrap();
        assert!(bare.arguments.is_empty());
    }

    #[test]
    fn names_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not valid JSON"),
            (b"[1]", "must be a JSON object"),
            (br#"{"arguments":[]}"#, "'method' is missing"),
            (br#"{"method":5}"#, "'method' must be a string"),
            (br#"{"method":"ping","arguments":{}}"#, "'arguments' must be an array"),
            (br#"{"method":"ping","protocol":"3"}"#, "'protocol' must be a non-negative integer"),
            (br#"{"method":"ping","reply_to":7}"#, "'reply_to' must be a string"),
        ];
        for (body, want) in cases {
            let e = Request::parse(body).unwrap_err();
            assert!(e.message.contains(want), "{} lacks {want}", e.message);
        }
        let e = Request::parse(br#"{"method":1,"reply_to":"r.1"}"#).unwrap_err();
        assert_eq!(e.reply_to.as_deref(), Some("r.1"));
    }

    /// Well-formed JSON that serde refuses as a value still gets its exception to the sender.
    #[test]
    fn serde_rejects_keep_a_readable_reply_to() {
        let bodies: &[&[u8]] = &[
            br#"{"method":"ping","arguments":[1e400],"reply_to":"r.1"}"#,
            br#"{"method":"ping","arguments":["\ud800"],"reply_to":"r.1"}"#,
            br#"{"reply_to":"r.1","method":"ping","arguments":[{"a":-1e99999}]}"#,
            br#"{"method":"\udfff","reply_to":"r.1"}"#,
        ];
        for body in bodies {
            let e = Request::parse(body).unwrap_err();
            assert_eq!(e.reply_to.as_deref(), Some("r.1"), "{}", String::from_utf8_lossy(body));
            assert!(e.message.contains("not valid JSON"), "{}", e.message);
        }
        for unreadable in
            [&br#"{"reply_to":"\ud800","method":"ping"}"#[..], b"{\"reply_to\":\"r.1\"", b"[1e400]"]
        {
            assert_eq!(Request::parse(unreadable).unwrap_err().reply_to, None);
        }
    }

    #[test]
    fn oversized_replies_stay_under_the_limit() {
        let big = "é".repeat(600_000);
        let e = Response::Exception(format!("start{big}end")).encode(Some(1 << 20));
        assert!(e.len() <= 1 << 20);
        let v: Value = serde_json::from_slice(&e).unwrap();
        let m = v["exception"]["message"].as_str().unwrap();
        assert!(m.starts_with("start") && m.ends_with("end") && m.contains("[truncated]"));
        let val = Response::Value(json!("x".repeat(2 << 20))).encode(Some(1 << 20));
        assert_eq!(val, br#"{"exception":{"message":"Response exceeded maximum allowed length"}}"#);
        let ok = Response::Value(json!("pong")).encode(Some(1 << 20));
        assert_eq!(ok, br#"{"value":"pong"}"#);
    }
}
