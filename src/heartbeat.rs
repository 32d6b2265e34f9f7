//! The heartbeat thread: one heartbeat at start, then one every interval, on
//! `hm.agent.heartbeat.<agent_id>`. The health monitor recreates a VM whose heartbeats stop for 60 s,
//! so this thread depends on nothing that can block for long: settings and spec are read from memory
//! and disk, vitals from /proc, job state from a supervisor that answers within a bound.

use crate::actions::Context;
use crate::bus::{HmTopic, Notifier};
use crate::jobs::spec;
use serde_json::{json, Value};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// Builds the heartbeat payload (as the health monitor's `instance_manager.rb` reads it): no `id` (the HM deduplicates by id) and vitals
/// string-typed as the CLI and HM decode them.
pub fn payload(ctx: &Context) -> Value {
    let applied = spec::load(&ctx.dirs).unwrap_or_else(|e| {
        log::warn!("heartbeat: {e}");
        json!({})
    });
    let vitals = crate::vitals::collect(
        &ctx.vitals,
        &spec::disk_paths(&ctx.dirs),
        ctx.platform.vitals_require_mount_points(),
    );
    let jobs = ctx.supervisor.status();
    let job = applied.get("job").and_then(|j| j.get("name")).filter(|n| n.is_string()).cloned();
    let index = applied.get("index").filter(|i| i.is_u64()).cloned();
    json!({
        "deployment": applied.get("deployment").and_then(Value::as_str).unwrap_or(""),
        "job": job,
        "index": index,
        "job_state": jobs.state,
        "vitals": vitals,
        "node_id": applied.get("id").and_then(Value::as_str).unwrap_or(""),
        "number_of_processes": jobs.processes.len(),
    })
}

/// The heartbeat thread's handle: dropping it stops the thread after its current beat.
pub struct Heartbeat {
    _stop: Sender<()>,
}

impl Heartbeat {
    /// Starts the thread.
    pub fn start(
        ctx: Arc<Context>,
        notifier: Arc<dyn Notifier>,
        interval: Duration,
    ) -> std::io::Result<Heartbeat> {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new().name("heartbeat".into()).spawn(move || loop {
            let beat = payload(&ctx);
            // Before the send, so it is written even when the bus is down (as the Go agent does).
            crate::jobs::health::record(&ctx.dirs, beat["job_state"].as_str().unwrap_or("unknown"));
            match notifier.notify(HmTopic::Heartbeat, &beat) {
                Err(e) => log::warn!("sending heartbeat: {e}"),
                Ok(()) if notifier.reaches_health_monitor() => log::info!(
                    "heartbeat sent: job_state={} processes={}",
                    beat["job_state"].as_str().unwrap_or("?"),
                    beat["number_of_processes"]
                ),
                Ok(()) => {}
            }
            // Between beats the agent is usually idle: hand back heap freed by the last burst.
            crate::memory::release_free();
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        })?;
        Ok(Heartbeat { _stop: stop })
    }
}
