//! Every `agent.json` key of the official stemcells (their 18 files: 9 clouds, Jammy and Noble) and
//! the rest of the Go agent's `LinuxOptions` and source options, with what this agent does with
//! each: honoured (and how), or deliberately ignored (and why). The one place that lists them: at
//! start the agent logs the treatment of every key its `agent.json` carries, so an operator moving
//! a stemcell from the Go agent sees what differs. The disk keys are acted on by the disk setup
//! (`platform::disks`), `UseDefaultTmpDir` by the VM layout, `UseMonitIptablesFirewall` by monit's
//! start; what those say here must stay what they do.

use super::get_ci;
use serde_json::Value;

/// What the agent does with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Acted on; how.
    Honoured(&'static str),
    /// Read and deliberately not acted on; why.
    Ignored(&'static str),
}

/// `Platform.Linux` keys.
pub const LINUX: &[(&str, Treatment)] = &[
    ("ServiceManager", Treatment::Honoured("systemd starts monit with systemctl, anything else with runit's sv")),
    (
        "PartitionerType",
        Treatment::Honoured("the ephemeral disk layout: parted (or empty) a GPT with named partitions, sfdisk an msdos table; persistent disks always get one GPT partition"),
    ),
    (
        "DevicePathResolutionType",
        Treatment::Honoured("how persistent disks are found: virtio (by-id), scsi (rescan, sysfs), iscsi, or the path"),
    ),
    (
        "CreatePartitionIfNoEphemeralDisk",
        Treatment::Honoured("without an ephemeral disk, swap and data go on the root disk's free space"),
    ),
    ("SkipDiskSetup", Treatment::Honoured("no ephemeral, raw-ephemeral or root disk setup (warden)")),
    ("UseDefaultTmpDir", Treatment::Honoured("/tmp is left as it is, not bind-mounted from data (warden)")),
    (
        "UsePreformattedPersistentDisk",
        Treatment::Honoured("persistent disks are mounted as given, never partitioned or formatted (warden)"),
    ),
    ("BindMountPersistentDisk", Treatment::Honoured("persistent disks are directories, bind-mounted (warden)")),
    (
        "ScrubEphemeralDisk",
        Treatment::Ignored(
            "not a Go agent option any more (softlayer's files still carry it): files on the ephemeral disk \
             are never scrubbed; a disk whose partitions the agent did not make is repartitioned anyway",
        ),
    ),
    (
        "VirtioDevicePrefix",
        Treatment::Honoured(
            "virtio disks are also looked up as /dev/disk/by-id/<prefix>-<first 20 characters of the id> \
             (the older agents' rule), besides *<id>",
        ),
    ),
    ("DiskIDTransformPattern", Treatment::Ignored("set by no official stemcell; not supported (warned)")),
    ("DiskIDTransformReplacement", Treatment::Ignored("set by no official stemcell; not supported")),
    ("LunDeviceSymlinkPath", Treatment::Ignored("set by no official stemcell; not supported (warned)")),
    (
        "InstanceStorageManagedVolumePattern",
        Treatment::Ignored("set by no official stemcell; not supported (warned)"),
    ),
    ("InstanceStorageDevicePattern", Treatment::Ignored("set by no official stemcell; not supported (warned)")),
    (
        "UseMonitIptablesFirewall",
        Treatment::Honoured("monit's access is left to the stemcell's iptables rules: no nftables rules"),
    ),
];

/// `Infrastructure.Settings` keys beside `Sources`.
pub const SETTINGS: &[(&str, Treatment)] = &[
    ("Sources", Treatment::Honoured("tried in order; the cached settings.json is the last resort")),
    (
        "UseServerName",
        Treatment::Honoured("a BOSH registry named in the user data is keyed by the user data's server.name"),
    ),
    (
        "UseRegistry",
        Treatment::Ignored(
            "the user data itself says whether it holds the settings (an agent_id) or a registry pointer, \
             and either is followed",
        ),
    ),
    (
        "Retry",
        Treatment::Honoured("this agent's extension: tries, timeouts and patience of the settings fetch"),
    ),
];

/// Keys of each source type (`Type` itself selects the source).
pub const SOURCE: &[(&str, &str, Treatment)] = &[
    (
        "HTTP",
        "URI",
        Treatment::Honoured("the metadata service (DHCP is brought up first when no NIC is configured)"),
    ),
    ("HTTP", "Headers", Treatment::Honoured("sent with every metadata request")),
    ("HTTP", "UserDataPath", Treatment::Honoured("the user data: settings, or a registry pointer")),
    ("HTTP", "TokenPath", Treatment::Honoured("IMDSv2: a token is PUT for and sent with every request")),
    (
        "HTTP",
        "SSHKeysPath",
        Treatment::Honoured("vcap's OpenSSH key from the metadata service (a failure is logged)"),
    ),
    (
        "HTTP",
        "InstanceIDPath",
        Treatment::Honoured("fetched only to key a BOSH registry (the Go agent never fetches it)"),
    ),
    ("InstanceMetadata", "URI", Treatment::Honoured("the metadata service (DHCP first, as for HTTP)")),
    ("InstanceMetadata", "Headers", Treatment::Honoured("sent with the request (GCP needs Metadata-Flavor)")),
    ("InstanceMetadata", "SettingsPath", Treatment::Honoured("the settings document")),
    ("File", "SettingsPath", Treatment::Honoured("the settings file")),
    ("File", "MetaDataPath", Treatment::Ignored("unused by the File source, in the Go agent too")),
    (
        "File",
        "UserDataPath",
        Treatment::Ignored("unused by the File source, in the Go agent too (SettingsPath is read)"),
    ),
    ("ConfigDrive", "DiskPaths", Treatment::Honoured("devices (or images, directories) tried in order")),
    ("ConfigDrive", "MetaDataPath", Treatment::Honoured("meta-data on the drive: instance id, OpenSSH key")),
    (
        "ConfigDrive",
        "UserDataPath",
        Treatment::Honoured("user data on the drive: settings or a registry pointer"),
    ),
    (
        "ConfigDrive",
        "SettingsPath",
        Treatment::Honoured("a settings file on the drive, read first when present"),
    ),
    ("CDROM", "FileName", Treatment::Honoured("the settings file on the disc")),
    ("CDROM", "DevicePath", Treatment::Honoured("this agent's extension: the drive, /dev/sr0 by default")),
    ("VsphereGuestInfo", "RpcToolPath", Treatment::Honoured("the vmware-rpctool to run")),
    ("VsphereGuestInfo", "VmToolsdPath", Treatment::Honoured("the vmtoolsd to fall back to")),
];

/// Every key `value` (an `agent.json`) carries under `Platform.Linux` and `Infrastructure.Settings`,
/// with its treatment; keys nobody knows are ignored, and say so.
pub fn notes(value: &Value) -> Vec<(String, Treatment)> {
    const UNKNOWN: Treatment = Treatment::Ignored("unknown to this agent and to the Go agent");
    let find = |table: &[(&str, Treatment)], key: &str| {
        table.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, t)| *t).unwrap_or(UNKNOWN)
    };
    let mut out = Vec::new();
    if let Some(Value::Object(linux)) = get_ci(value, "Platform").and_then(|p| get_ci(p, "Linux")) {
        for key in linux.keys() {
            out.push((format!("Platform.Linux.{key}"), find(LINUX, key)));
        }
    }
    let Some(Value::Object(settings)) = get_ci(value, "Infrastructure").and_then(|i| get_ci(i, "Settings"))
    else {
        return out;
    };
    for key in settings.keys() {
        out.push((format!("Infrastructure.Settings.{key}"), find(SETTINGS, key)));
    }
    let sources = settings.iter().find(|(k, _)| k.eq_ignore_ascii_case("Sources")).map(|(_, v)| v);
    for (i, source) in sources.and_then(Value::as_array).into_iter().flatten().enumerate() {
        let kind = get_ci(source, "Type").and_then(Value::as_str).unwrap_or("");
        for key in source.as_object().into_iter().flat_map(|o| o.keys()) {
            if key.eq_ignore_ascii_case("Type") {
                continue;
            }
            let t = SOURCE
                .iter()
                .find(|(k, name, _)| k.eq_ignore_ascii_case(kind) && name.eq_ignore_ascii_case(key))
                .map(|(_, _, t)| *t)
                .unwrap_or(UNKNOWN);
            out.push((format!("Infrastructure.Settings.Sources[{i}] ({kind}).{key}"), t));
        }
    }
    out
}

/// Logs what happens to each key of the `agent.json` the agent started with: ignored ones at info
/// (with why), honoured ones at debug.
pub fn log_treatment(config: &super::AgentConfig) {
    for (key, t) in &config.notes {
        match t {
            Treatment::Honoured(how) => log::debug!("agent.json {key}: honoured: {how}"),
            Treatment::Ignored(why) => log::info!("agent.json {key}: ignored: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_key_gets_its_treatment() {
        let notes = notes(&json!({
            "Platform": {"Linux": {"ServiceManager": "systemd", "scrubephemeraldisk": true, "Bogus": 1}},
            "Infrastructure": {"Settings": {"UseRegistry": true, "Sources": [
                {"Type": "File", "SettingsPath": "/s", "MetaDataPath": ""},
                {"Type": "HTTP", "URI": "http://m", "Nope": 1}
            ]}}
        }));
        let get = |k: &str| {
            notes.iter().find(|(p, _)| p == k).map(|(_, t)| *t).unwrap_or_else(|| panic!("{k}: {notes:?}"))
        };
        assert!(matches!(get("Platform.Linux.ServiceManager"), Treatment::Honoured(_)));
        assert!(
            matches!(get("Platform.Linux.scrubephemeraldisk"), Treatment::Ignored(w) if w.contains("softlayer"))
        );
        assert!(matches!(get("Platform.Linux.Bogus"), Treatment::Ignored(w) if w.contains("unknown")));
        assert!(matches!(get("Infrastructure.Settings.UseRegistry"), Treatment::Ignored(_)));
        assert!(matches!(
            get("Infrastructure.Settings.Sources[0] (File).MetaDataPath"),
            Treatment::Ignored(_)
        ));
        assert!(matches!(get("Infrastructure.Settings.Sources[1] (HTTP).URI"), Treatment::Honoured(_)));
        assert!(
            matches!(get("Infrastructure.Settings.Sources[1] (HTTP).Nope"), Treatment::Ignored(w) if w.contains("unknown"))
        );
        assert_eq!(notes.len(), 9, "{notes:?}");
    }

    /// Every `LinuxOptions` field has its entry, so a key cannot be added to one and not the other.
    #[test]
    fn the_table_covers_every_linux_option() {
        let all: serde_json::Map<String, Value> =
            LINUX.iter().map(|(k, _)| (k.to_string(), Value::Null)).collect();
        let parsed = super::super::LinuxOptions::from_value(Some(&Value::Object(all))).unwrap();
        assert!(parsed.unknown.is_empty(), "{:?}", parsed.unknown);
        assert_eq!(LINUX.len(), 16);
    }
}
