//! `agent.json`, in the Go agent's format, so today's stemcells can swap agents without touching their
//! configuration. Keys are Go field names matched case-insensitively, as encoding/json does.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// One entry of `Infrastructure.Settings.Sources`.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceConfig {
    /// Settings read from a local JSON file.
    File {
        /// Where the settings file lives.
        settings_path: PathBuf,
    },
    /// A source type that a later release of this agent implements (HTTP, ConfigDrive, CDROM, ...);
    /// kept so the order in `agent.json` is preserved when they arrive.
    Unsupported {
        /// The `Type` as written.
        kind: String,
    },
}

/// The parts of `agent.json` the agent acts on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentConfig {
    /// Settings sources, tried in order.
    pub sources: Vec<SourceConfig>,
    /// `Platform.Linux` options, kept raw until the platform layer needs them.
    pub linux_options: Value,
    /// Where monit is (an extension of ours; the Go agent hard-codes these).
    pub monit: MonitConfig,
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

/// Looks up `key` in a JSON object ignoring ASCII case, the way Go's decoder matches field names.
pub fn get_ci<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
}

impl AgentConfig {
    /// Reads and parses `agent.json`; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let value: Value =
            serde_json::from_slice(&data).map_err(|e| format!("parsing {}: {e}", path.display()))?;
        AgentConfig::from_value(&value).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Interprets an already-parsed `agent.json`.
    pub fn from_value(value: &Value) -> Result<AgentConfig, String> {
        if !value.is_object() {
            return Err("agent config must be a JSON object".into());
        }
        let linux_options =
            get_ci(value, "Platform").and_then(|p| get_ci(p, "Linux")).cloned().unwrap_or(Value::Null);
        let sources = match get_ci(value, "Infrastructure")
            .and_then(|i| get_ci(i, "Settings"))
            .and_then(|s| get_ci(s, "Sources"))
        {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(parse_source).collect::<Result<_, _>>()?,
            Some(_) => return Err("Infrastructure.Settings.Sources must be an array".into()),
        };
        let monit = get_ci(value, "Monit");
        let text =
            |k: &str| monit.and_then(|m| get_ci(m, k)).and_then(Value::as_str).filter(|s| !s.is_empty());
        let monit = MonitConfig {
            address: text("Address").map(String::from),
            control_file: text("ControlFile").map(PathBuf::from),
            binary: text("Binary").map(PathBuf::from),
        };
        Ok(AgentConfig { sources, linux_options, monit })
    }
}

fn parse_source(item: &Value) -> Result<SourceConfig, String> {
    let kind = match get_ci(item, "Type") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("Missing source type".into()),
    };
    match kind.to_ascii_lowercase().as_str() {
        "file" => {
            let path = get_ci(item, "SettingsPath")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or("File settings source needs a SettingsPath")?;
            Ok(SourceConfig::File { settings_path: PathBuf::from(path) })
        }
        "http" | "configdrive" | "cdrom" | "instancemetadata" | "vsphereguestinfo" => {
            Ok(SourceConfig::Unsupported { kind })
        }
        _ => Err(format!("Unknown source type '{kind}'")),
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
                SourceConfig::Unsupported { kind: "ConfigDrive".into() }
            ]
        );
        assert_eq!(cfg.linux_options["UseDefaultTmpDir"], true);
    }

    #[test]
    fn rejects_missing_and_unknown_types() {
        let missing = json!({"Infrastructure": {"Settings": {"Sources": [{"SettingsPath": "x"}]}}});
        assert_eq!(AgentConfig::from_value(&missing).unwrap_err(), "Missing source type");
        let unknown = json!({"Infrastructure": {"Settings": {"Sources": [{"Type": "Floppy"}]}}});
        assert_eq!(AgentConfig::from_value(&unknown).unwrap_err(), "Unknown source type 'Floppy'");
        assert!(AgentConfig::from_value(&json!([1])).is_err());
    }
}
