//! The `local` provider: blobs are files in a directory (`options.blobstore_path`).
//!
//! Why: BOSH Lite, create-env and test setups point the agent at a directory instead of a server.
//! The micro-BOSH cache path `/var/vcap/micro_bosh/data/cache` is rewritten to `<base>/data/blobs`,
//! as the Go agent does, so old manifests land in the directory the HTTPS `/blobs` endpoint fills.

use super::{copy_stream, opt_str, Provider, ProviderError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The path old micro-BOSH manifests use for the agent's own blob cache.
pub const MICRO_BOSH_CACHE: &str = "/var/vcap/micro_bosh/data/cache";
/// Stored blobs are readable by the agent's group, like the Go agent's.
const BLOB_MODE: u32 = 0o640;

/// A directory of blobs named by id.
#[derive(Debug, Clone)]
pub struct Local {
    dir: PathBuf,
}

impl Local {
    /// Reads `blobstore_path` (mandatory) and applies the micro-BOSH rewrite.
    pub fn from_options(
        options: &serde_json::Map<String, serde_json::Value>,
        dirs: &crate::dirs::Dirs,
    ) -> Result<Local, String> {
        let path = opt_str(options, "blobstore_path")
            .filter(|p| !p.is_empty())
            .ok_or("local blobstore: option 'blobstore_path' is missing")?;
        let dir =
            if path.trim_end_matches('/') == MICRO_BOSH_CACHE { dirs.blobs() } else { PathBuf::from(path) };
        Ok(Local { dir })
    }
}

impl Provider for Local {
    fn get(&self, id: &str, out: &mut dyn Write, _scratch: &Path) -> Result<(), ProviderError> {
        let path = self.dir.join(id);
        let mut f = File::open(&path).map_err(|e| {
            let msg = format!("Getting local blob {}: {e}", path.display());
            if e.kind() == io::ErrorKind::NotFound {
                ProviderError::permanent(msg)
            } else {
                ProviderError::transient(msg)
            }
        })?;
        copy_stream(&mut f, out)
            .map(|_| ())
            .map_err(|e| ProviderError::transient(format!("Copying local blob {}: {e}", path.display())))
    }

    /// Copies through a sibling temp file and renames, so a reader never sees half a blob.
    fn put(&self, src: &Path, id: &str) -> Result<(), ProviderError> {
        let fail = |e: io::Error| ProviderError::transient(format!("Storing local blob {id}: {e}"));
        fs::create_dir_all(&self.dir).map_err(fail)?;
        let tmp = self.dir.join(format!(".{id}.tmp-{}", crate::ids::uuid_v4()));
        let result = (|| {
            let mut from = File::open(src)?;
            let mut to = OpenOptions::new().write(true).create_new(true).mode(BLOB_MODE).open(&tmp)?;
            copy_stream(&mut from, &mut to)?;
            to.sync_all()?;
            fs::rename(&tmp, self.dir.join(id))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(fail)
    }
}
