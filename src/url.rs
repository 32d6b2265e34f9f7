//! URL helpers shared by the buses, the settings sources and the blobstores: splitting
//! `scheme://[user[:password]@]host[:port]`, percent-decoding credentials, and keeping secrets out of
//! log lines and error messages.
//!
//! Hand-written because the agent needs only these few shapes and no URL dependency. A leaf: it knows
//! nothing of NATS, HTTP or settings; the bus's `MbusUrl` and the NATS client's `NatsUrl` are built on
//! [`parts`], with their own defaults and words.

/// The pieces of `[scheme://][user[:password]@]host[:port][/path...]`, still percent-encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The scheme as written, when the URL has `://`.
    pub scheme: Option<&'a str>,
    /// The user, when the URL has userinfo.
    pub user: Option<&'a str>,
    /// The password, when the userinfo has a `:`.
    pub password: Option<&'a str>,
    /// Host name or IP literal, without IPv6 brackets; may be empty.
    pub host: &'a str,
    /// The text after the host's `:`, when there is one (may be empty or not a number).
    pub port: Option<&'a str>,
}

/// Why [`parts`] could not split a URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartsError {
    /// `[` without its `]`.
    UnclosedBracket,
    /// Something other than `:port` after an IPv6 literal's `]`.
    JunkAfterBracket,
}

/// Splits a URL; the authority ends at the first `/`, `?` or `#`, and the userinfo at its last `@`
/// (so an unencoded `@` in a password stays in the password).
pub fn parts(url: &str) -> Result<Parts<'_>, PartsError> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, password)) => (Some(user), Some(password)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
        let (host, tail) = after.split_once(']').ok_or(PartsError::UnclosedBracket)?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').ok_or(PartsError::JunkAfterBracket)?),
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    Ok(Parts { scheme, user, password, host, port })
}

/// `url` without its userinfo, and the percent-decoded user and password that were in it (password
/// empty when absent); `None` when the URL has no `scheme://`. For endpoints whose credentials must
/// travel in a header instead (the BOSH registry, `-s http://user:pass@host`).
pub fn take_credentials(url: &str) -> Option<(String, Option<(String, String)>)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let credentials = (percent_decode(user), percent_decode(password));
            Some((format!("{scheme}://{host}{path}"), Some(credentials)))
        }
        None => Some((url.to_string(), None)),
    }
}

/// Why [`percent_decode_strict`] refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    Malformed,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Decodes `%XX` escapes, keeping malformed escapes literally and invalid UTF-8 lossily: for
/// credentials that were accepted that way before (HTTPS bus, registry, `-s`).
pub fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&decode_bytes(s).0).into_owned()
}

/// Decodes `%XX` escapes, refusing a malformed escape or a result that is not UTF-8, so a mistyped
/// password fails loudly where it is parsed rather than as an authorization error later.
pub fn percent_decode_strict(s: &str) -> Result<String, DecodeError> {
    let (bytes, well_formed) = decode_bytes(s);
    if !well_formed {
        return Err(DecodeError::Malformed);
    }
    String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)
}

/// The decoded bytes, and whether every `%` began a well-formed escape.
fn decode_bytes(s: &str) -> (Vec<u8>, bool) {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut well_formed = true;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => well_formed = false,
            }
        }
        out.push(b[i]);
        i += 1;
    }
    (out, well_formed)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Replaces the password in a bus URL with `***`, keeping the user, so the URL can be logged.
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

/// `url` without user info, query string or fragment: safe to log and to put in errors (a signed
/// URL's query string is its credential).
pub fn redact_url(url: &str) -> String {
    let cut = url.find(['?', '#']).map_or(url, |i| &url[..i]);
    match cut.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            let marker = if cut.len() < url.len() { "?<redacted>" } else { "" };
            format!("{scheme}://{host}{path}{marker}")
        }
        None => "<unparsable URL>".to_string(),
    }
}

/// Removes any trace of `url`'s secret parts from `text` (an error message from the HTTP stack).
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some(i) = url.find('?') {
        let query = &url[i + 1..];
        if !query.is_empty() {
            out = out.replace(query, "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_authorities() {
        let p = parts("nats://a:b@c@[::1]:7/x?y").unwrap();
        assert_eq!(
            (p.scheme, p.user, p.password, p.host, p.port),
            (Some("nats"), Some("a"), Some("b@c"), "::1", Some("7"))
        );
        let p = parts("host").unwrap();
        assert_eq!((p.scheme, p.user, p.host, p.port), (None, None, "host", None));
        assert_eq!(parts("h:").unwrap().port, Some(""));
        assert_eq!(parts("nats://[::1").unwrap_err(), PartsError::UnclosedBracket);
        assert_eq!(parts("nats://[::1]x").unwrap_err(), PartsError::JunkAfterBracket);
    }

    #[test]
    fn moves_credentials_out_of_urls() {
        let (url, creds) = take_credentials("http://ad%40min:pw@10.0.0.5:25777/r").unwrap();
        assert_eq!(url, "http://10.0.0.5:25777/r");
        assert_eq!(creds, Some(("ad@min".into(), "pw".into())));
        assert_eq!(take_credentials("http://h:1").unwrap(), ("http://h:1".into(), None));
        assert_eq!(take_credentials("/path"), None);
    }

    #[test]
    fn redacts_and_decodes() {
        assert_eq!(redact("https://u:secret@h:1"), "https://u:***@h:1");
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert_eq!(percent_decode_strict("p%3Ass%2F%25w").unwrap(), "p:ss/%w");
        for bad in ["%zz", "%4", "%+4"] {
            assert_eq!(percent_decode_strict(bad), Err(DecodeError::Malformed), "{bad}");
        }
        assert_eq!(percent_decode_strict("%ff"), Err(DecodeError::NotUtf8));
    }

    #[test]
    fn redacts_query_and_userinfo() {
        assert_eq!(
            redact_url("https://u:p@s3.example.com/bucket/obj?X-Amz-Signature=abc#f"),
            "https://s3.example.com/bucket/obj?<redacted>"
        );
        assert_eq!(redact_url("http://h:1/a/b"), "http://h:1/a/b");
        assert_eq!(redact_url("nonsense?secret"), "<unparsable URL>");
        let url = "http://h/o?sig=SECRET";
        let s = scrub(&format!("error for {url} and sig=SECRET"), url);
        assert!(!s.contains("SECRET"), "{s}");
    }
}
