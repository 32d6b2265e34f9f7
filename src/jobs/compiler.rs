//! Compiling a source package on a compilation VM (`compile_package` and
//! `compile_package_with_signed_url`, the Go agent's `agent/action/compile_package.go`, the Ruby agent's `compile_package`).
//!
//! The steps, and why each is done this way:
//!
//! 1. **Fetch and verify the source** (by blobstore id or signed URL) before anything is installed.
//!    Unlike the Ruby agent (its QUIRK), the digest is always checked: the blob is streamed through
//!    the verifier into a temp file under `<base>/data/tmp`, so a corrupt or swapped source never
//!    reaches `packaging` and a mismatch leaves nothing behind and uploads nothing.
//! 2. **Unpack** it into `<base>/data/compile/<name>` (`BOSH_COMPILE_TARGET`) with the same safe
//!    unpacker apply uses, since a source tarball comes from outside the VM.
//! 3. **Install the compiled dependencies** exactly as apply installs packages
//!    (`data/packages/<dep>/<hash>` plus the `packages/<dep>` link), because packaging scripts find
//!    them at `/var/vcap/packages/<dep>` and the compiled binaries keep those paths.
//! 4. **Create the install target** `data/packages/<name>/<sha1(version)>`, linked as
//!    `<base>/packages/<name>` (`BOSH_INSTALL_TARGET` is the link, so rpaths point at the stable
//!    name, as on the Go agent).
//! 5. **Run `bash -x packaging`** in the compile directory with a clean environment (below). Its
//!    output goes to `<base>/data/sys/log/compilation/<name>.{stdout,stderr}.log` (the same files
//!    as `<base>/sys/log/compilation/...` once the `sys` link exists), rewritten on each compile of
//!    that package and kept afterwards. On failure the error carries the last [`OUTPUT_TAIL`] bytes
//!    of each stream and names both files, because the director shows only the message and the
//!    VM may be deleted soon after.
//! 6. **Pack** the install target as a deterministic .tgz and upload it: to the blobstore (the
//!    result is `{"blobstore_id","sha1"}` with a fresh UUID and the sha1 hex) or with a PUT to the
//!    signed URL (the result is `{"sha1":"<sha1>;sha512:<hex>"}`). Packing is the agent's largest
//!    cost on big packages, so the tar stream is compressed on several cores at the fastest level
//!    into one ordinary gzip member ([`crate::gzip::ParallelGz`]) and hashed as it is written.
//! 7. **Clean up whatever happens**: the compile directory, the temp files, the install target and
//!    any dependency bundle this compile installed are removed, and every `packages/<name>` link it
//!    touched is put back as it was. Unlike the Go agent, which wipes `data/packages` on every
//!    compile, packages of a job running on the same VM are left alone: a dependency that was
//!    already installed is reused and kept, and a link that existed before is restored. The undo
//!    list runs on drop, so an early `?` return cleans up too. (While the compile runs, those links
//!    do point at the compile's bundles: `BOSH_INSTALL_TARGET` must be `packages/<name>`.)
//!
//! **The environment of `packaging`** is built from nothing; nothing is inherited from the agent,
//! whose environment (the stemcell's init system, `bosh-agent` flags, proxies, locale) differs
//! between VMs and would make the same source compile differently:
//!
//! | Variable | Value | Why |
//! |---|---|---|
//! | `PATH` | `/usr/sbin:/usr/bin:/sbin:/bin` | the system tools, as job scripts get ([`SCRIPT_PATH`]) |
//! | `HOME` | `<base>/data/tmp/compile-<name>/home` (empty) | no root dotfiles (`.gitconfig`, `.npmrc`, caches) leak into builds |
//! | `TMPDIR` | `<base>/data/tmp/compile-<name>/tmp` | the ephemeral disk: the root disk is small and `/tmp` may be `noexec` |
//! | `LANG` | `C.UTF-8` | stable tool messages and collation, UTF-8 file names |
//! | `BOSH_COMPILE_TARGET` | `<base>/data/compile/<name>` | the unpacked source, also the working directory |
//! | `BOSH_INSTALL_TARGET` | `<base>/packages/<name>` | where the package must install itself |
//! | `BOSH_PACKAGE_NAME` | the package name | |
//! | `BOSH_PACKAGE_VERSION` | the version the director sent (`<version>.<build>`) | |
//!
//! Both the `HOME` and `TMPDIR` directories are removed after the compile.

use super::applier::{switch_link, Installer, Layout, DEFAULT_PARALLEL};
use super::scripts::{self, SCRIPT_PATH};
use super::spec::{check_name, ApplySpec, PackageSpec};
use crate::archive::{self, Unpack};
use crate::blobstore::digest::{hex, sha1_hex, UploadDigests};
use crate::blobstore::{Blobs, FetchedBlob, MultiDigest};
use crate::cancel::CancelToken;
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::gzip::ParallelGz;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How much of the end of `packaging`'s stdout and of its stderr a failure message carries (as the
/// Go agent does): enough to show the failing command, small enough for the director's 1 MiB reply.
pub const OUTPUT_TAIL: usize = 10 * 1024;

/// The locale `packaging` runs with (see the module doc).
pub const COMPILE_LANG: &str = "C.UTF-8";

/// Where a blob comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A blob id in the configured blobstore (or the agent's local blob directories).
    Blobstore(String),
    /// A signed URL and the headers the director wants sent with it.
    Signed {
        /// The URL (its query string is a credential: never logged).
        url: String,
        /// Extra request headers (e.g. encryption keys).
        headers: BTreeMap<String, String>,
    },
}

/// Where the compiled package goes.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A new blob in the configured blobstore.
    Blobstore,
    /// A PUT to a signed URL.
    Signed {
        /// The URL to PUT to.
        url: String,
        /// Extra request headers.
        headers: BTreeMap<String, String>,
    },
}

/// One compile, as the director asks for it.
#[derive(Clone, Debug)]
pub struct Request {
    /// Package name (a single path segment).
    pub name: String,
    /// `<version>.<build>`.
    pub version: String,
    /// The source tarball.
    pub source: Source,
    /// The source tarball's multi-digest, always verified.
    pub digest: MultiDigest,
    /// Compiled dependencies, installed as packages for the duration of the compile.
    pub deps: Vec<PackageSpec>,
    /// Where the result goes.
    pub destination: Destination,
}

/// What the director gets back.
#[derive(Clone, Debug, PartialEq)]
pub enum Compiled {
    /// Uploaded to the blobstore under a fresh id.
    Blob {
        /// The new blob's id (a UUID, as the director checks).
        blobstore_id: String,
        /// sha1 hex of the compiled tarball.
        sha1: String,
    },
    /// PUT to a signed URL; the director names the blob itself.
    Signed {
        /// `"<sha1>;sha512:<hex>"`.
        digests: String,
    },
}

impl Compiled {
    /// The action's value, `{"result":{...}}`, in the shape the director reads.
    pub fn to_value(&self) -> Value {
        match self {
            Compiled::Blob { blobstore_id, sha1 } => {
                json!({"result": {"blobstore_id": blobstore_id, "sha1": sha1}})
            }
            Compiled::Signed { digests } => json!({"result": {"sha1": digests}}),
        }
    }
}

/// Runs compiles against one layout and blobstore.
pub struct Compiler<'a> {
    /// Directory layout.
    pub dirs: &'a Dirs,
    /// Where sources and dependencies come from and results go.
    pub blobs: &'a Blobs,
    /// Stops `packaging` (its whole process group) when triggered.
    pub cancel: &'a CancelToken,
}

impl Compiler<'_> {
    /// Compiles one package; errors start with `Compiling package <name>: `.
    pub fn compile(&self, req: &Request) -> Result<Compiled, String> {
        self.run(req).with_context(|| format!("Compiling package {}", req.name))
    }

    fn run(&self, req: &Request) -> Result<Compiled, String> {
        check_name("package name", &req.name)?;
        if req.version.is_empty() {
            return Err("the package version is empty".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &req.deps {
            check_name("dependency name", &d.name)?;
            if d.name == req.name {
                return Err(format!("package {} depends on itself", req.name));
            }
            if !seen.insert(d.name.as_str()) {
                return Err(format!("dependency {} is named twice", d.name));
            }
        }
        let tmp = self.dirs.data_tmp();
        create_dir(&tmp)?;
        let mut undo = Undo::default();

        // 1. The source, verified before anything else happens.
        let mut phases = Phases::start();
        let source = self.fetch_source(req, &tmp)?;
        phases.mark("fetch");

        // 2. The compile directory.
        let compile_root = self.dirs.compile();
        undo.created_dir(&compile_root)?;
        let compile_dir = compile_root.join(&req.name);
        remove_leftover(&compile_dir)?;
        undo.push(Step::RemoveTree(compile_dir.clone()));
        archive::unpack(source.path(), &compile_dir, &Unpack { subdir: None })
            .context("Unpacking source package")?;
        drop(source);
        phases.mark("unpack");

        // 3. Dependencies, installed like apply installs packages; reused when already there.
        undo.created_dir(&self.dirs.data_packages())?;
        undo.created_dir(&self.dirs.packages())?;
        self.install_deps(&req.deps, &mut undo)?;
        phases.mark("dependencies");

        // 4. The install target and its link.
        let install_parent = self.dirs.data_packages().join(&req.name);
        undo.created_dir(&install_parent)?;
        let install_dir = install_parent.join(sha1_hex(req.version.as_bytes()));
        remove_leftover(&install_dir)?;
        undo.push(Step::RemoveTree(install_dir.clone()));
        create_dir(&install_dir)?;
        fs::set_permissions(&install_dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", install_dir.display()))?;
        let install_link = self.dirs.package(&req.name);
        undo.link(&install_link, &install_dir)?;

        // 5. packaging.
        if compile_dir.join("packaging").is_file() {
            let scratch = tmp.join(format!("compile-{}", req.name));
            remove_leftover(&scratch)?;
            undo.push(Step::RemoveTree(scratch.clone()));
            self.run_packaging(req, &compile_dir, &install_link, &scratch)?;
        }
        phases.mark("packaging");

        // 6. Pack and upload.
        let tgz = tmp.join(format!("compiled-{}-{}.tgz", req.name, crate::ids::uuid_v4()));
        undo.push(Step::RemoveFile(tgz.clone()));
        let signed = matches!(req.destination, Destination::Signed { .. });
        let digests = pack_to(&install_dir, &tgz, signed)?;
        phases.mark("pack");
        let compiled = match &req.destination {
            Destination::Blobstore => {
                let (blobstore_id, sha1) =
                    self.blobs.upload_hashed(&tgz, &digests.sha1).context("Uploading compiled package")?;
                Compiled::Blob { blobstore_id, sha1 }
            }
            Destination::Signed { url, headers } => {
                let digests = self
                    .blobs
                    .upload_signed_hashed(url, headers, &tgz, &digests)
                    .context("Uploading compiled package")?;
                Compiled::Signed { digests }
            }
        };
        phases.mark("upload");
        log::info!("Compiled package {} {} {phases}", req.name, req.version);
        Ok(compiled)
        // 7. `undo` drops here: links restored, compile-created directories and files removed.
    }

    fn fetch_source(&self, req: &Request, tmp: &Path) -> Result<FetchedBlob, String> {
        let fetched = match &req.source {
            Source::Blobstore(id) => {
                self.blobs.fetch(id, &req.digest, tmp).with_context(|| format!("Fetching package blob {id}"))
            }
            Source::Signed { url, headers } => self.blobs.fetch_signed(url, headers, &req.digest, tmp),
        };
        fetched.with_context(|| format!("Fetching package {}", req.name))
    }

    /// Installs the dependencies not yet installed (in parallel, as apply does) and links them all,
    /// recording how to undo each step.
    fn install_deps(&self, deps: &[PackageSpec], undo: &mut Undo) -> Result<(), String> {
        if deps.is_empty() {
            return Ok(());
        }
        let layout = Layout { dirs: self.dirs };
        let mut spec = ApplySpec::default();
        for d in deps {
            let bundle = layout.package_bundle(d);
            if !bundle.dir.is_dir() {
                if let Some(parent) = bundle.dir.parent() {
                    undo.created_dir(parent)?;
                }
                undo.push(Step::RemoveTree(bundle.dir));
            }
            spec.packages.insert(d.name.clone(), d.clone());
        }
        Installer { dirs: self.dirs, blobs: self.blobs, parallel: DEFAULT_PARALLEL }
            .install_all(&spec)
            .context("Installing dependencies")?;
        for d in deps {
            let bundle = layout.package_bundle(d);
            undo.link(&bundle.link, &bundle.dir)?;
        }
        Ok(())
    }

    fn run_packaging(
        &self,
        req: &Request,
        compile_dir: &Path,
        install_link: &Path,
        scratch: &Path,
    ) -> Result<(), String> {
        let (home, tmpdir) = (scratch.join("home"), scratch.join("tmp"));
        for d in [&home, &tmpdir] {
            create_dir(d)?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod {}", d.display()))?;
        }
        let logs = self.dirs.compile_logs();
        let (out_log, err_log) = log_files(self.dirs, &req.name);
        for f in [&out_log, &err_log] {
            match fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing old log {}: {e}", f.display())),
            }
        }
        let env = compile_env(req, compile_dir, install_link, &home, &tmpdir);
        let mut cmd = Command::new(find_bash()?);
        cmd.arg("-x")
            .arg("packaging")
            .current_dir(compile_dir)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .process_group(0);
        log::info!("Running packaging of {} {} (logs in {})", req.name, req.version, logs.display());
        let code =
            scripts::run_logged(cmd, &out_log, &err_log, self.cancel).context("Running packaging script")?;
        if code == 0 {
            return Ok(());
        }
        Err(format!(
            "Running packaging script: Command exited with {code}; Stdout: {}, Stderr: {} \
             (full output on the VM in {} and {})",
            tail(&out_log, OUTPUT_TAIL),
            tail(&err_log, OUTPUT_TAIL),
            out_log.display(),
            err_log.display()
        ))
    }
}

/// How long each step of a compile took, logged so an operator can see where a slow compile spent
/// its time (the agent's own steps versus `packaging`).
struct Phases {
    start: std::time::Instant,
    last: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn start() -> Phases {
        let now = std::time::Instant::now();
        Phases { start: now, last: now, done: Vec::new() }
    }

    fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "in {:.2} s (", self.start.elapsed().as_secs_f64())?;
        for (i, (name, d)) in self.done.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {:.2} s", d.as_secs_f64())?;
        }
        f.write_str(")")
    }
}

/// The stdout and stderr log files of `name`'s last compile.
pub fn log_files(dirs: &Dirs, name: &str) -> (PathBuf, PathBuf) {
    let dir = dirs.compile_logs();
    (dir.join(format!("{name}.stdout.log")), dir.join(format!("{name}.stderr.log")))
}

/// The whole environment of `packaging` (see the table in the module doc).
fn compile_env(
    req: &Request,
    compile_dir: &Path,
    install_link: &Path,
    home: &Path,
    tmpdir: &Path,
) -> BTreeMap<String, String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    BTreeMap::from([
        ("PATH".to_string(), SCRIPT_PATH.to_string()),
        ("HOME".to_string(), s(home)),
        ("TMPDIR".to_string(), s(tmpdir)),
        ("LANG".to_string(), COMPILE_LANG.to_string()),
        ("BOSH_COMPILE_TARGET".to_string(), s(compile_dir)),
        ("BOSH_INSTALL_TARGET".to_string(), s(install_link)),
        ("BOSH_PACKAGE_NAME".to_string(), req.name.clone()),
        ("BOSH_PACKAGE_VERSION".to_string(), req.version.clone()),
    ])
}

/// `bash` from the scripts' PATH, resolved here so the agent's own PATH plays no part.
fn find_bash() -> Result<PathBuf, String> {
    SCRIPT_PATH
        .split(':')
        .map(|d| Path::new(d).join("bash"))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("bash not found in {SCRIPT_PATH}"))
}

/// The last `cap` bytes of a log file, marked when cut; a missing file reads as empty.
pub fn tail(path: &Path, cap: usize) -> String {
    let read = || -> io::Result<(Vec<u8>, u64)> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(cap as u64);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity(cap.min(len as usize));
        f.take(cap as u64).read_to_end(&mut buf)?;
        Ok((buf, len))
    };
    match read() {
        Ok((buf, len)) if (buf.len() as u64) < len => {
            // Start at a line boundary when there is one, so the first line shown is whole.
            let from = buf.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            let kept = &buf[from..];
            format!("[truncated: last {} of {len} bytes]\n{}", kept.len(), String::from_utf8_lossy(kept))
        }
        Ok((buf, _)) => String::from_utf8_lossy(&buf).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => format!("[cannot read {}: {e}]", path.display()),
    }
}

/// Packs `dir` into the .tgz `out` with [`ParallelGz`] at the fastest level (a compiled package is
/// unpacked once per VM; time on the compilation VM is what the operator waits for). No fsync: the file is a temp file
/// uploaded at once, and a crash loses the compile either way.
///
/// The sha1 (and, for signed URLs, the sha512) of the compressed bytes is computed as they are
/// written, on the writer thread while the workers compress, so the upload need not read the file
/// again; sha512 is skipped when nobody needs it.
fn pack_to(dir: &Path, out: &Path, with_sha512: bool) -> Result<UploadDigests, String> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, file),
        sha1: ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
        sha512: with_sha512.then(|| ring::digest::Context::new(&ring::digest::SHA512)),
    };
    let mut gz = ParallelGz::new(&mut w, flate2::Compression::fast(), crate::gzip::threads())
        .context("Packing compiled package")?;
    archive::pack_tar(dir, &mut gz).context("Packing compiled package")?;
    gz.finish().context("Packing compiled package")?;
    w.inner.flush().with_context(|| format!("writing {}", out.display()))?;
    Ok(UploadDigests {
        sha1: hex(w.sha1.finish().as_ref()),
        sha512: w.sha512.map(|c| hex(c.finish().as_ref())).unwrap_or_default(),
    })
}

/// Passes bytes on and hashes them with the upload digests.
struct Hashing<W> {
    inner: W,
    sha1: ring::digest::Context,
    sha512: Option<ring::digest::Context>,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha1.update(&buf[..n]);
        if let Some(c) = &mut self.sha512 {
            c.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn create_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Removes what an interrupted earlier compile left at a path only compiles create.
fn remove_leftover(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    }
    .with_context(|| format!("removing leftover {}", path.display()))
}

/// One thing to put back after a compile.
#[derive(Debug)]
enum Step {
    /// Remove a directory tree this compile created.
    RemoveTree(PathBuf),
    /// Remove a directory this compile created, if it is empty again.
    RemoveIfEmpty(PathBuf),
    /// Remove a file this compile created.
    RemoveFile(PathBuf),
    /// Point a link back where it pointed before, or remove it if there was none.
    RestoreLink { link: PathBuf, previous: Option<PathBuf> },
}

/// The undo list, run in reverse on drop so every exit path (success, error, `?`) cleans up.
#[derive(Default)]
struct Undo(Vec<Step>);

impl Undo {
    fn push(&mut self, step: Step) {
        self.0.push(step);
    }

    /// Creates `dir` (and parents) if missing, and records its removal once empty.
    fn created_dir(&mut self, dir: &Path) -> Result<(), String> {
        if !dir.is_dir() {
            create_dir(dir)?;
            self.push(Step::RemoveIfEmpty(dir.to_path_buf()));
        }
        Ok(())
    }

    /// Switches `link` to `target`, recording where it pointed before. A real directory in the way
    /// is an error: it is not ours to replace.
    fn link(&mut self, link: &Path, target: &Path) -> Result<(), String> {
        let previous = match fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => {
                Some(fs::read_link(link).with_context(|| format!("reading link {}", link.display()))?)
            }
            Ok(_) => return Err(format!("{} exists and is not a link", link.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("checking {}: {e}", link.display())),
        };
        self.push(Step::RestoreLink { link: link.to_path_buf(), previous });
        switch_link(link, target)
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(step) = self.0.pop() {
            let result = match &step {
                Step::RemoveTree(p) => fs::remove_dir_all(p),
                Step::RemoveIfEmpty(p) => match fs::remove_dir(p) {
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
                    other => other,
                },
                Step::RemoveFile(p) => fs::remove_file(p),
                Step::RestoreLink { link, previous: Some(target) } => {
                    switch_link(link, target).map_err(io::Error::other)
                }
                Step::RestoreLink { link, previous: None } => match fs::symlink_metadata(link) {
                    Ok(m) if m.file_type().is_symlink() => fs::remove_file(link),
                    _ => Ok(()),
                },
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("Cleaning up after compile ({step:?}): {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_single_segments() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(check_name("package name", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("package name", "ruby-3.2_x").is_ok());
    }

    #[test]
    fn tail_keeps_the_end_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        fs::write(&p, b"short").unwrap();
        assert_eq!(tail(&p, 10), "short");
        fs::write(&p, b"0123456789abcdef").unwrap();
        assert_eq!(tail(&p, 4), "[truncated: last 4 of 16 bytes]\ncdef");
        fs::write(&p, b"line one\nline two\n").unwrap();
        assert_eq!(tail(&p, 12), "[truncated: last 9 of 18 bytes]\nline two\n");
        assert_eq!(tail(&dir.path().join("none"), 4), "");
    }

    #[test]
    fn undo_restores_links_and_removes_only_what_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new/v1");
        fs::create_dir_all(&old).unwrap();
        let link = dir.path().join("packages/p");
        switch_link(&link, &old).unwrap();
        let fresh = dir.path().join("packages/q");
        {
            let mut undo = Undo::default();
            undo.created_dir(new.parent().unwrap()).unwrap();
            undo.push(Step::RemoveTree(new.clone()));
            create_dir(&new).unwrap();
            undo.link(&link, &new).unwrap();
            undo.link(&fresh, &new).unwrap();
            assert_eq!(fs::read_link(&link).unwrap(), new);
        }
        assert_eq!(fs::read_link(&link).unwrap(), old);
        assert!(fs::symlink_metadata(&fresh).is_err());
        assert!(!dir.path().join("new").exists() && old.is_dir());
    }

    #[test]
    fn the_environment_is_exactly_the_documented_one() {
        let req = Request {
            name: "p".into(),
            version: "1.2".into(),
            source: Source::Blobstore("id".into()),
            digest: MultiDigest::sha1("0000000000000000000000000000000000000000"),
            deps: Vec::new(),
            destination: Destination::Blobstore,
        };
        let env = compile_env(&req, Path::new("/c"), Path::new("/i"), Path::new("/h"), Path::new("/t"));
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "BOSH_COMPILE_TARGET",
                "BOSH_INSTALL_TARGET",
                "BOSH_PACKAGE_NAME",
                "BOSH_PACKAGE_VERSION",
                "HOME",
                "LANG",
                "PATH",
                "TMPDIR"
            ]
        );
        assert_eq!(env["BOSH_PACKAGE_VERSION"], "1.2");
        assert_eq!(env["PATH"], SCRIPT_PATH);
    }
}
