//! The apply spec (the director's `ApplySpec`, `instance_spec.rb`): what the director wants installed. It is persisted verbatim in
//! `spec.json` (so `get_state` echoes what the director sent) and read through typed views here.

use crate::error::Context as _;
use crate::dirs::Dirs;
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

/// Persists a spec atomically.
pub fn save(dirs: &Dirs, spec: &Value) -> Result<(), String> {
    fsutil::write_json_atomic(&dirs.spec_json(), spec, 0o644).context("writing spec.json")
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
    pub fn from_value(v: &Value) -> Result<ApplySpec, String> {
        ApplySpec::deserialize(v).context("invalid apply spec")
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

    #[test]
    fn reads_a_captured_director_spec() {
        let raw: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/apply_spec.json")).unwrap();
        let s = ApplySpec::from_value(&raw).unwrap();
        assert!(s.configures() && s.archive().is_some());
        let jobs: Vec<_> = s.jobs().into_iter().map(|j| j.name).collect();
        assert_eq!(jobs, ["gorouter", "bpm"]);
        assert_eq!(s.packages.len(), 2);
        assert!(s.packages.values().all(|p| p.sha1.is_some() && p.blobstore_id.is_some()));
        assert_eq!((s.deployment.as_str(), s.index, s.az.as_deref()), ("cf", Some(0), Some("z1")));
    }
}
