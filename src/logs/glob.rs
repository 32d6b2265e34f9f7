//! Shell-style glob patterns over `/`-separated relative paths, as `bosh logs` sends them as log
//! filters (`**/*`, `*.log`, `web/*.log`, `web/**/access?.log`, `[a-c]*.log`).
//!
//! Why hand-written instead of expanding the pattern against the file system: the agent walks each
//! log directory itself (never following symlinks) and only asks "does this relative path match?",
//! so a filter can never name anything outside the directory, whatever `..` or `/` it contains. The
//! rules are the ones operators know from the Go agent's globbing (doublestar):
//!
//! - `*` matches any run of characters within one path segment (never `/`), dot-files included;
//! - `**` as a whole segment matches zero or more segments (`**/*` matches `a.log` and `x/y/a.log`);
//!   elsewhere (`a**b`) it behaves like `*`;
//! - `?` matches one character other than `/`;
//! - `[abc]`, `[a-z]`, `[!a-z]` / `[^a-z]` match one character of (or not of) a class;
//! - `\x` matches `x` literally.
//!
//! A pattern with an unclosed `[` or a trailing `\` is refused when it is compiled, so a typo in a
//! filter is a clear error rather than a silently empty tarball.

use crate::error::Context as _;
use std::fmt;

/// One element of a compiled path segment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A character that must match exactly.
    Literal(char),
    /// `?`: any one character.
    One,
    /// `*`: any run of characters.
    Star,
    /// `[...]`: one character in (or, when negated, not in) the inclusive ranges.
    Class { negated: bool, ranges: Vec<(char, char)> },
}

/// One `/`-separated piece of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole path segments.
    AnyDepth,
    /// Anything else, matched against exactly one path segment.
    Tokens(Vec<Token>),
}

/// A compiled glob, matched against relative paths with [`Glob::matches`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    source: String,
    segments: Vec<Segment>,
}

impl fmt::Display for Glob {
    /// The pattern as given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Glob {
    /// Compiles `pattern`. A leading `./` or `/` is dropped (filters are always relative to the log
    /// directory), and empty segments (`a//b`) are ignored, as path joining would.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let mut rest = pattern;
        loop {
            if let Some(r) = rest.strip_prefix("./") {
                rest = r;
            } else if let Some(r) = rest.strip_prefix('/') {
                rest = r;
            } else {
                break;
            }
        }
        let mut segments = Vec::new();
        for piece in rest.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if piece == "**" {
                // `**/**` means the same as `**`; collapsing keeps matching linear.
                if segments.last() != Some(&Segment::AnyDepth) {
                    segments.push(Segment::AnyDepth);
                }
            } else {
                segments.push(Segment::Tokens(
                    tokens(piece).with_context(|| format!("Invalid filter '{pattern}'"))?,
                ));
            }
        }
        if segments.is_empty() {
            return Err(format!("Invalid filter '{pattern}': it matches no file"));
        }
        Ok(Glob { source: pattern.to_string(), segments })
    }

    /// Whether the relative path `path` (segments separated by `/`, no leading `/`) matches.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        // reach[j]: the pattern segments consumed so far can match exactly parts[..j]. One pass per
        // pattern segment keeps this O(segments x parts) however many `**` there are.
        let mut reach = vec![false; parts.len() + 1];
        reach[0] = true;
        for seg in &self.segments {
            let mut next = vec![false; parts.len() + 1];
            match seg {
                Segment::AnyDepth => {
                    let mut on = false;
                    for j in 0..=parts.len() {
                        on |= reach[j];
                        next[j] = on;
                    }
                }
                Segment::Tokens(t) => {
                    for j in 0..parts.len() {
                        if reach[j] && match_segment(t, parts[j]) {
                            next[j + 1] = true;
                        }
                    }
                }
            }
            reach = next;
        }
        reach[parts.len()]
    }
}

/// Compiles one segment into tokens.
fn tokens(piece: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = piece.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                out.push(Token::Star);
            }
            '?' => out.push(Token::One),
            '\\' => out.push(Token::Literal(chars.next().ok_or("trailing '\\'")?)),
            '[' => {
                let negated = matches!(chars.peek(), Some('!') | Some('^'));
                if negated {
                    chars.next();
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let c = chars.next().ok_or("unclosed '['")?;
                    if c == ']' && !first {
                        break;
                    }
                    first = false;
                    let lo = if c == '\\' { chars.next().ok_or("unclosed '['")? } else { c };
                    let mut hi = lo;
                    let mut look = chars.clone();
                    if look.next() == Some('-') && look.peek().is_some_and(|&n| n != ']') {
                        chars.next();
                        let h = chars.next().ok_or("unclosed '['")?;
                        hi = if h == '\\' { chars.next().ok_or("unclosed '['")? } else { h };
                        if hi < lo {
                            return Err(format!("bad range '{lo}-{hi}'"));
                        }
                    }
                    ranges.push((lo, hi));
                }
                out.push(Token::Class { negated, ranges });
            }
            c => out.push(Token::Literal(c)),
        }
    }
    Ok(out)
}

/// Matches one segment with the classic two-cursor backtracking over the last `*`: linear in
/// practice, never exponential.
fn match_segment(tokens: &[Token], text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let (mut t, mut c) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while c < chars.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, c));
                t += 1;
                continue;
            }
            Some(tok) if one(tok, chars[c]) => {
                t += 1;
                c += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((st, sc)) => {
                t = st + 1;
                c = sc + 1;
                star = Some((st, sc + 1));
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

/// Whether a non-star token matches one character.
fn one(tok: &Token, ch: char) -> bool {
    match tok {
        Token::Literal(l) => *l == ch,
        Token::One => true,
        Token::Star => false,
        Token::Class { negated, ranges } => ranges.iter().any(|&(lo, hi)| lo <= ch && ch <= hi) != *negated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        Glob::new(p).unwrap().matches(path)
    }

    #[test]
    fn star_stays_within_a_segment() {
        assert!(m("*.log", "web.log"));
        assert!(m("*.log", ".hidden.log"));
        assert!(!m("*.log", "web/web.log"));
        assert!(m("web/*.log", "web/web.log"));
        assert!(!m("web/*.log", "web/sub/web.log"));
        assert!(!m("web/*.log", "web/web.log.1"));
        assert!(m("*", "a"));
        assert!(!m("*", "a/b"));
        assert!(m("w*b*.log", "web-blue.log"));
        assert!(m("a**b", "axxb"));
        assert!(!m("a**b", "ax/xb"));
    }

    #[test]
    fn double_star_spans_zero_or_more_segments() {
        assert!(m("**/*", "a.log"));
        assert!(m("**/*", "x/y/z/a.log"));
        assert!(m("**", "x/y"));
        assert!(m("web/**/*.log", "web/a.log"));
        assert!(m("web/**/*.log", "web/x/y/a.log"));
        assert!(!m("web/**/*.log", "api/x/a.log"));
        assert!(m("**/web/*.log", "web/a.log"));
        assert!(m("**/web/*.log", "deep/er/web/a.log"));
        assert!(m("**/**/**/*.log", "a/b.log"));
        assert!(m("web/**", "web/a/b"));
        assert!(!m("web/**", "api/a"));
    }

    #[test]
    fn question_marks_classes_and_escapes() {
        assert!(m("access?.log", "access1.log"));
        assert!(!m("access?.log", "access.log"));
        assert!(!m("a?b", "a/b"));
        assert!(m("[a-c]*.log", "b.log"));
        assert!(!m("[a-c]*.log", "d.log"));
        assert!(m("[!a-c]*.log", "d.log"));
        assert!(m("[^a-c]*.log", "d.log"));
        assert!(!m("[!a-c]*.log", "a.log"));
        assert!(m("[]x]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("log.[0-9]", "log.7"));
        assert!(m("\\*.log", "*.log"));
        assert!(!m("\\*.log", "a.log"));
        assert!(m("[\\]]", "]"));
    }

    #[test]
    fn leading_dot_slash_and_slash_are_ignored() {
        assert!(m("./web/*.log", "web/a.log"));
        assert!(m("/web/*.log", "web/a.log"));
        assert!(m("web//*.log", "web/a.log"));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_pattern_named() {
        for bad in ["[abc", "a\\", "[z-a]", "", "/", "./"] {
            let e = Glob::new(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
    }

    #[test]
    fn backtracking_is_not_exponential() {
        let long = "a".repeat(200);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*b", &long));
        let deep = vec!["a"; 100].join("/");
        assert!(!m("**/a/**/a/**/a/**/b", &deep));
    }
}
