//! Bus URLs: `nats://[user:pass@]host:port` and `https://user:pass@host:port`. Credentials travel in
//! the URL (the director's and bosh-cli's convention) and may be percent-encoded.

use crate::url::{percent_decode, redact, PartsError};

/// The parts of a bus URL the agent uses.
#[derive(Clone, PartialEq, Eq)]
pub struct MbusUrl {
    /// `nats`, `tls` or `https`.
    pub scheme: String,
    /// Percent-decoded user, empty when absent.
    pub user: String,
    /// Percent-decoded password, empty when absent.
    pub password: String,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    /// Port, defaulted per scheme.
    pub port: u16,
}

impl std::fmt::Debug for MbusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}@{}:{}", self.scheme, self.user, self.host, self.port)
    }
}

impl MbusUrl {
    /// Parses a URL, naming what is wrong with it.
    pub fn parse(url: &str) -> Result<MbusUrl, String> {
        let p = crate::url::parts(url).map_err(|e| match e {
            PartsError::UnclosedBracket => "unclosed '[' in mbus URL host".to_string(),
            PartsError::JunkAfterBracket => "junk after the IPv6 literal in mbus URL host".to_string(),
        })?;
        let scheme = p.scheme.ok_or_else(|| format!("mbus URL '{}' has no scheme", redact(url)))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "nats" | "tls" => 4222,
            "https" => 443,
            other => return Err(format!("mbus URL scheme '{other}' is not nats or https")),
        };
        let port = match p.port {
            Some(text) => text.parse::<u16>().map_err(|_| format!("invalid port '{text}' in mbus URL"))?,
            None => default_port,
        };
        if p.host.is_empty() {
            return Err(format!("mbus URL '{}' has no host", redact(url)));
        }
        let decoded = |part: Option<&str>| part.map(percent_decode).unwrap_or_default();
        Ok(MbusUrl {
            scheme,
            user: decoded(p.user),
            password: decoded(p.password),
            host: p.host.to_string(),
            port,
        })
    }

    /// `host:port`, bracketing IPv6 literals, for connecting and listening.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_credentials_hosts_and_ports() {
        let u = MbusUrl::parse("https://mbus:p%40ss%3Aw@0.0.0.0:6868").unwrap();
        assert_eq!(
            (u.user.as_str(), u.password.as_str(), u.host.as_str(), u.port),
            ("mbus", "p@ss:w", "0.0.0.0", 6868)
        );
        let n = MbusUrl::parse("nats://10.0.0.6").unwrap();
        assert_eq!((n.port, n.user.as_str()), (4222, ""));
        let v6 = MbusUrl::parse("nats://[::1]:4333").unwrap();
        assert_eq!(v6.host_port(), "[::1]:4333");
        assert!(MbusUrl::parse("ftp://h").is_err());
        assert!(MbusUrl::parse("nats://h:99999").is_err());
        assert!(MbusUrl::parse("no-scheme").is_err());
        assert!(!format!("{u:?}").contains("p@ss"));
    }
}
