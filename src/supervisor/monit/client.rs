//! The HTTP side of monit: its status document and its per-service actions, plus the `monit.user`
//! credentials both the agent and the stemcell's monitrc use.
//!
//! Two bounds: status reads feed `get_state` and heartbeats, which must answer within about 2 s even
//! when monit hangs, so they get one short overall deadline and no retry; actions may wait for a busy
//! monit and are retried by the caller.

use super::status::{latin1, Status};
use crate::error::Context as _;
use crate::http_client::{self, Body};
use crate::tls::Trust;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest status document read (monit's answer for a few hundred services is far smaller).
const MAX_STATUS_BYTES: u64 = 8 << 20;

/// Why a monit call failed; the caller's retry policy depends on which.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No answer: refused, reset or timed out. Monit may be (re)starting.
    Transport(String),
    /// 503: monit is busy with another action on that service.
    Busy(String),
    /// Any other answer; retrying will not help.
    Failed(String),
}

impl CallError {
    /// The message for the operator.
    pub(crate) fn into_message(self) -> String {
        match self {
            CallError::Transport(m) | CallError::Busy(m) | CallError::Failed(m) => m,
        }
    }
}

/// Talks to one monit daemon's HTTP interface.
pub(crate) struct Client {
    http: http_client::Client,
    status_timeout: Duration,
    action_timeout: Duration,
    base: String,
    auth: String,
    /// Monit 5.2x and later refuse a POST without a CSRF "double submit" token: the same value as a
    /// `securitytoken` cookie and form field. Any random value works.
    csrf: String,
}

impl Client {
    /// A client for `address` (`host:port`); status reads end within `status_timeout`, actions within
    /// `action_timeout`.
    pub(crate) fn new(
        address: &str,
        user: &str,
        password: &str,
        status_timeout: Duration,
        action_timeout: Duration,
    ) -> Client {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Client {
            // Monit answers a successful action with a 302 to the service's page; that answer is
            // the result. Connecting to loopback is instant or never.
            http: http_client::Client::new(Trust::Nobody)
                .max_redirects(0)
                .connect_timeout(Duration::from_secs(1)),
            status_timeout,
            action_timeout,
            base: format!("http://{address}"),
            auth: format!("Basic {creds}"),
            csrf: random_hex(16),
        }
    }

    /// The status document, bounded by the short status deadline.
    pub(crate) fn status(&self) -> Result<Status, CallError> {
        self.status_within(self.status_timeout)
    }

    /// The status document, bounded by the longer action deadline (for actions, which may wait).
    pub(crate) fn status_patiently(&self) -> Result<Status, CallError> {
        self.status_within(self.action_timeout)
    }

    fn status_within(&self, timeout: Duration) -> Result<Status, CallError> {
        let url = format!("{}/_status2?format=xml", self.base);
        let deadline = Some(Instant::now() + timeout);
        let mut resp = self
            .http
            .send("GET", &url, &[("Authorization", &self.auth)], Body::Empty, deadline)
            .map_err(|e| transport(&url, e))?;
        let body = resp.read_to_vec(MAX_STATUS_BYTES).map_err(|e| transport(&url, e))?;
        check(resp.status, &body)?;
        Status::parse(&latin1(&body)).map_err(CallError::Failed)
    }

    /// `POST /<service>` with `action=<action>` (start, stop, unmonitor, ...).
    pub(crate) fn action(&self, service: &str, action: &str) -> Result<(), CallError> {
        let url = format!("{}/{}", self.base, url_encode(service));
        let body = format!("action={}&securitytoken={}", url_encode(action), self.csrf);
        let cookie = format!("securitytoken={}", self.csrf);
        let headers = [
            ("Authorization", self.auth.as_str()),
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let deadline = Some(Instant::now() + self.action_timeout);
        let mut resp = self
            .http
            .send("POST", &url, &headers, Body::Bytes(body.as_bytes()), deadline)
            .map_err(|e| transport(&url, e))?;
        let body = resp.read_to_vec(64 << 10).unwrap_or_default();
        check(resp.status, &body)
    }
}

fn transport(url: &str, e: impl std::fmt::Display) -> CallError {
    CallError::Transport(format!("monit request {url}: {e}"))
}

/// Success is any 2xx or 3xx (monit redirects after an action).
fn check(code: u16, body: &[u8]) -> Result<(), CallError> {
    let text = || latin1(&body[..body.len().min(512)]).trim().to_string();
    match code {
        200..=399 => Ok(()),
        503 => Err(CallError::Busy(format!("Request failed with {code}: {}", text()))),
        _ => Err(CallError::Failed(format!("Request failed with {code}: {}", text()))),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (service names go into a path).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if SystemRandom::new().fill(&mut b).is_err() {
        // Only reachable if the kernel RNG fails; a UUID still carries the best entropy available.
        return crate::ids::uuid_v4().replace('-', "")[..(2 * n).min(32)].to_string();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads `<monit_dir>/monit.user` (`user:password`, first non-empty line), creating it as
/// `vcap:<16 random hex>` (mode 0600, directory 0700) when absent: the stemcell's monitrc points
/// `allow cleartext` at the same file, so whoever creates it first defines monit's credentials.
pub(crate) fn credentials(monit_dir: &Path) -> Result<(String, String), String> {
    let path = monit_dir.join("monit.user");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(monit_dir)
                .and_then(|()| fs::set_permissions(monit_dir, fs::Permissions::from_mode(0o700)))
                .with_context(|| format!("creating {}", monit_dir.display()))?;
            let text = format!("vcap:{}\n", random_hex(8));
            crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600)
                .with_context(|| format!("writing {}", path.display()))?;
            text
        }
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    match line.split_once(':') {
        Some((user, password)) if !user.trim().is_empty() => {
            Ok((user.trim().to_string(), password.trim().to_string()))
        }
        _ => Err(format!("{} does not hold user:password", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_credentials_once_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let monit_dir = dir.path().join("monit");
        let (user, password) = credentials(&monit_dir).unwrap();
        assert_eq!(user, "vcap");
        assert_eq!(password.len(), 16);
        assert!(password.chars().all(|c| c.is_ascii_hexdigit()));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&monit_dir), 0o700);
        assert_eq!(mode(&monit_dir.join("monit.user")), 0o600);
        assert_eq!(credentials(&monit_dir).unwrap(), (user, password), "must not be regenerated");
    }

    #[test]
    fn reads_existing_credentials_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("monit.user"), "\n vcap : s3cret \nother:x\n").unwrap();
        assert_eq!(credentials(dir.path()).unwrap(), ("vcap".into(), "s3cret".into()));
        fs::write(dir.path().join("monit.user"), "no colon here").unwrap();
        assert!(credentials(dir.path()).is_err());
    }

    #[test]
    fn encodes_service_names_for_the_path() {
        assert_eq!(url_encode("web-1_a.b~"), "web-1_a.b~");
        assert_eq!(url_encode("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn classifies_answers() {
        assert!(check(200, b"").is_ok());
        assert!(check(302, b"").is_ok());
        assert!(matches!(check(503, b"busy"), Err(CallError::Busy(_))));
        match check(404, b"There is no service") {
            Err(CallError::Failed(m)) => assert_eq!(m, "Request failed with 404: There is no service"),
            other => panic!("{other:?}"),
        }
    }
}
