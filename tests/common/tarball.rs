//! Real .tgz files for tests: packages, rendered-template archives, and malicious ones.

use flate2::write::GzEncoder;
use std::path::Path;

/// One entry: path inside the archive, contents, mode.
pub struct Entry<'a> {
    /// Path inside the archive.
    pub path: &'a str,
    /// File contents.
    pub data: &'a [u8],
    /// Unix mode.
    pub mode: u32,
}

/// A file entry with mode 0644.
pub fn file<'a>(path: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry { path, data, mode: 0o644 }
}

/// An executable script entry (mode 0755).
pub fn script<'a>(path: &'a str, data: &'a str) -> Entry<'a> {
    Entry { path, data: data.as_bytes(), mode: 0o755 }
}

/// Writes a gzip'd tar of `entries` to `out`.
pub fn tgz(out: &Path, entries: &[Entry]) {
    let f = std::fs::File::create(out).expect("creating tarball");
    let mut b = tar::Builder::new(GzEncoder::new(f, flate2::Compression::fast()));
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, e.path, e.data).expect("appending entry");
    }
    b.into_inner().and_then(|gz| gz.finish()).expect("finishing tarball");
}

/// A tarball whose single entry is a symlink `name -> target`, then a file written through it.
pub fn escaping_symlink(out: &Path, name: &str, target: &str) {
    let f = std::fs::File::create(out).expect("creating tarball");
    let mut b = tar::Builder::new(GzEncoder::new(f, flate2::Compression::fast()));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, name, target).expect("appending link");
    let mut h = tar::Header::new_gnu();
    let data = b"pwned";
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, format!("{name}/pwned"), &data[..]).expect("appending file");
    b.into_inner().and_then(|gz| gz.finish()).expect("finishing tarball");
}

/// `sha1` hex and `sha256:<hex>` of a file.
pub fn digests(path: &Path) -> (String, String) {
    let data = std::fs::read(path).expect("reading file to digest");
    let hex = |d: ring::digest::Digest| d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>();
    (
        hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &data)),
        format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, &data))),
    )
}
