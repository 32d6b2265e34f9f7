//! Installing what an apply spec names: compiled packages under `data/packages/<name>/<hash>`, jobs
//! (from the rendered-templates archive) under `data/jobs/<name>/<hash>`, with `packages/<name>` and
//! `jobs/<name>` symlinks switched atomically (the Go agent's layout). `prepare` downloads and unpacks in
//! parallel without switching anything; `apply` does the same, then switches the links, removes what
//! the spec no longer names, and records the spec. A bundle that is already installed is skipped, so
//! applying the same spec twice is cheap.
//!
//! Ownership is the Go agent's, because jobs run as `vcap`: bundles and the links' directories are
//! `root:vcap`; inside a job bundle directories and `bin/**` are 0750 and other files 0640; package
//! bundles are 0755 with their contents as the archive has them; a job's `sys/log`, `sys/run` and
//! `data` directories are `root:vcap` 0770, made only when missing and never reset afterwards.

use super::spec::{ApplySpec, PackageSpec, TemplateSpec};
use crate::archive::{self, Unpack};
use crate::blobstore::{Blobs, MultiDigest};
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::owner::{self, Group};
use crate::sync::lock;
use ring::digest::SHA1_FOR_LEGACY_USE_ONLY;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// How many packages are downloaded and unpacked at once when the spec does not say
/// (`env.bosh.parallel`).
pub const DEFAULT_PARALLEL: usize = 5;

/// Where bundles live and how they are enabled; needs no blobstore.
pub struct Layout<'a> {
    /// Directory layout.
    pub dirs: &'a Dirs,
}

/// Downloads and unpacks bundles for one spec.
pub struct Installer<'a> {
    /// Directory layout.
    pub dirs: &'a Dirs,
    /// Where blobs come from.
    pub blobs: &'a Blobs,
    /// Parallel downloads.
    pub parallel: usize,
}

/// A bundle's installed location and the link that enables it.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// `data/<jobs|packages>/<name>/<hash>`.
    pub dir: PathBuf,
    /// `<jobs|packages>/<name>`.
    pub link: PathBuf,
}

/// The install directory name: sha1 of `"<version>-<digest>"`, as the Go agent names them, so either
/// agent recognises the other's installs.
pub fn bundle_hash(version: &str, digest: &str) -> String {
    let d = ring::digest::digest(&SHA1_FOR_LEGACY_USE_ONLY, format!("{version}-{digest}").as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Layout<'_> {
    /// Where a package lives and is linked.
    pub fn package_bundle(&self, p: &PackageSpec) -> Bundle {
        let digest = p.sha1.clone().unwrap_or_default();
        Bundle {
            dir: self.dirs.data_packages().join(&p.name).join(bundle_hash(&p.version, &digest)),
            link: self.dirs.package(&p.name),
        }
    }

    /// Where a job lives and is linked.
    pub fn job_bundle(&self, job: &TemplateSpec, archive_digest: &str) -> Bundle {
        Bundle {
            dir: self.dirs.data_jobs().join(&job.name).join(bundle_hash(&job.version, archive_digest)),
            link: self.dirs.job(&job.name),
        }
    }
}

impl Installer<'_> {
    fn layout(&self) -> Layout<'_> {
        Layout { dirs: self.dirs }
    }

    /// Downloads and unpacks every package and job not yet installed; switches nothing.
    pub fn install_all(&self, spec: &ApplySpec) -> Result<(), String> {
        let packages: Vec<&PackageSpec> = spec.packages.values().collect();
        let work = Mutex::new(packages.into_iter());
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..self.parallel.clamp(1, 16) {
                s.spawn(|| loop {
                    let next = lock(&work).next();
                    let Some(p) = next else { break };
                    if let Err(e) = self.install_package(p) {
                        lock(&errors).push(e);
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap_or_else(PoisonError::into_inner);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        self.install_jobs(spec)
    }

    fn install_package(&self, p: &PackageSpec) -> Result<(), String> {
        let bundle = self.layout().package_bundle(p);
        if bundle.dir.is_dir() {
            return Ok(());
        }
        let digest_text = p
            .sha1
            .as_deref()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| format!("package {} has no sha1", p.name))?;
        let digest = MultiDigest::parse(digest_text).with_context(|| format!("package {}", p.name))?;
        let tmp = self.tmp_dir()?;
        let blob = match (p.signed_url.as_deref().filter(|u| !u.is_empty()), p.blobstore_id.as_deref()) {
            (Some(url), _) => {
                let headers = p.blobstore_headers.clone().unwrap_or_default();
                self.blobs.fetch_signed(url, &headers, &digest, &tmp)
            }
            (None, Some(id)) if !id.is_empty() => self.blobs.fetch(id, &digest, &tmp),
            _ => Err("neither blobstore_id nor signed_url given".into()),
        }
        .with_context(|| format!("Fetching package {}", p.name))?;
        let vcap = Group::vcap(self.dirs);
        install_parent(&bundle.dir, 0o755, vcap)?;
        archive::unpack(blob.path(), &bundle.dir, &Unpack { subdir: None })
            .with_context(|| format!("Installing package {}", p.name))?;
        owner::set_mode(&bundle.dir, 0o755)?;
        vcap.give(&bundle.dir)
    }

    fn install_jobs(&self, spec: &ApplySpec) -> Result<(), String> {
        let jobs = spec.jobs();
        let Some(archive_ref) = spec.archive() else { return Ok(()) };
        let pending: Vec<&TemplateSpec> =
            jobs.iter().filter(|j| !self.layout().job_bundle(j, &archive_ref.sha1).dir.is_dir()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let digest = MultiDigest::parse(&archive_ref.sha1).context("rendered templates archive")?;
        let tmp = self.tmp_dir()?;
        let blob = self
            .blobs
            .fetch(&archive_ref.blobstore_id, &digest, &tmp)
            .context("Fetching rendered templates archive")?;
        let vcap = Group::vcap(self.dirs);
        for job in pending {
            let bundle = self.layout().job_bundle(job, &archive_ref.sha1);
            install_parent(&bundle.dir, 0o750, vcap)?;
            archive::unpack(blob.path(), &bundle.dir, &Unpack { subdir: Some(&job.name) })
                .with_context(|| format!("Installing job {}", job.name))?;
            fix_job_permissions(&bundle.dir, vcap).with_context(|| format!("Installing job {}", job.name))?;
        }
        Ok(())
    }

    fn tmp_dir(&self) -> Result<PathBuf, String> {
        let tmp = self.dirs.data_tmp();
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(tmp)
    }
}

impl Layout<'_> {
    /// Switches the links to this spec's bundles, links each job's packages and creates the jobs'
    /// log, run and data directories. Removes nothing: the bundles the recorded spec names must
    /// survive until the new spec is recorded ([`Layout::prune`] comes after), so that an agent killed
    /// in between can switch back to them at its next start ([`Layout::repair`]).
    pub fn enable(&self, spec: &ApplySpec) -> Result<(), String> {
        let vcap = Group::vcap(self.dirs);
        vcap.dir(&self.dirs.packages(), 0o755)?;
        vcap.dir(&self.dirs.jobs(), 0o750)?;
        for p in spec.packages.values() {
            let b = self.package_bundle(p);
            switch_link(&b.link, &b.dir)?;
        }
        if let Some(archive_ref) = spec.archive() {
            for job in spec.jobs() {
                let b = self.job_bundle(&job, &archive_ref.sha1);
                self.link_job_packages(&b.dir, spec, vcap)?;
                self.create_job_dirs(&job.name, vcap)?;
                switch_link(&b.link, &b.dir)?;
            }
        }
        switch_link(&self.dirs.sys(), &self.dirs.data_sys())
    }

    /// The bundle directories a spec names: (packages, jobs).
    fn kept(&self, spec: &ApplySpec) -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>) {
        let packages = spec.packages.values().map(|p| self.package_bundle(p).dir).collect();
        let jobs = match spec.archive() {
            Some(a) => spec.jobs().iter().map(|j| self.job_bundle(j, &a.sha1).dir).collect(),
            None => BTreeSet::new(),
        };
        (packages, jobs)
    }

    /// Removes every bundle and link the (recorded) spec no longer names; never fails the apply.
    pub fn prune(&self, spec: &ApplySpec) {
        let (packages, jobs) = self.kept(spec);
        drop_links(&self.dirs.packages(), &packages);
        drop_links(&self.dirs.jobs(), &jobs);
        prune_bundles(&self.dirs.data_packages(), &packages);
        prune_bundles(&self.dirs.data_jobs(), &jobs);
    }

    /// At start: makes the links agree with the recorded spec, after an agent killed mid-apply left
    /// some switched to bundles of a spec it never recorded. Every bundle the recorded spec names
    /// still exists, because pruning only follows recording; a link to a bundle that is gone is
    /// left as it is, and logged. Returns how many links were changed.
    pub fn repair(&self, spec: &ApplySpec) -> usize {
        let mut bundles: Vec<Bundle> = spec.packages.values().map(|p| self.package_bundle(p)).collect();
        if let Some(a) = spec.archive() {
            bundles.extend(spec.jobs().iter().map(|j| self.job_bundle(j, &a.sha1)));
        }
        let mut changed = 0;
        for b in &bundles {
            if fs::read_link(&b.link).is_ok_and(|t| t == b.dir) {
                continue;
            }
            if !b.dir.is_dir() {
                log::warn!("repair: {} is gone; leaving {} as it is", b.dir.display(), b.link.display());
                continue;
            }
            match switch_link(&b.link, &b.dir) {
                Ok(()) => changed += 1,
                Err(e) => log::warn!("repair: {e}"),
            }
        }
        let (packages, jobs) = self.kept(spec);
        changed += drop_links(&self.dirs.packages(), &packages) + drop_links(&self.dirs.jobs(), &jobs);
        if changed > 0 {
            log::warn!("repair: {changed} link(s) switched back to the recorded spec (killed mid-apply)");
        }
        changed
    }

    fn link_job_packages(&self, job_dir: &Path, spec: &ApplySpec, vcap: Group) -> Result<(), String> {
        let dir = job_dir.join("packages");
        vcap.dir(&dir, 0o750)?;
        for p in spec.packages.values() {
            switch_link(&dir.join(&p.name), &self.package_bundle(p).dir)?;
        }
        Ok(())
    }

    /// A job's `sys/log/<job>`, `sys/run/<job>` and `data/<job>`: `root:vcap` 0770, made only when
    /// missing (the Go agent's `CreateDirectories`), so a job's own changes survive every apply.
    fn create_job_dirs(&self, job: &str, vcap: Group) -> Result<(), String> {
        for d in [self.dirs.job_log(job), self.dirs.job_run(job), self.dirs.job_data(job)] {
            vcap.new_dir(&d, 0o770)?;
        }
        Ok(())
    }

    /// At boot, the directories of every job in the applied spec (`data/sys/run` is a fresh tmpfs
    /// after a reboot, and `data` may be a fresh disk), before monit starts the jobs.
    pub fn restore_job_dirs(&self) -> Result<(), String> {
        let spec = ApplySpec::from_value(&super::spec::load(self.dirs)?)?;
        let vcap = Group::vcap(self.dirs);
        for job in spec.jobs() {
            self.create_job_dirs(&job.name, vcap)
                .with_context(|| format!("directories of job {}", job.name))?;
        }
        Ok(())
    }
}

/// Creates a bundle's `<name>` directory with `mode` when missing and gives it to `root:vcap`, as
/// the Go agent's bundle installer does with the directory and its parent.
fn install_parent(dir: &Path, mode: u32, vcap: Group) -> Result<(), String> {
    match dir.parent() {
        Some(parent) => vcap.dir(parent, mode),
        None => Ok(()),
    }
}

/// The Go agent's permission fix of a freshly unpacked job: every entry `root:vcap`, directories and
/// everything under `bin/` 0750 (scripts must run whatever the archive said), other files 0640.
/// Unlike the Go agent, symlinks are neither followed nor changed: a link in a rendered archive must
/// not make the agent chmod whatever it points at.
fn fix_job_permissions(dir: &Path, vcap: Group) -> Result<(), String> {
    fn walk(path: &Path, in_bin: bool, vcap: Group) -> Result<(), String> {
        let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        vcap.give(path)?;
        if !meta.is_dir() {
            return owner::set_mode(path, if in_bin { 0o750 } else { 0o640 });
        }
        owner::set_mode(path, 0o750)?;
        for e in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            let e = e.with_context(|| format!("listing {}", path.display()))?;
            walk(&e.path(), in_bin, vcap)?;
        }
        Ok(())
    }
    vcap.give(dir)?;
    owner::set_mode(dir, 0o750)?;
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        walk(&e.path(), e.file_name() == "bin", vcap)?;
    }
    Ok(())
}

pub use crate::fsutil::switch_link;

/// Removes every `<link_root>/<name>` link that does not point into `keep`; returns how many.
fn drop_links(link_root: &Path, keep: &BTreeSet<PathBuf>) -> usize {
    let mut dropped = 0;
    for l in fs::read_dir(link_root).into_iter().flatten().flatten() {
        let path = l.path();
        if fs::read_link(&path).is_ok_and(|target| !keep.contains(&target)) && fs::remove_file(&path).is_ok()
        {
            dropped += 1;
        }
    }
    dropped
}

/// Removes every `<data_root>/<name>/<hash>` not in `keep` (and the staging directories an unpack
/// killed mid-way left beside them). Only what the applier creates is touched: a file, or a
/// directory not named like a bundle, is left alone (and logged), and a removal that fails is
/// logged, never failing the apply, so one stray entry cannot break every later apply.
fn prune_bundles(data_root: &Path, keep: &BTreeSet<PathBuf>) {
    let Ok(names) = fs::read_dir(data_root) else { return };
    for name in names.flatten() {
        if !name.file_type().is_ok_and(|t| t.is_dir()) {
            log::warn!("pruning: leaving {} alone (not a bundle directory)", name.path().display());
            continue;
        }
        let Ok(versions) = fs::read_dir(name.path()) else { continue };
        let mut left = 0;
        for v in versions.flatten() {
            let path = v.path();
            let ours = v.file_type().is_ok_and(|t| t.is_dir()) && is_bundle_dir_name(&v.file_name());
            if keep.contains(&path) || !ours {
                left += 1;
                if !ours {
                    log::warn!("pruning: leaving {} alone (not a bundle)", path.display());
                }
            } else if let Err(e) = fs::remove_dir_all(&path) {
                left += 1;
                log::warn!("pruning: removing {}: {e}", path.display());
            }
        }
        if left == 0 {
            let _ = fs::remove_dir(name.path());
        }
    }
}

/// A bundle directory (`<40 hex>`, see [`bundle_hash`]) or the staging directory of its unpack
/// (`<40 hex>.unpack-<uuid>`, left behind when the agent was killed mid-way).
fn is_bundle_dir_name(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    let (hash, rest) = name.split_at(name.len().min(40));
    hash.len() == 40
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && (rest.is_empty() || rest.starts_with(".unpack-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_hash_matches_the_go_agent_naming() {
        // printf '1.0-abc' | sha1sum
        assert_eq!(bundle_hash("1.0", "abc"), "d2c175796db2fd6e4fea7bf223860d10d541adfc");
        assert_ne!(bundle_hash("1.0", "abc"), bundle_hash("1.1", "abc"));
    }

    #[test]
    fn job_bundles_get_the_go_agents_modes_and_symlinks_are_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        let outside = dir.path().join("outside");
        fs::write(&outside, "secret").unwrap();
        owner::set_mode(&outside, 0o600).unwrap();
        for (rel, mode) in
            [("bin/ctl", 0o644), ("bin/sub/helper", 0o600), ("config/x.sh", 0o755), ("monit", 0o600)]
        {
            let p = job.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, "x").unwrap();
            owner::set_mode(&p, mode).unwrap();
        }
        std::os::unix::fs::symlink(&outside, job.join("config/link")).unwrap();
        owner::set_mode(&job.join("config"), 0o700).unwrap();
        fix_job_permissions(&job, Group::default()).unwrap();
        let mode = |rel: &str| fs::metadata(job.join(rel)).unwrap().permissions().mode() & 0o7777;
        for (rel, want) in [
            ("", 0o750),
            ("bin", 0o750),
            ("bin/ctl", 0o750),
            ("bin/sub", 0o750),
            ("bin/sub/helper", 0o750),
            ("config", 0o750),
            ("config/x.sh", 0o640),
            ("monit", 0o640),
        ] {
            assert_eq!(mode(rel), want, "{rel}");
        }
        assert_eq!(fs::metadata(&outside).unwrap().permissions().mode() & 0o7777, 0o600, "link followed");
    }

    #[test]
    fn links_switch_atomically_and_keep_only_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data/packages");
        let a = data.join("foo").join(bundle_hash("1", "a"));
        let b = data.join("foo").join(bundle_hash("2", "b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let link = dir.path().join("packages/foo");
        switch_link(&link, &a).unwrap();
        switch_link(&link, &b).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), b);
        let links = dir.path().join("packages");
        drop_links(&links, &BTreeSet::from([b.clone()]));
        prune_bundles(&data, &BTreeSet::from([b.clone()]));
        assert!(!a.exists() && b.exists() && link.exists());
        drop_links(&links, &BTreeSet::new());
        prune_bundles(&data, &BTreeSet::new());
        assert!(!b.exists() && fs::symlink_metadata(&link).is_err() && !data.join("foo").exists());
    }

    /// What the applier did not create survives pruning, and does not make it fail.
    #[test]
    fn pruning_skips_what_it_did_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data/packages");
        let stale = data.join("foo").join(bundle_hash("1", "a"));
        let staging = data.join("foo").join(format!("{}.unpack-x", bundle_hash("3", "c")));
        let foreign = data.join("foo/operator-notes");
        for d in [&stale, &staging, &foreign] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(data.join("stray-file"), b"x").unwrap();
        fs::write(data.join("foo/stray"), b"x").unwrap();
        prune_bundles(&data, &BTreeSet::new());
        assert!(!stale.exists() && !staging.exists(), "our bundles and staging dirs go");
        assert!(foreign.is_dir() && data.join("stray-file").is_file() && data.join("foo/stray").is_file());
    }
}
