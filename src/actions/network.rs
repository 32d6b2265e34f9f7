//! `prepare_network_change`: sent by the director before it moves a VM to other networks (a CPI that
//! re-creates the NIC). As the original Ruby agent did, it forgets the
//! udev rule that pinned the old NIC's MAC to `eth0`, so the new NIC gets the same name on the next
//! boot, and answers `true`. Deleting a file that is already gone is success, so a retry is harmless;
//! the dummy platform has no NICs and only answers (the work is the platform's).
//!
//! Also what `apply` and `get_state` report for dynamic networks: the director sends them without
//! an address and copies back what the agent says DHCP gave ([`networks_with_dhcp`],
//! [`spec_with_dhcp`]).

use super::{bind, Action, Call, Context};
use crate::platform::network::is_dhcp;
use crate::settings::Network;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The settings' networks with the DHCP ones' addresses filled in by the platform.
pub(super) fn networks_with_dhcp(ctx: &Context) -> BTreeMap<String, Network> {
    let mut networks = ctx.settings.with(|s| s.settings.networks.clone());
    ctx.platform.resolve_dhcp_networks(&mut networks);
    networks
}

/// The apply spec with `ip`, `netmask` and `gateway` of its DHCP networks set from what DHCP gave
/// (the Go agent's `PopulateDHCPNetworks`). Every network of the spec must be in the settings,
/// except the `local` 127.0.0.1 network old micro CLIs add.
pub(super) fn spec_with_dhcp(ctx: &Context, mut raw: Value) -> Result<Value, String> {
    let Some(spec_networks) = raw.get_mut("networks").and_then(Value::as_object_mut) else { return Ok(raw) };
    if spec_networks.is_empty() {
        return Ok(raw);
    }
    let networks = networks_with_dhcp(ctx);
    for (name, spec_net) in spec_networks.iter_mut() {
        if name == "local" && spec_net.get("ip") == Some(&json!("127.0.0.1")) {
            continue;
        }
        let n = networks.get(name).ok_or_else(|| format!("Network '{name}' is not found in settings"))?;
        if !is_dhcp(n) {
            continue;
        }
        if let Some(fields) = spec_net.as_object_mut() {
            for (key, value) in [("ip", &n.ip), ("netmask", &n.netmask), ("gateway", &n.gateway)] {
                fields.insert(key.into(), json!(value));
            }
        }
    }
    Ok(raw)
}

/// `prepare_network_change []`.
pub struct PrepareNetworkChange;
impl Action for PrepareNetworkChange {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| PrepareNetworkChange)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        call.ctx.platform.prepare_network_change()?;
        Ok(Value::Bool(true))
    }
}
