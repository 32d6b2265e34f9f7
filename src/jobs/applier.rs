//! Installing what an apply spec names: compiled packages under `data/packages/<name>/<hash>`, jobs
//! (from the rendered-templates archive) under `data/jobs/<name>/<hash>`, with `packages/<name>` and
//! `jobs/<name>` symlinks switched atomically (the Go agent's layout). `prepare` downloads and unpacks in
//! parallel without switching anything; `apply` does the same, then switches the links, removes what
//! the spec no longer names, and records the spec. A bundle that is already installed is skipped, so
//! applying the same spec twice is cheap.

use crate::error::Context as _;
use crate::sync::lock;
use super::spec::{ApplySpec, PackageSpec, TemplateSpec};
use crate::archive::{self, Unpack};
use crate::blobstore::{Blobs, MultiDigest};
use crate::dirs::Dirs;
use ring::digest::SHA1_FOR_LEGACY_USE_ONLY;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
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
        make_parent(&bundle.dir)?;
        archive::unpack(blob.path(), &bundle.dir, &Unpack { subdir: None })
            .with_context(|| format!("Installing package {}", p.name))?;
        set_mode(&bundle.dir, 0o755)
    }

    fn install_jobs(&self, spec: &ApplySpec) -> Result<(), String> {
        let jobs = spec.jobs();
        let Some(archive_ref) = spec.archive() else { return Ok(()) };
        let pending: Vec<&TemplateSpec> =
            jobs.iter().filter(|j| !self.layout().job_bundle(j, &archive_ref.sha1).dir.is_dir()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let digest =
            MultiDigest::parse(&archive_ref.sha1).context("rendered templates archive")?;
        let tmp = self.tmp_dir()?;
        let blob = self
            .blobs
            .fetch(&archive_ref.blobstore_id, &digest, &tmp)
            .context("Fetching rendered templates archive")?;
        for job in pending {
            let bundle = self.layout().job_bundle(job, &archive_ref.sha1);
            make_parent(&bundle.dir)?;
            archive::unpack(blob.path(), &bundle.dir, &Unpack { subdir: Some(&job.name) })
                .with_context(|| format!("Installing job {}", job.name))?;
            fix_job_permissions(&bundle.dir)?;
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
        for p in spec.packages.values() {
            let b = self.package_bundle(p);
            switch_link(&b.link, &b.dir)?;
        }
        if let Some(archive_ref) = spec.archive() {
            for job in spec.jobs() {
                let b = self.job_bundle(&job, &archive_ref.sha1);
                self.link_job_packages(&b.dir, spec)?;
                for d in [
                    self.dirs.job_log(&job.name),
                    self.dirs.job_run(&job.name),
                    self.dirs.job_data(&job.name),
                ] {
                    create_dir_mode(&d, 0o770)?;
                }
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

    fn link_job_packages(&self, job_dir: &Path, spec: &ApplySpec) -> Result<(), String> {
        let dir = job_dir.join("packages");
        create_dir_mode(&dir, 0o750)?;
        for p in spec.packages.values() {
            switch_link(&dir.join(&p.name), &self.package_bundle(p).dir)?;
        }
        Ok(())
    }
}

fn make_parent(dir: &Path) -> Result<(), String> {
    match dir.parent() {
        Some(parent) => fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display())),
        None => Ok(()),
    }
}

fn create_dir_mode(dir: &Path, mode: u32) -> Result<(), String> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(dir, mode)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Jobs' scripts must be executable whatever the archive said; everything else stays as unpacked.
fn fix_job_permissions(dir: &Path) -> Result<(), String> {
    set_mode(dir, 0o750)?;
    if let Ok(entries) = fs::read_dir(dir.join("bin")) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                set_mode(&e.path(), 0o750)?;
            }
        }
    }
    Ok(())
}

/// Points `link` at `target` atomically (a new link renamed over the old one), so a job never sees a
/// missing link mid-switch.
pub fn switch_link(link: &Path, target: &Path) -> Result<(), String> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    make_parent(link)?;
    let tmp = link.with_file_name(format!(
        ".{}.link-{}",
        link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        crate::ids::uuid_v4()
    ));
    symlink(target, &tmp).with_context(|| format!("linking {}", link.display()))?;
    fs::rename(&tmp, link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("switching {}: {e}", link.display())
    })
}

/// Removes every `<link_root>/<name>` link that does not point into `keep`; returns how many.
fn drop_links(link_root: &Path, keep: &BTreeSet<PathBuf>) -> usize {
    let mut dropped = 0;
    for l in fs::read_dir(link_root).into_iter().flatten().flatten() {
        let path = l.path();
        if fs::read_link(&path).is_ok_and(|target| !keep.contains(&target)) && fs::remove_file(&path).is_ok() {
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
