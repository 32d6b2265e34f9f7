//! Log bundles for `bosh logs`: which files are collected, and the `.tgz` they are streamed into.
//!
//! Why it is shaped like this:
//!
//! - **Selection walks, never globs the file system.** Each log directory is resolved once (on a
//!   stemcell `/var/vcap/sys` is itself a symlink into the data disk) and then walked without
//!   following any symlink; each regular file's path relative to the directory is matched against
//!   the filters ([`glob`]). A job that drops a symlink to `/etc/shadow` into its log
//!   directory, or a filter like `../../etc/*`, therefore cannot get anything outside the directory
//!   into a bundle. Sockets, FIFOs and devices are skipped too (reading a FIFO would hang).
//! - **Streaming with bounded memory.** Files are read with fixed buffers into a tar stream, the tar
//!   stream goes through a multi-threaded gzip writer ([`crate::gzip`]) into a temp file; the archive is
//!   never held in memory, so a VM with gigabytes of logs can still bundle them.
//! - **Logs are live files.** A log that grows while being read is cut at the size seen when its
//!   header was written; one that shrinks (rotated or truncated) is padded with zeros and a warning is
//!   logged, instead of failing the whole `bosh logs` run. A file deleted between listing and reading
//!   is skipped.
//! - **Names in the tarball.** With one log type, entries are named relative to its directory
//!   (`web/web.stdout.log`), as the Go agent's tarballs are. With several types (`job,agent`), each
//!   entry is prefixed by its type (`job/web/web.stdout.log`, `agent/current`), so files of the same
//!   relative name in two directories cannot collide and the operator sees where each came from.
//!   Entries keep their mode and mtime; owners are numeric.
//! - **A missing log directory contributes nothing** (an agent that logs to stderr has no
//!   `bosh/log`), so `job,agent` still returns the job logs; a bundle may therefore be empty.

pub use crate::gzip::ParallelGz;

mod glob;

use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::fsutil::TempFile;
use flate2::Compression;
use glob::Glob;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The gzip level, chosen deliberately after measuring (`benches/logs.rs`, scripts/README.md): in
/// this size-optimised build the pure-Rust deflate at its default level 6 searches far more match
/// candidates and took 1.8-4x as long as level 4 for about 3% smaller output, so on a one-core VM it
/// would be slower than `tar czf` (GNU `gzip -6`). Level 4 meets the "no slower than tar" target even
/// on one thread (6.5 s against tar's 9.3 s for 500 MB of logs) with tarballs about the size of
/// `gzip -6`'s (107 MB against 103.5 MB); level 1 would be faster still but about 25% larger, and
/// every byte crosses the network to the blobstore and then to the operator.
pub const LEVEL: u32 = 4;
/// Bytes per read from a log file.
const READ_BUF: usize = 64 * 1024;
/// Bundles are owner-only: logs may hold secrets an operator printed by mistake.
const BUNDLE_MODE: u32 = 0o600;
/// The filter used when the request names none (`null` or `[]`): everything.
pub const DEFAULT_FILTER: &str = "**/*";

/// A kind of logs the director or bosh-cli can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogType {
    /// The jobs' logs, `<base>/sys/log`.
    Job,
    /// The agent's own logs, `<base>/bosh/log`.
    Agent,
    /// The system's logs, `/var/log` under the root dir.
    System,
}

impl LogType {
    /// The name on the wire, also the entry prefix when several types are combined.
    pub fn name(self) -> &'static str {
        match self {
            LogType::Job => "job",
            LogType::Agent => "agent",
            LogType::System => "system",
        }
    }

    /// The directory holding this type's logs.
    pub fn dir(self, dirs: &Dirs) -> PathBuf {
        match self {
            LogType::Job => dirs.sys_log(),
            LogType::Agent => dirs.bosh_log(),
            LogType::System => dirs.under_root("/var/log"),
        }
    }
}

/// What to collect: one or more log types and the filters every file must match one of.
#[derive(Clone, Debug)]
pub struct Request {
    types: Vec<LogType>,
    filters: Vec<Glob>,
}

impl Request {
    /// Parses the wire form: `log_type` a comma list (`job`, `agent`, `system`; spaces and empty
    /// items ignored, duplicates collapsed); `filters` globs, `None` or empty meaning `**/*`.
    pub fn parse(log_type: &str, filters: Option<&[String]>) -> Result<Request, String> {
        let mut types = Vec::new();
        for name in log_type.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let t = match name {
                "job" => LogType::Job,
                "agent" => LogType::Agent,
                "system" => LogType::System,
                other => {
                    return Err(format!(
                        "Invalid log type '{}': expected job, agent or system, or a comma list of them",
                        other.escape_debug()
                    ))
                }
            };
            if !types.contains(&t) {
                types.push(t);
            }
        }
        if types.is_empty() {
            return Err("Invalid log type '': expected job, agent or system".into());
        }
        let given: Vec<&str> =
            filters.unwrap_or_default().iter().map(String::as_str).filter(|f| !f.is_empty()).collect();
        let given = if given.is_empty() { vec![DEFAULT_FILTER] } else { given };
        let filters = given.into_iter().map(Glob::new).collect::<Result<Vec<_>, _>>()?;
        Ok(Request { types, filters })
    }
}

/// One file to bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFile {
    /// The entry name in the tarball (bytes: file names need not be UTF-8).
    pub name: Vec<u8>,
    /// Where the file is.
    pub path: PathBuf,
}

/// Lists the regular files the request selects, sorted by entry name.
pub fn select(dirs: &Dirs, request: &Request) -> Result<Vec<LogFile>, String> {
    let prefixed = request.types.len() > 1;
    let mut files = Vec::new();
    for &t in &request.types {
        let dir = t.dir(dirs);
        let root = match fs::canonicalize(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::info!("No {} logs: {} does not exist", t.name(), dir.display());
                continue;
            }
            Err(e) => return Err(format!("Resolving {} logs directory {}: {e}", t.name(), dir.display())),
        };
        if !root.is_dir() {
            return Err(format!("The {} logs directory {} is not a directory", t.name(), dir.display()));
        }
        let prefix = if prefixed { format!("{}/", t.name()).into_bytes() } else { Vec::new() };
        walk(&root, &request.filters, &prefix, &mut files);
    }
    crate::order::sort_by(&mut files, |a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Walks `root` depth-first without following symlinks, adding matching regular files. Unreadable
/// subdirectories are logged and skipped: one odd directory should not cost the operator all logs.
fn walk(root: &Path, filters: &[Glob], prefix: &[u8], files: &mut Vec<LogFile>) {
    // (directory, its path relative to root with a trailing '/', or empty for the root)
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("Skipping log directory {}: {e}", dir.display());
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    log::warn!("Listing {}: {e}", dir.display());
                    continue;
                }
            };
            // DirEntry::file_type does not follow symlinks.
            let Ok(kind) = entry.file_type() else { continue };
            let mut name = rel.clone();
            name.extend_from_slice(entry.file_name().as_bytes());
            if kind.is_dir() {
                name.push(b'/');
                stack.push((entry.path(), name));
            } else if kind.is_file() {
                let text = String::from_utf8_lossy(&name);
                if filters.iter().any(|f| f.matches(&text)) {
                    let mut full = prefix.to_vec();
                    full.extend_from_slice(&name);
                    files.push(LogFile { name: full, path: entry.path() });
                }
            }
        }
    }
}

/// A bundle on disk, removed when dropped unless [`Bundle::keep`] is called, so no error path can
/// leave tarballs filling the data disk.
#[derive(Debug)]
pub struct Bundle {
    file: TempFile,
    /// Entries written.
    pub files: usize,
    /// Uncompressed bytes of file data.
    pub bytes: u64,
    /// Size of the .tgz.
    pub compressed: u64,
}

impl Bundle {
    /// Where the tarball is.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Leaves the tarball in place and returns its path; the caller now owns its removal.
    pub fn keep(self) -> PathBuf {
        self.file.keep()
    }
}

/// Selects the request's files and streams them into a new `.tgz` at `<tmp_dir>/logs-<uuid>.tgz`
/// (mode 0600, owned by `owner` when given).
pub fn bundle(dirs: &Dirs, request: &Request, owner: Option<(u32, u32)>) -> Result<Bundle, String> {
    let files = select(dirs, request)?;
    let dir = dirs.data_tmp(); // the data disk, not the small root disk
    fs::create_dir_all(&dir).with_context(|| format!("Creating {}", dir.display()))?;
    let path = dir.join(format!("logs-{}.tgz", crate::ids::uuid_v4()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(BUNDLE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("Creating {}", path.display()))?;
    let mut bundle = Bundle { file: TempFile::new(path, "log bundle"), files: 0, bytes: 0, compressed: 0 };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .with_context(|| format!("Changing owner of {}", bundle.path().display()))?;
    }
    let (count, bytes, compressed) = write_tgz(&files, file, Compression::new(LEVEL), crate::gzip::threads())
        .with_context(|| format!("Creating log bundle {}", bundle.path().display()))?;
    bundle.files = count;
    bundle.bytes = bytes;
    bundle.compressed = compressed;
    log::info!(
        "Bundled {count} log files ({bytes} bytes, {compressed} compressed) into {}",
        bundle.path().display()
    );
    Ok(bundle)
}

/// Streams `files` as a gzip'd tar into `out`; returns (entries, data bytes, compressed bytes).
/// Files that vanished since listing are skipped.
pub fn write_tgz(
    files: &[LogFile],
    out: File,
    level: Compression,
    threads: usize,
) -> Result<(usize, u64, u64), String> {
    let gz = ParallelGz::new(out, level, threads).context("starting gzip")?;
    let mut builder = tar::Builder::new(gz);
    let (mut count, mut bytes) = (0usize, 0u64);
    for f in files {
        match append(&mut builder, f) {
            Ok(Some(n)) => {
                count += 1;
                bytes += n;
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{}: {e}", f.path.display())),
        }
    }
    let gz = builder.into_inner().context("finishing tar")?;
    // No fsync: the bundle is read back at once (upload, digest) and is worthless after a crash.
    let (_file, compressed) = gz.finish().context("finishing gzip")?;
    Ok((count, bytes, compressed))
}

/// Appends one file; `None` when it disappeared or is no longer a regular file.
fn append<W: io::Write>(builder: &mut tar::Builder<W>, f: &LogFile) -> io::Result<Option<u64>> {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&f.path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => {
            log::debug!("Skipping {}: {e}", f.path.display());
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let size = meta.len();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    let mut data = BufReader::with_capacity(READ_BUF, Exact { file, left: size, short: false });
    builder.append_data(&mut header, Path::new(OsStr::from_bytes(&f.name)), &mut data)?;
    if data.get_ref().short {
        log::warn!("{} shrank while being bundled; padded with zeros", f.path.display());
    }
    Ok(Some(size))
}

/// Reads exactly `left` bytes: a file that grew is cut, one that shrank is padded with zeros (the tar
/// header already promised the size).
struct Exact {
    file: File,
    left: u64,
    short: bool,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = if self.short { 0 } else { self.file.read(&mut buf[..want])? };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::collections::BTreeMap;

    fn write(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn names(files: &[LogFile]) -> Vec<String> {
        files.iter().map(|f| String::from_utf8_lossy(&f.name).into_owned()).collect()
    }

    fn layout() -> (tempfile::TempDir, Dirs) {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path().join("base"), t.path().join("root"));
        let job = dirs.base.join("sys/log");
        write(&job.join("web/web.stdout.log"), b"out");
        write(&job.join("web/web.stderr.log"), b"err");
        write(&job.join("web/old/web.log.1"), b"old");
        write(&job.join("top.log"), b"top");
        write(&dirs.bosh().join("log/current"), b"agent");
        write(&dirs.under_root("/var/log/syslog"), b"sys");
        std::os::unix::fs::symlink("/etc/passwd", job.join("web/passwd.log")).unwrap();
        std::os::unix::fs::symlink(dirs.bosh(), job.join("bosh-link")).unwrap();
        (t, dirs)
    }

    #[test]
    fn parses_types_and_filters() {
        let r = Request::parse("job, agent,job", None).unwrap();
        assert_eq!(r.types, [LogType::Job, LogType::Agent]);
        assert!(Request::parse("job", Some(&[])).is_ok());
        let e = Request::parse("job,nope", None).unwrap_err();
        assert!(e.starts_with("Invalid log type 'nope'"), "{e}");
        assert!(Request::parse("", None).unwrap_err().starts_with("Invalid log type"));
        let e = Request::parse("job", Some(&["[x".to_string()])).unwrap_err();
        assert!(e.contains("Invalid filter '[x'"), "{e}");
    }

    #[test]
    fn selects_regular_files_without_following_symlinks() {
        let (_t, dirs) = layout();
        let all = select(&dirs, &Request::parse("job", None).unwrap()).unwrap();
        assert_eq!(names(&all), ["top.log", "web/old/web.log.1", "web/web.stderr.log", "web/web.stdout.log"]);
        let some = select(&dirs, &Request::parse("job", Some(&["web/*.log".into()])).unwrap()).unwrap();
        assert_eq!(names(&some), ["web/web.stderr.log", "web/web.stdout.log"]);
        let both = select(&dirs, &Request::parse("job,agent,system", Some(&["*".into()])).unwrap()).unwrap();
        assert_eq!(names(&both), ["agent/current", "job/top.log", "system/syslog"]);
        let escape = select(&dirs, &Request::parse("job", Some(&["../../**/*".into()])).unwrap()).unwrap();
        assert!(escape.is_empty(), "{:?}", names(&escape));
    }

    #[test]
    fn a_missing_directory_contributes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(t.path().join("base"), t.path().join("root"));
        write(&dirs.bosh().join("log/current"), b"agent");
        let r = select(&dirs, &Request::parse("job,agent", None).unwrap()).unwrap();
        assert_eq!(names(&r), ["agent/current"]);
    }

    #[test]
    fn bundles_stream_into_a_private_tgz() {
        let (_t, dirs) = layout();
        let b = bundle(&dirs, &Request::parse("job", None).unwrap(), None).unwrap();
        assert_eq!((b.files, b.bytes), (4, 12));
        let meta = fs::metadata(b.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), b.compressed);
        let mut archive = tar::Archive::new(GzDecoder::new(File::open(b.path()).unwrap()));
        let mut got = BTreeMap::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            got.insert(e.path().unwrap().to_string_lossy().into_owned(), s);
        }
        assert_eq!(got.get("web/web.stdout.log").map(String::as_str), Some("out"));
        assert_eq!(got.len(), 4);
        let path = b.path().to_path_buf();
        drop(b);
        assert!(!path.exists(), "dropped bundle removed");
    }

    #[test]
    fn a_shrinking_file_is_padded_not_fatal() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let mut r = Exact { file: File::open(&p).unwrap(), left: 6, short: false };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc\0\0\0");
        assert!(r.short);
        let mut r = Exact { file: File::open(&p).unwrap(), left: 2, short: false };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
    }
}
