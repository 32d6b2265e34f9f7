//! `agent.json`, in the Go agent's format, so today's stemcells can swap agents without touching their
//! configuration. Keys are Go field names matched case-insensitively, as encoding/json does.

pub mod keys;

use crate::error::Context as _;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One entry of `Infrastructure.Settings.Sources`: the Go agent's source types with their fields, so a
/// stemcell's `agent.json` means the same thing to this agent as to the Go one.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceConfig {
    /// Settings read from a local JSON file.
    File {
        /// Where the settings file lives.
        settings_path: PathBuf,
    },
    /// An EC2-style metadata service (AWS, OpenStack's metadata service, ...).
    Http(HttpSourceConfig),
    /// A plain settings document served over HTTP (GCP, SoftLayer): `GET URI+SettingsPath`.
    InstanceMetadata {
        /// Base URL of the metadata service.
        uri: String,
        /// Headers sent with the request (GCP needs `Metadata-Flavor: Google`).
        headers: Vec<(String, String)>,
        /// Path of the settings document under `uri`.
        settings_path: String,
    },
    /// An OpenStack config drive: a labelled disk (or a directory) holding meta-data and user-data.
    ConfigDrive {
        /// Candidate devices, image files or directories; the first that can be read wins.
        disk_paths: Vec<PathBuf>,
        /// Meta-data file on the drive (instance id, public keys).
        meta_data_path: String,
        /// User-data file on the drive (settings, or a registry to fetch them from).
        user_data_path: String,
        /// Settings file on the drive; read directly when present.
        settings_path: String,
    },
    /// vSphere's CD-ROM carrying the settings in one file.
    Cdrom {
        /// The file on the disc, `env` on vSphere.
        file_name: String,
        /// The device (or image file, or directory) to read it from. An extension of ours: the Go
        /// agent hard-codes `/dev/sr0`, which is also the default here.
        device_path: PathBuf,
    },
    /// vSphere's guestinfo variables, read with VMware Tools (`vmware-rpctool`, else `vmtoolsd`).
    VsphereGuestInfo {
        /// `RpcToolPath`: the `vmware-rpctool` to run (default: found on PATH).
        rpc_tool_path: String,
        /// `VmToolsdPath`: the `vmtoolsd` to fall back to (default: found on PATH).
        vmtoolsd_path: String,
    },
}

/// The `HTTP` source's fields (the Go agent's `infrastructure` options in `app/config.go`). Empty paths mean "not configured", except the
/// user-data path, which defaults to EC2's so a bare `{"Type":"HTTP","URI":...}` still works.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpSourceConfig {
    /// Base URL, `http://169.254.169.254` on EC2.
    pub uri: String,
    /// Headers sent with every metadata request.
    pub headers: Vec<(String, String)>,
    /// User-data path (settings, or a pointer to the registry).
    pub user_data_path: String,
    /// Instance-id path, the key into the registry.
    pub instance_id_path: String,
    /// OpenSSH public key path.
    pub ssh_keys_path: String,
    /// IMDSv2 token path; when set, a token is PUT for first and sent with every request.
    pub token_path: String,
    /// Key the registry by the user-data's `server.name` instead of the instance id (OpenStack).
    pub use_server_name: bool,
}

/// The parts of `agent.json` the agent acts on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentConfig {
    /// Settings sources, tried in order.
    pub sources: Vec<SourceConfig>,
    /// `Infrastructure.Settings` besides its sources.
    pub settings: SettingsConfig,
    /// `Platform.Linux`, typed.
    pub linux: LinuxOptions,
    /// Where monit is (an extension of ours; the Go agent hard-codes these).
    pub monit: MonitConfig,
    /// Each key the file carries and what the agent does with it ([`keys`]).
    pub notes: Vec<(String, keys::Treatment)>,
}

/// `Infrastructure.Settings` besides `Sources`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SettingsConfig {
    /// `UseServerName`: key the BOSH registry by the user data's `server.name` (OpenStack); the
    /// stemcells put it here, beside the sources, so it applies to every `HTTP` source.
    pub use_server_name: bool,
    /// `UseRegistry`, as written (the user data itself says whether it holds a registry pointer).
    pub use_registry: Option<bool>,
    /// `Retry`: how patiently settings are fetched at boot (an extension of ours, unknown to the Go
    /// agent; for tests and unusual clouds).
    pub retry: RetryConfig,
}

/// `Infrastructure.Settings.Retry`, every field optional (the agent's defaults otherwise); times in
/// milliseconds. See `settings::sources::retry` for what each bounds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryConfig {
    /// `Attempts`: tries per source per pass.
    pub attempts: Option<u32>,
    /// `IntervalMs`: the pause after a failed try.
    pub interval_ms: Option<u64>,
    /// `AttemptTimeoutMs`: the bound on one try (its requests or its mount).
    pub attempt_timeout_ms: Option<u64>,
    /// `PassMs`: the bound on one pass over all the sources.
    pub pass_ms: Option<u64>,
    /// `PauseMs`: the pause between passes while there are no settings at all.
    pub pause_ms: Option<u64>,
    /// `GiveUpMs`: how long a boot without settings keeps trying before it exits.
    pub give_up_ms: Option<u64>,
    /// `MinFailedRunMs`: how long a boot that fails lasts at least, so a supervisor's start limit
    /// is never hit.
    pub min_failed_run_ms: Option<u64>,
}

impl RetryConfig {
    fn from_value(value: Option<&Value>) -> Result<RetryConfig, String> {
        let Some(map) = object(value, "Infrastructure.Settings.Retry")? else {
            return Ok(RetryConfig::default());
        };
        let mut r = RetryConfig::default();
        for (key, v) in map {
            let n = match v {
                Value::Null => continue,
                v => v
                    .as_u64()
                    .ok_or_else(|| format!("Infrastructure.Settings.Retry.{key} must be a whole number"))?,
            };
            match key.to_ascii_lowercase().as_str() {
                "attempts" => r.attempts = Some(u32::try_from(n).unwrap_or(u32::MAX)),
                "intervalms" => r.interval_ms = Some(n),
                "attempttimeoutms" => r.attempt_timeout_ms = Some(n),
                "passms" => r.pass_ms = Some(n),
                "pausems" => r.pause_ms = Some(n),
                "giveupms" => r.give_up_ms = Some(n),
                "minfailedrunms" => r.min_failed_run_ms = Some(n),
                _ => return Err(format!("Infrastructure.Settings.Retry.{key} is not a known setting")),
            }
        }
        Ok(r)
    }
}

/// `Platform.Linux`: the Go agent's `LinuxOptions` (every key of the official stemcells'
/// `agent.json` files and the rest of the Go struct). Strings are kept as written (`""` when absent);
/// what each one does, or why it is deliberately ignored, is for the layer that acts on it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinuxOptions {
    /// `UseDefaultTmpDir` (warden): leave `/tmp` alone instead of bind-mounting `data/root_tmp`.
    pub use_default_tmp_dir: bool,
    /// `UsePreformattedPersistentDisk` (warden): persistent disks are mounted as given, never
    /// partitioned or formatted.
    pub use_preformatted_persistent_disk: bool,
    /// `BindMountPersistentDisk` (warden): persistent disks are directories, bind-mounted.
    pub bind_mount_persistent_disk: bool,
    /// `CreatePartitionIfNoEphemeralDisk`: with no ephemeral disk, swap and data go on the root
    /// disk's free space.
    pub create_partition_if_no_ephemeral_disk: bool,
    /// `SkipDiskSetup` (warden): no ephemeral, raw-ephemeral or root disk setup at all.
    pub skip_disk_setup: bool,
    /// `ScrubEphemeralDisk` (softlayer): unknown to the Go agent's current `LinuxOptions`.
    pub scrub_ephemeral_disk: bool,
    /// `DevicePathResolutionType`: `virtio`, `scsi`, `iscsi`, or `""` (the path as given).
    pub device_path_resolution_type: String,
    /// `PartitionerType`: `parted`, or `""` (sfdisk below 2 TiB, parted above).
    pub partitioner_type: String,
    /// `ServiceManager`: `systemd`, or `""` (runit).
    pub service_manager: String,
    /// `VirtioDevicePrefix` (google): the `/dev/disk/by-id/<prefix>-<id>` prefix older agents used.
    pub virtio_device_prefix: String,
    /// `DiskIDTransformPattern`: a regex applied to a disk id before the by-id lookup.
    pub disk_id_transform_pattern: String,
    /// `DiskIDTransformReplacement`: what the pattern's match is replaced with.
    pub disk_id_transform_replacement: String,
    /// `LunDeviceSymlinkPath`: a directory of per-LUN symlinks tried before the SCSI lookup.
    pub lun_device_symlink_path: String,
    /// `InstanceStorageManagedVolumePattern`: NVMe volumes that are not instance storage.
    pub instance_storage_managed_volume_pattern: String,
    /// `InstanceStorageDevicePattern`: NVMe devices that may be instance storage.
    pub instance_storage_device_pattern: String,
    /// `UseMonitIptablesFirewall`: the stemcell guards monit with iptables, not nftables.
    pub use_monit_iptables_firewall: bool,
    /// Keys under `Platform.Linux` that are none of the above, as written.
    pub unknown: Vec<String>,
}

impl LinuxOptions {
    /// Whether the stemcell's service manager is systemd (else runit).
    pub fn uses_systemd(&self) -> bool {
        self.service_manager.eq_ignore_ascii_case("systemd")
    }

    /// Reads `Platform.Linux` (absent or `null`: all defaults). Keys match case-insensitively; a
    /// value of the wrong JSON type is an error naming the key, as Go's decoder refuses it.
    pub fn from_value(value: Option<&Value>) -> Result<LinuxOptions, String> {
        let Some(map) = object(value, "Platform.Linux")? else { return Ok(LinuxOptions::default()) };
        let mut o = LinuxOptions::default();
        for (key, v) in map {
            let flag = |field: &mut bool| match v {
                Value::Null => Ok(()),
                Value::Bool(b) => {
                    *field = *b;
                    Ok(())
                }
                _ => Err(format!("Platform.Linux.{key} must be true or false")),
            };
            let text = |field: &mut String| match v {
                Value::Null => Ok(()),
                Value::String(s) => {
                    *field = s.clone();
                    Ok(())
                }
                _ => Err(format!("Platform.Linux.{key} must be a string")),
            };
            match key.to_ascii_lowercase().as_str() {
                "usedefaulttmpdir" => flag(&mut o.use_default_tmp_dir)?,
                "usepreformattedpersistentdisk" => flag(&mut o.use_preformatted_persistent_disk)?,
                "bindmountpersistentdisk" => flag(&mut o.bind_mount_persistent_disk)?,
                "createpartitionifnoephemeraldisk" => flag(&mut o.create_partition_if_no_ephemeral_disk)?,
                "skipdisksetup" => flag(&mut o.skip_disk_setup)?,
                "scrubephemeraldisk" => flag(&mut o.scrub_ephemeral_disk)?,
                "usemonitiptablesfirewall" => flag(&mut o.use_monit_iptables_firewall)?,
                "devicepathresolutiontype" => text(&mut o.device_path_resolution_type)?,
                "partitionertype" => text(&mut o.partitioner_type)?,
                "servicemanager" => text(&mut o.service_manager)?,
                "virtiodeviceprefix" => text(&mut o.virtio_device_prefix)?,
                "diskidtransformpattern" => text(&mut o.disk_id_transform_pattern)?,
                "diskidtransformreplacement" => text(&mut o.disk_id_transform_replacement)?,
                "lundevicesymlinkpath" => text(&mut o.lun_device_symlink_path)?,
                "instancestoragemanagedvolumepattern" => {
                    text(&mut o.instance_storage_managed_volume_pattern)?
                }
                "instancestoragedevicepattern" => text(&mut o.instance_storage_device_pattern)?,
                _ => o.unknown.push(key.clone()),
            }
        }
        Ok(o)
    }
}

/// `"Monit": {"Address", "ControlFile", "Binary"}`: lets a stemcell or a test run monit on another
/// port or with another control file. Unknown to the Go agent, which ignores it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MonitConfig {
    /// monit's HTTP interface, default `127.0.0.1:2822`.
    pub address: Option<String>,
    /// The control file for `monit reload`, default `<base>/bosh/etc/monitrc`.
    pub control_file: Option<PathBuf>,
    /// The monit executable, default `<base>/bosh/bin/monit` if present, else `monit` on PATH.
    pub binary: Option<PathBuf>,
}

/// The object at `what`: `None` when absent or `null`, an error naming it when not an object.
fn object<'a>(
    value: Option<&'a Value>,
    what: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(format!("{what} must be an object")),
    }
}

/// Looks up `key` in a JSON object ignoring ASCII case, the way Go's decoder matches field names.
pub fn get_ci<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
}

impl AgentConfig {
    /// Reads and parses `agent.json`; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value =
            serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))?;
        AgentConfig::from_value(&value).with_context(|| path.display())
    }

    /// Interprets an already-parsed `agent.json`.
    pub fn from_value(value: &Value) -> Result<AgentConfig, String> {
        if !value.is_object() {
            return Err("agent config must be a JSON object".into());
        }
        let linux = LinuxOptions::from_value(get_ci(value, "Platform").and_then(|p| get_ci(p, "Linux")))?;
        let settings_value = get_ci(value, "Infrastructure").and_then(|i| get_ci(i, "Settings"));
        let mut sources: Vec<SourceConfig> = match settings_value.and_then(|s| get_ci(s, "Sources")) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(parse_source).collect::<Result<_, _>>()?,
            Some(_) => return Err("Infrastructure.Settings.Sources must be an array".into()),
        };
        let flag = |key: &str| match settings_value.and_then(|s| get_ci(s, key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(format!("Infrastructure.Settings.{key} must be true or false")),
        };
        let settings = SettingsConfig {
            use_server_name: flag("UseServerName")?.unwrap_or(false),
            use_registry: flag("UseRegistry")?,
            retry: RetryConfig::from_value(settings_value.and_then(|s| get_ci(s, "Retry")))?,
        };
        if settings.use_server_name {
            for source in &mut sources {
                if let SourceConfig::Http(h) = source {
                    h.use_server_name = true;
                }
            }
        }
        let monit = get_ci(value, "Monit");
        let text =
            |k: &str| monit.and_then(|m| get_ci(m, k)).and_then(Value::as_str).filter(|s| !s.is_empty());
        let monit = MonitConfig {
            address: text("Address").map(String::from),
            control_file: text("ControlFile").map(PathBuf::from),
            binary: text("Binary").map(PathBuf::from),
        };
        Ok(AgentConfig { sources, settings, linux, monit, notes: keys::notes(value) })
    }
}

fn parse_source(item: &Value) -> Result<SourceConfig, String> {
    let kind = match get_ci(item, "Type") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("Missing source type".into()),
    };
    let text = |key: &str| get_ci(item, key).and_then(Value::as_str).unwrap_or("").to_string();
    match kind.to_ascii_lowercase().as_str() {
        "file" => {
            let path = get_ci(item, "SettingsPath")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or("File settings source needs a SettingsPath")?;
            Ok(SourceConfig::File { settings_path: PathBuf::from(path) })
        }
        "http" => Ok(SourceConfig::Http(HttpSourceConfig {
            uri: required_uri(item, "HTTP")?,
            headers: headers(item)?,
            user_data_path: text("UserDataPath"),
            instance_id_path: text("InstanceIDPath"),
            ssh_keys_path: text("SSHKeysPath"),
            token_path: text("TokenPath"),
            use_server_name: get_ci(item, "UseServerName").and_then(Value::as_bool).unwrap_or(false),
        })),
        "instancemetadata" => Ok(SourceConfig::InstanceMetadata {
            uri: required_uri(item, "InstanceMetadata")?,
            headers: headers(item)?,
            settings_path: text("SettingsPath"),
        }),
        "configdrive" => {
            let disk_paths = match get_ci(item, "DiskPaths") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|p| p.as_str().map(PathBuf::from).ok_or("ConfigDrive DiskPaths must be strings"))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("ConfigDrive DiskPaths must be an array".into()),
            };
            Ok(SourceConfig::ConfigDrive {
                disk_paths,
                meta_data_path: text("MetaDataPath"),
                user_data_path: text("UserDataPath"),
                settings_path: text("SettingsPath"),
            })
        }
        "cdrom" => {
            let file_name = Some(text("FileName")).filter(|f| !f.is_empty()).unwrap_or_else(|| "env".into());
            let device =
                Some(text("DevicePath")).filter(|d| !d.is_empty()).unwrap_or_else(|| "/dev/sr0".into());
            Ok(SourceConfig::Cdrom { file_name, device_path: PathBuf::from(device) })
        }
        "vsphereguestinfo" => Ok(SourceConfig::VsphereGuestInfo {
            rpc_tool_path: text("RpcToolPath"),
            vmtoolsd_path: text("VmToolsdPath"),
        }),
        _ => Err(format!("Unknown source type '{kind}'")),
    }
}

fn required_uri(item: &Value, kind: &str) -> Result<String, String> {
    get_ci(item, "URI")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(String::from)
        .ok_or_else(|| format!("{kind} settings source needs an http:// or https:// URI"))
}

/// `"Headers": {"Name": "value"}`, kept in the written order.
fn headers(item: &Value) -> Result<Vec<(String, String)>, String> {
    match get_ci(item, "Headers") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("settings source header '{k}' must be a string")),
            })
            .collect(),
        Some(_) => Err("settings source Headers must be an object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_go_format_case_insensitively() {
        let cfg = AgentConfig::from_value(&json!({
            "Platform": {"Linux": {"UseDefaultTmpDir": true}},
            "Infrastructure": {"Settings": {"Sources": [
                {"type": "File", "settingsPath": "/var/vcap/bosh/settings-src.json", "UseServerName": true},
                {"Type": "ConfigDrive", "DiskPaths": ["/dev/disk/by-label/config-2"]}
            ]}}
        }))
        .unwrap();
        assert_eq!(
            cfg.sources,
            vec![
                SourceConfig::File { settings_path: "/var/vcap/bosh/settings-src.json".into() },
                SourceConfig::ConfigDrive {
                    disk_paths: vec!["/dev/disk/by-label/config-2".into()],
                    meta_data_path: String::new(),
                    user_data_path: String::new(),
                    settings_path: String::new(),
                }
            ]
        );
        assert!(cfg.linux.use_default_tmp_dir);
    }

    #[test]
    fn reads_http_instance_metadata_and_cdrom_fields() {
        let cfg = AgentConfig::from_value(&json!({"Infrastructure": {"Settings": {"Sources": [
            {"Type": "HTTP", "URI": "http://169.254.169.254", "Headers": {"X-A": "1"},
             "UserDataPath": "/latest/user-data", "InstanceIDPath": "/latest/meta-data/instance-id",
             "SSHKeysPath": "/k", "TokenPath": "/latest/api/token", "UseServerName": true},
            {"Type": "InstanceMetadata", "URI": "http://m", "SettingsPath": "/s",
             "Headers": {"Metadata-Flavor": "Google"}},
            {"Type": "CDROM", "FileName": "env"},
            {"Type": "VsphereGuestInfo"}
        ]}}}))
        .unwrap();
        let SourceConfig::Http(h) = &cfg.sources[0] else { panic!("{:?}", cfg.sources[0]) };
        assert_eq!(h.headers, vec![("X-A".to_string(), "1".to_string())]);
        assert_eq!((h.token_path.as_str(), h.use_server_name), ("/latest/api/token", true));
        assert_eq!(
            cfg.sources[1],
            SourceConfig::InstanceMetadata {
                uri: "http://m".into(),
                headers: vec![("Metadata-Flavor".into(), "Google".into())],
                settings_path: "/s".into()
            }
        );
        assert_eq!(
            cfg.sources[2],
            SourceConfig::Cdrom { file_name: "env".into(), device_path: "/dev/sr0".into() }
        );
        assert_eq!(
            cfg.sources[3],
            SourceConfig::VsphereGuestInfo { rpc_tool_path: String::new(), vmtoolsd_path: String::new() }
        );
        let bad = json!({"Infrastructure": {"Settings": {"Sources": [{"Type": "HTTP", "URI": "ftp://x"}]}}});
        assert_eq!(
            AgentConfig::from_value(&bad).unwrap_err(),
            "HTTP settings source needs an http:// or https:// URI"
        );
    }

    #[test]
    fn reads_the_settings_keys_beside_the_sources() {
        let cfg = AgentConfig::from_value(&json!({"Infrastructure": {"Settings": {
            "Sources": [{"Type": "HTTP", "URI": "http://m"}, {"Type": "VsphereGuestInfo", "RpcToolPath": "/r"}],
            "UseServerName": true, "UseRegistry": false,
            "Retry": {"Attempts": 3, "IntervalMs": 10, "AttemptTimeoutMs": 20, "PassMs": 30, "PauseMs": 40,
                      "GiveUpMs": 50, "MinFailedRunMs": 60}
        }}}))
        .unwrap();
        assert!(matches!(&cfg.sources[0], SourceConfig::Http(h) if h.use_server_name), "{:?}", cfg.sources);
        assert_eq!(
            cfg.sources[1],
            SourceConfig::VsphereGuestInfo { rpc_tool_path: "/r".into(), vmtoolsd_path: String::new() }
        );
        assert_eq!((cfg.settings.use_server_name, cfg.settings.use_registry), (true, Some(false)));
        let r = &cfg.settings.retry;
        assert_eq!(
            (r.attempts, r.interval_ms, r.attempt_timeout_ms, r.pass_ms),
            (Some(3), Some(10), Some(20), Some(30))
        );
        assert_eq!((r.pause_ms, r.give_up_ms, r.min_failed_run_ms), (Some(40), Some(50), Some(60)));
        let bad = json!({"Infrastructure": {"Settings": {"Retry": {"Attempt": 3}}}});
        assert!(AgentConfig::from_value(&bad).unwrap_err().contains("Retry.Attempt is not a known"));
        let bad = json!({"Infrastructure": {"Settings": {"UseRegistry": "yes"}}});
        assert!(AgentConfig::from_value(&bad).unwrap_err().contains("UseRegistry must be true or false"));
    }

    #[test]
    fn rejects_missing_and_unknown_types() {
        let missing = json!({"Infrastructure": {"Settings": {"Sources": [{"SettingsPath": "x"}]}}});
        assert_eq!(AgentConfig::from_value(&missing).unwrap_err(), "Missing source type");
        let unknown = json!({"Infrastructure": {"Settings": {"Sources": [{"Type": "Floppy"}]}}});
        assert_eq!(AgentConfig::from_value(&unknown).unwrap_err(), "Unknown source type 'Floppy'");
        assert!(AgentConfig::from_value(&json!([1])).is_err());
    }

    #[test]
    fn reads_every_linux_option_of_the_stemcells() {
        let cfg = AgentConfig::from_value(&json!({"Platform": {"Linux": {
            "UseDefaultTmpDir": true, "UsePreformattedPersistentDisk": true, "BindMountPersistentDisk": true,
            "CreatePartitionIfNoEphemeralDisk": true, "SkipDiskSetup": true, "ScrubEphemeralDisk": true,
            "DevicePathResolutionType": "virtio", "partitionertype": "parted", "ServiceManager": "systemd",
            "VirtioDevicePrefix": "google", "DiskIDTransformPattern": "^(disk-.+)$",
            "DiskIDTransformReplacement": "google-${1}", "LunDeviceSymlinkPath": "/dev/disk/azure/data/by-lun",
            "InstanceStorageManagedVolumePattern": "EBS", "InstanceStorageDevicePattern": "/dev/nvme*n1",
            "UseMonitIptablesFirewall": true, "NetworkingType": "systemd", "ScrubEphemeralDisks": null
        }}}))
        .unwrap();
        let l = &cfg.linux;
        assert!(l.use_default_tmp_dir && l.use_preformatted_persistent_disk && l.bind_mount_persistent_disk);
        assert!(l.create_partition_if_no_ephemeral_disk && l.skip_disk_setup && l.scrub_ephemeral_disk);
        assert!(l.use_monit_iptables_firewall && l.uses_systemd());
        assert_eq!(
            (
                l.device_path_resolution_type.as_str(),
                l.partitioner_type.as_str(),
                l.virtio_device_prefix.as_str()
            ),
            ("virtio", "parted", "google")
        );
        assert_eq!(
            (l.disk_id_transform_pattern.as_str(), l.disk_id_transform_replacement.as_str()),
            ("^(disk-.+)$", "google-${1}")
        );
        assert_eq!(l.lun_device_symlink_path, "/dev/disk/azure/data/by-lun");
        assert_eq!(
            (l.instance_storage_managed_volume_pattern.as_str(), l.instance_storage_device_pattern.as_str()),
            ("EBS", "/dev/nvme*n1")
        );
        assert_eq!(l.unknown, vec!["NetworkingType".to_string(), "ScrubEphemeralDisks".to_string()]);
        assert_eq!(AgentConfig::from_value(&json!({})).unwrap().linux, LinuxOptions::default());
        assert!(!LinuxOptions::default().uses_systemd());
        let bad = json!({"Platform": {"Linux": {"SkipDiskSetup": "true"}}});
        assert_eq!(
            AgentConfig::from_value(&bad).unwrap_err(),
            "Platform.Linux.SkipDiskSetup must be true or false"
        );
        let bad = json!({"Platform": {"Linux": {"PartitionerType": 1}}});
        assert_eq!(
            AgentConfig::from_value(&bad).unwrap_err(),
            "Platform.Linux.PartitionerType must be a string"
        );
    }
}
