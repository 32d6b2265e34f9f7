//! Settings as the director gives a VM it created: shared by the integration tests and the
//! benchmarks, so both drive an agent configured the same way.

use super::certs::TestPki;
use serde_json::{json, Value};

/// Settings for an agent on NATS with the bootstrap certificate the director would generate.
pub fn nats_settings(pki: &TestPki, agent_id: &str, url: &str) -> Value {
    let (cert, key) = pki.client(&format!("{agent_id}.bootstrap.agent.bosh-internal"));
    json!({
        "agent_id": agent_id,
        "mbus": url,
        "env": {"bosh": {"mbus": {"cert": {"ca": pki.ca_pem, "certificate": cert, "private_key": key}}}},
        "networks": {"default": {"type": "manual", "ip": "10.0.0.5", "netmask": "255.255.255.0", "default": ["dns", "gateway"]}},
        "vm": {"name": "vm-test"},
        "disks": {"persistent": {"disk-1": "/dev/sdc"}}
    })
}
