//! `ssh ["setup", {...}]` and `ssh ["cleanup", {...}]`: the temporary users behind `bosh ssh`, `bosh
//! scp` and `bosh logs --director` (the Go agent's `agent/action/ssh.go`). Synchronous because the director and bosh-cli
//! read the value straight from the reply, with no task polling (the director's `agent_client.rb`, bosh-cli's `agentclient`).
//!
//! The answer is computed (default IP, host key) *before* the user is created, so a VM that cannot
//! answer does not keep a half-made user around. On the dummy platform nothing is created: the
//! request is recorded in `<base>/bosh/dummy_ssh_users.json` and the host key is `dummy-public-key`.

use super::{bind, Action, Call};
use crate::platform::users::{self, UserRegex};
use crate::settings::{Network, Settings};
use serde_json::{json, Map, Value};

/// Longest `public_key` accepted (an RSA 16384-bit key is about 2.8 KB).
const MAX_PUBLIC_KEY: usize = 16 * 1024;

/// `ssh [command, params]`, bound and validated.
pub enum Ssh {
    /// Create a user that may log in with `public_key`.
    Setup {
        /// `bosh_...`, validated.
        user: String,
        /// The caller's public key, written verbatim.
        public_key: String,
        /// Optional crypted password (the CLI does not send one today).
        password: Option<String>,
    },
    /// Remove the matching `bosh_` users.
    Cleanup {
        /// The restricted matcher for `user_regex`.
        regex: UserRegex,
    },
}

/// Go's JSON decoding matches field names case-insensitively (and `user` has no tag there), so the
/// agent does too: an exact key first, then any case.
fn field<'a>(params: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    params.get(name).or_else(|| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn string_field(params: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match field(params, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => {
            Err(format!("Extracting method arguments from payload: {name} must be a string, got {other}"))
        }
    }
}

impl Action for Ssh {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (command, params): (String, Option<Map<String, Value>>) = bind(args)?;
        let params = params.unwrap_or_default();
        match command.as_str() {
            "setup" => {
                let user = string_field(&params, "user")?.unwrap_or_default();
                users::validate_ssh_user(&user)?;
                let public_key = string_field(&params, "public_key")?.unwrap_or_default();
                if public_key.trim().is_empty()
                    || public_key.len() > MAX_PUBLIC_KEY
                    || public_key.contains('\0')
                {
                    return Err("Invalid public_key: expected one OpenSSH public key".into());
                }
                let password = string_field(&params, "password")?;
                if password.as_deref().is_some_and(|p| p.chars().any(char::is_control)) {
                    return Err("Invalid password: control characters".into());
                }
                Ok(Ssh::Setup { user, public_key, password })
            }
            "cleanup" => {
                let pattern = string_field(&params, "user_regex")?
                    .ok_or("Extracting method arguments from payload: user_regex is missing")?;
                Ok(Ssh::Cleanup { regex: UserRegex::parse(&pattern)? })
            }
            _ => Err("Unknown command for SSH method".into()),
        }
    }

    fn run(self, call: &Call) -> Result<Value, String> {
        let platform = &call.ctx.platform;
        match self {
            Ssh::Setup { user, public_key, password } => {
                let settings = call.ctx.settings.get().settings;
                let ip = default_ip(&settings).ok_or("No default ip could be found")?;
                let host_public_key = platform.ssh_host_public_key()?;
                platform.setup_ssh_user(&user, password.as_deref(), &public_key)?;
                log::info!("ssh: set up user {user}");
                Ok(
                    json!({"command": "setup", "status": "success", "ip": ip, "host_public_key": host_public_key}),
                )
            }
            Ssh::Cleanup { regex } => {
                let removed = platform.cleanup_ssh_users(&regex)?;
                log::info!("ssh: removed users {removed:?}");
                Ok(json!({"command": "cleanup", "status": "success"}))
            }
        }
    }
}

/// The address bosh-cli connects to: the IP of a network with a non-empty `default`, else any
/// network's IP (Go's `Networks.DefaultIP`). `None` when no network has one.
pub fn default_ip(settings: &Settings) -> Option<String> {
    let ip = |n: &Network| Some(n.ip.clone()).filter(|ip| !ip.is_empty());
    let nets = || settings.networks.values();
    nets().filter(|n| !n.default.is_empty()).find_map(ip).or_else(|| nets().find_map(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(networks: Value) -> Settings {
        serde_json::from_value(json!({"networks": networks})).unwrap()
    }

    #[test]
    fn default_ip_prefers_the_default_network() {
        let s = settings(json!({"a": {"ip": "10.0.0.1"}, "b": {"ip": "10.0.0.2", "default": ["gateway"]}}));
        assert_eq!(default_ip(&s).as_deref(), Some("10.0.0.2"));
        let s = settings(
            json!({"a": {"type": "dynamic", "default": ["dns"]}, "b": {"ip": "10.0.0.2", "default": []}}),
        );
        assert_eq!(default_ip(&s).as_deref(), Some("10.0.0.2"));
        assert_eq!(default_ip(&settings(json!({}))), None);
        assert_eq!(default_ip(&settings(json!({"a": {"ip": ""}}))), None);
    }

    #[test]
    fn binds_commands_and_validates_what_comes_from_outside() {
        let ok =
            Ssh::bind(&[json!("setup"), json!({"User": "bosh_abc", "public_key": "ssh-rsa AAA"})]).unwrap();
        assert!(matches!(ok, Ssh::Setup { ref user, .. } if user == "bosh_abc"));
        let e = Ssh::bind(&[json!("setup"), json!({"user": "root", "public_key": "k"})]).err().unwrap();
        assert!(e.contains("Invalid SSH user name"), "{e}");
        let e = Ssh::bind(&[json!("setup"), json!({"user": "bosh_a"})]).err().unwrap();
        assert!(e.contains("public_key"), "{e}");
        let e = Ssh::bind(&[json!("setup"), json!({"user": 5})]).err().unwrap();
        assert!(e.contains("user must be a string"), "{e}");
        assert!(matches!(
            Ssh::bind(&[json!("cleanup"), json!({"user_regex": "^bosh_a"})]),
            Ok(Ssh::Cleanup { .. })
        ));
        let e = Ssh::bind(&[json!("cleanup"), json!({"user_regex": "^bosh_(a|b)"})]).err().unwrap();
        assert!(e.starts_with("Unsupported user_regex"), "{e}");
        let e = Ssh::bind(&[json!("reboot"), json!({})]).err().unwrap();
        assert_eq!(e, "Unknown command for SSH method");
        assert!(Ssh::bind(&[]).is_err());
    }
}
