//! VM administration: `shutdown` and `remove_file`.

use super::{bind, Action, Call};
use serde_json::{json, Value};
use std::io::ErrorKind;
use std::path::PathBuf;

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

/// `remove_file [path]`: removes a path recursively (bosh-cli cleans up `bundle_logs` tarballs with it);
/// a path that is already gone is not an error.
pub struct RemoveFile {
    path: String,
}
impl Action for RemoveFile {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (path,): (String,) = bind(args)?;
        if path.is_empty() {
            return Err("Extracting method arguments from payload: argument 1: path is empty".into());
        }
        Ok(RemoveFile { path })
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        let p = PathBuf::from(&self.path);
        let result = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(json!(self.path)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(json!(self.path)),
            Err(e) => Err(format!("removing {}: {e}", self.path)),
        }
    }
}
