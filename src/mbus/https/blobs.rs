//! The blob directory behind `PUT/GET /blobs/.../<id>`: where bosh-cli drops rendered templates and
//! package archives for `apply` and `compile_package` to pick up.
//!
//! Why this shape: blobs can be hundreds of MiB, so bodies stream through a fixed buffer into a temp
//! file that is fsynced and renamed into place. The rename makes a PUT atomic and idempotent (the dav
//! client retries), and a body that ends early never leaves a partial blob under the real id.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Streaming buffer size: large enough for throughput, small enough to never matter for memory.
const BUF_BYTES: usize = 64 * 1024;
/// Blob files are readable by the agent's group (job processes), like the Go agent's 0640.
const BLOB_MODE: u32 = 0o640;
/// Ids longer than this are refused; real ids are UUIDs.
const MAX_ID_BYTES: usize = 200;

/// Whether `id` can name a file directly under the blob directory: non-empty, not `.`/`..`, and made
/// only of `[A-Za-z0-9._-]`, so it can never escape the directory or collide with a temp file name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why a PUT failed: the client's body (its fault, 400) or the local disk (our fault, 500).
#[derive(Debug)]
pub enum PutError {
    /// Reading the request body failed: early end, bad chunking, timeout.
    Body(io::Error),
    /// Creating, writing, syncing or renaming the file failed.
    Store(io::Error),
}

/// A directory of blobs named by id.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    uploads: AtomicU64,
}

impl BlobStore {
    /// A store over `dir`; the directory is created on the first PUT, so a fresh VM needs no setup.
    pub fn new(dir: PathBuf) -> BlobStore {
        BlobStore { dir, uploads: AtomicU64::new(0) }
    }

    /// Streams `body` into blob `id` (already validated with [`valid_id`]), replacing any old blob.
    pub fn put(&self, id: &str, body: &mut dyn Read) -> Result<u64, PutError> {
        fs::create_dir_all(&self.dir).map_err(PutError::Store)?;
        // '+' is outside the id alphabet, so a temp name can never be some blob's real name.
        let n = self.uploads.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{id}+upload-{}-{n}", std::process::id()));
        let result = write_file(&tmp, body).and_then(|written| {
            fs::rename(&tmp, self.dir.join(id)).map_err(PutError::Store)?;
            sync_dir(&self.dir);
            Ok(written)
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Opens blob `id` (already validated) for streaming; `Ok(None)` when there is no such blob.
    pub fn open(&self, id: &str) -> io::Result<Option<(File, u64)>> {
        let file = match File::open(self.dir.join(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some((file, meta.len())))
    }
}

/// Creates `path` fresh with the blob mode and copies `body` into it through a fixed buffer, then fsyncs.
fn write_file(path: &Path, body: &mut dyn Read) -> Result<u64, PutError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(BLOB_MODE)
        .open(path)
        .map_err(PutError::Store)?;
    // The umask may have narrowed the mode; the blob mode is part of the contract with job processes.
    file.set_permissions(fs::Permissions::from_mode(BLOB_MODE)).map_err(PutError::Store)?;
    let mut buf = vec![0u8; BUF_BYTES];
    let mut written = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PutError::Body(e)),
        };
        file.write_all(&buf[..n]).map_err(PutError::Store)?;
        written += n as u64;
    }
    file.sync_all().map_err(PutError::Store)?;
    Ok(written)
}

/// Best-effort fsync of the directory so the rename survives a crash; failure only weakens durability.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_confined_to_a_safe_alphabet() {
        for ok in ["abc", "0f1e-2d3c", "a.b_c-d", "...."] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a+b", "%2e%2e", "é", &"x".repeat(201)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn put_replaces_and_failed_put_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path().join("blobs"));
        store.put("b1", &mut &b"first"[..]).unwrap();
        store.put("b1", &mut &b"second"[..]).unwrap();
        let (mut f, len) = store.open("b1").unwrap().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), len), ("second", 6));
        let mode = fs::metadata(tmp.path().join("blobs/b1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, BLOB_MODE);

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::UnexpectedEof.into())
            }
        }
        assert!(matches!(store.put("b2", &mut Broken), Err(PutError::Body(_))));
        let names: Vec<_> =
            fs::read_dir(tmp.path().join("blobs")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["b1"]);
        assert!(store.open("missing").unwrap().is_none());
    }
}
