//! VM administration: `shutdown` and `remove_file`.

use super::{bind, Action, Call};
use serde_json::{json, Value};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// `shutdown`: powers the VM off (a no-op on the dummy platform). Fire-and-forget for the director.
pub struct Shutdown;
impl Action for Shutdown {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| Shutdown)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        call.ctx.platform.shutdown()?;
        Ok(json!(""))
    }
}

/// `remove_file [path]`: removes one file (bosh-cli removes the `bundle_logs` tarball it was given
/// with it); a path that is already gone is not an error. Refused: anything but an absolute path
/// without `.` or `..` components, `/`, the base dir and its ancestors, directories, and anything not
/// under the base dir, so no argument can take the agent's own state (or the VM's) with it.
pub struct RemoveFile {
    path: String,
}
impl Action for RemoveFile {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (path,): (String,) = bind(args)?;
        let refuse = |why: &str| {
            Err(format!(
                "Extracting method arguments from payload: argument 1: refusing to remove '{}': {why}",
                path.escape_debug()
            ))
        };
        if path.is_empty() {
            return refuse("path is empty");
        }
        if !path.starts_with('/') || Path::new(&path).file_name().is_none() {
            return refuse("not an absolute path to a file");
        }
        if path.split('/').any(|c| c == "." || c == "..") || path.contains('\0') {
            return refuse("path has '.' or '..' components");
        }
        Ok(RemoveFile { path })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let p = PathBuf::from(&self.path);
        let base = absolute(&call.ctx.dirs.base);
        if base.starts_with(&p) {
            return Err(format!("refusing to remove {}: the base dir or one of its ancestors", self.path));
        }
        // Inside the base dir only (where `bundle_logs` leaves its tarballs), checked on the real
        // directory, so a symlinked parent cannot lead outside.
        let parent = p.parent().map(std::fs::canonicalize);
        let base_real = std::fs::canonicalize(&base).unwrap_or(base);
        match parent {
            Some(Ok(dir)) if dir.starts_with(&base_real) => {}
            Some(Err(e)) if e.kind() == ErrorKind::NotFound => return Ok(json!(self.path)),
            _ => return Err(format!("refusing to remove {}: not under the base dir", self.path)),
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Err(format!("refusing to remove {}: it is a directory", self.path)),
            Ok(_) => match std::fs::remove_file(&p) {
                Ok(()) => Ok(json!(self.path)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(json!(self.path)),
                Err(e) => Err(format!("removing {}: {e}", self.path)),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(json!(self.path)),
            Err(e) => Err(format!("removing {}: {e}", self.path)),
        }
    }
}

/// `dir` made absolute against the working directory (the base dir may be given relative).
fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_one_absolute_file_path() {
        for bad in ["", ".", "..", "/", "//", "x", "./x", "a/b", "/a/../b", "/a/./b", "/a/..", "/a\0"] {
            let e = RemoveFile::bind(&[json!(bad)]).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(e.contains("refusing to remove"), "{bad:?}: {e}");
        }
        assert!(RemoveFile::bind(&[json!("/var/vcap/data/tmp/logs-x.tgz")]).is_ok());
    }
}
