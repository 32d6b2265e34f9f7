//! Multi-digests: the director's checksum strings (`"<sha1 hex>"` or `"sha1:..;sha256:..;sha512:.."`)
//! and verification while a blob streams to disk.
//!
//! Why this exists: every package, job archive and DNS blob the agent installs arrives with such a
//! string, and the agent must refuse a blob that does not match before anything unpacks it. Hashing
//! as the bytes pass (instead of re-reading the file afterwards) keeps one pass over the disk and a
//! fixed memory footprint however large the blob. Parsing rules, printing and error texts follow the
//! Go agent (bosh-utils `crypto`), because the director and operators match on those strings.

use crate::error::Context as _;
use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY, SHA256, SHA512};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;

/// The error for a string with no digest at all; worded like the Go agent's.
pub const NO_DIGEST: &str = "No digest algorithm found. Supported algorithms: sha1, sha256, sha512";
/// The error for a piece with characters outside `[A-Za-z0-9]` around its `:`; the Go agent's text.
pub const NOT_ALPHANUMERIC: &str =
    "Unable to parse digest string. Digest and algorithm key can only contain alpha-numeric characters.";

/// A digest algorithm. Unknown names are kept (they parse, as in the Go agent, so a director that
/// adds an algorithm later does not break parsing) but can never be used to verify.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-1: the legacy default, printed without a prefix.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512: the strongest, preferred for verification.
    Sha512,
    /// Any other name; parsed and printed, never verified.
    Unknown(String),
}

impl Algorithm {
    fn from_name(name: &str) -> Algorithm {
        match name {
            "sha1" => Algorithm::Sha1,
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => Algorithm::Unknown(other.to_string()),
        }
    }

    /// The name used in digest strings (`sha1`, `sha256`, `sha512` or the unknown name as given).
    pub fn name(&self) -> &str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Unknown(n) => n,
        }
    }

    /// Verification preference: higher is stronger; `None` for algorithms that cannot verify.
    fn strength(&self) -> Option<u8> {
        match self {
            Algorithm::Sha1 => Some(1),
            Algorithm::Sha256 => Some(2),
            Algorithm::Sha512 => Some(3),
            Algorithm::Unknown(_) => None,
        }
    }

    fn ring(&self) -> Option<&'static ring::digest::Algorithm> {
        match self {
            Algorithm::Sha1 => Some(&SHA1_FOR_LEGACY_USE_ONLY),
            Algorithm::Sha256 => Some(&SHA256),
            Algorithm::Sha512 => Some(&SHA512),
            Algorithm::Unknown(_) => None,
        }
    }
}

/// One `algorithm:hex` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The expected value as given (hex for real digests; anything alphanumeric parses).
    pub hex: String,
}

impl fmt::Display for Digest {
    /// sha1 prints bare (the legacy form every director understands); others as `algo:hex`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.algorithm {
            Algorithm::Sha1 => f.write_str(&self.hex),
            _ => write!(f, "{}:{}", self.algorithm.name(), self.hex),
        }
    }
}

/// A parsed multi-digest string: one or more digests of distinct algorithms, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiDigest {
    digests: Vec<Digest>,
}

impl MultiDigest {
    /// Parses the director's digest string. Pieces are split on `;` and empty pieces ignored; a piece
    /// without `:` is a legacy sha1; both sides of `:` must be alphanumeric; an algorithm may appear
    /// only once; at least one digest must remain.
    pub fn parse(s: &str) -> Result<MultiDigest, String> {
        let mut digests: Vec<Digest> = Vec::new();
        for piece in s.split(';').filter(|p| !p.is_empty()) {
            let (algo, hex) = match piece.split_once(':') {
                Some((a, h)) => (a, h),
                None => ("sha1", piece),
            };
            let alnum = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_alphanumeric());
            if !alnum(algo) || !alnum(hex) {
                return Err(NOT_ALPHANUMERIC.to_string());
            }
            digests.push(Digest { algorithm: Algorithm::from_name(algo), hex: hex.to_string() });
        }
        if digests.is_empty() {
            return Err(NO_DIGEST.to_string());
        }
        let md = MultiDigest { digests };
        for (i, d) in md.digests.iter().enumerate() {
            if md.digests[..i].iter().any(|e| e.algorithm == d.algorithm) {
                return Err(format!(
                    "Multiple digests of the same algorithm '{}' found in digests '{md}'",
                    d.algorithm.name()
                ));
            }
        }
        Ok(md)
    }

    /// A multi-digest holding only `hex` as sha1 (what `upload` reports and `upload_blob` sends).
    #[cfg(feature = "internals")]
    pub fn sha1(hex: &str) -> MultiDigest {
        MultiDigest { digests: vec![Digest { algorithm: Algorithm::Sha1, hex: hex.to_string() }] }
    }

    /// The digest verification uses: sha512 over sha256 over sha1; `None` when only unknown
    /// algorithms are present.
    pub fn strongest(&self) -> Option<&Digest> {
        self.digests
            .iter()
            .filter(|d| d.algorithm.strength().is_some())
            .max_by_key(|d| d.algorithm.strength())
    }

    /// Wraps `inner` so that everything written to it is hashed with the strongest algorithm;
    /// [`VerifyingWriter::finish`] then says whether the stream matched. Fails up front when no
    /// algorithm present can verify, so no bytes are moved for a blob that could never be accepted.
    pub fn verifier<W: Write>(&self, inner: W) -> Result<VerifyingWriter<W>, String> {
        let expected = self.strongest().ok_or_else(|| {
            let names: Vec<&str> = self.digests.iter().map(|d| d.algorithm.name()).collect();
            format!(
                "Cannot verify digest '{self}': unsupported algorithm '{}'. Supported algorithms: sha1, sha256, sha512",
                names.join(", ")
            )
        })?;
        let algo = expected.algorithm.ring().ok_or_else(|| NO_DIGEST.to_string())?;
        Ok(VerifyingWriter { inner, ctx: Context::new(algo), expected: expected.clone() })
    }

    /// Verifies everything `reader` yields (for payloads and files that are already local).
    pub fn verify_reader(&self, reader: &mut dyn Read) -> Result<(), String> {
        let mut w = self.verifier(io::sink())?;
        super::copy_stream(reader, &mut w).context("Reading stream to verify")?;
        w.finish().map(|_| ())
    }

    /// Verifies an in-memory payload (`upload_blob`).
    pub fn verify_bytes(&self, data: &[u8]) -> Result<(), String> {
        let mut r = data;
        self.verify_reader(&mut r)
    }
}

impl fmt::Display for MultiDigest {
    /// sha1 unprefixed, others as `algo:hex`, joined by `;` — the form bundle versions are built from,
    /// so it must match the Go agent byte for byte.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.digests.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl FromStr for MultiDigest {
    type Err = String;
    fn from_str(s: &str) -> Result<MultiDigest, String> {
        MultiDigest::parse(s)
    }
}

impl Serialize for MultiDigest {
    /// As the string form, which is what the director sends and `get_state` echoes.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MultiDigest {
    /// From the string form. A JSON `null` becomes the sha1 digest `"null"`, exactly as in the Go
    /// agent: a missing digest must make verification fail, never skip it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MultiDigest, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_else(|| "null".to_string());
        MultiDigest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes what passes through it and, at the end, compares with the expected digest.
pub struct VerifyingWriter<W> {
    inner: W,
    ctx: Context,
    expected: Digest,
}

impl<W: Write> Write for VerifyingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> VerifyingWriter<W> {
    /// Flushes and checks the digest; returns the inner writer on a match, otherwise the Go agent's
    /// `Expected stream to have digest '<d>' but was '<computed>'`.
    pub fn finish(mut self) -> Result<W, String> {
        self.inner.flush().context("Flushing verified stream")?;
        let actual =
            Digest { algorithm: self.expected.algorithm.clone(), hex: hex(self.ctx.finish().as_ref()) };
        if actual.hex.eq_ignore_ascii_case(&self.expected.hex) {
            Ok(self.inner)
        } else {
            Err(format!("Expected stream to have digest '{}' but was '{actual}'", self.expected))
        }
    }
}

/// The digests the agent reports for blobs it uploads: sha1 for the blobstore path (`compile_package`,
/// `fetch_logs`), and `sha1;sha512:` for signed-URL uploads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadDigests {
    /// Lowercase sha1 hex.
    pub sha1: String,
    /// Lowercase sha512 hex.
    pub sha512: String,
}

impl UploadDigests {
    /// `"<sha1>;sha512:<sha512>"`, the result format of the signed-URL actions.
    pub fn multi(&self) -> String {
        format!("{};sha512:{}", self.sha1, self.sha512)
    }

    /// Hashes a stream with both algorithms in one pass.
    pub fn of_reader(reader: &mut dyn Read) -> io::Result<UploadDigests> {
        let mut w =
            TwoHasher { sha1: Context::new(&SHA1_FOR_LEGACY_USE_ONLY), sha512: Context::new(&SHA512) };
        super::copy_stream(reader, &mut w)?;
        Ok(UploadDigests { sha1: hex(w.sha1.finish().as_ref()), sha512: hex(w.sha512.finish().as_ref()) })
    }

    /// Hashes a file with both algorithms in one pass.
    pub fn of_file(path: &Path) -> io::Result<UploadDigests> {
        UploadDigests::of_reader(&mut File::open(path)?)
    }
}

struct TwoHasher {
    sha1: Context,
    sha512: Context,
}

impl Write for TwoHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sha1.update(buf);
        self.sha512.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lowercase hex, the only form digests are printed in.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Lowercase sha1 hex of `data` (dav URL sharding, small payloads).
pub fn sha1_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&SHA1_FOR_LEGACY_USE_ONLY, data).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC_SHA1: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_SHA512: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                              2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

    #[test]
    fn parses_and_prints() {
        let d = MultiDigest::parse(ABC_SHA1).unwrap();
        assert_eq!(d.digests[0].algorithm, Algorithm::Sha1);
        assert_eq!(d.to_string(), ABC_SHA1);
        let s = format!("sha1:{ABC_SHA1};sha256:{ABC_SHA256};;sha512:{ABC_SHA512};");
        let d: MultiDigest = s.parse().unwrap();
        assert_eq!(d.digests.len(), 3);
        assert_eq!(d.to_string(), format!("{ABC_SHA1};sha256:{ABC_SHA256};sha512:{ABC_SHA512}"));
        assert_eq!(d.strongest().unwrap().algorithm, Algorithm::Sha512);
    }

    #[test]
    fn rejects_bad_strings() {
        assert_eq!(MultiDigest::parse("").unwrap_err(), NO_DIGEST);
        assert_eq!(MultiDigest::parse(";;").unwrap_err(), NO_DIGEST);
        assert_eq!(MultiDigest::parse("sha1:!").unwrap_err(), NOT_ALPHANUMERIC);
        assert_eq!(MultiDigest::parse("d!m:abc").unwrap_err(), NOT_ALPHANUMERIC);
        assert_eq!(MultiDigest::parse("sha256:").unwrap_err(), NOT_ALPHANUMERIC);
        assert_eq!(MultiDigest::parse("a:b:c").unwrap_err(), NOT_ALPHANUMERIC);
        assert_eq!(
            MultiDigest::parse("abc;sha1:def").unwrap_err(),
            "Multiple digests of the same algorithm 'sha1' found in digests 'abc;def'"
        );
    }

    #[test]
    fn verifies_each_algorithm() {
        for s in [ABC_SHA1.to_string(), format!("sha256:{ABC_SHA256}"), format!("sha512:{ABC_SHA512}")] {
            MultiDigest::parse(&s).unwrap().verify_bytes(b"abc").unwrap();
            let err = MultiDigest::parse(&s).unwrap().verify_bytes(b"abd").unwrap_err();
            assert!(err.starts_with(&format!("Expected stream to have digest '{s}' but was '")), "{err}");
        }
    }

    #[test]
    fn strongest_wins_and_unknown_is_ignored() {
        // A wrong sha1 is irrelevant when a correct sha256 is present.
        let d = MultiDigest::parse(&format!("sha1:0000;md5:abc;sha256:{ABC_SHA256}")).unwrap();
        d.verify_bytes(b"abc").unwrap();
        assert_eq!(d.to_string(), format!("0000;md5:abc;sha256:{ABC_SHA256}"));
        let only_unknown = MultiDigest::parse("md5:abc").unwrap();
        assert!(only_unknown.verify_bytes(b"abc").unwrap_err().contains("unsupported algorithm 'md5'"));
    }

    #[test]
    fn serde_as_string_and_null_fails_verification() {
        let d: MultiDigest = serde_json::from_str(&format!("\"sha256:{ABC_SHA256}\"")).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"sha256:{ABC_SHA256}\""));
        let n: MultiDigest = serde_json::from_str("null").unwrap();
        assert_eq!(n.to_string(), "null");
        assert!(n.verify_bytes(b"abc").is_err());
        assert!(serde_json::from_str::<MultiDigest>("\"\"").is_err());
    }

    #[test]
    fn upload_digests() {
        let d = UploadDigests::of_reader(&mut &b"abc"[..]).unwrap();
        assert_eq!(d.multi(), format!("{ABC_SHA1};sha512:{ABC_SHA512}"));
        assert_eq!(sha1_hex(b"abc"), ABC_SHA1);
    }
}
