//! The small slice of HTTP/1.1 the HTTPS bus needs: request heads, body framing, chunked decoding and
//! response heads.
//!
//! Why hand-rolled: the design card allows no HTTP server crate and no async runtime, and bosh-cli uses a
//! tiny subset of HTTP (POST, PUT, GET with Content-Length or chunked bodies). Everything here is pure
//! over `BufRead`/`Write`, so the framing rules are unit-tested without sockets; timeouts and TLS live in
//! `https.rs`. Every input is untrusted: sizes are capped and malformed framing is an error, never a panic.

use std::io::{self, BufRead, Read, Write};

/// Cap on the request line plus headers; large enough for any real client, small enough to bound memory.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Cap on the number of request headers, bounding the parser's fixed header table.
pub const MAX_HEADERS: usize = 64;
/// Cap on one chunk-size line or trailer line, so a client cannot stream an endless line.
const MAX_LINE_BYTES: usize = 4 * 1024;
/// Cap on all trailer bytes of a chunked body; trailers are read and discarded.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// A parsed request head, owned so the connection buffer can be reused for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request method as sent (methods are case-sensitive).
    pub method: String,
    /// Request target as sent: origin form (`/agent?x`) or absolute form.
    pub target: String,
    /// The `x` of `HTTP/1.x`; decides the keep-alive default.
    pub minor_version: u8,
    /// Headers in order; names keep their case, values stay bytes because they need not be UTF-8.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// How the request body is delimited, decided once from the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes follow (no framing header means zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a request head cannot be served; each maps to the status that tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Head larger than [`MAX_HEAD_BYTES`] or more than [`MAX_HEADERS`] headers: 431.
    TooLarge,
    /// Syntax or framing the server refuses to guess about: 400.
    Malformed(&'static str),
}

impl HeadError {
    /// The HTTP status to answer with before closing the connection.
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed(_) => 400,
        }
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means "need more bytes"; `Ok(Some((head, n)))` means the head ends at byte `n` and the
/// body (or the next request) starts there. Returns [`HeadError::TooLarge`] once `buf` outgrows the cap
/// without a complete head, so callers can feed it at most `MAX_HEAD_BYTES + 1` bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut table = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut table);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => {
            let head = Head {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                minor_version: req.version.unwrap_or(1),
                headers: req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect(),
            };
            Ok(Some((head, n)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed("unparsable request head")),
    }
}

impl Head {
    /// Values of every header called `name` (case-insensitive), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The path without query string; an absolute-form target (`https://host/agent`) is reduced to its
    /// path so routing sees the same thing either way.
    pub fn path(&self) -> &str {
        let mut target = self.target.as_str();
        if let Some(rest) = target.strip_prefix("https://").or_else(|| target.strip_prefix("http://")) {
            target = rest.find('/').map_or("/", |i| &rest[i..]);
        }
        target.split(['?', '#']).next().unwrap_or_default()
    }

    /// Decides the body framing, refusing the ambiguous cases request smuggling relies on: both
    /// `Content-Length` and `Transfer-Encoding`, conflicting lengths, codings other than `chunked`.
    pub fn framing(&self) -> Result<Framing, HeadError> {
        let te: Vec<String> = tokens(self.values("transfer-encoding"));
        let has_cl = self.header("content-length").is_some();
        if self.header("transfer-encoding").is_some() {
            if has_cl {
                return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding"));
            }
            if self.minor_version == 0 {
                return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
            }
            return match te.as_slice() {
                [only] if only == "chunked" => Ok(Framing::Chunked),
                _ => Err(HeadError::Malformed("unsupported Transfer-Encoding")),
            };
        }
        let mut length = None;
        for value in self.values("content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_decimal(trim(part)).ok_or(HeadError::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("conflicting Content-Length"));
                }
                length = Some(n);
            }
        }
        Ok(Framing::Length(length.unwrap_or(0)))
    }

    /// Whether the connection may carry another request: HTTP/1.1 unless `Connection: close`; HTTP/1.0
    /// never (the server does not do 1.0 keep-alive).
    pub fn keep_alive(&self) -> bool {
        self.minor_version >= 1 && !tokens(self.values("connection")).iter().any(|t| t == "close")
    }

    /// Whether the client waits for `100 Continue` before sending the body.
    pub fn expects_continue(&self) -> bool {
        self.minor_version >= 1
            && self.values("expect").any(|v| trim(v).eq_ignore_ascii_case(b"100-continue"))
    }
}

/// Lower-cased, trimmed, non-empty comma-separated tokens of all given header values.
fn tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim)
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect()
}

/// Strips HTTP optional whitespace (spaces and tabs) from both ends.
fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a non-empty run of ASCII digits into a u64, refusing signs, spaces and overflow.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let digit = (b as char).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Parses a chunk-size line (`1a2b;ext=1`), refusing anything that is not hex or would overflow.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let size = trim(line.split(|&b| b == b';').next().unwrap_or_default());
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    size.iter().try_fold(0u64, |acc, &b| {
        let digit = (b as char).to_digit(16)?;
        acc.checked_mul(16)?.checked_add(u64::from(digit))
    })
}

/// Where a body reader stands; chunked bodies walk size line → data → CRLF → … → trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Done,
    Failed,
}

/// Decodes one request body from the connection's buffered reader.
///
/// It does not own the reader so the same connection can be written to (100 Continue, the response)
/// between reads; [`Body::reader`] pairs it with the stream when bytes are wanted. It never reads past
/// the end of its body, which keeps the connection usable for the next request.
#[derive(Debug)]
pub struct Body {
    state: State,
}

impl Body {
    /// A body reader for the given framing.
    pub fn new(framing: Framing) -> Body {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
        };
        Body { state }
    }

    /// True once the whole body, including a chunked body's trailers, has been consumed; only then may
    /// the connection be reused.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still to come when the length is known (Content-Length framing); lets the server decide
    /// that draining is pointless without reading anything.
    pub fn known_remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// A `Read` view of the body over `inner`.
    pub fn reader<'a, R: BufRead>(&'a mut self, inner: &'a mut R) -> BodyReader<'a, R> {
        BodyReader { body: self, inner }
    }

    /// Reads body bytes into `buf`; `Ok(0)` means the body is complete. An early end of the stream is
    /// `UnexpectedEof` and bad chunk framing is `InvalidData`. Any error (timeouts included, since a
    /// timeout can strike mid chunk line) leaves the body failed for good, so the connection must close.
    pub fn read_from<R: BufRead>(&mut self, inner: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.step(inner, buf);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn step<R: BufRead>(&mut self, inner: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Failed => return Err(invalid("body already failed")),
                State::Length(left) => {
                    let n = read_some(inner, buf, left)?;
                    self.state = match left - n as u64 {
                        0 => State::Done,
                        rest => State::Length(rest),
                    };
                    return Ok(n);
                }
                State::ChunkData(left) => {
                    let n = read_some(inner, buf, left)?;
                    self.state = match left - n as u64 {
                        0 => State::ChunkEnd,
                        rest => State::ChunkData(rest),
                    };
                    return Ok(n);
                }
                State::ChunkSize => {
                    let line = read_line(inner, MAX_LINE_BYTES)?;
                    self.state = match parse_chunk_size(&line) {
                        Some(0) => State::Trailers,
                        Some(n) => State::ChunkData(n),
                        None => return Err(invalid("bad chunk size line")),
                    };
                }
                State::ChunkEnd => {
                    if !read_line(inner, MAX_LINE_BYTES)?.is_empty() {
                        return Err(invalid("chunk data not followed by CRLF"));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let mut total = 0;
                    loop {
                        let line = read_line(inner, MAX_LINE_BYTES)?;
                        if line.is_empty() {
                            break;
                        }
                        total += line.len();
                        if total > MAX_TRAILER_BYTES {
                            return Err(invalid("chunked trailers too large"));
                        }
                    }
                    self.state = State::Done;
                }
            }
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Copies at most `limit` already-buffered bytes (refilling once if empty); EOF is an error because the
/// framing promised more.
fn read_some<R: BufRead>(inner: &mut R, buf: &mut [u8], limit: u64) -> io::Result<usize> {
    let avail = inner.fill_buf()?;
    if avail.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "request body ended early"));
    }
    let n = avail.len().min(buf.len()).min(usize::try_from(limit).unwrap_or(usize::MAX));
    buf[..n].copy_from_slice(&avail[..n]);
    inner.consume(n);
    Ok(n)
}

/// Reads one line of at most `limit` bytes and returns it without its `\n` or `\r\n`.
fn read_line<R: BufRead>(inner: &mut R, limit: usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let avail = inner.fill_buf()?;
        if avail.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request body ended inside a chunk line",
            ));
        }
        let (take, found) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if line.len() + take > limit + 2 {
            return Err(invalid("chunk line too long"));
        }
        line.extend_from_slice(&avail[..take]);
        inner.consume(take);
        if found {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(line);
        }
    }
}

/// `Read` adaptor pairing a [`Body`] with the stream it comes from.
pub struct BodyReader<'a, R> {
    body: &'a mut Body,
    inner: &'a mut R,
}

impl<R: BufRead> Read for BodyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read_from(self.inner, buf)
    }
}

/// The reason phrase for the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a complete response head in one call (so it goes out as one TLS record): status line, the
/// given headers, `Content-Length`, and `Connection: close` when the server will close afterwards.
pub fn write_head<W: Write>(
    w: &mut W,
    status: u16,
    headers: &[(&str, &str)],
    content_length: u64,
    close: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {content_length}\r\n"));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes()) {
            Ok(Some((h, n))) => {
                assert_eq!(n, raw.len());
                h
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_a_complete_head_and_reports_its_length() {
        let raw = b"POST /agent?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let (h, n) = parse_head(raw).unwrap().unwrap();
        assert_eq!(&raw[n..], b"abc");
        assert_eq!(h.method, "POST");
        assert_eq!(h.path(), "/agent");
        assert_eq!(h.header("content-length"), Some(&b"3"[..]));
        assert_eq!(h.framing(), Ok(Framing::Length(3)));
        assert!(h.keep_alive());
    }

    #[test]
    fn partial_head_needs_more_until_the_cap() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(parse_head(&big), Err(HeadError::TooLarge));
    }

    #[test]
    fn too_many_headers_and_garbage_are_refused() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            raw.push_str(&format!("X-{i}: y\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(parse_head(raw.as_bytes()), Err(HeadError::TooLarge));
        assert_eq!(HeadError::TooLarge.status(), 431);
        let err = parse_head(b"\x16\x03\x01garbage\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn framing_refuses_ambiguity() {
        let both = head("PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(both.framing().map_err(HeadError::status), Err(400));
        let conflict = head("PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(conflict.framing().is_err());
        let same = head("PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(same.framing(), Ok(Framing::Length(2)));
        let signed = head("PUT / HTTP/1.1\r\nContent-Length: +2\r\n\r\n");
        assert!(signed.framing().is_err());
        let huge = head("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert!(huge.framing().is_err());
        let gzip = head("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(gzip.framing().is_err());
        let chunked = head("PUT / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n");
        assert_eq!(chunked.framing(), Ok(Framing::Chunked));
        let old = head("PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(old.framing().is_err());
        let none = head("GET / HTTP/1.1\r\n\r\n");
        assert_eq!(none.framing(), Ok(Framing::Length(0)));
    }

    #[test]
    fn connection_and_expect_semantics() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(head("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expects_continue());
        assert!(!head("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expects_continue());
    }

    #[test]
    fn path_of_absolute_form_and_query() {
        assert_eq!(head("GET https://h:1/blobs/a/b?q HTTP/1.1\r\n\r\n").path(), "/blobs/a/b");
        assert_eq!(head("GET http://h HTTP/1.1\r\n\r\n").path(), "/");
    }

    fn decode(framing: Framing, wire: &[u8]) -> (io::Result<Vec<u8>>, Vec<u8>) {
        let mut cursor = Cursor::new(wire.to_vec());
        let mut body = Body::new(framing);
        let mut out = Vec::new();
        let result = body.reader(&mut cursor).read_to_end(&mut out).map(|_| out);
        if result.is_ok() {
            assert!(body.is_done());
        }
        let pos = cursor.position() as usize;
        (result, wire[pos..].to_vec())
    }

    #[test]
    fn length_body_stops_at_its_end() {
        let (body, rest) = decode(Framing::Length(3), b"abcGET");
        assert_eq!(body.unwrap(), b"abc");
        assert_eq!(rest, b"GET");
        let (body, _) = decode(Framing::Length(5), b"abc");
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn chunked_body_decodes_with_extensions_and_trailers() {
        let wire = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (body, rest) = decode(Framing::Chunked, wire);
        assert_eq!(body.unwrap(), b"hello world");
        assert_eq!(rest, b"NEXT");
        let (body, _) = decode(Framing::Chunked, b"A\nabcdefghij\n0\n\n");
        assert_eq!(body.unwrap(), b"abcdefghij");
    }

    #[test]
    fn chunked_body_refuses_bad_framing() {
        for wire in [
            &b"z\r\nabc\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
        ] {
            let (body, _) = decode(Framing::Chunked, wire);
            assert_eq!(body.unwrap_err().kind(), io::ErrorKind::InvalidData, "{wire:?}");
        }
        let (body, _) = decode(Framing::Chunked, b"5\r\nab");
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut long = b"1".to_vec();
        long.resize(MAX_LINE_BYTES + 10, b'0');
        let (body, _) = decode(Framing::Chunked, &long);
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn response_head_is_well_formed() {
        let mut out = Vec::new();
        write_head(&mut out, 401, &[("WWW-Authenticate", "Basic realm=\"\"")], 0, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"\"\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
}
