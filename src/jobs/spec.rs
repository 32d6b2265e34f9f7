//! The apply spec (the director's `ApplySpec`, `instance_spec.rb`): what the director wants installed. It is persisted verbatim in
//! `spec.json` (so `get_state` echoes what the director sent) and read through typed views here.

use crate::dirs::Dirs;
use crate::error::Context as _;
use crate::fsutil;
use crate::settings::null_as_default;
use crate::vitals::DiskPaths;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The applied spec, or an empty object before the first apply.
pub fn load(dirs: &Dirs) -> Result<Value, String> {
    match fsutil::read_json::<Value>(&dirs.spec_json()) {
        Ok(Some(v)) if v.is_object() => Ok(v),
        Ok(Some(_)) => Err("spec.json is not a JSON object".into()),
        Ok(None) => Ok(json!({})),
        Err(e) => Err(format!("reading spec.json: {e}")),
    }
}

/// Persists a spec atomically, readable by root only: it carries `env.bosh.password`, job properties
/// and signed URLs.
pub fn save(dirs: &Dirs, spec: &Value) -> Result<(), String> {
    fsutil::write_json_atomic(&dirs.spec_json(), spec, 0o600).context("writing spec.json")
}

/// The longest package or job name accepted (release names are far shorter; a file name is 255).
pub const MAX_NAME_LEN: usize = 200;

/// Checks a package or job name that becomes one path segment (`data/packages/<name>`,
/// `jobs/<name>`, `sys/log/<name>`): 1 to [`MAX_NAME_LEN`] of `A-Za-z0-9._-`, and not `.` or `..`,
/// as the director's release names are. The error names the value, escaped.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        return Ok(());
    }
    let shown: String = name.chars().take(MAX_NAME_LEN).collect::<String>().escape_debug().to_string();
    let more = if name.chars().count() > MAX_NAME_LEN { "..." } else { "" };
    Err(format!(
        "invalid {what} '{shown}{more}': must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ - and not '.' or '..'"
    ))
}

/// Where the system, ephemeral and persistent disks are mounted, for vitals.
pub fn disk_paths(dirs: &Dirs) -> DiskPaths {
    DiskPaths { system: dirs.under_root("/"), ephemeral: dirs.data(), persistent: dirs.store() }
}

/// The typed view of an apply spec; unknown keys are ignored here but kept in `spec.json`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ApplySpec {
    /// Deployment name.
    pub deployment: String,
    /// The instance group and its jobs (`null` for jobless VMs).
    pub job: Option<JobSpec>,
    /// Instance index.
    pub index: Option<u64>,
    /// Instance id.
    pub id: Option<String>,
    /// Instance group name.
    pub name: Option<String>,
    /// Availability zone.
    pub az: Option<String>,
    /// Compiled packages by name.
    #[serde(deserialize_with = "null_as_default")]
    pub packages: BTreeMap<String, PackageSpec>,
    /// Empty for an apply that only records the spec (jobless and compilation VMs).
    pub configuration_hash: Option<String>,
    /// Persistent disk size (reported to drain scripts).
    pub persistent_disk: Value,
    /// The one archive holding every job's rendered templates.
    pub rendered_templates_archive: Option<ArchiveRef>,
    /// Networks, verbatim.
    #[serde(deserialize_with = "null_as_default")]
    pub networks: Map<String, Value>,
}

/// `job` in the spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct JobSpec {
    /// Instance group name.
    pub name: Option<String>,
    /// Legacy single-job name (errands without a name run it).
    pub template: Option<String>,
    /// The jobs on this VM.
    pub templates: Option<Vec<TemplateSpec>>,
}

/// One job in `job.templates`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TemplateSpec {
    /// Job name.
    pub name: String,
    /// Job version (fingerprint).
    pub version: String,
}

/// One compiled package.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PackageSpec {
    /// Package name.
    pub name: String,
    /// `<version>.<build>` or a fingerprint.
    pub version: String,
    /// Multi-digest of the compiled tarball.
    pub sha1: Option<String>,
    /// Blob id in the blobstore.
    pub blobstore_id: Option<String>,
    /// A signed URL to GET the blob from instead of the blobstore.
    pub signed_url: Option<String>,
    /// Headers the signed URL needs.
    pub blobstore_headers: Option<BTreeMap<String, String>>,
}

/// A blob reference with its multi-digest.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ArchiveRef {
    /// Blob id.
    pub blobstore_id: String,
    /// Multi-digest.
    pub sha1: String,
}

impl ApplySpec {
    /// Reads the typed view of a spec value.
    /// Every name that becomes a path segment is checked here, once, so nothing downstream joins an
    /// unchecked name onto a directory.
    pub fn from_value(v: &Value) -> Result<ApplySpec, String> {
        let spec = ApplySpec::deserialize(v).context("invalid apply spec")?;
        spec.check_names().context("invalid apply spec")?;
        Ok(spec)
    }

    fn check_names(&self) -> Result<(), String> {
        for p in self.packages.values() {
            check_name("package name", &p.name)?;
        }
        let Some(job) = &self.job else { return Ok(()) };
        for t in job.templates.iter().flatten() {
            check_name("job name", &t.name)?;
        }
        match job.template.as_deref() {
            Some(t) if !t.is_empty() => check_name("job name", t),
            _ => Ok(()),
        }
    }

    /// The jobs of this spec, in the director's order.
    pub fn jobs(&self) -> Vec<TemplateSpec> {
        self.job.as_ref().and_then(|j| j.templates.clone()).unwrap_or_default()
    }

    /// The rendered-templates archive, when it names a blob.
    pub fn archive(&self) -> Option<&ArchiveRef> {
        self.rendered_templates_archive.as_ref().filter(|a| !a.blobstore_id.is_empty())
    }

    /// Whether this apply installs anything (an empty hash only records the spec).
    pub fn configures(&self) -> bool {
        self.configuration_hash.as_deref().is_some_and(|h| !h.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_director_and_cli_specs() {
        let cli = json!({"deployment":"bosh","name":"bosh","index":0,"id":"0","az":"unknown","packages":{},
            "networks":{"default":{"ip":"10.0.0.6"}},"job":{"name":"bosh","templates":[]},
            "rendered_templates_archive":{"blobstore_id":"","sha1":""},"configuration_hash":"unused-configuration-hash"});
        let s = ApplySpec::from_value(&cli).unwrap();
        assert!(s.configures() && s.archive().is_none() && s.jobs().is_empty());
        let jobless =
            ApplySpec::from_value(&json!({"job": null, "packages": null, "networks": null})).unwrap();
        assert!(!jobless.configures());
        assert!(ApplySpec::from_value(&json!({"packages": 5})).is_err());
    }

    /// Every name that reaches a path: the hostile ones are refused with the name in the message.
    #[test]
    fn hostile_names_are_refused_where_the_spec_is_parsed() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let hostile = [
            "",
            ".",
            "..",
            "../x",
            "../../etc",
            "a/b",
            "/abs",
            "a\0b",
            "a\nb",
            " a",
            "a b",
            "\u{fc}",
            "a:b",
            "$(id)",
            "*",
            long.as_str(),
            "..\\x",
        ];
        for bad in hostile {
            let specs = [
                json!({"packages": {"k": {"name": bad, "version": "1", "sha1": "x"}}}),
                json!({"job": {"templates": [{"name": bad, "version": "1"}]}}),
                json!({"job": {"template": bad}}),
            ];
            // An empty legacy `template` means "none" (errands then need a name).
            for spec in specs.iter().take(if bad.is_empty() { 2 } else { 3 }) {
                let e = ApplySpec::from_value(spec).expect_err(&format!("{bad:?} accepted"));
                let want = if bad.is_empty() {
                    "''".to_string()
                } else {
                    bad.chars().take(8).collect::<String>().escape_debug().to_string()
                };
                assert!(e.contains("invalid") && e.contains(&want), "{bad:?}: {e}");
            }
        }
        for good in ["ruby-3.2_x", "a", "A.b-c_9", &"z".repeat(MAX_NAME_LEN)] {
            let spec = json!({"packages": {"k": {"name": good}}, "job": {"template": good, "templates": [{"name": good}]}});
            assert!(ApplySpec::from_value(&spec).is_ok(), "{good}");
        }
    }

    #[test]
    fn reads_a_captured_director_spec() {
        let raw: Value = serde_json::from_str(include_str!("../../tests/fixtures/apply_spec.json")).unwrap();
        let s = ApplySpec::from_value(&raw).unwrap();
        assert!(s.configures() && s.archive().is_some());
        let jobs: Vec<_> = s.jobs().into_iter().map(|j| j.name).collect();
        assert_eq!(jobs, ["gorouter", "bpm"]);
        assert_eq!(s.packages.len(), 2);
        assert!(s.packages.values().all(|p| p.sha1.is_some() && p.blobstore_id.is_some()));
        assert_eq!((s.deployment.as_str(), s.index, s.az.as_deref()), ("cf", Some(0), Some("z1")));
    }
}
