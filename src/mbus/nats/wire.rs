//! The byte pipe under the protocol: one TCP socket, optionally wrapped in rustls, split into a
//! shared sending half ([`Wire`]) and a receiving half owned by the connection thread ([`Reader`]).
//!
//! Why split: replies must leave as soon as the agent has them, so publishers write directly from
//! their own thread instead of queueing to the connection thread, while the connection thread sits in
//! a blocking `read`. The reader never holds a lock while blocked in the socket; it only takes the TLS
//! state lock to decrypt what arrived. Lock order is always `Wire::write` then the TLS state, so the
//! two halves cannot deadlock, and no lock is held while a publisher waits on a full socket buffer
//! except the send lock itself.

use super::protocol::Parser;
use crate::error::Context as _;
use crate::sync::lock;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

/// The sending half, shared by the connection thread (PONG, PING, SUB) and every publisher.
pub(crate) struct Wire {
    write: Mutex<TcpStream>,
    tls: Option<Arc<Mutex<ClientConnection>>>,
    ctl: TcpStream,
}

impl Wire {
    /// Sends `bytes` as one unit: concurrent senders never interleave within a frame.
    pub(crate) fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut tcp = lock(&self.write);
        match &self.tls {
            None => tcp.write_all(bytes),
            Some(tls) => {
                let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 64 + 64);
                {
                    let mut conn = lock(tls);
                    let mut rest = bytes;
                    loop {
                        while conn.wants_write() {
                            conn.write_tls(&mut out)?;
                        }
                        if rest.is_empty() {
                            break;
                        }
                        let n = conn.writer().write(rest)?;
                        if n == 0 && !conn.wants_write() {
                            return Err(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "TLS layer accepted no data",
                            ));
                        }
                        rest = &rest[n..];
                    }
                }
                tcp.write_all(&out)
            }
        }
    }

    /// Closes the socket in both directions, which wakes the reader out of its blocking `read`; how
    /// shutdown, reconfigure and a failed publish tell the connection thread to give up this socket.
    pub(crate) fn close(&self) {
        let _ = self.ctl.shutdown(Shutdown::Both);
    }
}

/// The receiving half, owned by the connection thread.
pub(crate) struct Reader {
    tcp: TcpStream,
    tls: Option<Arc<Mutex<ClientConnection>>>,
    raw: Vec<u8>,
    plain: Vec<u8>,
}

impl Reader {
    /// A reader over a plain socket (used for INFO before any TLS upgrade, and for nats:// without TLS).
    pub(crate) fn plain(tcp: TcpStream) -> Reader {
        Reader { tcp, tls: None, raw: vec![0; 16 * 1024], plain: vec![0; 16 * 1024] }
    }

    /// Reads whatever arrives next into `parser`. `Ok(false)` means the peer closed the connection.
    /// Read timeouts surface as `WouldBlock`/`TimedOut` errors (the caller's idle tick).
    pub(crate) fn fill(&mut self, parser: &mut Parser, wire: Option<&Wire>) -> io::Result<bool> {
        let Some(tls) = self.tls.clone() else {
            let n = self.tcp.read(&mut self.raw)?;
            parser.push(&self.raw[..n]);
            return Ok(n > 0);
        };
        loop {
            // Plaintext may already be decrypted (e.g. it arrived together with the handshake).
            {
                let mut conn = lock(&tls);
                let (got, eof) = drain_plaintext(&mut conn, parser, &mut self.plain)?;
                if got > 0 {
                    return Ok(true);
                }
                if eof {
                    return Ok(false);
                }
            }
            let n = self.tcp.read(&mut self.raw)?;
            if n == 0 {
                return Ok(false);
            }
            let (got, eof, wants_write) = {
                let mut conn = lock(&tls);
                let mut input = &self.raw[..n];
                let mut got = 0;
                let mut eof = false;
                while !input.is_empty() {
                    if conn.read_tls(&mut input)? == 0 {
                        break;
                    }
                    conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let (g, e) = drain_plaintext(&mut conn, parser, &mut self.plain)?;
                    got += g;
                    eof |= e;
                }
                (got, eof, conn.wants_write())
            };
            if wants_write {
                if let Some(wire) = wire {
                    wire.send(&[])?;
                }
            }
            if got > 0 {
                return Ok(true);
            }
            if eof {
                return Ok(false);
            }
        }
    }
}

/// Moves decrypted bytes into the parser: (bytes moved, peer sent close_notify).
fn drain_plaintext(
    conn: &mut ClientConnection,
    parser: &mut Parser,
    buf: &mut [u8],
) -> io::Result<(usize, bool)> {
    let mut got = 0;
    loop {
        match conn.reader().read(buf) {
            Ok(0) => return Ok((got, true)),
            Ok(n) => {
                parser.push(&buf[..n]);
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((got, false)),
            Err(e) => return Err(e),
        }
    }
}

/// Builds both halves over a plain socket.
pub(crate) fn plain_pair(tcp: TcpStream) -> io::Result<(Wire, Reader)> {
    let wire = Wire { write: Mutex::new(tcp.try_clone()?), tls: None, ctl: tcp.try_clone()? };
    Ok((wire, Reader::plain(tcp)))
}

/// Runs the TLS handshake on a blocking socket (its timeouts bound the wait), then builds both
/// halves sharing the TLS state.
pub(crate) fn tls_pair(
    mut tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<(Wire, Reader), String> {
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string()).context("invalid TLS server name")?,
    };
    let mut conn = ClientConnection::new(config, name).context("starting TLS")?;
    // Large publishes are encrypted in one go; the socket, not rustls, provides back-pressure.
    conn.set_buffer_limit(None);
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).context("TLS handshake")?;
    }
    // Push out anything still queued (e.g. the client Finished) before splitting.
    while conn.wants_write() {
        conn.write_tls(&mut tcp).context("TLS handshake")?;
    }
    let tls = Arc::new(Mutex::new(conn));
    let wire = Wire {
        write: Mutex::new(tcp.try_clone().context("cloning socket")?),
        tls: Some(tls.clone()),
        ctl: tcp.try_clone().context("cloning socket")?,
    };
    let mut reader = Reader::plain(tcp);
    reader.tls = Some(tls);
    Ok((wire, reader))
}
