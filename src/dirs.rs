//! Every path the agent uses, derived from the base dir (`-b`, default /var/vcap) and the root dir
//! (`-r`, default /). Keeping them in one place is what lets tests run the whole agent in a scratch
//! directory.

use std::path::{Path, PathBuf};

/// The agent's directory layout (the Go agent's, so stemcells and jobs find what they expect).
#[derive(Clone, Debug)]
pub struct Dirs {
    /// `/var/vcap` on a stemcell.
    pub base: PathBuf,
    /// `/` on a VM; a scratch directory in tests.
    pub root: PathBuf,
}

impl Dirs {
    /// Builds the layout from the two command-line directories.
    pub fn new(base: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Dirs {
        Dirs { base: base.into(), root: root.into() }
    }
    /// `<base>/bosh`: the agent's own state.
    pub fn bosh(&self) -> PathBuf {
        self.base.join("bosh")
    }
    /// Cached settings, re-read when every settings source fails.
    pub fn settings_json(&self) -> PathBuf {
        self.bosh().join("settings.json")
    }
    /// The overrides received through `update_settings`; they win over the infrastructure's settings.
    pub fn update_settings_json(&self) -> PathBuf {
        self.bosh().join("update_settings.json")
    }
    /// The applied spec, source of `get_state` and heartbeats.
    pub fn spec_json(&self) -> PathBuf {
        self.bosh().join("spec.json")
    }
    /// Persistent tasks to resume after a restart.
    pub fn tasks_json(&self) -> PathBuf {
        self.bosh().join("tasks.json")
    }
    /// Hints for persistent disks given by `add_persistent_disk`.
    pub fn disk_hints_json(&self) -> PathBuf {
        self.bosh().join("persistent_disk_hints.json")
    }
    /// Blobs received over HTTPS `/blobs` and read by apply and compile.
    pub fn blobs(&self) -> PathBuf {
        self.base.join("data").join("blobs")
    }
    /// Ephemeral data disk mount point.
    pub fn data(&self) -> PathBuf {
        self.base.join("data")
    }
    /// Persistent disk mount point.
    pub fn store(&self) -> PathBuf {
        self.base.join("store")
    }
    /// A path under the root dir, for system files such as the CA certificate directory.
    pub fn under_root(&self, absolute: &str) -> PathBuf {
        self.root.join(Path::new(absolute.trim_start_matches('/')))
    }
}
