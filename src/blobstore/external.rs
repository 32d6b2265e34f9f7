//! External providers: any provider name other than `local`/`dav` runs `bosh-blobstore-<provider>`
//! (s3cli, gcscli, azure-storage-cli, ...), exactly as the Go agent does.
//!
//! Why this shape: the CLIs are the blobstore clients BOSH ships on stemcells, so the agent gets every
//! cloud's blobstore without linking their SDKs. Options go to `<base>/bosh/etc/blobstore-<p>.json`
//! with mode 0600 (they hold cloud credentials) and never onto a command line or into a log. A
//! missing executable fails construction (`executable bosh-blobstore-<p> not found in PATH`) so a
//! misconfigured VM is obvious at startup rather than at the first deploy.

use super::{copy_stream, Provider, ProviderError};
use crate::error::Context as _;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How much of a failing CLI's output is quoted in the error.
const OUTPUT_TAIL_BYTES: usize = 2048;

/// An external blobstore CLI and its config file.
#[derive(Debug, Clone)]
pub struct External {
    exe: PathBuf,
    config: PathBuf,
}

/// Finds an executable regular file called `name` in a `PATH`-style list.
pub fn find_executable(name: &str, search_path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(search_path).filter(|d| !d.as_os_str().is_empty()).map(|d| d.join(name)).find(|p| {
        fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

impl External {
    /// Locates `bosh-blobstore-<provider>` in `search_path` and writes the options file.
    pub fn new(
        provider: &str,
        options: &serde_json::Map<String, serde_json::Value>,
        dirs: &crate::dirs::Dirs,
        search_path: &OsStr,
    ) -> Result<External, String> {
        if !provider.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
            return Err(format!("invalid blobstore provider name '{}'", provider.escape_debug()));
        }
        let name = format!("bosh-blobstore-{provider}");
        let exe = find_executable(&name, search_path)
            .ok_or_else(|| format!("executable {name} not found in PATH"))?;
        let config = dirs.blobstore_config(provider);
        crate::fsutil::write_json_atomic(&config, options, 0o600)
            .with_context(|| format!("writing blobstore config {}", config.display()))?;
        Ok(External { exe, config })
    }

    /// Runs `<exe> -c <config> <args...>`; a non-zero exit becomes an error quoting the end of its
    /// output (the CLIs print their failure there).
    fn run(&self, what: &str, args: &[&OsStr]) -> Result<(), ProviderError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("-c").arg(&self.config).args(args);
        // No deadline: a transfer takes as long as the blob needs; the CLIs bound their own requests.
        let out = crate::exec::output(&mut cmd, None, None)
            .map_err(|e| ProviderError::transient(format!("{what}: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let tail = |s: &str| {
            let b = s.as_bytes();
            String::from_utf8_lossy(&b[b.len().saturating_sub(OUTPUT_TAIL_BYTES)..]).trim().to_string()
        };
        Err(ProviderError::transient(format!(
            "{what}: {} exited with {}; stdout: '{}', stderr: '{}'",
            self.exe.display(),
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        )))
    }
}

impl Provider for External {
    /// The CLIs only write to a path: download into `scratch`, then stream that file into `out` (so
    /// the one verifying path in `Blobs` applies) and remove it.
    fn get(&self, id: &str, out: &mut dyn Write, scratch: &Path) -> Result<(), ProviderError> {
        let what = format!("Getting blob {id} with {}", self.exe.display());
        fs::create_dir_all(scratch)
            .map_err(|e| ProviderError::transient(format!("{what}: creating {}: {e}", scratch.display())))?;
        let dst = scratch.join(format!(".external-{}.tmp", crate::ids::uuid_v4()));
        let result = self.run(&what, &[OsStr::new("get"), OsStr::new(id), dst.as_os_str()]).and_then(|()| {
            let mut f = File::open(&dst)
                .map_err(|e| ProviderError::transient(format!("{what}: opening download: {e}")))?;
            copy_stream(&mut f, out)
                .map(|_| ())
                .map_err(|e| ProviderError::transient(format!("{what}: copying download: {e}")))
        });
        match fs::remove_file(&dst) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => log::warn!("removing {}: {e}", dst.display()),
            _ => {}
        }
        result
    }

    fn put(&self, src: &Path, id: &str) -> Result<(), ProviderError> {
        let what = format!("Putting blob {id} with {}", self.exe.display());
        self.run(&what, &[OsStr::new("put"), src.as_os_str(), OsStr::new(id)])
    }
}
