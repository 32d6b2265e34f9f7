//! SSH login and logout alerts (the Ruby agent's syslog monitor): the stemcell's rsyslog forwards the `auth`
//! and `authpriv` facilities over TCP (`@@127.0.0.1:33331`) to the agent, which turns each sshd
//! "Accepted publickey for" line into an `SSH Login` alert and each "disconnected by user" line into
//! an `SSH Logout` alert for the health monitor. Operators rely on these to audit `bosh ssh` sessions.
//!
//! Blocking, one thread per connection (rsyslog keeps one long-lived connection), at most
//! [`MAX_CONNECTIONS`] at once. Lines are newline-framed and bounded to [`MAX_LINE`] bytes; a longer
//! line is skipped up to its newline. Everything received is outside input: parsing never fails, a
//! line that is not an SSH event is simply ignored.

use super::tcp_service::TcpService;
use super::Alert;
use std::io::{self, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The port the stemcell's rsyslog configuration forwards to.
pub const DEFAULT_PORT: u16 = 33331;
/// Longest syslog line handled (RFC 5424 transports must accept 2048; rsyslog's default is 8 KiB).
pub const MAX_LINE: usize = 8 * 1024;
/// Connections served at once; more are closed immediately.
pub const MAX_CONNECTIONS: usize = 16;
/// How often a quiet connection checks whether the server is stopping.
const POLL: Duration = Duration::from_millis(500);

/// Receives every alert parsed from syslog (publishing it is the caller's business).
pub type Sink = dyn Fn(Alert) + Send + Sync;

struct Shared {
    sink: Box<Sink>,
}

/// A running syslog listener; dropping it stops accepting, closes open connections and waits (at
/// most 2 s) for them to end.
pub struct SyslogServer {
    service: TcpService,
}

/// Listens on `listen` (`127.0.0.1:33331` in production, port 0 in tests) and passes each SSH
/// login/logout alert to `sink`, on the connection's thread.
pub fn start(listen: &str, sink: Box<Sink>) -> io::Result<SyslogServer> {
    let shared = Arc::new(Shared { sink });
    let handler = Box::new(move |stream: TcpStream, stopping: &AtomicBool| serve(stream, &shared, stopping));
    Ok(SyslogServer { service: TcpService::start("syslog", listen, MAX_CONNECTIONS, b"", handler)? })
}

impl SyslogServer {
    /// The bound address (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }
}

fn serve(mut stream: TcpStream, shared: &Shared, stopping: &AtomicBool) {
    if stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut skipping = false;
    let mut chunk = [0u8; 4096];
    loop {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                if !skipping {
                    handle(&line, shared);
                }
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                log::debug!("syslog: connection ended: {e}");
                return;
            }
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                if !skipping {
                    handle(&line, shared);
                }
                line.clear();
                skipping = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                skipping = true;
            }
        }
    }
}

fn handle(raw: &[u8], shared: &Shared) {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if raw.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(raw);
    if let Some(alert) = alert_from_line(&text, now()) {
        log::info!("syslog: {} alert", alert.title);
        (shared.sink)(alert);
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The alert for one syslog line, or `None` when it is not an SSH login or logout. Severity 4
/// (warning), a fresh id (the health monitor drops repeated ids), the message content as summary.
pub fn alert_from_line(line: &str, now: i64) -> Option<Alert> {
    let content = content(line);
    let title = if content.ends_with("disconnected by user") {
        "SSH Logout"
    } else if content.contains("Accepted publickey for") {
        "SSH Login"
    } else {
        return None;
    };
    Some(Alert {
        id: crate::ids::uuid_v4(),
        severity: 4,
        title: title.to_string(),
        summary: content.to_string(),
        created_at: now,
    })
}

/// The message content of a BSD-syslog line, with the original agent's rules: strip `<PRI>`
/// (0..191, no leading zero; without a valid one the whole line is the content), then a
/// `Mmm dd hh:mm:ss ` timestamp and the hostname token, then a leading tag made only of word
/// characters followed by `": "` or `" "`. `sshd[22636]: ...` keeps its tag, as it always did.
pub fn content(line: &str) -> &str {
    let Some(rest) = strip_pri(line) else { return line };
    let rest = match strip_timestamp(rest) {
        Some(after) => after.split_once(' ').map_or("", |(_host, msg)| msg),
        None => rest,
    };
    strip_tag(rest)
}

fn strip_pri(line: &str) -> Option<&str> {
    let (digits, rest) = line.strip_prefix('<')?.split_once('>')?;
    let valid = (1..=3).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && digits.parse::<u16>().is_ok_and(|p| p <= 191);
    valid.then_some(rest)
}

fn strip_timestamp(s: &str) -> Option<&str> {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let b = s.as_bytes();
    if b.len() < 16 || !s.is_char_boundary(16) || !MONTHS.contains(&&s[..3]) {
        return None;
    }
    let digit = |i: usize| b[i].is_ascii_digit();
    let day_ok = (b[4] == b' ' || digit(4)) && digit(5);
    let time_ok = digit(7)
        && digit(8)
        && b[9] == b':'
        && digit(10)
        && digit(11)
        && b[12] == b':'
        && digit(13)
        && digit(14);
    (b[3] == b' ' && day_ok && b[6] == b' ' && time_ok && b[15] == b' ').then(|| &s[16..])
}

fn strip_tag(s: &str) -> &str {
    let word = s.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    if word == 0 {
        return s;
    }
    let after = &s[word..];
    after.strip_prefix(": ").or_else(|| after.strip_prefix(' ')).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: &str = "<38>Jan  5 10:00:00 vm-1 sshd[22636]: Accepted publickey for bosh_8ckfjuxt7 from 10.10.0.7 port 40312 ssh2";

    #[test]
    fn extracts_content_like_the_original_agent() {
        assert_eq!(
            content(LOGIN),
            "sshd[22636]: Accepted publickey for bosh_8ckfjuxt7 from 10.10.0.7 port 40312 ssh2"
        );
        assert_eq!(content("<86>Dec 25 23:59:59 host sshd: hello world"), "hello world");
        assert_eq!(content("<86>Dec 25 23:59:59 host login hello"), "hello");
        assert_eq!(content("no pri at all"), "no pri at all");
        assert_eq!(content("<192>Jan  5 10:00:00 h x: y"), "<192>Jan  5 10:00:00 h x: y");
        assert_eq!(content("<038>Jan  5 10:00:00 h x: y"), "<038>Jan  5 10:00:00 h x: y");
        assert_eq!(content("<0>tag: msg"), "msg");
        assert_eq!(content("<13>"), "");
        assert_eq!(content("<13>Jan  5 10:00:00"), " 5 10:00:00", "no timestamp: the tag rule applies");
        assert_eq!(content("<13>Jan  5 10:00:00 é"), "");
    }

    #[test]
    fn titles_logins_and_logouts_and_ignores_the_rest() {
        let a = alert_from_line(LOGIN, 7).unwrap();
        assert_eq!((a.title.as_str(), a.severity, a.created_at), ("SSH Login", 4, 7));
        assert!(a.summary.starts_with("sshd[22636]: Accepted"));
        let out = "<38>Jan  5 10:05:00 vm-1 sshd[22636]: Received disconnect from 10.10.0.7 port 40312:11: disconnected by user";
        assert_eq!(alert_from_line(out, 0).unwrap().title, "SSH Logout");
        assert!(alert_from_line("<38>Jan  5 10:05:00 vm-1 sshd[1]: Failed password for root", 0).is_none());
        assert!(alert_from_line("", 0).is_none());
        assert!(alert_from_line("\u{0}\u{ff}<<>>", 0).is_none());
        assert_ne!(alert_from_line(LOGIN, 0).unwrap().id, a.id);
    }
}
