//! Which sources to read: the ones `agent.json` names (`-C`), the ones the Ruby agent's `-I
//! <infrastructure>` implied, or the embedded default when neither is given.

use super::cdrom::CdromSource;
use super::config_drive::{self, ConfigDriveSource};
use super::embedded::EmbeddedSource;
use super::guest_info::GuestInfoSource;
use super::http_metadata::HttpMetadataSource;
use super::instance_metadata::InstanceMetadataSource;
use super::retry::{RetryPolicy, Retrying, Round};
use super::{Attempt, FileSource, NetworkHook, SettingsSource};
use crate::config::{HttpSourceConfig, SourceConfig};
use crate::dirs::Dirs;

/// How the sources of one start behave besides their own configuration.
#[derive(Clone, Default)]
pub struct Setup {
    /// Tries and deadlines.
    pub policy: RetryPolicy,
    /// Brings the network up before the first metadata request (the platform's; none: nothing to do).
    pub network: Option<NetworkHook>,
}

/// The sources for this start: those of `agent.json` when it was given, else those `-I
/// <infrastructure>` implies, else the embedded default (an HTTPS bus on loopback).
pub fn select(
    configured: Option<&[SourceConfig]>,
    infrastructure: Option<&str>,
    dirs: &Dirs,
    setup: &Setup,
) -> Result<Vec<Box<dyn SettingsSource>>, String> {
    match (configured, infrastructure) {
        (Some(configs), _) => Ok(build_with(configs, dirs, setup)),
        (None, Some(infrastructure)) => {
            let metadata_url = std::env::var(METADATA_URL_ENV).ok();
            let configs = infrastructure_configs(infrastructure, dirs, metadata_url.as_deref())?;
            Ok(build_with(&configs, dirs, setup))
        }
        (None, None) => {
            log::info!("no -C given: running on the embedded default (HTTPS bus, dummy platform)");
            Ok(vec![Box::new(EmbeddedSource { dirs: dirs.clone() })])
        }
    }
}

/// Builds the sources named in `agent.json` with the default [`RetryPolicy`]; `<base>/bosh` holds
/// temporary mount points.
#[cfg(feature = "internals")]
pub fn from_config(configs: &[SourceConfig], dirs: &Dirs) -> Vec<Box<dyn SettingsSource>> {
    build(configs, dirs, RetryPolicy::default())
}

/// Builds the sources with `policy` and no network hook (the network is already up).
#[cfg(feature = "internals")]
pub fn build(configs: &[SourceConfig], dirs: &Dirs, policy: RetryPolicy) -> Vec<Box<dyn SettingsSource>> {
    build_with(configs, dirs, &Setup { policy, network: None })
}

/// Builds the sources as `setup` says. Local files are read once per pass: retrying them within a
/// pass cannot help (the settings service passes again when nothing answered).
pub fn build_with(configs: &[SourceConfig], dirs: &Dirs, setup: &Setup) -> Vec<Box<dyn SettingsSource>> {
    let policy = setup.policy;
    let round = Round::new(policy);
    let mut leads = true;
    let mut retrying = |inner: Box<dyn Attempt>| -> Box<dyn SettingsSource> {
        let source = Retrying::in_round(inner, policy, round.clone(), leads);
        leads = false;
        Box::new(source)
    };
    let scratch = dirs.bosh();
    let mut out: Vec<Box<dyn SettingsSource>> = Vec::new();
    for c in configs {
        match c {
            SourceConfig::File { settings_path } => {
                out.push(Box::new(FileSource { path: settings_path.clone() }))
            }
            SourceConfig::Http(h) => {
                out.push(retrying(Box::new(HttpMetadataSource::new(h.clone(), setup.network.clone()))))
            }
            SourceConfig::InstanceMetadata { uri, headers, settings_path } => {
                out.push(retrying(Box::new(InstanceMetadataSource {
                    uri: uri.clone(),
                    headers: headers.clone(),
                    settings_path: settings_path.clone(),
                    network: setup.network.clone(),
                })))
            }
            SourceConfig::ConfigDrive { disk_paths, meta_data_path, user_data_path, settings_path } => out
                .push(retrying(Box::new(ConfigDriveSource {
                    disk_paths: disk_paths.clone(),
                    meta_data_path: meta_data_path.clone(),
                    user_data_path: user_data_path.clone(),
                    settings_path: settings_path.clone(),
                    scratch: scratch.clone(),
                }))),
            SourceConfig::Cdrom { file_name, device_path } => out.push(retrying(Box::new(CdromSource {
                file_name: file_name.clone(),
                device_path: device_path.clone(),
                scratch: scratch.clone(),
            }))),
            SourceConfig::VsphereGuestInfo { rpc_tool_path, vmtoolsd_path } => {
                out.push(retrying(Box::new(GuestInfoSource::new(rpc_tool_path, vmtoolsd_path))))
            }
        }
    }
    out
}

/// The environment variable that replaces `http://169.254.169.254` for `-I aws` and `-I openstack`.
/// For tests only: on a real VM the metadata service is always at the link-local address.
pub const METADATA_URL_ENV: &str = "BOSH_AGENT_TEST_METADATA_URL";
/// EC2's (and OpenStack's) metadata service.
pub const EC2_METADATA_URL: &str = "http://169.254.169.254";

/// The sources the Ruby agent's `-I <infrastructure>` implied (its `lib/bosh_agent/infrastructure/<name>.rb`), for a
/// stemcell started without `-C`. `metadata_url` replaces the link-local metadata address (tests).
pub fn infrastructure_configs(
    name: &str,
    dirs: &Dirs,
    metadata_url: Option<&str>,
) -> Result<Vec<SourceConfig>, String> {
    let ec2 = |use_server_name: bool| {
        SourceConfig::Http(HttpSourceConfig {
            uri: metadata_url.unwrap_or(EC2_METADATA_URL).trim_end_matches('/').to_string(),
            headers: Vec::new(),
            user_data_path: "/latest/user-data".into(),
            instance_id_path: "/latest/meta-data/instance-id".into(),
            ssh_keys_path: "/latest/meta-data/public-keys/0/openssh-key".into(),
            token_path: String::new(),
            use_server_name,
        })
    };
    match name {
        "aws" => Ok(vec![ec2(false)]),
        "openstack" => Ok(vec![
            SourceConfig::ConfigDrive {
                disk_paths: vec!["/dev/disk/by-label/config-2".into(), "/dev/disk/by-label/CONFIG-2".into()],
                meta_data_path: config_drive::DEFAULT_META_DATA_PATH.into(),
                user_data_path: config_drive::DEFAULT_USER_DATA_PATH.into(),
                settings_path: String::new(),
            },
            ec2(true),
        ]),
        "vsphere" | "vcloud" => {
            Ok(vec![SourceConfig::Cdrom { file_name: "env".into(), device_path: "/dev/sr0".into() }])
        }
        "dummy" => Ok(vec![
            // The Ruby dummy infrastructure's file first, then the agent's own settings file.
            SourceConfig::File { settings_path: dirs.dummy_cpi_settings_json() },
            SourceConfig::File { settings_path: dirs.settings_json() },
        ]),
        other => Err(format!(
            "-I {other}: this agent has no built-in settings sources for it; give -C agent.json instead"
        )),
    }
}

/// [`infrastructure_configs`] built with the default [`RetryPolicy`].
#[cfg(feature = "internals")]
pub fn for_infrastructure(
    name: &str,
    dirs: &Dirs,
    metadata_url: Option<&str>,
) -> Result<Vec<Box<dyn SettingsSource>>, String> {
    Ok(from_config(&infrastructure_configs(name, dirs, metadata_url)?, dirs))
}
