//! Safe unpacking and packing of .tgz archives (owned by the archive helper; interface fixed here).
//!
//! INTERFACE CONTRACT:
//!
//! ```ignore
//! pub struct Unpack<'a> {
//!     /// Only entries under this top-level directory (a job's name in the rendered-templates archive),
//!     /// with that directory stripped; `None` = everything.
//!     pub subdir: Option<&'a str>,
//! }
//! /// Unpacks a gzip'd (or plain) tar into `dest`, which must not exist: entries go to a sibling temp
//! /// dir that is renamed onto `dest` only when complete. Refuses absolute paths, `..`, links pointing
//! /// outside, device files/FIFOs; a leading "./" is accepted. Errors name the offending entry.
//! pub fn unpack(archive: &Path, dest: &Path, opts: &Unpack) -> Result<(), String>;
//! /// Writes `dir`'s contents (relative paths "./...", modes kept, symlinks as links) as .tgz to `out`.
//! pub fn pack(dir: &Path, out: &mut dyn std::io::Write) -> Result<(), String>;
//! ```

// TEMPORARY compile stubs until the archive branch lands.
#![allow(missing_docs, unused_variables)]
use std::path::Path;
pub struct Unpack<'a> {
    pub subdir: Option<&'a str>,
}
pub fn unpack(archive: &Path, dest: &Path, opts: &Unpack) -> Result<(), String> {
    Err("stub".into())
}
