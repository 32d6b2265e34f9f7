//! The director's settings for this VM (the Go agent's `settings/settings.go`) and the overrides that `update_settings`
//! layers on top. Typed where the agent acts on a field; every other key is carried through untouched
//! so nothing the director sent is lost when settings are cached.

pub mod service;
pub mod sources;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Settings as the infrastructure delivers them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Settings {
    /// Names this VM on the bus: the agent subscribes to `agent.<agent_id>`.
    pub agent_id: String,
    /// The message bus URL: `nats://host:4222` or `https://user:pw@0.0.0.0:6868`.
    pub mbus: String,
    /// The default blobstore.
    pub blobstore: Blobstore,
    /// Disk devices, in the director's loose shapes.
    pub disks: Disks,
    /// The `env` block, where the director puts bootstrap certificates and knobs.
    pub env: Env,
    /// Networks by name, passed back in `get_state`.
    pub networks: BTreeMap<String, Network>,
    /// NTP servers.
    pub ntp: Vec<String>,
    /// The VM's name at the infrastructure.
    pub vm: Vm,
    /// Every key the agent does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The infrastructure's OpenSSH key for `vcap`, from the source that gave these settings (a
    /// metadata service's `SSHKeysPath`, a config drive's meta-data); not the director's, so never
    /// cached in `settings.json`: settings read from the cache have none.
    #[serde(skip)]
    pub iaas_public_key: Option<String>,
}

/// A blobstore provider and its options.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Blobstore {
    /// `local`, `dav`, `s3`, `gcs`, ...
    pub provider: String,
    /// Provider-specific options (may hold credentials: never logged).
    pub options: Map<String, Value>,
}

/// Disk settings; persistent disks by CID.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Disks {
    /// The root disk device.
    pub system: Value,
    /// The ephemeral disk: a path, an object or null.
    pub ephemeral: Value,
    /// Persistent disks, CID → path or object.
    pub persistent: BTreeMap<String, Value>,
    /// Raw instance-storage disks.
    pub raw_ephemeral: Value,
    /// Keys not interpreted here.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `env` block.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Env {
    /// `env.bosh`.
    pub bosh: BoshEnv,
    /// Keys not interpreted here (`persistent_disk_fs`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `env.bosh`: knobs the director sets per instance group. Typed as the Go agent types them, so a
/// value of the wrong JSON type is refused when settings are read; `null` means absent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BoshEnv {
    /// Crypted password for `vcap`, and for `root` unless `keep_root_password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Leave root's password alone.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub keep_root_password: bool,
    /// Public keys `vcap` accepts, one per entry.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub authorized_keys: Vec<String>,
    /// Swap on the ephemeral disk in MiB (0: none); the Go agent's default when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_size: Option<u64>,
    /// NTP servers, instead of the top-level `ntp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntp: Option<Vec<String>>,
    /// How many packages apply downloads at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u64>,
    /// Bus certificates and URL overrides.
    #[serde(deserialize_with = "null_as_default")]
    pub mbus: MbusEnv,
    /// Blobstore overrides; the first wins over the top-level `blobstore`.
    #[serde(deserialize_with = "null_as_default")]
    pub blobstores: Vec<Blobstore>,
    /// `ipv6.enable`: enable IPv6 in the kernel at boot, whatever the networks.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub ipv6: Ipv6Env,
    /// `job_dir`: a tmpfs on `data/jobs` and `data/sensitive_blobs`, so rendered templates (and their
    /// credentials) never reach a disk.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub job_dir: TmpfsDir,
    /// `run_dir`: the size of the `data/sys/run` tmpfs.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub run_dir: TmpfsDir,
    /// The size at which job logs are rotated (`50M` when absent; the apply spec's
    /// `properties.logging.max_log_file_size` wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_log_file_size: Option<String>,
    /// Keys not interpreted here.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `env.bosh.ipv6`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Ipv6Env {
    /// Enable IPv6 in the kernel (the stemcell may have disabled it).
    #[serde(deserialize_with = "null_as_default")]
    pub enable: bool,
    /// Keys not interpreted here.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `env.bosh.job_dir` and `env.bosh.run_dir`: whether a directory is a tmpfs, and its size (the
/// `size=` option of `mount -t tmpfs`, e.g. `16m`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TmpfsDir {
    /// Mount a tmpfs (`job_dir` only: `run_dir` always is one).
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub tmpfs: bool,
    /// Its size; the Go agent's default when empty.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub tmpfs_size: String,
    /// Keys not interpreted here.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One network in `networks`. Typed as the Go agent types it; keys not interpreted here are kept
/// and passed back in `get_state`, and fields left empty are not written out.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Network {
    /// `manual`, `dynamic` or `vip`.
    #[serde(rename = "type", deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub kind: String,
    /// The address (empty for DHCP).
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub ip: String,
    /// The netmask, dotted or as a prefix length.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub netmask: String,
    /// The prefix length, number or text (some CPIs send it instead of a netmask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Prefix>,
    /// The default gateway.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub gateway: String,
    /// Name servers.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub dns: Vec<String>,
    /// What this network is the default for: `dns`, `gateway`.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub default: Vec<String>,
    /// The MAC address of the NIC on this network.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub mac: String,
    /// The infrastructure already configured the NIC.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub preconfigured: bool,
    /// Configure by DHCP whatever the type says.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub use_dhcp: bool,
    /// The infrastructure resolved the address by DHCP.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub resolved: bool,
    /// An interface label for the address.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub alias: String,
    /// Static routes.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub routes: Vec<Route>,
    /// Keys not interpreted here (`cloud_properties`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Network {
    /// Whether this network is the default for `what` (`dns` or `gateway`).
    pub fn is_default_for(&self, what: &str) -> bool {
        self.default.iter().any(|d| d == what)
    }
}

/// A static route of a network.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Route {
    /// The destination network's address.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub destination: String,
    /// The destination's netmask.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub netmask: String,
    /// The destination's prefix length, instead of a netmask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Prefix>,
    /// The next hop.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "is_default")]
    pub gateway: String,
    /// Keys not interpreted here.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A prefix length as CPIs send it: a number or its text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Prefix {
    /// `24`.
    Number(u64),
    /// `"24"`.
    Text(String),
}

impl Prefix {
    /// The length, when it is one (the text parses and fits a `u8`).
    pub fn length(&self) -> Option<u8> {
        match self {
            Prefix::Number(n) => u8::try_from(*n).ok(),
            Prefix::Text(t) if !t.is_empty() => t.parse().ok(),
            Prefix::Text(_) => None,
        }
    }
}

/// Treats an explicit `null` like an absent key, as Go's decoder does.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `env.bosh.mbus` and `update_settings.mbus`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MbusEnv {
    /// URLs that override the top-level `mbus` (several means a NATS cluster).
    pub urls: Option<Vec<String>>,
    /// The bus certificate: NATS client identity, or the HTTPS server's identity.
    pub cert: Cert,
}

/// A CA, certificate and key in PEM. The key never appears in `Debug` output so it cannot leak into
/// a log line by accident.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Cert {
    /// CA bundle to verify the peer with.
    pub ca: String,
    /// Our certificate chain.
    pub certificate: String,
    /// Our private key (PKCS#1, SEC1 or PKCS#8).
    pub private_key: String,
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert")
            .field("ca", &format_args!("{} bytes", self.ca.len()))
            .field("certificate", &format_args!("{} bytes", self.certificate.len()))
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// `vm`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Vm {
    /// The infrastructure's name for this VM.
    pub name: String,
}

/// What `update_settings` has told the agent; persisted in `update_settings.json` and layered over the
/// infrastructure's settings on every load, so a rotated certificate survives a reboot.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UpdateSettings {
    /// PEM bundle of CAs to trust system-wide.
    pub trusted_certs: String,
    /// Persistent disks by role name.
    pub disk_associations: Vec<DiskAssociation>,
    /// New bus URLs and certificate.
    pub mbus: MbusEnv,
    /// New blobstores.
    pub blobstores: Option<Vec<Blobstore>>,
}

/// A persistent disk's role name and CID.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiskAssociation {
    /// Role name, e.g. `data`.
    pub name: String,
    /// The disk CID.
    pub cid: String,
}

/// Settings with the `update_settings` overrides applied: the one view the rest of the agent reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effective {
    /// As delivered by the infrastructure (plus command-line overrides).
    pub settings: Settings,
    /// As received through `update_settings`.
    pub update: UpdateSettings,
}

impl Effective {
    /// Bus URLs in precedence order: `update_settings.mbus.urls`, `env.bosh.mbus.urls`, `mbus`.
    pub fn mbus_urls(&self) -> Vec<String> {
        let non_empty = |u: &Option<Vec<String>>| u.clone().filter(|v| !v.is_empty());
        non_empty(&self.update.mbus.urls)
            .or_else(|| non_empty(&self.settings.env.bosh.mbus.urls))
            .unwrap_or_else(|| vec![self.settings.mbus.clone()])
    }

    /// The bus certificate: the rotated one once `update_settings` delivered one with a CA.
    pub fn mbus_cert(&self) -> &Cert {
        if self.update.mbus.cert.ca.is_empty() {
            &self.settings.env.bosh.mbus.cert
        } else {
            &self.update.mbus.cert
        }
    }

    /// The blobstore: `update_settings.blobstores[0]`, `env.bosh.blobstores[0]`, `blobstore`.
    pub fn blobstore(&self) -> &Blobstore {
        self.update
            .blobstores
            .as_ref()
            .and_then(|b| b.first())
            .or_else(|| self.settings.env.bosh.blobstores.first())
            .unwrap_or(&self.settings.blobstore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Settings {
        serde_json::from_value(json!({
            "agent_id": "a1", "mbus": "nats://10.0.0.1:4222",
            "blobstore": {"provider": "local", "options": {"blobstore_path": "/b"}},
            "env": {"bosh": {"mbus": {"cert": {"ca": "CA1", "certificate": "C1", "private_key": "K1"}},
                              "password": "secret-hash"}},
            "networks": {"default": {"ip": "10.0.0.5", "type": "manual"}},
            "cloud_properties": {"kept": true}
        }))
        .unwrap()
    }

    #[test]
    fn keeps_unknown_keys_through_a_round_trip() {
        let s = settings();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["cloud_properties"]["kept"], true);
        assert_eq!(v["env"]["bosh"]["password"], "secret-hash");
    }

    #[test]
    fn precedence_follows_update_settings_then_env_then_top_level() {
        let mut e = Effective { settings: settings(), update: UpdateSettings::default() };
        assert_eq!(e.mbus_urls(), vec!["nats://10.0.0.1:4222"]);
        assert_eq!(e.mbus_cert().certificate, "C1");
        assert_eq!(e.blobstore().provider, "local");
        e.settings.env.bosh.mbus.urls = Some(vec!["nats://env:1".into()]);
        assert_eq!(e.mbus_urls(), vec!["nats://env:1"]);
        e.update.mbus.urls = Some(vec!["nats://upd:1".into()]);
        e.update.mbus.cert.certificate = "C2".into();
        assert_eq!(e.mbus_urls(), vec!["nats://upd:1"]);
        assert_eq!(e.mbus_cert().certificate, "C1", "a cert without CA is ignored");
        e.update.mbus.cert.ca = "CA2".into();
        assert_eq!(e.mbus_cert().certificate, "C2");
        e.update.blobstores = Some(vec![Blobstore { provider: "dav".into(), ..Default::default() }]);
        assert_eq!(e.blobstore().provider, "dav");
    }

    #[test]
    fn env_bosh_and_networks_are_typed_and_keep_what_they_do_not_know() {
        let s: Settings = serde_json::from_value(json!({
            "env": {"bosh": {"password": "h", "keep_root_password": true, "authorized_keys": ["k1"],
                             "swap_size": 0, "ntp": ["t"], "parallel": null, "remove_dev_tools": true}},
            "networks": {"n": {"type": "manual", "ip": "10.0.0.5", "netmask": "255.255.255.0",
                               "default": ["gateway"], "prefix": "24", "cloud_properties": {"k": 1},
                               "routes": [{"destination": "10.1.0.0", "netmask": "255.255.0.0", "gateway": null}]}}
        }))
        .unwrap();
        let env = &s.env.bosh;
        assert_eq!(
            (env.password.as_deref(), env.keep_root_password, env.swap_size),
            (Some("h"), true, Some(0))
        );
        assert_eq!(
            (env.authorized_keys.len(), env.ntp.as_deref(), env.parallel),
            (1, Some(&["t".into()][..]), None)
        );
        let n = &s.networks["n"];
        assert!(n.is_default_for("gateway") && !n.is_default_for("dns"));
        assert_eq!(
            (n.prefix.as_ref().and_then(Prefix::length), n.routes[0].gateway.as_str()),
            (Some(24), "")
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["env"]["bosh"]["remove_dev_tools"], true);
        assert_eq!(v["networks"]["n"]["cloud_properties"]["k"], 1);
        assert!(v["networks"]["n"].get("mac").is_none(), "empty fields are not written out");
        assert!(serde_json::from_value::<Settings>(json!({"env": {"bosh": {"swap_size": "1"}}})).is_err());
        let s: Settings = serde_json::from_value(json!({"env": {"bosh": {
            "job_dir": {"tmpfs": true, "tmpfs_size": "64m"}, "run_dir": {"tmpfs_size": "8m", "x": 1},
            "max_log_file_size": "10M"}}}))
        .unwrap();
        let env = &s.env.bosh;
        assert_eq!((env.job_dir.tmpfs, env.job_dir.tmpfs_size.as_str()), (true, "64m"));
        assert_eq!((env.run_dir.tmpfs, env.run_dir.tmpfs_size.as_str()), (false, "8m"));
        assert_eq!(env.max_log_file_size.as_deref(), Some("10M"));
        let run_dir = &serde_json::to_value(&s).unwrap()["env"]["bosh"]["run_dir"];
        assert_eq!(run_dir, &json!({"tmpfs_size": "8m", "x": 1}));
    }

    #[test]
    fn debug_never_shows_private_key() {
        let s = settings();
        assert!(!format!("{s:?}").contains("K1"));
    }
}
