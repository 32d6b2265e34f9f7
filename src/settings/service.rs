//! Loading, caching and updating settings. Sources are tried in order; the first good answer is cached
//! in `settings.json`, and when every source fails the cached copy keeps the agent bootable.
//!
//! At boot ([`SettingsService::load_at_boot`]) a VM with no cached copy keeps passing over its
//! sources, pausing between passes, for minutes ([`Patience`]) rather than exiting: a metadata
//! service or a settings file that is late (cloud-init on Azure writes it during boot) must not
//! make the agent exit again and again until the service manager's start limit leaves it dead.

use super::sources::SettingsSource;
use super::{Blobstore, Effective, Settings, UpdateSettings};
use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::fsutil;
use crate::sync::{read, write};
use serde_json::{json, Map, Value};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a boot without any settings (no source answers, nothing cached) keeps trying.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Patience {
    /// The pause between two passes over the sources.
    pub pause: Duration,
    /// Total time after which the boot gives up (the agent exits and its supervisor restarts it).
    pub give_up: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience { pause: Duration::from_secs(5), give_up: Duration::from_secs(600) }
    }
}

impl Patience {
    /// The defaults with what `agent.json`'s `Infrastructure.Settings.Retry` overrides.
    pub fn from_config(retry: &crate::config::RetryConfig) -> Patience {
        let d = Patience::default();
        Patience {
            pause: retry.pause_ms.map(Duration::from_millis).unwrap_or(d.pause),
            give_up: retry.give_up_ms.map(Duration::from_millis).unwrap_or(d.give_up),
        }
    }
}

/// Command-line overrides (`-a`, `-n`, `-s`), which win over every source.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `-a agent id`.
    pub agent_id: Option<String>,
    /// `-n mbus URI`.
    pub mbus: Option<String>,
    /// `-s blobstore URI`.
    pub blobstore: Option<String>,
}

/// Owns the current settings; cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct SettingsService {
    dirs: Dirs,
    sources: Arc<Vec<Box<dyn SettingsSource>>>,
    overrides: Overrides,
    current: Arc<RwLock<Effective>>,
    /// Where the last loaded settings came from, for the operator's log.
    source: Arc<RwLock<String>>,
}

impl SettingsService {
    /// A service over these sources; call [`SettingsService::load`] before reading.
    pub fn new(dirs: Dirs, sources: Vec<Box<dyn SettingsSource>>, overrides: Overrides) -> Self {
        SettingsService {
            dirs,
            sources: Arc::new(sources),
            overrides,
            current: Arc::new(RwLock::new(Effective::default())),
            source: Arc::default(),
        }
    }

    /// Fetches settings from the first source that answers, falling back to the cached copy, applies
    /// the overrides and checks the keys the agent cannot run without.
    pub fn load(&self) -> Result<Effective, String> {
        self.load_with(None)
    }

    /// [`SettingsService::load`] at boot: when no source answers and nothing is cached, passes over
    /// the sources again, `patience.pause` apart, until one answers or `patience.give_up` has
    /// passed, saying each time what it waits for.
    pub fn load_at_boot(&self, patience: Patience) -> Result<Effective, String> {
        self.load_with(Some(patience))
    }

    fn load_with(&self, patience: Option<Patience>) -> Result<Effective, String> {
        let (mut settings, source, blank) = self.fetch_or_cached(patience)?;
        apply_overrides(&mut settings, &self.overrides)?;
        for (key, value) in [("agent_id", &settings.agent_id), ("mbus", &settings.mbus)] {
            if value.is_empty() && blank.contains(&key) {
                return Err(format!("settings key '{key}' is empty (from {source})"));
            }
            if value.is_empty() {
                return Err(format!("settings lack the mandatory key '{key}'"));
            }
        }
        if let Err(e) = cache(&self.dirs.settings_json(), &settings) {
            log::warn!("caching settings in {}: {e}", self.dirs.settings_json().display());
        }
        let update = fsutil::read_json::<UpdateSettings>(&self.dirs.update_settings_json())
            .context("reading update settings")?
            .unwrap_or_default();
        let effective = Effective { settings, update };
        *write(&self.current) = effective.clone();
        *write(&self.source) = source;
        Ok(effective)
    }

    /// Where the settings last loaded came from: a source's name, the cached `settings.json`, or
    /// the command line.
    pub fn source(&self) -> String {
        read(&self.source).clone()
    }

    /// The settings as last loaded or updated.
    pub fn get(&self) -> Effective {
        read(&self.current).clone()
    }

    /// Runs `f` on the current settings without copying them (for a reader that needs a few fields).
    pub fn with<R>(&self, f: impl FnOnce(&Effective) -> R) -> R {
        f(&read(&self.current))
    }

    /// Merges what `update_settings` sent (the Go agent's rules: certs and disk associations always
    /// replaced, mbus and blobstores only when given and different), persists it atomically, and
    /// returns the new effective settings.
    pub fn apply_update(&self, new: UpdateSettings) -> Result<Effective, String> {
        let mut current = self.get();
        let mut merged = current.update.clone();
        merged.trusted_certs = new.trusted_certs;
        merged.disk_associations = new.disk_associations;
        if new.mbus != Default::default() && new.mbus != merged.mbus {
            merged.mbus = new.mbus;
        }
        if new.blobstores.is_some() && new.blobstores != merged.blobstores {
            merged.blobstores = new.blobstores;
        }
        fsutil::write_json_atomic(&self.dirs.update_settings_json(), &merged, 0o600)
            .context("writing update settings")?;
        current.update = merged;
        *write(&self.current) = current.clone();
        Ok(current)
    }

    /// The settings, where they came from, and which mandatory keys the document gave as `""`
    /// (so an empty `mbus` is reported as empty, not missing). With `patience`, passes over the
    /// sources again while none answers and nothing is cached (see [`Patience`]).
    fn fetch_or_cached(
        &self,
        patience: Option<Patience>,
    ) -> Result<(Settings, String, Vec<&'static str>), String> {
        let started = Instant::now();
        for pass in 1u32.. {
            let errors = match self.fetch_once() {
                Ok(found) => return Ok(found),
                Err(errors) => errors,
            };
            match fsutil::read_json::<Settings>(&self.dirs.settings_json()) {
                Ok(Some(s)) => {
                    log::warn!("no settings source answered; using the cached settings.json");
                    return Ok((s, format!("cached {}", self.dirs.settings_json().display()), Vec::new()));
                }
                Ok(None) if self.sources.is_empty() && self.has_enough_overrides() => {
                    return Ok((Settings::default(), "the command line (-a, -n)".into(), Vec::new()));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(format!("no settings source answered and the cache is unreadable: {e}"))
                }
            }
            let why = if errors.is_empty() {
                "no settings source is configured and no cached settings exist".to_string()
            } else {
                format!("no settings could be loaded: {}", errors.join("; "))
            };
            let Some(p) = patience.filter(|_| !self.sources.is_empty()) else { return Err(why) };
            let waited = started.elapsed();
            if waited + p.pause > p.give_up {
                return Err(format!("{why} (gave up after {pass} passes in {:.0?})", waited));
            }
            log::warn!(
                "waiting for settings: pass {pass} over {} found none and nothing is cached ({why}); \
                 trying again in {:?}, for up to {:?} in all",
                self.source_names(),
                p.pause,
                p.give_up
            );
            std::thread::sleep(p.pause);
        }
        unreachable!("the pass counter is unbounded")
    }

    /// One pass over the sources: the first settings that parse (with their source and blank
    /// mandatory keys), or every source's error.
    fn fetch_once(&self) -> Result<(Settings, String, Vec<&'static str>), Vec<String>> {
        let mut errors = Vec::new();
        for source in self.sources.iter() {
            match source.fetch().and_then(|v| {
                let blank =
                    ["agent_id", "mbus"].into_iter().filter(|k| v.get(k) == Some(&json!(""))).collect();
                <Settings as serde::Deserialize>::deserialize(&v)
                    .context("invalid settings")
                    .map(|s| (s, blank))
            }) {
                Ok((mut s, blank)) => {
                    log::info!("settings loaded from {}", source.name());
                    s.iaas_public_key = source.public_key();
                    return Ok((s, source.name(), blank));
                }
                Err(e) => {
                    log::warn!("settings source {}: {e}", source.name());
                    errors.push(format!("{}: {e}", source.name()));
                }
            }
        }
        Err(errors)
    }

    fn source_names(&self) -> String {
        self.sources.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
    }

    fn has_enough_overrides(&self) -> bool {
        self.overrides.agent_id.is_some() && self.overrides.mbus.is_some()
    }
}

/// Writes the settings cache unless it already holds exactly these settings: every disk action
/// reloads settings, and an unchanged file is not worth two fsyncs.
fn cache(path: &std::path::Path, settings: &Settings) -> std::io::Result<()> {
    let data = serde_json::to_vec(settings).map_err(std::io::Error::other)?;
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    fsutil::write_atomic(path, &data, 0o600)
}

fn apply_overrides(s: &mut Settings, o: &Overrides) -> Result<(), String> {
    if let Some(id) = &o.agent_id {
        s.agent_id = id.clone();
    }
    if let Some(m) = &o.mbus {
        s.mbus = m.clone();
        s.env.bosh.mbus.urls = None;
    }
    if let Some(uri) = &o.blobstore {
        s.blobstore = blobstore_from_uri(uri)?;
    }
    Ok(())
}

/// Turns the Ruby agent's `-s` URI into a provider: a path or `file://` is `local`, `http(s)://` is `dav`
/// with its credentials moved out of the URL.
pub fn blobstore_from_uri(uri: &str) -> Result<Blobstore, String> {
    let mut options = Map::new();
    let provider = if let Some(path) = uri.strip_prefix("file://") {
        options.insert("blobstore_path".into(), json!(path));
        "local"
    } else if uri.starts_with('/') {
        options.insert("blobstore_path".into(), json!(uri));
        "local"
    } else if let Some((endpoint, credentials)) = uri
        .split_once("://")
        .filter(|(s, _)| *s == "http" || *s == "https")
        .and_then(|_| crate::url::take_credentials(uri))
    {
        options.insert("endpoint".into(), json!(endpoint));
        if let Some((user, password)) = credentials {
            options.insert("user".into(), Value::String(user));
            options.insert("password".into(), Value::String(password));
        }
        "dav"
    } else {
        return Err(format!("blobstore URI must be a path, file://, http:// or https://, got '{uri}'"));
    };
    Ok(Blobstore { provider: provider.into(), options })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::sources::FileSource;

    #[test]
    fn falls_back_to_cache_and_names_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path().join("base"), "/");
        let src = dir.path().join("settings-src.json");
        std::fs::write(&src, r#"{"agent_id":"a1","mbus":"nats://h:1","extra":1}"#).unwrap();
        let svc = SettingsService::new(
            dirs.clone(),
            vec![Box::new(FileSource { path: src.clone() })],
            Overrides::default(),
        );
        assert_eq!(svc.load().unwrap().settings.agent_id, "a1");
        // An unchanged reload leaves the cache alone (same inode: not replaced by a rename).
        let inode = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let cached = inode(&dirs.settings_json());
        svc.load().unwrap();
        assert_eq!(inode(&dirs.settings_json()), cached, "unchanged settings.json rewritten");
        std::fs::remove_file(&src).unwrap();
        assert_eq!(svc.load().unwrap().settings.agent_id, "a1", "cached copy used");
        std::fs::write(&src, r#"{"mbus":"nats://h:1"}"#).unwrap();
        assert_eq!(svc.load().unwrap_err(), "settings lack the mandatory key 'agent_id'");
        std::fs::write(&src, r#"{"agent_id":"a1","mbus":""}"#).unwrap();
        let e = svc.load().unwrap_err();
        assert!(e.starts_with("settings key 'mbus' is empty (from File("), "{e}");
    }

    /// A source that answers with settings and the infrastructure's key.
    struct Keyed;
    impl SettingsSource for Keyed {
        fn name(&self) -> String {
            "Keyed".into()
        }
        fn fetch(&self) -> Result<Value, String> {
            Ok(json!({"agent_id": "a1", "mbus": "nats://h:1"}))
        }
        fn public_key(&self) -> Option<String> {
            Some("ssh-rsa IAAS".into())
        }
    }

    #[test]
    fn the_answering_sources_key_comes_with_the_settings_but_is_never_cached() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path(), "/");
        let svc = SettingsService::new(dirs.clone(), vec![Box::new(Keyed)], Overrides::default());
        assert_eq!(svc.load().unwrap().settings.iaas_public_key.as_deref(), Some("ssh-rsa IAAS"));
        assert!(!std::fs::read_to_string(dirs.settings_json()).unwrap().contains("IAAS"));
        let cached = SettingsService::new(dirs, vec![], Overrides::default());
        assert_eq!(cached.load().unwrap().settings.iaas_public_key, None, "settings.json has no key");
    }

    /// A settings file that appears late (cloud-init writing Azure's user data) is waited for at
    /// boot, pass after pass; without patience, or once it is used up, the load fails.
    #[test]
    fn boot_waits_for_a_late_source_and_gives_up_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path().join("base"), "/");
        let src = dir.path().join("late.json");
        let svc = SettingsService::new(
            dirs.clone(),
            vec![Box::new(FileSource { path: src.clone() })],
            Overrides::default(),
        );
        let quick = Patience { pause: Duration::from_millis(20), give_up: Duration::from_secs(30) };
        let writer = {
            let src = src.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::write(&src, r#"{"agent_id":"late","mbus":"nats://h:1"}"#).unwrap();
            })
        };
        assert_eq!(svc.load_at_boot(quick).unwrap().settings.agent_id, "late");
        writer.join().unwrap();
        std::fs::remove_file(&src).unwrap();
        std::fs::remove_file(dirs.settings_json()).unwrap();
        assert!(svc.load().unwrap_err().contains("no settings could be loaded"), "one pass only");
        let short = Patience { pause: Duration::from_millis(20), give_up: Duration::from_millis(100) };
        let e = svc.load_at_boot(short).unwrap_err();
        assert!(e.contains("gave up after") && e.contains("late.json"), "{e}");
        let d = Patience::default();
        assert_eq!((d.pause, d.give_up), (Duration::from_secs(5), Duration::from_secs(600)));
    }

    #[test]
    fn update_keeps_mbus_unless_a_new_one_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path(), "/");
        let o = Overrides { agent_id: Some("a".into()), mbus: Some("nats://h:1".into()), blobstore: None };
        let svc = SettingsService::new(dirs.clone(), vec![], o);
        svc.load().unwrap();
        let mut u = UpdateSettings::default();
        u.mbus.cert.ca = "CA".into();
        u.trusted_certs = "T1".into();
        svc.apply_update(u).unwrap();
        let e =
            svc.apply_update(UpdateSettings { trusted_certs: "T2".into(), ..Default::default() }).unwrap();
        assert_eq!(e.update.mbus.cert.ca, "CA");
        assert_eq!(e.update.trusted_certs, "T2");
        let on_disk: UpdateSettings = fsutil::read_json(&dirs.update_settings_json()).unwrap().unwrap();
        assert_eq!(on_disk, e.update);
        assert_eq!(svc.load().unwrap().update, e.update, "survives a reload");
    }

    #[test]
    fn blobstore_uris() {
        let b = blobstore_from_uri("http://u%40x:p@h:25250").unwrap();
        assert_eq!((b.provider.as_str(), b.options["user"].as_str()), ("dav", Some("u@x")));
        assert_eq!(b.options["endpoint"], "http://h:25250");
        assert_eq!(blobstore_from_uri("/var/blobs").unwrap().provider, "local");
        assert!(blobstore_from_uri("ftp://x").is_err());
    }
}
