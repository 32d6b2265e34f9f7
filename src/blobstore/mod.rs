//! Blobstores: where packages, job archives, rendered templates and DNS records come from, and where
//! compiled packages and log bundles go.
//!
//! Why it is shaped like this (the Go agent's wrapper chain, `bosh-utils/blobstore`):
//!
//! - [`Blobs`] is the cascade every caller uses: `<base>/data/sensitive_blobs/<id>` (rendered
//!   templates pushed with `upload_blob`), then `<base>/data/blobs/<id>` (blobs PUT by `bosh
//!   create-env`), then the configured provider. The director relies on the local copies winning: it
//!   never puts those blobs in the real blobstore.
//! - Every byte is verified against the director's multi-digest while it streams into a temp file
//!   ([`digest`]); a blob that fails verification is deleted before anyone can unpack it, and memory
//!   stays bounded however large the blob.
//! - Providers sit behind one small [`Provider`] trait: `local` ([`local`]), `dav` ([`dav`], native
//!   HTTP) and any other name as the external `bosh-blobstore-<provider>` CLI ([`external`]).
//!   Provider failures are retried (networks blip); digest mismatches are not (the bytes will not
//!   change).
//! - Signed URLs ([`signed`]) bypass the provider: the director hands out a URL and extra headers.
//!
//! Credentials (dav password, provider options, signed URL query strings) never reach logs or
//! returned errors: URLs are shown without their query string and provider options are only ever
//! written to a 0600 file.

pub mod dav;
pub mod digest;
pub mod external;
pub mod local;
pub mod signed;

pub use digest::MultiDigest;

use crate::error::Context as _;
use crate::fsutil::TempFile;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Streaming buffer: large enough for throughput, small enough never to matter for memory.
pub const BUF_BYTES: usize = 64 * 1024;
/// Attempts for provider operations and signed GETs (the Go agent's `Retryable(3)`).
pub const ATTEMPTS: u32 = 3;
/// Pause after the first failed attempt; doubled after each further one.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Blob ids longer than this are refused (real ids are UUIDs; this is a file-name limit).
const MAX_ID_BYTES: usize = 255;
/// Temp files may hold rendered templates with secrets: owner-only.
const TMP_MODE: u32 = 0o600;

/// Why a provider operation failed, and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// Human-readable cause; never holds credentials.
    pub message: String,
    /// False for answers that will not change (404, 401, a missing file); true for transport errors
    /// and server errors.
    pub retryable: bool,
}

impl ProviderError {
    /// A failure worth retrying (I/O, connection, 5xx).
    pub fn transient(message: impl Into<String>) -> ProviderError {
        ProviderError { message: message.into(), retryable: true }
    }
    /// A failure that retrying cannot fix (not found, unauthorised, bad configuration).
    pub fn permanent(message: impl Into<String>) -> ProviderError {
        ProviderError { message: message.into(), retryable: false }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One blobstore backend. Kept to two operations so new backends are cheap and the cascade,
/// verification and retries live in one place ([`Blobs`]).
pub trait Provider: Send + Sync {
    /// Streams blob `id` (already validated as a single path segment) into `out`. `scratch` is a
    /// directory on the same disk as the destination, for backends that can only write to a path.
    fn get(&self, id: &str, out: &mut dyn Write, scratch: &Path) -> Result<(), ProviderError>;
    /// Stores the file `src` as blob `id`.
    fn put(&self, src: &Path, id: &str) -> Result<(), ProviderError>;
}

/// A provider for an agent with no blobstore configured (or the Go agent's `dummy`): local blobs
/// still work through the cascade, anything else is a clear error instead of a startup failure.
struct Unconfigured {
    name: String,
}

impl Provider for Unconfigured {
    fn get(&self, id: &str, _out: &mut dyn Write, _scratch: &Path) -> Result<(), ProviderError> {
        Err(ProviderError::permanent(format!(
            "blob '{id}' is not available locally and the blobstore provider '{}' cannot fetch blobs",
            self.name
        )))
    }
    fn put(&self, _src: &Path, _id: &str) -> Result<(), ProviderError> {
        Err(ProviderError::permanent(format!("the blobstore provider '{}' cannot store blobs", self.name)))
    }
}

/// Refuses ids that are not exactly one safe path segment, before any path is built from them, so a
/// hostile id (`../../etc/passwd`, `a/b`) can never reach outside the blob directories.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id != "."
        && id != ".."
        && !id.bytes().any(|b| b == b'/' || b == b'\\' || b == 0);
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid blob id '{}': must be a single path segment", id.escape_debug()))
    }
}

/// Copies with one fixed-size heap buffer (never the whole blob), retrying interrupted calls.
pub fn copy_stream(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF_BYTES];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// A verified blob in a temp file; the file is removed on drop (unless a test calls `keep()`),
/// so an error path anywhere in a caller cannot leak blobs on the data disk.
#[derive(Debug)]
pub struct FetchedBlob(TempFile);

impl FetchedBlob {
    /// A fresh, empty, owner-only temp file under `dir` (created if missing).
    fn create(dir: &Path) -> io::Result<(FetchedBlob, File)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!(".blob-{}.tmp", crate::ids::uuid_v4()));
        let file = OpenOptions::new().write(true).create_new(true).mode(TMP_MODE).open(&path)?;
        Ok((FetchedBlob(TempFile::new(path, "temp blob")), file))
    }

    /// Where the verified bytes are.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Keeps the temp file and hands its path to the caller, who now owns its removal.
    #[cfg(feature = "internals")]
    pub fn keep(self) -> PathBuf {
        self.0.keep()
    }
}

/// Why one attempt at a verified download failed.
enum Attempt {
    /// The bytes arrived but do not match: final, never retried.
    Mismatch(String),
    /// The source failed; `retryable` as the provider said.
    Source(ProviderError),
}

/// Streams whatever `fill` produces into a fresh temp file under `tmp_dir`, verifying it against
/// `digest`. On any failure the temp file is removed (by `FetchedBlob`'s drop).
fn stream_verified(
    tmp_dir: &Path,
    digest: &MultiDigest,
    what: &str,
    fill: impl FnOnce(&mut dyn Write) -> Result<(), ProviderError>,
) -> Result<FetchedBlob, Attempt> {
    // Refuse an unverifiable digest before creating files or moving bytes.
    digest
        .verifier(io::sink())
        .map_err(|e| Attempt::Mismatch(format!("Checking downloaded blob '{what}': {e}")))?;
    let (blob, file) = FetchedBlob::create(tmp_dir).map_err(|e| {
        Attempt::Source(ProviderError::transient(format!("Creating temp file for blob: {e}")))
    })?;
    let mut w = digest.verifier(file).map_err(Attempt::Mismatch)?;
    fill(&mut w).map_err(Attempt::Source)?;
    let file =
        w.finish().map_err(|e| Attempt::Mismatch(format!("Checking downloaded blob '{what}': {e}")))?;
    file.sync_all()
        .map_err(|e| Attempt::Source(ProviderError::transient(format!("Syncing temp blob: {e}"))))?;
    Ok(blob)
}

/// The cascade over local blob directories and the configured provider, plus signed-URL transfers.
/// Cheap to clone (shared provider and HTTP client), so actions can each hold one.
#[derive(Clone)]
pub struct Blobs {
    provider: Arc<dyn Provider>,
    provider_name: String,
    sensitive_dir: PathBuf,
    blobs_dir: PathBuf,
    http: Arc<crate::http_client::Client>,
    retry_delay: Duration,
}

impl fmt::Debug for Blobs {
    /// Names the provider only: options may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs").field("provider", &self.provider_name).finish_non_exhaustive()
    }
}

impl Blobs {
    /// Builds the cascade for the settings' blobstore; external providers are looked up on `PATH`.
    pub fn from_settings(
        blobstore: &crate::settings::Blobstore,
        dirs: &crate::dirs::Dirs,
    ) -> Result<Blobs, String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        Blobs::from_settings_with_path(blobstore, dirs, &path)
    }

    /// Like [`Blobs::from_settings`], but looks for `bosh-blobstore-<provider>` in `search_path` (a
    /// `PATH`-style list), so tests and callers need not change the process environment.
    pub fn from_settings_with_path(
        blobstore: &crate::settings::Blobstore,
        dirs: &crate::dirs::Dirs,
        search_path: &OsStr,
    ) -> Result<Blobs, String> {
        let options = &blobstore.options;
        let provider: Arc<dyn Provider> = match blobstore.provider.as_str() {
            "local" => Arc::new(local::Local::from_options(options, dirs)?),
            "dav" => Arc::new(dav::Dav::from_options(options)?),
            "" | "dummy" => Arc::new(Unconfigured {
                name: if blobstore.provider.is_empty() { "(none)".into() } else { "dummy".into() },
            }),
            name => Arc::new(external::External::new(name, options, dirs, search_path)?),
        };
        let name = if blobstore.provider.is_empty() { "(none)" } else { blobstore.provider.as_str() };
        let mut blobs = Blobs::with_provider(provider, name, dirs);
        blobs.http = Arc::new(signed::http_agent(dav::ca_option(options)?.as_deref())?);
        Ok(blobs)
    }

    /// A cascade over a caller-supplied provider (tests and future backends).
    pub fn with_provider(provider: Arc<dyn Provider>, name: &str, dirs: &crate::dirs::Dirs) -> Blobs {
        Blobs {
            provider,
            provider_name: name.to_string(),
            sensitive_dir: dirs.sensitive_blobs(),
            blobs_dir: dirs.blobs(),
            // Building a client without a custom CA cannot fail.
            http: Arc::new(signed::default_agent()),
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }

    /// Changes the pause between retries (tests use a few milliseconds).
    #[cfg(feature = "internals")]
    pub fn with_retry_delay(mut self, delay: Duration) -> Blobs {
        self.retry_delay = delay;
        self
    }

    /// Fetches and verifies `id` into a temp file under `tmp_dir` (streaming, bounded memory).
    ///
    /// Local copies are tried first; a local copy that fails verification is skipped (and logged)
    /// so a good copy in the real blobstore can still be used. When there is none, the error is the
    /// local copy's mismatch (both digests), not the provider's "not found".
    pub fn fetch(&self, id: &str, digest: &MultiDigest, tmp_dir: &Path) -> Result<FetchedBlob, String> {
        check_id(id)?;
        let mut local_mismatch = None;
        for dir in [&self.sensitive_dir, &self.blobs_dir] {
            let path = dir.join(id);
            let mut src = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    log::warn!("Blob {id}: cannot open local copy {}: {e}", path.display());
                    continue;
                }
            };
            let fill = |w: &mut dyn Write| {
                copy_stream(&mut src, w)
                    .map(|_| ())
                    .map_err(|e| ProviderError::transient(format!("Copying {}: {e}", path.display())))
            };
            match stream_verified(tmp_dir, digest, id, fill) {
                Ok(blob) => {
                    log::debug!("Blob {id} served from {}", dir.display());
                    return Ok(blob);
                }
                Err(Attempt::Mismatch(e)) => {
                    log::warn!("Blob {id}: local copy in {} not usable: {e}", dir.display());
                    local_mismatch.get_or_insert(e);
                }
                Err(Attempt::Source(ProviderError { message: e, .. })) => {
                    log::warn!("Blob {id}: local copy in {} not usable: {e}", dir.display());
                }
            }
        }
        let fetched = self.with_retries(&format!("Getting blob {id}"), || {
            stream_verified(tmp_dir, digest, id, |w| self.provider.get(id, w, tmp_dir))
        });
        match (fetched, local_mismatch) {
            (Err(e), Some(mismatch)) => {
                Err(format!("Getting blob from inner blobstore: {mismatch} (and from the blobstore: {e})"))
            }
            (fetched, _) => fetched.context("Getting blob from inner blobstore"),
        }
    }

    /// GETs a signed URL with the director's extra headers, verified like `fetch`.
    pub fn fetch_signed(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        digest: &MultiDigest,
        tmp_dir: &Path,
    ) -> Result<FetchedBlob, String> {
        let shown = crate::url::redact_url(url);
        self.with_retries(&format!("Getting signed URL {shown}"), || {
            stream_verified(tmp_dir, digest, &shown, |w| signed::get(&self.http, url, headers, w))
        })
    }

    /// Uploads a file under a new UUID; returns (blob id, sha1 hex).
    pub fn upload(&self, src: &Path) -> Result<(String, String), String> {
        let digests = digest::UploadDigests::of_file(src)
            .with_context(|| format!("Hashing {} for upload", src.display()))?;
        self.upload_hashed(src, &digests.sha1)
    }

    /// [`Blobs::upload`] with the sha1 hex already known, computed while the caller wrote the file,
    /// so a large file (a compiled package) is not read a second time just to hash it.
    pub fn upload_hashed(&self, src: &Path, sha1: &str) -> Result<(String, String), String> {
        let sha1 = sha1.to_string();
        let id = crate::ids::uuid_v4();
        self.with_retries(&format!("Putting blob {id}"), || {
            self.provider.put(src, &id).map_err(Attempt::Source)
        })
        .context("Creating blob in inner blobstore")?;
        log::info!("Uploaded blob {id} ({sha1}) to the {} blobstore", self.provider_name);
        Ok((id, sha1))
    }

    /// PUTs a file to a signed URL; returns "sha1hex;sha512:hex".
    pub fn upload_signed(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        src: &Path,
    ) -> Result<String, String> {
        let digests = digest::UploadDigests::of_file(src)
            .with_context(|| format!("Hashing {} for upload", src.display()))?;
        self.upload_signed_hashed(url, headers, src, &digests)
    }

    /// [`Blobs::upload_signed`] with the digests already known (see [`Blobs::upload_hashed`]).
    pub fn upload_signed_hashed(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        src: &Path,
        digests: &digest::UploadDigests,
    ) -> Result<String, String> {
        signed::put(&self.http, url, headers, src).map_err(|e| e.message)?;
        Ok(digests.multi())
    }

    /// Removes `id` from the agent's local blob directories (after apply/prepare used it).
    pub fn forget_local(&self, id: &str) {
        if let Err(e) = check_id(id) {
            log::warn!("forget_local: {e}");
            return;
        }
        for dir in [&self.sensitive_dir, &self.blobs_dir] {
            let path = dir.join(id);
            match fs::remove_file(&path) {
                Ok(()) => log::debug!("Removed local blob {}", path.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("Removing local blob {}: {e}", path.display()),
            }
        }
    }

    /// Runs `op` up to [`ATTEMPTS`] times with a doubling pause, stopping at once on a digest mismatch
    /// or a permanent failure.
    fn with_retries<T>(&self, what: &str, mut op: impl FnMut() -> Result<T, Attempt>) -> Result<T, String> {
        let mut delay = self.retry_delay;
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(Attempt::Mismatch(e)) => return Err(e),
                Err(Attempt::Source(e)) if !e.retryable || attempt >= ATTEMPTS => return Err(e.message),
                Err(Attempt::Source(e)) => {
                    log::warn!("{what}: attempt {attempt}/{ATTEMPTS} failed: {}; retrying", e.message);
                    std::thread::sleep(delay);
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }
}

/// Reads a string option; absent and non-string values are `None`.
fn opt_str<'a>(options: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> Option<&'a str> {
    options.get(key).and_then(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_one_segment() {
        for bad in ["", ".", "..", "a/b", "../x", "/abs", "a\\b", "a\0b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["6c5f4a7e-0000-4000-8000-000000000000", "rendered-1", "a..b", ".hidden"] {
            assert!(check_id(good).is_ok(), "{good:?}");
        }
        assert!(check_id(&"x".repeat(256)).is_err());
    }

    #[test]
    fn blobs_can_be_shared_between_task_threads() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Blobs>();
    }

    #[test]
    fn a_bad_local_copy_is_reported_with_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = crate::dirs::Dirs::new(dir.path(), "/");
        fs::create_dir_all(dirs.blobs()).unwrap();
        fs::write(dirs.blobs().join("pkg"), b"what bosh-cli uploaded").unwrap();
        let provider = Arc::new(Unconfigured { name: "(none)".into() });
        let blobs = Blobs::with_provider(provider, "(none)", &dirs);
        let expected = digest::sha1_hex(b"what the manifest names");
        let actual = digest::sha1_hex(b"what bosh-cli uploaded");
        let e = blobs.fetch("pkg", &MultiDigest::sha1(&expected), &dirs.blobs()).unwrap_err();
        assert!(e.starts_with("Getting blob from inner blobstore: Checking downloaded blob 'pkg'"), "{e}");
        assert!(
            e.contains(&format!("Expected stream to have digest '{expected}' but was '{actual}'")),
            "{e}"
        );
    }

    #[test]
    fn fetched_blob_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = FetchedBlob::create(dir.path()).unwrap();
        let p = b.path().to_path_buf();
        drop(b);
        assert!(!p.exists());
        let (b, _) = FetchedBlob::create(dir.path()).unwrap();
        let kept = b.keep();
        assert!(kept.exists());
    }
}
