//! The core-NATS text protocol: an incremental parser for what the server sends and encoders for what
//! we send.
//!
//! Kept free of sockets and threads so it can be unit-tested byte by byte (messages split across reads
//! are the normal case on a TLS stream), and so that nothing read from the network can panic the agent:
//! every malformed input becomes a [`ProtocolError`], which the connection answers by reconnecting.

use serde::Deserialize;
use std::fmt;

/// Longest control line we accept. INFO lines carry cluster URLs and can be a few KiB; anything near
/// this limit is garbage or an attack, and refusing it bounds our memory use.
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// Largest MSG payload we accept: nats-server refuses to configure `max_payload` above 64 MiB, so a
/// bigger length on the wire can only be corruption.
pub const MAX_PAYLOAD_LIMIT: usize = 64 * 1024 * 1024;

/// The fields of the server's INFO we use; unknown fields are ignored so newer servers still work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    /// Server id, logged on connect so operators can tell cluster members apart.
    pub server_id: String,
    /// Server version, logged on connect for support.
    pub version: String,
    /// Largest payload the server accepts; publishing more makes it drop the connection.
    pub max_payload: Option<usize>,
    /// The server insists on TLS; connecting without a TLS config is then pointless.
    pub tls_required: bool,
    /// The server offers TLS optionally.
    pub tls_available: bool,
    /// The server wants credentials in CONNECT.
    pub auth_required: bool,
}

/// One operation received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO {json}`: on connect and again when the cluster changes.
    Info(ServerInfo),
    /// `MSG <subject> <sid> [reply] <#bytes>` with its payload, or `HMSG` (a message with headers).
    Msg {
        /// Subject the message was published to.
        subject: String,
        /// Our subscription id that matched.
        sid: u64,
        /// Optional NATS reply subject.
        reply: Option<String>,
        /// Message body (without the headers of an HMSG).
        payload: Vec<u8>,
        /// The status of an HMSG whose header line carries one: 503 is the server saying nobody
        /// is subscribed to the subject a request was published to ("no responders").
        status: Option<u16>,
    },
    /// `PING`: must be answered with PONG or the server drops us.
    Ping,
    /// `PONG`: answer to our PING (connect handshake and liveness checks).
    Pong,
    /// `+OK`: only sent in verbose mode, which we do not request, but harmless.
    Ok,
    /// `-ERR '<text>'`, quotes removed.
    Err(String),
}

/// Input the parser cannot make sense of; the connection is then unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NATS protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Incremental parser: feed it bytes as they arrive with [`Parser::push`], take whole operations out
/// with [`Parser::next_op`]. Partial input stays buffered until the rest arrives.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    start: usize,
}

impl Parser {
    /// An empty parser.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed by an operation.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete operation, `Ok(None)` when more input is needed.
    pub fn next_op(&mut self) -> Result<Option<ServerOp>, ProtocolError> {
        let pending = &self.buf[self.start..];
        let Some(eol) = find_crlf(pending) else {
            if pending.len() > MAX_CONTROL_LINE {
                return Err(ProtocolError("control line too long".into()));
            }
            return Ok(None);
        };
        if eol > MAX_CONTROL_LINE {
            return Err(ProtocolError("control line too long".into()));
        }
        let line = &pending[..eol];
        let (op, args) = split_op(line);
        let op = op.to_ascii_uppercase();
        let after_line = eol + 2;
        let parsed = match op.as_slice() {
            b"MSG" | b"HMSG" => {
                let headers = op.as_slice() == b"HMSG";
                let args =
                    std::str::from_utf8(args).map_err(|_| ProtocolError("MSG line is not UTF-8".into()))?;
                let mut fields: Vec<&str> = args.split_ascii_whitespace().collect();
                // HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>: take the header length
                // out, and what is left reads like a MSG line.
                let header_len = match (headers, fields.len()) {
                    (false, _) => 0,
                    (true, 4 | 5) => fields
                        .remove(fields.len() - 2)
                        .parse::<usize>()
                        .map_err(|_| ProtocolError("HMSG with a bad header length".into()))?,
                    (true, _) => return Err(ProtocolError("HMSG with wrong number of arguments".into())),
                };
                let (subject, sid, reply, len) = match fields.as_slice() {
                    [s, sid, len] => (*s, *sid, None, *len),
                    [s, sid, reply, len] => (*s, *sid, Some(*reply), *len),
                    _ => return Err(ProtocolError("MSG with wrong number of arguments".into())),
                };
                let sid: u64 = sid.parse().map_err(|_| ProtocolError("MSG with a bad sid".into()))?;
                let len: usize = len.parse().map_err(|_| ProtocolError("MSG with a bad length".into()))?;
                if len > MAX_PAYLOAD_LIMIT || header_len > len {
                    return Err(ProtocolError("MSG payload length out of range".into()));
                }
                let total = after_line + len + 2;
                if pending.len() < total {
                    if self.buf.capacity() < self.start + total {
                        self.buf.reserve(self.start + total - self.buf.len());
                    }
                    return Ok(None);
                }
                if &pending[after_line + len..total] != b"\r\n" {
                    return Err(ProtocolError("MSG payload not followed by CRLF".into()));
                }
                let body = &pending[after_line..after_line + len];
                let op = ServerOp::Msg {
                    subject: subject.to_string(),
                    sid,
                    reply: reply.map(str::to_string),
                    payload: body[header_len..].to_vec(),
                    status: headers.then(|| status(&body[..header_len])).flatten(),
                };
                self.start += total;
                return Ok(Some(op));
            }
            b"PING" => ServerOp::Ping,
            b"PONG" => ServerOp::Pong,
            b"+OK" => ServerOp::Ok,
            b"-ERR" => {
                let text = String::from_utf8_lossy(args);
                ServerOp::Err(text.trim().trim_matches('\'').to_string())
            }
            b"INFO" => {
                let info: ServerInfo =
                    serde_json::from_slice(args).map_err(|e| ProtocolError(format!("bad INFO JSON: {e}")))?;
                ServerOp::Info(info)
            }
            _ => {
                let shown: String = String::from_utf8_lossy(&op).chars().take(16).collect();
                return Err(ProtocolError(format!("unknown operation {shown:?}")));
            }
        };
        self.start += after_line;
        Ok(Some(parsed))
    }
}

/// The status code of an HMSG's header block (`NATS/1.0 503\r\n...`), if it has one.
fn status(headers: &[u8]) -> Option<u16> {
    let line = &headers[..find_crlf(headers).unwrap_or(headers.len())];
    let rest = line.strip_prefix(b"NATS/1.0")?;
    std::str::from_utf8(rest).ok()?.split_ascii_whitespace().next()?.parse().ok()
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// Splits a control line into the operation name and the rest (leading blanks removed).
fn split_op(line: &[u8]) -> (&[u8], &[u8]) {
    let line = trim_start(line);
    let end = line.iter().position(|b| *b == b' ' || *b == b'\t').unwrap_or(line.len());
    (&line[..end], trim_start(&line[end..]))
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &bytes[skip..]
}

/// Why a subject is refused: NATS separates protocol fields with whitespace, so a subject containing
/// any would corrupt the stream (or worse, inject commands).
pub fn validate_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("empty subject".into());
    }
    if subject.len() > SERVER_MAX_CONTROL_LINE {
        return Err(format!("subject of {} bytes is longer than a control line may be", subject.len()));
    }
    // Subjects are ASCII in practice: printable ASCII passes without decoding a character.
    let printable_ascii = subject.bytes().all(|b| b.is_ascii_graphic());
    if !printable_ascii && subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let shown: String = subject.chars().take(100).collect();
        return Err(format!("subject {shown:?} contains whitespace or control characters"));
    }
    Ok(())
}

/// nats-server's default `max_control_line` (it is not announced in INFO): a longer `PUB` line makes
/// the server drop the connection ("maximum control line exceeded").
pub const SERVER_MAX_CONTROL_LINE: usize = 4096;

/// The length of the `PUB` control line [`encode_pub`] writes, CRLF included.
pub fn pub_line_len(subject: &str, reply: Option<&str>, payload_len: usize) -> usize {
    let reply = reply.map_or(0, |r| r.len() + 1);
    "PUB ".len() + subject.len() + reply + 1 + payload_len.to_string().len() + 2
}

/// The options we announce in CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectInfo<'a> {
    /// Client name shown by the server's monitoring (`connz`).
    pub name: &'a str,
    /// Whether this connection runs over TLS.
    pub tls_required: bool,
    /// User from the URL's userinfo, percent-decoded.
    pub user: Option<&'a str>,
    /// Password from the URL's userinfo, percent-decoded.
    pub pass: Option<&'a str>,
}

/// Encodes `CONNECT {json}\r\n`. verbose is off (no +OK per message, lower latency), echo on (the
/// server default; we never subscribe to what we publish anyway). Headers and `no_responders` are
/// on, so a request published with a NATS reply subject to a subject nobody subscribes to is
/// answered at once with a 503 status (the agent never sets one, so it never gets one).
pub fn encode_connect(info: &ConnectInfo<'_>) -> Vec<u8> {
    let mut obj = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": info.tls_required,
        "name": info.name,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": true,
        "headers": true,
        "no_responders": true,
    });
    if let Some(map) = obj.as_object_mut() {
        if let Some(user) = info.user {
            map.insert("user".into(), user.into());
        }
        if let Some(pass) = info.pass {
            map.insert("pass".into(), pass.into());
        }
    }
    let mut out = b"CONNECT ".to_vec();
    out.extend_from_slice(obj.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Encodes `SUB <subject> <sid>\r\n`.
pub fn encode_sub(subject: &str, sid: u64) -> Vec<u8> {
    format!("SUB {subject} {sid}\r\n").into_bytes()
}

/// Encodes `UNSUB <sid>\r\n`: the server stops delivering on that subscription once it has read it.
pub fn encode_unsub(sid: u64) -> Vec<u8> {
    format!("UNSUB {sid}\r\n").into_bytes()
}

/// Encodes `PUB <subject> [reply] <#bytes>\r\n<payload>\r\n` as one buffer so it goes out in one
/// write.
pub fn encode_pub(subject: &str, reply: Option<&str>, payload: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(pub_line_len(subject, reply, payload.len()) + payload.len() + 2);
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    if let Some(reply) = reply {
        out.push(b' ');
        out.extend_from_slice(reply.as_bytes());
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, " {}\r\n", payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

/// `PING\r\n`.
pub const PING: &[u8] = b"PING\r\n";
/// `PONG\r\n`.
pub const PONG: &[u8] = b"PONG\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut Parser) -> Vec<ServerOp> {
        let mut out = Vec::new();
        while let Some(op) = p.next_op().unwrap() {
            out.push(op);
        }
        out
    }

    #[test]
    fn msg_without_reply() {
        let mut p = Parser::new();
        p.push(b"MSG agent.x 1 5\r\nhello\r\n");
        assert_eq!(
            all(&mut p),
            vec![ServerOp::Msg {
                subject: "agent.x".into(),
                sid: 1,
                reply: None,
                payload: b"hello".to_vec(),
                status: None,
            }]
        );
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn msg_with_reply_and_binary_payload() {
        let mut p = Parser::new();
        p.push(b"msg a.b 22 _INBOX.1 4\r\n\r\n\r\n\r\n");
        assert_eq!(
            all(&mut p),
            vec![ServerOp::Msg {
                subject: "a.b".into(),
                sid: 22,
                reply: Some("_INBOX.1".into()),
                payload: b"\r\n\r\n".to_vec(),
                status: None,
            }]
        );
    }

    #[test]
    fn hmsg_carries_its_status_and_body_without_headers() {
        let mut p = Parser::new();
        p.push(b"HMSG _INBOX.a 4 16 16\r\nNATS/1.0 503\r\n\r\n\r\n");
        p.push(b"HMSG s 1 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
        assert_eq!(
            all(&mut p),
            vec![
                ServerOp::Msg {
                    subject: "_INBOX.a".into(),
                    sid: 4,
                    reply: None,
                    payload: vec![],
                    status: Some(503)
                },
                ServerOp::Msg {
                    subject: "s".into(),
                    sid: 1,
                    reply: Some("r".into()),
                    payload: b"hi".to_vec(),
                    status: None
                },
            ]
        );
        let mut bad = Parser::new();
        bad.push(b"HMSG s 1 9 4\r\nabcd\r\n");
        assert!(bad.next_op().is_err(), "header longer than the message");
    }

    #[test]
    fn msg_split_at_every_byte() {
        let wire = b"PING\r\nMSG s 3 r 10\r\n0123456789\r\nMSG s 3 0\r\n\r\nPONG\r\n";
        for cut in 0..wire.len() {
            let mut p = Parser::new();
            let mut ops = Vec::new();
            p.push(&wire[..cut]);
            ops.extend(all(&mut p));
            p.push(&wire[cut..]);
            ops.extend(all(&mut p));
            assert_eq!(ops.len(), 4, "cut at {cut}");
            assert_eq!(ops[0], ServerOp::Ping);
            assert!(matches!(&ops[1], ServerOp::Msg { payload, reply: Some(r), .. }
                if payload == b"0123456789" && r == "r"));
            assert!(matches!(&ops[2], ServerOp::Msg { payload, reply: None, .. } if payload.is_empty()));
            assert_eq!(ops[3], ServerOp::Pong);
        }
    }

    #[test]
    fn byte_by_byte() {
        let wire = b"INFO {\"max_payload\":1024}\r\nMSG s 1 3\r\nabc\r\n";
        let mut p = Parser::new();
        let mut ops = Vec::new();
        for b in wire {
            p.push(&[*b]);
            ops.extend(all(&mut p));
        }
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn ping_pong_ok_err() {
        let mut p = Parser::new();
        p.push(b"PING\r\nPONG\r\n+OK\r\n-ERR 'Permissions Violation for Publish to \"x\"'\r\n");
        assert_eq!(
            all(&mut p),
            vec![
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Permissions Violation for Publish to \"x\"".into())
            ]
        );
    }

    #[test]
    fn info() {
        let mut p = Parser::new();
        p.push(br#"INFO {"server_id":"N1","version":"2.9.10","max_payload":1048576,"tls_required":true,"extra":[1,2]}"#);
        p.push(b"\r\n");
        let ops = all(&mut p);
        assert_eq!(
            ops,
            vec![ServerOp::Info(ServerInfo {
                server_id: "N1".into(),
                version: "2.9.10".into(),
                max_payload: Some(1048576),
                tls_required: true,
                tls_available: false,
                auth_required: false,
            })]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"FOO\r\n"[..],
            b"MSG a\r\n",
            b"MSG a b 3\r\nabc\r\n",
            b"MSG a 1 x\r\n",
            b"MSG a 1 -1\r\n",
            b"MSG a 1 99999999999999999999999\r\n",
            b"MSG a 1 3\r\nabcde\r\n",
            b"INFO {not json\r\n",
            b"MSG \xff 1 3\r\nabc\r\n",
        ] {
            let mut p = Parser::new();
            p.push(bad);
            assert!(p.next_op().is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut p = Parser::new();
        p.push(&vec![b'x'; MAX_CONTROL_LINE + 1]);
        assert!(p.next_op().is_err());
    }

    #[test]
    fn empty_line_is_an_error() {
        let mut p = Parser::new();
        p.push(b"\r\n");
        assert!(p.next_op().is_err());
    }

    #[test]
    fn encoders() {
        assert_eq!(encode_pub("a.b", None, b"xy"), b"PUB a.b 2\r\nxy\r\n");
        assert_eq!(encode_pub("a.b", Some("r.1"), b""), b"PUB a.b r.1 0\r\n\r\n");
        assert_eq!(encode_sub("agent.1", 3), b"SUB agent.1 3\r\n");
        let c = encode_connect(&ConnectInfo {
            name: "n",
            tls_required: true,
            user: Some("u"),
            pass: Some("p w"),
        });
        let text = String::from_utf8(c).unwrap();
        assert!(text.starts_with("CONNECT {") && text.ends_with("}\r\n"));
        let v: serde_json::Value = serde_json::from_str(&text[8..text.len() - 2]).unwrap();
        assert_eq!(v["user"], "u");
        assert_eq!(v["pass"], "p w");
        assert_eq!(v["tls_required"], true);
        assert_eq!(v["verbose"], false);
        assert_eq!(v["lang"], "rust");
        let c = encode_connect(&ConnectInfo { name: "n", tls_required: false, user: None, pass: None });
        assert!(!String::from_utf8(c).unwrap().contains("user"));
    }

    #[test]
    fn subjects() {
        assert!(validate_subject("hm.agent.heartbeat.1").is_ok());
        assert!(validate_subject("").is_err());
        assert!(validate_subject("a b").is_err());
        assert!(validate_subject("a\tb").is_err());
        assert!(validate_subject("a\r\nPUB x 1").is_err());
        assert!(validate_subject(&"a".repeat(SERVER_MAX_CONTROL_LINE + 1)).is_err());
        assert!(validate_subject("agent.\u{e9}t\u{e9}").is_ok(), "non-ASCII letters are fine");
        assert!(validate_subject("a\u{2028}b").is_err() && validate_subject("a\u{a0}b").is_err());
        let line = encode_pub("sub", Some("rep"), b"12345");
        assert_eq!(pub_line_len("sub", Some("rep"), 5), line.len() - 5 - 2);
    }
}
