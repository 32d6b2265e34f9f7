//! `instance/health.json`: `{"state":"<job state>"}`, the job supervisor's state as the heartbeat
//! reports it. bosh-dns health checks read it (anything but `running`, or a file they cannot read,
//! means failing) and system-metrics decodes it as a string→string map, so it holds exactly that one
//! key. Written on every heartbeat and after `start`, `stop` and the unmonitor of `drain`, as the Go
//! agent does, but atomically (the Go agent truncates and writes, so a reader may see an empty file).

use crate::dirs::Dirs;
use serde_json::json;

/// Writes the state (0644, atomically) unless the file already says it: an unchanged state costs
/// a read, not a write with its two fsyncs (which put the heartbeat thread to sleep on the disk
/// every beat). A failure is logged, never passed on: a heartbeat or a `start` must not fail
/// because of this file.
pub fn record(dirs: &Dirs, state: &str) {
    let path = dirs.health_json();
    let body = json!({ "state": state }).to_string();
    if std::fs::read(&path).is_ok_and(|current| current == body.as_bytes()) {
        return;
    }
    if let Err(e) = crate::fsutil::write_atomic(&path, body.as_bytes(), 0o644) {
        log::warn!("writing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn one_compact_state_key_readable_by_all() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path(), "/");
        record(&dirs, "running");
        let path = dirs.health_json();
        let written = std::fs::metadata(&path).unwrap().ino();
        record(&dirs, "running");
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            written,
            "an unchanged state is not written again"
        );
        record(&dirs, "failing");
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), written);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"state":"failing"}"#);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }
}
