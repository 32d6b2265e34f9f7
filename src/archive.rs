//! Safe unpacking and packing of the .tgz archives the director sends (packages, the rendered-templates
//! archive) and the agent uploads (compiled packages).
//!
//! Archive contents come from outside the VM, so unpacking treats every entry as hostile: paths are
//! normalised and refused if they are absolute or contain `..`; links may not point outside the
//! destination; devices and FIFOs are refused; and nothing is ever written through a symlink that an
//! earlier entry created. Parent directories are created here, one checked component at a time, rather
//! than by the tar crate's `unpack_in`, so that no path walk ever follows a symlink from the archive.
//!
//! Everything lands in a private sibling directory `<dest>.unpack-<uuid>` that is renamed onto `dest`
//! only when the whole archive was read without error (including the gzip trailer's CRC). A job or
//! package directory therefore either exists complete or not at all; on error the staging directory is
//! removed.
//!
//! Archive bombs (a gzip of zeros, a tiny sparse tar describing gigabytes) are stopped before they
//! take the disk below a reserve ([`reserve`]): each file entry's size (a sparse entry's real,
//! expanded size, since holes are written out) must fit in the space above the reserve before it is
//! created, and the space is checked again every [`SPACE_CHECK`] bytes written, for unpacks running
//! side by side. What was unpacked is then removed with the staging directory.
//!
//! Entries are streamed through one fixed buffer, so memory does not grow with file sizes; it grows
//! only with the number of directories (their modes and mtimes are applied at the end, because
//! creating children would otherwise change them) and with GNU/PAX long names, which the tar crate
//! reads whole.

use crate::error::Context as _;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::bufread::MultiGzDecoder;
use tar::{EntryType, Header};

/// Size of the one read/copy buffer; large enough that syscalls are not the bottleneck.
const BUF_SIZE: usize = 128 * 1024;

/// Permission bits kept on unpack: setuid, setgid and sticky bits from outside are dropped, because a
/// setuid binary planted by an archive would be a privilege escalation once the agent chowns to root.
const MODE_MASK: u32 = 0o777;

/// How often, in bytes written, an unpack checks the free space again.
pub const SPACE_CHECK: u64 = 8 * 1024 * 1024;
/// The largest reserve kept free on the destination's filesystem.
pub const RESERVE_MAX: u64 = 1024 * 1024 * 1024;

/// The space an unpack leaves free on a filesystem of `total` bytes: 5%, at most [`RESERVE_MAX`],
/// so the jobs on the VM never see a full data disk because of an archive.
pub fn reserve(total: u64) -> u64 {
    (total / 20).min(RESERVE_MAX)
}

/// Options for [`unpack`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpack<'a> {
    /// Only entries under this top-level directory (a job's name in the rendered-templates archive),
    /// with that directory stripped; `None` = everything. It exists because the director sends one
    /// archive for all jobs and each job is installed into its own directory (as the Go agent's `agent/applier` installs them).
    pub subdir: Option<&'a str>,
}

/// Unpacks a gzip'd (or plain) tar into `dest`, which must not exist: entries go to a sibling temp
/// dir that is renamed onto `dest` only when complete. Refuses absolute paths, `..`, links pointing
/// outside, device files/FIFOs; a leading "./" is accepted. Errors name the offending entry.
///
/// Gzip is recognised by its magic bytes rather than the file name because blobs are stored under
/// ids. File modes are kept without setuid/setgid/sticky bits; mtimes are kept for files and
/// directories (not for symlinks); ownership is ignored because the agent chowns afterwards. The
/// destination's own mode comes from the archive's root entry (`./` or the selected `subdir/`), else
/// 0755. An archive (or `subdir`) with no entries is an error, as with `tar` itself, because it
/// usually means the wrong blob or job name.
pub fn unpack(archive: &Path, dest: &Path, opts: &Unpack) -> Result<(), String> {
    let fail = |e: String| format!("unpacking {} into {}: {e}", archive.display(), dest.display());
    if let Some(subdir) = opts.subdir {
        if subdir.is_empty() || subdir == "." || subdir == ".." || subdir.contains('/') {
            return Err(fail(format!("subdir '{subdir}' is not a single directory name")));
        }
    }
    match fs::symlink_metadata(dest) {
        Ok(_) => return Err(fail("destination already exists".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(format!("checking destination: {e}"))),
    }
    let staging = Staging::create(dest).map_err(fail)?;
    let reader = open_decompressed(archive).map_err(fail)?;
    let mut extractor = Extractor::new(staging.path.clone(), opts.subdir);
    extractor.run(reader).map_err(fail)?;
    staging.commit(dest).map_err(fail)
}

/// Writes `dir`'s contents (relative paths "./...", modes kept, symlinks as links) as a tar stream to
/// `out`, for the caller to compress.
///
/// This is the compiled-package format (the Go agent's `agent/compiler`): `tar cf - -C dir .` in effect (the
/// compiler gzips it on several cores). Entries are written depth-first in sorted name order and with
/// zero uid/gid, so the same tree always gives the same bytes (and the same digest). `dir` itself may
/// be a symlink (the install target `packages/<name>` is one); links below it are stored, never
/// followed. Hard links are stored as separate files, and sockets, devices and FIFOs are an error
/// since a package cannot ship them.
pub fn pack_tar(dir: &Path, out: &mut dyn Write) -> Result<(), String> {
    let fail = |e: String| format!("packing {}: {e}", dir.display());
    let meta = fs::metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    let mut packer = Packer { builder: tar::Builder::new(out) };
    packer
        .append(header(&meta, EntryType::Directory, 0), b"./", None, io::empty())
        .map_err(|e| fail(e.to_string()))?;
    packer.walk(dir, b"./".to_vec()).map_err(fail)?;
    packer.builder.into_inner().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// The private staging directory; removed on drop unless committed, so every error path (and even a
/// panic) cleans up.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates `<dest>.unpack-<uuid>` next to `dest` (same filesystem, so the final rename is atomic),
    /// mode 0700 so nothing else can race entries into it while it fills.
    fn create(dest: &Path) -> Result<Staging, String> {
        let name = dest.file_name().ok_or("destination has no file name")?;
        let mut staging_name = name.to_os_string();
        staging_name.push(format!(".unpack-{}", crate::ids::uuid_v4()));
        let path = dest.with_file_name(staging_name);
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating staging directory {}", path.display()))?;
        Ok(Staging { path, committed: false })
    }

    /// Renames the finished tree onto `dest`, refusing to replace anything that appeared meanwhile.
    fn commit(mut self, dest: &Path) -> Result<(), String> {
        rename_noreplace(&self.path, dest).context("renaming into place")?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            remove_tree(&self.path);
        }
    }
}

/// Removes a staging tree, first making its directories writable in case read-only modes from the
/// archive were already applied.
fn remove_tree(path: &Path) {
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    make_dirs_writable(path);
    if let Err(e) = fs::remove_dir_all(path) {
        log::warn!("removing staging directory {}: {e}", path.display());
    }
}

/// Gives the owner full access to `dir` and every directory below it, without following symlinks.
fn make_dirs_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_dirs_writable(&entry.path());
        }
    }
}

/// `rename(2)` that fails instead of replacing an existing (empty) directory at `to`: plain rename
/// would silently swap out a directory another actor created after our existence check.
#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to_c = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // The raw system call: musl (the static release binary's C library) has no renameat2 wrapper.
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; the arguments
    // are renameat2's (dirfd, path, dirfd, path, flags).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Old kernels or filesystems without RENAME_NOREPLACE: check, then rename.
        Some(libc::ENOSYS) | Some(libc::EINVAL) => rename_checked(from, to),
        _ => Err(err),
    }
}

/// Portable fallback for [`rename_noreplace`]; leaves a small race window.
#[cfg(not(target_os = "linux"))]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rename_checked(from, to)
}

/// Refuses an existing `to`, then renames.
fn rename_checked(from: &Path, to: &Path) -> io::Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "destination already exists"));
    }
    fs::rename(from, to)
}

/// Opens the archive and, if it starts with the gzip magic bytes, decompresses it (multi-member
/// gzip included, as `gzip -d` does).
fn open_decompressed(archive: &Path) -> Result<Box<dyn Read>, String> {
    let file = File::open(archive).context("opening archive")?;
    let mut reader = BufReader::with_capacity(BUF_SIZE, file);
    let head = reader.fill_buf().context("reading archive")?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Splits an archive path into its components, dropping empty and "." ones (so "./a//b/" gives
/// `a`, `b`); refuses absolute paths and any `..`.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path refused");
    }
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("'..' component refused"),
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// Joins checked components under `root`.
fn join(root: &Path, parts: &[&[u8]]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts.iter().map(|p| OsStr::from_bytes(p)));
    path
}

/// Checks a symlink target for a link whose directory is `depth` levels below the destination.
///
/// The target may climb with leading `..` only as far as that depth, and after its first name it may
/// only descend. A `..` after a name is refused even when it looks harmless lexically, because the
/// name may itself be a symlink (`sub/a -> ..` then `sub/b -> a/../../x` climbs out through `a`),
/// and later entries may create such a link after this one. With this rule `..` is only ever applied
/// to real directories, so by induction every link resolves inside the destination.
fn check_symlink_target(target: &[u8], depth: usize) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("symlink with an empty target refused");
    }
    if target[0] == b'/' {
        return Err("symlink to an absolute path refused");
    }
    let mut ups = 0;
    let mut descended = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if descended => return Err("symlink target with '..' after a name refused"),
            b".." => {
                ups += 1;
                if ups > depth {
                    return Err("symlink pointing outside the destination refused");
                }
            }
            _ => descended = true,
        }
    }
    Ok(())
}

/// Attributes of a directory entry, applied after all entries are written.
struct DirAttrs {
    path: PathBuf,
    mode: u32,
    mtime: Option<u64>,
}

/// Writes entries into the staging root, one at a time.
struct Extractor<'a> {
    root: PathBuf,
    subdir: Option<&'a str>,
    buf: Vec<u8>,
    dirs: Vec<DirAttrs>,
    /// Components of the last parent directory known to be a real directory: entries come grouped by
    /// directory, and a checked directory can never later turn into a symlink (replacing a directory
    /// is refused), so the walk can be skipped for its siblings.
    checked_parent: Option<Vec<Vec<u8>>>,
    selected: usize,
    /// The staging root, opened to ask for the free space of its filesystem.
    space_probe: Option<File>,
}

impl<'a> Extractor<'a> {
    /// An extractor writing below `root`.
    fn new(root: PathBuf, subdir: Option<&'a str>) -> Self {
        Extractor {
            root,
            subdir,
            buf: vec![0; BUF_SIZE],
            dirs: Vec::new(),
            checked_parent: None,
            selected: 0,
            space_probe: None,
        }
    }

    /// Extracts every entry, verifies the stream to its end, then applies directory attributes.
    fn run(&mut self, reader: Box<dyn Read>) -> Result<(), String> {
        self.space_probe = Some(File::open(&self.root).context("opening the staging directory")?);
        let mut archive = tar::Archive::new(reader);
        let mut last = String::from("(none)");
        let entries = archive.entries().context("reading archive")?;
        for entry in entries {
            let mut entry = entry.with_context(|| format!("reading archive after entry '{last}'"))?;
            last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.entry(&mut entry).with_context(|| format!("entry '{last}'"))?;
        }
        // Read to the end so that a truncated or corrupt gzip trailer (CRC, length) is noticed even
        // though the tar end marker came first.
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .context("reading archive after its last entry")?;
        if self.selected == 0 {
            return Err(match self.subdir {
                Some(subdir) => format!("no entries under '{subdir}'"),
                None => "archive has no entries".into(),
            });
        }
        self.apply_dir_attrs()
    }

    /// Sets modes and mtimes of directory entries, deepest (latest listed) first, and defaults the
    /// root to 0755 when the archive did not describe it.
    fn apply_dir_attrs(&mut self) -> Result<(), String> {
        if !self.dirs.iter().any(|d| d.path == self.root) {
            self.dirs.insert(0, DirAttrs { path: self.root.clone(), mode: 0o755, mtime: None });
        }
        for dir in self.dirs.iter().rev() {
            if let Some(mtime) = dir.mtime {
                if let Ok(f) = File::open(&dir.path) {
                    set_mtime(&f, mtime);
                }
            }
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))
                .with_context(|| format!("setting mode of {}", dir.path.display()))?;
        }
        Ok(())
    }

    /// Normalises, selects and dispatches one entry by type.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), String> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(()); // e.g. `git archive`'s comment; carries nothing we apply
        }
        let raw = entry.path_bytes().into_owned();
        let mut parts = components(&raw)?;
        if let Some(subdir) = self.subdir {
            if parts.first() != Some(&subdir.as_bytes()) {
                return Ok(());
            }
            parts.remove(0);
        }
        self.selected += 1;
        let mode = entry.header().mode().context("bad mode")? & MODE_MASK;
        let mtime = entry.header().mtime().ok();
        match kind {
            EntryType::Directory => self.directory(&parts, mode, mtime),
            _ if parts.is_empty() => Err("only a directory may stand for the destination itself".into()),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &parts, mode, mtime)
            }
            EntryType::Symlink => self.symlink(entry, &parts),
            EntryType::Link => self.hard_link(entry, &parts),
            EntryType::Char | EntryType::Block => Err("device file refused".into()),
            EntryType::Fifo => Err("FIFO refused".into()),
            other => Err(format!("unsupported entry type {other:?}")),
        }
    }

    /// Creates a directory (or accepts an existing one) and records its attributes for the end.
    fn directory(&mut self, parts: &[&[u8]], mode: u32, mtime: Option<u64>) -> Result<(), String> {
        let path = match parts.split_last() {
            None => self.root.clone(),
            Some((last, parents)) => {
                let path = self.parents(parents)?.join(OsStr::from_bytes(last));
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err("would be written through a symlink".into());
                    }
                    Ok(_) => return Err("a non-directory already exists at this path".into()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(&path)?,
                    Err(e) => return Err(format!("checking {}: {e}", path.display())),
                }
                path
            }
        };
        self.dirs.push(DirAttrs { path, mode, mtime });
        Ok(())
    }

    /// Streams a regular file's data into a newly created file, then sets its mode and mtime.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        parts: &[&[u8]],
        mode: u32,
        mtime: Option<u64>,
    ) -> Result<(), String> {
        room(self.space_probe.as_ref(), entry.size(), 0)?;
        let path = self.leaf(parts)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let expected = (entry.header().entry_type() != EntryType::GNUSparse).then(|| entry.size());
        let written = copy(entry, &mut file, &mut self.buf)?;
        if expected.is_some_and(|size| written != size) {
            return Err(format!("archive truncated: {written} of {} bytes", entry.size()));
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode of {}", path.display()))?;
        if let Some(mtime) = mtime {
            set_mtime(&file, mtime);
        }
        Ok(())
    }

    /// Creates a symlink whose target is checked by [`check_symlink_target`].
    fn symlink<R: Read>(&mut self, entry: &tar::Entry<R>, parts: &[&[u8]]) -> Result<(), String> {
        let target = entry.link_name_bytes().ok_or("symlink without a target")?.into_owned();
        check_symlink_target(&target, parts.len() - 1)?;
        let path = self.leaf(parts)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
            .with_context(|| format!("creating symlink {}", path.display()))
    }

    /// Creates a hard link to a regular file this archive already extracted. Links to symlinks are
    /// refused: the copy would be resolved from a different directory, where its target may escape.
    fn hard_link<R: Read>(&mut self, entry: &tar::Entry<R>, parts: &[&[u8]]) -> Result<(), String> {
        let raw = entry.link_name_bytes().ok_or("hard link without a target")?.into_owned();
        let mut target = components(&raw).context("hard link target")?;
        if let Some(subdir) = self.subdir {
            if target.first() != Some(&subdir.as_bytes()) {
                return Err("hard link to outside the selected directory refused".into());
            }
            target.remove(0);
        }
        if target == parts {
            return Err("hard link to itself refused".into());
        }
        let source = self.existing_file(&target)?;
        let path = self.leaf(parts)?;
        fs::hard_link(&source, &path).with_context(|| format!("creating hard link {}", path.display()))
    }

    /// Resolves a hard link target without following symlinks; it must be a regular file.
    fn existing_file(&self, target: &[&[u8]]) -> Result<PathBuf, String> {
        if target.is_empty() {
            return Err("hard link to the destination itself refused".into());
        }
        let mut path = self.root.clone();
        for (i, part) in target.iter().enumerate() {
            path.push(OsStr::from_bytes(part));
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err("hard link to an entry not extracted before it refused".into());
                }
                Err(e) => return Err(format!("checking {}: {e}", path.display())),
            };
            let last = i + 1 == target.len();
            if !last && !meta.is_dir() {
                return Err("hard link target passing through a symlink or file refused".into());
            }
            if last && !meta.is_file() {
                return Err("hard link to something other than a regular file refused".into());
            }
        }
        Ok(path)
    }

    /// Makes sure every component of `parents` is a real directory below the root, creating missing
    /// ones and refusing symlinks, and returns the resulting path.
    fn parents(&mut self, parents: &[&[u8]]) -> Result<PathBuf, String> {
        let path = join(&self.root, parents);
        if self
            .checked_parent
            .as_ref()
            .is_some_and(|c| c.iter().map(Vec::as_slice).eq(parents.iter().copied()))
        {
            return Ok(path);
        }
        let mut walked = self.root.clone();
        for part in parents {
            walked.push(OsStr::from_bytes(part));
            match fs::symlink_metadata(&walked) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err("would be written through a symlink".into());
                }
                Ok(_) => return Err(format!("parent {} is not a directory", walked.display())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(&walked)?,
                Err(e) => return Err(format!("checking {}: {e}", walked.display())),
            }
        }
        self.checked_parent = Some(parents.iter().map(|p| p.to_vec()).collect());
        Ok(path)
    }

    /// Prepares the path for a non-directory entry: parents checked, and an earlier file or link at
    /// the same path removed (a later entry wins, as with `tar`), so the new one is created rather
    /// than written through whatever was there.
    fn leaf(&mut self, parts: &[&[u8]]) -> Result<PathBuf, String> {
        let (last, parents) = parts.split_last().ok_or("empty path")?;
        let path = self.parents(parents)?.join(OsStr::from_bytes(last));
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(format!("checking {}: {e}", path.display())),
            Ok(m) if m.is_dir() => Err("a directory already exists at this path".into()),
            Ok(_) => {
                fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
                Ok(path)
            }
        }
    }
}

/// Creates one directory; its final mode is set later if the archive lists it.
fn create_dir(path: &Path) -> Result<(), String> {
    DirBuilder::new().mode(0o755).create(path).with_context(|| format!("creating {}", path.display()))
}

/// Refuses to go on when `more` bytes would take the filesystem below its reserve. `written` is
/// what the current entry already wrote (only used in the message). Without a probe (or when the
/// filesystem cannot say) nothing is refused.
fn room(probe: Option<&File>, more: u64, written: u64) -> Result<(), String> {
    let Some((avail, total)) = probe.and_then(|p| crate::fsutil::space(p).ok()) else { return Ok(()) };
    let keep = reserve(total);
    if avail.saturating_sub(more) >= keep {
        return Ok(());
    }
    let what = if written == 0 {
        format!("needs {more} bytes")
    } else {
        format!("wrote {written} bytes and needs {more} more")
    };
    Err(format!(
        "refusing to fill the disk: the entry {what}, {avail} are free and {keep} are kept in reserve"
    ))
}

/// Copies an entry's data through the shared buffer; returns the byte count.
fn copy(src: &mut dyn Read, dst: &mut File, buf: &mut [u8]) -> Result<u64, String> {
    let mut total = 0u64;
    let mut next_check = SPACE_CHECK;
    loop {
        if total >= next_check {
            // Other unpacks (and jobs) share the disk: what fit at the start may not fit now.
            room(Some(dst), SPACE_CHECK, total)?;
            next_check += SPACE_CHECK;
        }
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading archive: {e}")),
        };
        dst.write_all(&buf[..n]).context("writing")?;
        total += n as u64;
    }
}

/// Sets a modification time, best effort: an out-of-range time in a header is not worth failing a
/// deployment for.
fn set_mtime(file: &File, mtime: u64) {
    if let Some(time) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(mtime)) {
        if let Err(e) = file.set_modified(time) {
            log::debug!("setting mtime {mtime}: {e}");
        }
    }
}

/// A header for one packed entry: type, size, permission bits and mtime from `meta`; ownership
/// zeroed because uids differ between VMs and the agent chowns after unpacking anyway.
fn header(meta: &Metadata, kind: EntryType, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Writes headers with names exactly as given: the tar crate's own path setters drop the "./"
/// prefix that compiled packages carry (the Go agent's installer detects it on the way in).
struct Packer<'w> {
    builder: tar::Builder<&'w mut dyn Write>,
}

impl Packer<'_> {
    /// Appends the contents of `dir` (whose archive name is `prefix`, ending in "/"), sorted by name.
    fn walk(&mut self, dir: &Path, prefix: Vec<u8>) -> Result<(), String> {
        let mut names = fs::read_dir(dir)
            .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>())
            .with_context(|| format!("listing {}", dir.display()))?;
        crate::order::sort(&mut names);
        for name in names {
            let path = dir.join(&name);
            let mut arc_name = prefix.clone();
            arc_name.extend_from_slice(name.as_bytes());
            self.path(&path, arc_name).with_context(|| path.display())?;
        }
        Ok(())
    }

    /// Appends one filesystem object (recursing into directories) without following symlinks.
    fn path(&mut self, path: &Path, mut arc_name: Vec<u8>) -> Result<(), String> {
        let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
        let kind = meta.file_type();
        if kind.is_dir() {
            arc_name.push(b'/');
            self.append(header(&meta, EntryType::Directory, 0), &arc_name, None, io::empty())
                .map_err(|e| e.to_string())?;
            self.walk(path, arc_name)
        } else if kind.is_symlink() {
            let target = fs::read_link(path).map_err(|e| e.to_string())?;
            let link = target.as_os_str().as_bytes();
            self.append(header(&meta, EntryType::Symlink, 0), &arc_name, Some(link), io::empty())
                .map_err(|e| e.to_string())
        } else if kind.is_file() {
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| e.to_string())?;
            let size = meta.len();
            let mut counted = Counted { inner: file.take(size), count: 0 };
            self.append(header(&meta, EntryType::Regular, size), &arc_name, None, &mut counted)
                .map_err(|e| e.to_string())?;
            if counted.count != size {
                return Err("file shrank while being packed".into());
            }
            Ok(())
        } else {
            Err("sockets, devices and FIFOs cannot be packed".into())
        }
    }

    /// Appends an entry named `name` (and linking to `link`), using GNU long-name records when a
    /// name does not fit the 100-byte header field.
    fn append(
        &mut self,
        mut header: Header,
        name: &[u8],
        link: Option<&[u8]>,
        data: impl Read,
    ) -> io::Result<()> {
        let fields = header.as_old_mut();
        if name.len() > fields.name.len() {
            self.long_record(EntryType::GNULongName, name)?;
        }
        fill(&mut header.as_old_mut().name, name);
        if let Some(link) = link {
            if link.len() > header.as_old().linkname.len() {
                self.long_record(EntryType::GNULongLink, link)?;
            }
            fill(&mut header.as_old_mut().linkname, link);
        }
        header.set_cksum();
        self.builder.append(&header, data)
    }

    /// Writes a GNU `././@LongLink` record carrying `value` for the entry that follows.
    fn long_record(&mut self, kind: EntryType, value: &[u8]) -> io::Result<()> {
        let mut header = Header::new_gnu();
        fill(&mut header.as_old_mut().name, b"././@LongLink");
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(value.len() as u64 + 1);
        header.set_cksum();
        self.builder.append(&header, value.chain(&[0u8][..]))
    }
}

/// Copies as much of `value` as fits into a NUL-padded header field.
fn fill(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    field[n..].fill(0);
}

/// Counts bytes read, so a file that shrinks while being packed is an error instead of a corrupt
/// archive (the header already promised its size).
struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
