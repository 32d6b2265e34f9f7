//! Blobstores (owned by the blobstore helper; interface fixed here).
//!
//! INTERFACE CONTRACT (the rest of the agent codes against exactly this):
//!
//! ```ignore
//! pub mod digest;   // MultiDigest: parse "hex" | "sha1:hex;sha256:hex;sha512:hex", verify while streaming
//! pub struct MultiDigest { .. }
//! impl MultiDigest {
//!     pub fn parse(s: &str) -> Result<MultiDigest, String>;
//!     pub fn to_string(&self) -> String;   // sha1 unprefixed, others "algo:hex", joined by ';'
//! }
//! impl std::str::FromStr / Display / Serialize / Deserialize for MultiDigest (as a string)
//!
//! /// A verified blob in a temp file; the file is removed on drop unless `keep()`/`persist()` is called.
//! pub struct FetchedBlob { .. }
//! impl FetchedBlob { pub fn path(&self) -> &Path; pub fn persist(self, to: &Path) -> io::Result<()> }
//!
//! /// The cascade: `<base>/data/sensitive_blobs`, then `<base>/data/blobs`, then the provider
//! /// (`local`, `dav`, or external `bosh-blobstore-<provider>` on PATH); transient failures retried.
//! #[derive(Clone)] pub struct Blobs { .. }
//! impl Blobs {
//!     pub fn from_settings(blobstore: &crate::settings::Blobstore, dirs: &crate::dirs::Dirs) -> Result<Blobs, String>;
//!     /// Fetches and verifies `id` into a temp file under `tmp_dir` (streaming, bounded memory).
//!     pub fn fetch(&self, id: &str, digest: &MultiDigest, tmp_dir: &Path) -> Result<FetchedBlob, String>;
//!     /// GETs a signed URL with the director's extra headers, verified like `fetch`.
//!     pub fn fetch_signed(&self, url: &str, headers: &BTreeMap<String, String>, digest: &MultiDigest, tmp_dir: &Path) -> Result<FetchedBlob, String>;
//!     /// Uploads a file under a new UUID; returns (blob id, sha1 hex).
//!     pub fn upload(&self, src: &Path) -> Result<(String, String), String>;
//!     /// PUTs a file to a signed URL; returns "sha1hex;sha512:hex".
//!     pub fn upload_signed(&self, url: &str, headers: &BTreeMap<String, String>, src: &Path) -> Result<String, String>;
//!     /// Removes `id` from the agent's local blob directories (after apply/prepare used it).
//!     pub fn forget_local(&self, id: &str);
//! }
//! ```

// TEMPORARY compile stubs until the blobstore branch lands.
#![allow(missing_docs, dead_code, unused_variables)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
pub mod digest {
    #[derive(Clone, Debug)]
    pub struct MultiDigest(pub String);
    impl MultiDigest {
        pub fn parse(s: &str) -> Result<MultiDigest, String> {
            Ok(MultiDigest(s.into()))
        }
    }
    impl std::fmt::Display for MultiDigest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
}
pub use digest::MultiDigest;
pub struct FetchedBlob(PathBuf);
impl FetchedBlob {
    pub fn path(&self) -> &Path {
        &self.0
    }
}
#[derive(Clone)]
pub struct Blobs;
impl Blobs {
    pub fn from_settings(b: &crate::settings::Blobstore, d: &crate::dirs::Dirs) -> Result<Blobs, String> {
        Err("stub".into())
    }
    pub fn fetch(&self, id: &str, digest: &MultiDigest, tmp_dir: &Path) -> Result<FetchedBlob, String> {
        Err("stub".into())
    }
    pub fn fetch_signed(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        digest: &MultiDigest,
        tmp_dir: &Path,
    ) -> Result<FetchedBlob, String> {
        Err("stub".into())
    }
    pub fn forget_local(&self, id: &str) {}
}
