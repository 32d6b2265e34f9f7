//! What the agent puts right at start, before it serves any request, after a crash or a kill: the
//! links of the recorded spec (an apply killed between switching links and recording its spec) and
//! the temp files of work that was killed (they are removed on drop only, which a kill skips).

use super::applier::Layout;
use super::spec::{self, ApplySpec};
use crate::dirs::Dirs;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How long a `bundle_logs` tarball is left for bosh-cli to fetch and remove.
const KEEP_BUNDLES: Duration = Duration::from_secs(3600);

/// Switches the links back to the recorded spec's bundles; see [`Layout::repair`].
pub fn repair_links(dirs: &Dirs) {
    let recorded = spec::load(dirs).and_then(|v| ApplySpec::from_value(&v));
    match recorded {
        Ok(spec) => {
            Layout { dirs }.repair(&spec);
        }
        Err(e) => log::warn!("repair: not checking the links: {e}"),
    }
}

/// Removes what killed work left in the agent's temp area and compile directory: downloaded blobs
/// (`.blob-*.tmp`, `.external-*.tmp`), compile scratch (`compile-*`, `compiled-*.tgz`, `data/compile`)
/// and log bundles older than [`KEEP_BUNDLES`]. Nothing runs yet, so nothing is in use. Anything
/// else there is not the agent's and is left alone. Returns how many entries were removed.
pub fn clean_temp_area(dirs: &Dirs) -> usize {
    let mut removed = 0;
    for entry in fs::read_dir(dirs.data_tmp()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with(".blob-") || name.starts_with(".external-")) && name.ends_with(".tmp")
            || name.starts_with("compile-")
            || name.starts_with("compiled-") && name.ends_with(".tgz")
            || name.starts_with("logs-") && name.ends_with(".tgz") && older_than(&entry.path(), KEEP_BUNDLES);
        if ours && remove(&entry.path()) {
            removed += 1;
        }
    }
    for entry in fs::read_dir(dirs.compile()).into_iter().flatten().flatten() {
        if remove(&entry.path()) {
            removed += 1;
        }
    }
    if removed > 0 {
        log::info!("removed {removed} temp file(s) left by killed work");
    }
    removed
}

fn older_than(path: &Path, age: Duration) -> bool {
    let modified = fs::symlink_metadata(path).and_then(|m| m.modified());
    modified.is_ok_and(|m| SystemTime::now().duration_since(m).is_ok_and(|d| d > age))
}

fn remove(path: &Path) -> bool {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return false,
    };
    let result = if meta.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
    if let Err(e) = &result {
        log::warn!("removing {}: {e}", path.display());
    }
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_only_what_killed_work_left() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path(), dir.path());
        let tmp = dirs.data_tmp();
        fs::create_dir_all(tmp.join("compile-ruby/home")).unwrap();
        fs::create_dir_all(dirs.compile().join("ruby")).unwrap();
        for f in [".blob-1.tmp", ".external-2.tmp", "compiled-ruby-3.tgz", "logs-4.tgz", "operator.txt"] {
            fs::write(tmp.join(f), b"x").unwrap();
        }
        assert_eq!(clean_temp_area(&dirs), 5);
        let mut left: Vec<_> = fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["logs-4.tgz", "operator.txt"], "a fresh log bundle and foreign files stay");
        assert_eq!(fs::read_dir(dirs.compile()).unwrap().count(), 0);
    }
}
