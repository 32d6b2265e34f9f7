//! Bus URLs: `nats://[user:pass@]host:port` and `https://user:pass@host:port`. Credentials travel in
//! the URL (the director's and bosh-cli's convention) and may be percent-encoded.

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
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| format!("mbus URL '{}' has no scheme", redact(url)))?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => {
                let (a, b) = u.split_once(':').unwrap_or((u, ""));
                (percent_decode(a), percent_decode(b))
            }
            None => (String::new(), String::new()),
        };
        let default_port = match scheme.as_str() {
            "nats" | "tls" => 4222,
            "https" => 443,
            other => return Err(format!("mbus URL scheme '{other}' is not nats or https")),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return Err(format!("mbus URL '{}' has no host", redact(url)));
        }
        Ok(MbusUrl { scheme, user, password, host, port: port.unwrap_or(default_port) })
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

fn split_host_port(hp: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed '[' in mbus URL host")?;
        (h, after.strip_prefix(':'))
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| format!("invalid port '{p}' in mbus URL"))?),
        None => None,
    };
    Ok((host.to_string(), port))
}

/// Replaces the password in a URL with `***` so URLs can be logged.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((u, _)) => format!("{}{}:***{}", &url[..s + 3], u, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Decodes `%XX` escapes; malformed escapes are kept literally rather than rejected.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
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

    #[test]
    fn redacts_and_decodes() {
        assert_eq!(redact("https://u:secret@h:1"), "https://u:***@h:1");
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
