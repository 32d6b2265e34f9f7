//! The agent's SMTP server: just enough of RFC 5321 for monit to deliver its alert mails to
//! `127.0.0.1:<port>`.
//!
//! Mail is accepted without authentication, as the Go agent accepts it: the `alerts.monitrc` the
//! official stemcells ship names no credentials, and it stays valid while monit outlives an agent
//! restart (a per-boot password would not). The listener is on loopback only. `AUTH PLAIN` is still
//! answered (any well-formed credentials), so a monit configured with a username keeps delivering.
//!
//! Blocking and thread-per-connection, because monit opens one short session per batch of events;
//! connections are capped and idle ones dropped after 10 s, so a stuck or hostile local client costs
//! a bounded number of threads. Nothing a client sends can panic the server: bad input gets a `500`
//! (or the connection closed), never a crash.

use super::tcp_service::TcpService;
use base64::Engine as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name in the greeting and EHLO answer, as the health monitor's operators know it.
const NAME: &str = "BOSH Agent SMTP Server";
/// Largest message accepted (monit's mails are a few hundred bytes).
const MAX_MESSAGE: usize = 1 << 20;
/// Longest command line (RFC 5321 allows 512; some slack for AUTH arguments).
const MAX_COMMAND: usize = 4096;
/// Sessions served at once; more are turned away with `421`.
const MAX_CONNECTIONS: usize = 16;
/// Idle time after which a session is dropped.
const IDLE: Duration = Duration::from_secs(10);
/// Bad commands tolerated per session before it is closed.
const MAX_ERRORS: u32 = 20;

/// Where to listen.
#[derive(Clone, Debug)]
pub struct SmtpOptions {
    /// `127.0.0.1:2825` in production; port 0 picks a free port (tests).
    pub listen: String,
}

type Sink = dyn Fn(String) + Send + Sync;

/// What every session needs: where accepted mail goes.
struct Shared {
    sink: Box<Sink>,
}

/// A running SMTP server; dropping it stops accepting, closes open sessions and waits (at most 2 s)
/// for them to end.
pub struct SmtpServer {
    service: TcpService,
}

impl SmtpServer {
    /// Listens on `opts.listen` and serves each connection on its own thread; the text of every
    /// accepted message (lines joined with `\n`, dot-unstuffed) is passed to `sink`, which parses and
    /// publishes it. `sink` runs on the session's thread after monit has been told `250`.
    pub fn start(opts: SmtpOptions, sink: Box<dyn Fn(String) + Send + Sync>) -> io::Result<SmtpServer> {
        let listen = opts.listen.clone();
        let shared = Arc::new(Shared { sink });
        let handler = Box::new(move |stream: TcpStream, _: &AtomicBool| match serve(&stream, &shared) {
            Ok(()) => linger_close(&stream),
            Err(e) => log::debug!("smtp: session ended: {e}"),
        });
        let service =
            TcpService::start("smtp", &listen, MAX_CONNECTIONS, b"421 Too many connections\r\n", handler)?;
        Ok(SmtpServer { service })
    }

    /// The bound address (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }
}

/// One line from the client.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one line of at most `max` bytes (without its CRLF or LF).
fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let n = r.take(max as u64 + 2).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(if buf.len() > max { Line::TooLong } else { Line::Text(buf) })
}

/// Session state between commands.
#[derive(Default)]
struct Session {
    /// Whether `AUTH` succeeded (only to refuse a second one; mail needs none).
    authenticated: bool,
    sender: bool,
    recipients: usize,
    errors: u32,
}

/// What to do after a reply.
enum Next {
    Continue,
    Close,
}

fn serve(stream: &TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut out = stream;
    let mut input = BufReader::new(stream);
    let mut s = Session::default();
    reply(&mut out, &format!("220 {NAME}"))?;
    loop {
        let line = match read_line(&mut input, MAX_COMMAND)? {
            Line::Eof => return Ok(()),
            Line::TooLong => return reply(&mut out, "500 Line too long"),
            Line::Text(t) => String::from_utf8_lossy(&t).into_owned(),
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        let next = match verb.as_str() {
            "EHLO" => {
                s.sender = false;
                s.recipients = 0;
                reply(&mut out, &format!("250-{NAME}\r\n250-AUTH PLAIN\r\n250 SIZE {MAX_MESSAGE}"))?;
                Next::Continue
            }
            "HELO" => reply(&mut out, &format!("250 {NAME}")).map(|()| Next::Continue)?,
            "AUTH" => auth(&mut input, &mut out, &mut s, arg)?,
            "MAIL" if s.sender => reply(&mut out, "503 Sender already given").map(|()| Next::Continue)?,
            "MAIL" => {
                s.sender = true;
                reply(&mut out, "250 Ok").map(|()| Next::Continue)?
            }
            "RCPT" if !s.sender => reply(&mut out, "503 MAIL first").map(|()| Next::Continue)?,
            "RCPT" => {
                s.recipients += 1;
                reply(&mut out, "250 Ok").map(|()| Next::Continue)?
            }
            "DATA" if s.recipients == 0 => reply(&mut out, "503 RCPT first").map(|()| Next::Continue)?,
            "DATA" => data(&mut input, &mut out, &mut s, shared)?,
            "RSET" => {
                s.sender = false;
                s.recipients = 0;
                reply(&mut out, "250 Ok").map(|()| Next::Continue)?
            }
            "NOOP" => reply(&mut out, "250 Ok").map(|()| Next::Continue)?,
            "QUIT" => reply(&mut out, "221 Ok").map(|()| Next::Close)?,
            _ => {
                s.errors += 1;
                if s.errors >= MAX_ERRORS {
                    reply(&mut out, "421 Too many errors")?;
                    Next::Close
                } else {
                    reply(&mut out, "500 Unknown command")?;
                    Next::Continue
                }
            }
        };
        if let Next::Close = next {
            return Ok(());
        }
    }
}

fn reply(out: &mut impl Write, text: &str) -> io::Result<()> {
    // One write, so a close right after cannot split the reply from its line end.
    out.write_all(format!("{text}\r\n").as_bytes())?;
    out.flush()
}

/// Closes after a final reply without losing it: closing a socket with unread input makes the kernel
/// send a reset, which can discard the reply at the client. So half-close, then drain (bounded).
fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 8192];
    let mut reader = stream;
    while Instant::now() < deadline {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// `AUTH PLAIN <b64>`, or `AUTH PLAIN` then the credentials after a `334`: any well-formed
/// credentials are accepted, since mail needs none.
fn auth(input: &mut impl BufRead, out: &mut impl Write, s: &mut Session, arg: &str) -> io::Result<Next> {
    if s.authenticated {
        reply(out, "503 Already authenticated")?;
        return Ok(Next::Continue);
    }
    let (mechanism, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m, Some(i.trim().to_string())),
        None => (arg, None),
    };
    if !mechanism.eq_ignore_ascii_case("PLAIN") {
        reply(out, "504 Unrecognized authentication type")?;
        return Ok(Next::Continue);
    }
    let response = match initial {
        Some(r) => r,
        None => {
            reply(out, "334 ")?;
            match read_line(input, MAX_COMMAND)? {
                Line::Text(t) => String::from_utf8_lossy(&t).trim().to_string(),
                Line::TooLong => return reply(out, "500 Line too long").map(|()| Next::Close),
                Line::Eof => return Ok(Next::Close),
            }
        }
    };
    if response == "*" {
        reply(out, "501 Authentication cancelled")?;
    } else if plain_well_formed(&response) {
        s.authenticated = true;
        reply(out, "235 authentication ok")?;
    } else {
        reply(out, "535 invalid authentication")?;
    }
    Ok(Next::Continue)
}

/// Whether a SASL PLAIN response is `authzid NUL authcid NUL password` in base64, with a user.
fn plain_well_formed(b64: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else { return false };
    let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    parts.len() == 3 && !parts[1].is_empty()
}

/// `DATA`: lines up to a lone `.`, dot-unstuffed; at most [`MAX_MESSAGE`] bytes, else `552` and close.
fn data(
    input: &mut impl BufRead,
    out: &mut impl Write,
    s: &mut Session,
    shared: &Shared,
) -> io::Result<Next> {
    reply(out, "354 Send it")?;
    let mut lines: Vec<String> = Vec::new();
    let mut size = 0usize;
    loop {
        let line = match read_line(input, MAX_MESSAGE.saturating_sub(size))? {
            Line::Eof => return Ok(Next::Close),
            Line::TooLong => return reply(out, "552 Message too large").map(|()| Next::Close),
            Line::Text(t) => t,
        };
        if line == b"." {
            break;
        }
        size += line.len() + 2;
        if size > MAX_MESSAGE {
            return reply(out, "552 Message too large").map(|()| Next::Close);
        }
        let text = line.strip_prefix(b".").unwrap_or(&line);
        lines.push(String::from_utf8_lossy(text).into_owned());
    }
    s.sender = false;
    s.recipients = 0;
    reply(out, "250 Message accepted")?;
    let mail = lines.join("\n");
    if catch_unwind(AssertUnwindSafe(|| (shared.sink)(mail))).is_err() {
        log::error!("smtp: alert sink panicked; message dropped");
    }
    Ok(Next::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn plain_credentials() {
        assert!(plain_well_formed(&b64("\0vcap\0pw")));
        assert!(plain_well_formed(&b64("vcap\0vcap\0")));
        assert!(!plain_well_formed(&b64("\0\0pw")));
        assert!(!plain_well_formed(&b64("\0vcap\0pw\0")));
        assert!(!plain_well_formed(&b64("vcap:pw")));
        assert!(!plain_well_formed("%%%not base64"));
    }

    #[test]
    fn lines_are_bounded() {
        let mut r = io::Cursor::new(b"abc\r\nde\nxyzxyzxyz".to_vec());
        assert!(matches!(read_line(&mut r, 5).unwrap(), Line::Text(t) if t == b"abc"));
        assert!(matches!(read_line(&mut r, 5).unwrap(), Line::Text(t) if t == b"de"));
        assert!(matches!(read_line(&mut r, 5).unwrap(), Line::TooLong));
    }
}
