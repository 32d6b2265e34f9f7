//! Introspection: `ping`, `noop`, `info` and `get_state`.

use super::{bind, Action, Call};
use crate::jobs::spec;
use serde_json::{json, Value};

/// `ping` → `"pong"`; the director's liveness probe during boot (1 s timeout).
pub struct Ping;
impl Action for Ping {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| Ping)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Ok(json!("pong"))
    }
}

/// `noop` → `"nope"`, the Ruby agent's do-nothing action, kept for old tooling.
pub struct Noop;
impl Action for Noop {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| Noop)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Ok(json!("nope"))
    }
}

/// `info` → the agent API version; the errand runner treats `< 1` as an old single-job agent.
pub struct Info;
impl Action for Info {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| Info)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Ok(json!({ "api_version": 1 }))
    }
}

/// `get_state [filter]`: the applied spec plus live job state, with vitals when the filter is `full`.
pub struct GetState {
    full: bool,
}
impl Action for GetState {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (filter,): (Option<String>,) = bind(args)?;
        Ok(GetState { full: filter.as_deref() == Some("full") })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let ctx = call.ctx;
        let (agent_id, vm_name) =
            ctx.settings.with(|s| (s.settings.agent_id.clone(), s.settings.vm.name.clone()));
        let mut state = spec::load(&ctx.dirs)?;
        let obj = state.as_object_mut().ok_or("applied spec is not a JSON object")?;
        let default_networks = json!(super::network::networks_with_dhcp(ctx));
        for (key, default) in [
            ("deployment", json!("")),
            ("job", json!({"name": null, "templates": null})),
            ("index", Value::Null),
            ("id", json!("")),
            ("networks", default_networks),
            ("resource_pool", json!({})),
            ("packages", json!({})),
        ] {
            if obj.get(key).is_none_or(Value::is_null) {
                obj.insert(key.to_string(), default);
            }
        }
        let jobs = ctx.supervisor.status();
        obj.insert("agent_id".into(), json!(agent_id));
        obj.insert("job_state".into(), json!(jobs.state));
        obj.insert("processes".into(), serde_json::to_value(jobs.processes).map_err(|e| e.to_string())?);
        obj.insert("vm".into(), json!({ "name": vm_name }));
        if self.full {
            let vitals = crate::vitals::collect(
                &ctx.vitals,
                &spec::disk_paths(&ctx.dirs),
                ctx.platform.vitals_require_mount_points(),
            );
            obj.insert("vitals".into(), serde_json::to_value(vitals).map_err(|e| e.to_string())?);
        }
        Ok(state)
    }
}
