//! The `HTTP` source: an EC2-style metadata service (AWS, OpenStack's metadata service and clouds
//! that copy them). User data holds the settings or a registry pointer; the instance id keys the
//! registry; the OpenSSH key is read for the platform to install.
//!
//! Why IMDSv2 is supported: AWS accounts can require it, and then every plain GET is refused. When
//! `TokenPath` is set, one token is PUT for per attempt (`X-aws-ec2-metadata-token-ttl-seconds`)
//! and sent as `X-aws-ec2-metadata-token` with each metadata request of that attempt.

use super::http::{join, Http};
use super::user_data::{self, UserData};
use super::{Attempt, Failure, Fetched, NetworkHook};
use crate::config::HttpSourceConfig;
use std::time::Instant;

/// EC2's user-data path, used when `UserDataPath` is empty.
pub const DEFAULT_USER_DATA_PATH: &str = "/latest/user-data";
/// Lifetime asked for an IMDSv2 token; one boot needs it for seconds.
const TOKEN_TTL_SECONDS: &str = "300";

/// An EC2-style metadata service.
pub struct HttpMetadataSource {
    config: HttpSourceConfig,
    network: Option<NetworkHook>,
}

impl HttpMetadataSource {
    /// A source for `config` (see [`HttpSourceConfig`]); `network` is called before each try.
    pub fn new(config: HttpSourceConfig, network: Option<NetworkHook>) -> HttpMetadataSource {
        HttpMetadataSource { config, network }
    }

    fn url(&self, path: &str) -> String {
        join(&self.config.uri, path)
    }

    /// The configured headers plus the IMDSv2 token, when one is required.
    fn headers(&self, http: &Http) -> Result<Vec<(String, String)>, Failure> {
        let mut headers = self.config.headers.clone();
        if !self.config.token_path.is_empty() {
            let mut put_headers = headers.clone();
            put_headers.push(("X-aws-ec2-metadata-token-ttl-seconds".into(), TOKEN_TTL_SECONDS.into()));
            let token = http
                .put(&self.url(&self.config.token_path), &put_headers)
                .map_err(|f| f.map(|m| format!("IMDSv2 token: {m}")))?;
            let token = String::from_utf8_lossy(&token).trim().to_string();
            if token.is_empty() {
                return Err(Failure::Transient("IMDSv2 token: the service returned an empty token".into()));
            }
            headers.push(("X-aws-ec2-metadata-token".into(), token));
        }
        Ok(headers)
    }

    fn instance_id(&self, http: &Http, headers: &[(String, String)]) -> Result<Option<String>, Failure> {
        if self.config.instance_id_path.is_empty() {
            return Ok(None);
        }
        let body = http
            .get(&self.url(&self.config.instance_id_path), headers)
            .map_err(|f| f.map(|m| format!("instance id: {m}")))?;
        Ok(Some(String::from_utf8_lossy(&body).trim().to_string()).filter(|s| !s.is_empty()))
    }

    /// The OpenSSH key, if the service has one. A missing or failing key is logged, not fatal: the
    /// settings are what the agent cannot boot without.
    fn public_key(&self, http: &Http, headers: &[(String, String)]) -> Option<String> {
        if self.config.ssh_keys_path.is_empty() {
            return None;
        }
        match http.get(&self.url(&self.config.ssh_keys_path), headers) {
            Ok(body) => Some(String::from_utf8_lossy(&body).trim().to_string()).filter(|k| !k.is_empty()),
            Err(f) => {
                log::warn!("{}: no SSH public key: {}", self.name(), f.message());
                None
            }
        }
    }
}

impl Attempt for HttpMetadataSource {
    fn name(&self) -> String {
        format!("HTTP({})", crate::url::redact_url(&self.config.uri))
    }

    fn attempt(&self, deadline: Instant) -> Result<Fetched, Failure> {
        if let Some(up) = &self.network {
            up();
        }
        let http = Http::new(deadline);
        let headers = self.headers(&http)?;
        let path = if self.config.user_data_path.is_empty() {
            DEFAULT_USER_DATA_PATH
        } else {
            &self.config.user_data_path
        };
        let body = http.get(&self.url(path), &headers).map_err(|f| f.map(|m| format!("user data: {m}")))?;
        let settings = match user_data::interpret(user_data::parse(&body)?)? {
            UserData::Settings(s) => s,
            UserData::Registry { endpoint, server_name } => {
                let by_name = server_name.clone().filter(|_| self.config.use_server_name);
                let id = match by_name {
                    Some(name) => name,
                    None => self.instance_id(&http, &headers)?.or(server_name).ok_or_else(|| {
                        Failure::Permanent(
                            "user data names a registry but neither an InstanceIDPath nor server.name \
                             identifies this VM"
                                .into(),
                        )
                    })?,
                };
                super::registry::fetch(&http, &endpoint, &id)?
            }
        };
        let public_key = self.public_key(&http, &headers);
        Ok(Fetched { settings, public_key })
    }
}
