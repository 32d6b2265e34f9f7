//! The job lifecycle: `prepare`, `apply`, `start`, `stop`, `drain`, `run_script` and `run_errand`.
//! A VM that was never applied answers all of them as no-ops, because the director sends pre-stop,
//! drain and stop before the first apply (the director's `stages/setup_stage.rb` and update steps).

use super::{bind, Action, Call, Context};
use crate::blobstore::Blobs;
use crate::bus::HmTopic;
use crate::error::Context as _;
use crate::jobs::applier::{Installer, Layout, DEFAULT_PARALLEL};
use crate::jobs::scripts::{self, ERRAND_OUTPUT_CAP, KILL_GRACE};
use crate::jobs::spec::{self, ApplySpec};
use crate::sync::lock;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

fn spec_arg(v: Value) -> Result<(Value, ApplySpec), String> {
    if !v.is_object() {
        return Err(
            "Extracting method arguments from payload: argument 1: the apply spec must be an object".into()
        );
    }
    let typed = ApplySpec::from_value(&v).context("Extracting method arguments from payload")?;
    Ok((v, typed))
}

fn installer_blobs(ctx: &Context, spec: &ApplySpec) -> Result<Option<Blobs>, String> {
    if spec.packages.is_empty() && spec.archive().is_none() {
        return Ok(None); // nothing to download: the blobstore need not even be configured
    }
    Blobs::from_settings(ctx.settings.get().blobstore(), &ctx.dirs).map(Some)
}

fn parallelism(ctx: &Context) -> usize {
    ctx.settings.get().settings.env.bosh.parallel.map_or(DEFAULT_PARALLEL, |n| n as usize)
}

fn current_spec(ctx: &Context) -> Result<ApplySpec, String> {
    ApplySpec::from_value(&spec::load(&ctx.dirs)?)
}

/// `prepare [spec]`: downloads and unpacks packages and jobs ahead of `apply`, switching nothing.
pub struct Prepare {
    spec: ApplySpec,
}
impl Action for Prepare {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (v,): (Value,) = bind(args)?;
        Ok(Prepare { spec: spec_arg(v)?.1 })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let ctx = call.ctx;
        let _guard = lock(&ctx.jobs_lock);
        if let Some(blobs) = installer_blobs(ctx, &self.spec)? {
            Installer { dirs: &ctx.dirs, blobs: &blobs, parallel: parallelism(ctx) }
                .install_all(&self.spec)?;
        }
        Ok(json!("prepared"))
    }
}

/// `apply [spec]`: installs and enables the spec's packages and jobs, removes what it no longer names,
/// and records the spec; with an empty `configuration_hash` it only records the spec.
pub struct Apply {
    raw: Value,
    spec: ApplySpec,
}
impl Action for Apply {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (v,): (Value,) = bind(args)?;
        let (raw, spec) = spec_arg(v)?;
        Ok(Apply { raw, spec })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let ctx = call.ctx;
        let raw = super::network::spec_with_dhcp(ctx, self.raw)?;
        let _guard = lock(&ctx.jobs_lock);
        // The order keeps the recorded spec and the links in agreement whenever the agent dies:
        // links switch before the spec is recorded, and the bundles of the recorded spec are only
        // pruned after it, so a start after a kill can switch the links back (`Layout::repair`).
        if self.spec.configures() {
            let layout = Layout { dirs: &ctx.dirs };
            let blobs = installer_blobs(ctx, &self.spec)?;
            if let Some(blobs) = &blobs {
                Installer { dirs: &ctx.dirs, blobs, parallel: parallelism(ctx) }.install_all(&self.spec)?;
            }
            ctx.supervisor.remove_all_jobs()?;
            layout.enable(&self.spec)?;
            ctx.supervisor.reload()?;
            spec::save(&ctx.dirs, &raw)?;
            layout.prune(&self.spec);
            if let (Some(b), Some(a)) = (&blobs, self.spec.archive()) {
                b.forget_local(&a.blobstore_id);
            }
            let size = crate::platform::logrotate::max_log_file_size(
                raw.pointer("/properties/logging/max_log_file_size").and_then(Value::as_str),
                ctx.settings.get().settings.env.bosh.max_log_file_size.as_deref(),
            );
            ctx.platform.setup_logrotate(&size).context("Setting up logrotate")?;
        } else {
            spec::save(&ctx.dirs, &raw)?;
        }
        write_instance_files(&ctx.dirs.instance(), &self.spec)?;
        Ok(json!("applied"))
    }
}

fn write_instance_files(dir: &Path, spec: &ApplySpec) -> Result<(), String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fields = [
        ("id", spec.id.clone()),
        ("az", spec.az.clone()),
        ("name", spec.name.clone()),
        ("deployment", Some(spec.deployment.clone())),
    ];
    for (file, value) in fields {
        crate::fsutil::write_atomic(&dir.join(file), value.unwrap_or_default().as_bytes(), 0o644)
            .with_context(|| format!("writing instance/{file}"))?;
    }
    Ok(())
}

/// Rewrites `health.json` with the supervisor's state now.
fn record_health(ctx: &Context) {
    crate::jobs::health::record(&ctx.dirs, &ctx.supervisor.status().state);
}

/// Calls [`record_health`] when dropped: at the end of `start` and `stop`, whether or not they
/// worked, as the Go agent does.
struct RecordHealth<'a>(&'a Context);

impl Drop for RecordHealth<'_> {
    fn drop(&mut self) {
        record_health(self.0);
    }
}

/// `start`: installs every job's monit files (jobs in reverse order, as the Go agent numbers them),
/// reloads the supervisor and starts the services. Synchronous: bosh-cli requires `"started"`.
pub struct Start;
impl Action for Start {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| Start)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let ctx = call.ctx;
        let _health = RecordHealth(ctx);
        let _guard = lock(&ctx.jobs_lock);
        let jobs = current_spec(ctx)?.jobs();
        ctx.supervisor.remove_all_jobs()?;
        for (i, job) in jobs.iter().rev().enumerate() {
            let dir = ctx.dirs.job(&job.name);
            let main = dir.join("monit");
            if main.is_file() {
                ctx.supervisor.add_job(&job.name, i, &main)?;
            }
            let mut extra: Vec<_> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "monit"))
                        .collect()
                })
                .unwrap_or_default();
            crate::order::sort(&mut extra);
            for path in extra {
                let label = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                ctx.supervisor.add_job(&format!("{}_{label}", job.name), i, &path)?;
            }
        }
        ctx.supervisor.reload().context("Starting Monitored Services")?;
        ctx.supervisor.start().context("Starting Monitored Services")?;
        Ok(json!("started"))
    }
}

/// `stop`: stops every service; with protocol 3 and later waits until they are stopped. Unlike the
/// Go agent, which rewrites `health.json` after a stop only on protocol 2 and earlier, it does on
/// every protocol: `stopped` is what bosh-dns should see.
pub struct Stop;
impl Action for Stop {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| Stop)
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let _health = RecordHealth(call.ctx);
        call.ctx.supervisor.stop(call.protocol > 2)?;
        Ok(json!("stopped"))
    }
}

/// `drain [update|shutdown|status, new spec?]`: runs every job's drain script with the drain protocol
/// (positive: wait that long; negative: wait, then ask again with `job_check_status`) and answers `0`
/// once all are done. Cancelable: cancellation terminates the scripts.
pub struct Drain {
    kind: String,
    next: Option<ApplySpec>,
}
impl Action for Drain {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (kind, next): (String, Option<Value>) = bind(args)?;
        // `{}` is a spec (bosh-cli sends `["shutdown", {}]`), not the absence of one.
        let next = match next {
            Some(v) if v.is_object() => Some(spec_arg(v)?.1),
            _ => None,
        };
        if !matches!(kind.as_str(), "update" | "shutdown" | "status") {
            return Err(format!("Extracting method arguments from payload: unknown drain type '{kind}'"));
        }
        Ok(Drain { kind, next })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let ctx = call.ctx;
        let current = current_spec(ctx)?;
        let (job_change, hash_change, packages) = match self.kind.as_str() {
            "status" => return Err("Unexpected call with drain type 'status'".into()),
            "update" => {
                let next = self.next.as_ref().ok_or("Drain update requires new spec")?;
                (job_change(&current), hash_change(&current, next), updated_packages(&current, next))
            }
            _ => {
                if let Err(e) = ctx.notifier.notify(HmTopic::Shutdown, &Value::Null) {
                    log::warn!("publishing the shutdown notice: {e}");
                }
                ("job_shutdown".to_string(), "hash_unchanged".to_string(), Vec::new())
            }
        };
        ctx.supervisor.unmonitor()?;
        record_health(ctx);
        let mut env = BTreeMap::new();
        env.insert("BOSH_JOB_STATE".to_string(), job_state(&current));
        if let Some(next) = &self.next {
            env.insert("BOSH_JOB_NEXT_STATE".to_string(), job_state(next));
        }
        let mut args = vec![job_change, hash_change];
        args.extend(packages);
        let jobs: Vec<_> = current
            .jobs()
            .into_iter()
            .filter_map(|j| scripts::job_script(&ctx.dirs, &j.name, "drain").map(|p| (j.name, p)))
            .collect();
        let results: Vec<(String, Result<(), String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(name, script)| (name.clone(), s.spawn(|| drain_one(script, &args, &env, call))))
                .collect();
            handles
                .into_iter()
                .map(|(n, h)| (n, h.join().unwrap_or_else(|_| Err("drain thread panicked".into()))))
                .collect()
        });
        scripts::summarize("drain scripts", &results)?;
        Ok(json!(0))
    }
}

fn drain_one(
    script: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    call: &Call,
) -> Result<(), String> {
    let mut args = args.to_vec();
    loop {
        let out =
            scripts::run_captured(scripts::command(script, &args, env), call.cancel, 64 * 1024, KILL_GRACE)?;
        if call.cancel.is_cancelled() {
            return Err("drain was cancelled".into());
        }
        if out.exit_code != 0 {
            return Err(format!("drain script exited with {}: {}", out.exit_code, out.stderr.trim()));
        }
        let n: i64 =
            out.stdout.trim().parse().map_err(|_| "Script did not return a signed integer".to_string())?;
        let cancelled = call.cancel.wait(Duration::from_secs(n.unsigned_abs()));
        if cancelled {
            return Err("drain was cancelled".into());
        }
        if n >= 0 {
            return Ok(());
        }
        args = vec!["job_check_status".into(), "hash_unchanged".into()];
    }
}

/// `{"persistent_disk":<size>}` as drain scripts read it: the size in MiB, 0 without a disk (the
/// Go agent's integer, never `null`).
fn job_state(spec: &ApplySpec) -> String {
    json!({ "persistent_disk": spec.persistent_disk.as_u64().unwrap_or(0) }).to_string()
}

fn job_change(current: &ApplySpec) -> String {
    if current.jobs().is_empty() { "job_new" } else { "job_changed" }.into()
}

fn hash_change(current: &ApplySpec, next: &ApplySpec) -> String {
    match (
        current.configuration_hash.as_deref().unwrap_or(""),
        next.configuration_hash.as_deref().unwrap_or(""),
    ) {
        ("", _) => "hash_new",
        (a, b) if a == b => "hash_unchanged",
        _ => "hash_changed",
    }
    .into()
}

fn updated_packages(current: &ApplySpec, next: &ApplySpec) -> Vec<String> {
    next.packages
        .iter()
        .filter(|(name, p)| current.packages.get(*name).is_none_or(|c| c.sha1 != p.sha1))
        .map(|(name, _)| name.clone())
        .collect()
}

/// `run_script [name, {"env":{..}}]`: runs `bin/<name>` of every job that has it, in parallel, at lower
/// priority, with output appended to `sys/log/<job>/<name>.{stdout,stderr}.log`.
pub struct RunScript {
    name: String,
    env: BTreeMap<String, String>,
}
impl Action for RunScript {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (name, options): (String, Option<Value>) = bind(args)?;
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.starts_with('.')
        {
            return Err(format!("Extracting method arguments from payload: invalid script name '{name}'"));
        }
        let env = match options.as_ref().and_then(|o| o.get("env")) {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(e) => serde::Deserialize::deserialize(e)
                .context("Extracting method arguments from payload: argument 2: env")?,
        };
        Ok(RunScript { name, env })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let ctx = call.ctx;
        let jobs: Vec<_> = current_spec(ctx)?
            .jobs()
            .into_iter()
            .filter_map(|j| scripts::job_script(&ctx.dirs, &j.name, &self.name).map(|p| (j.name, p)))
            .collect();
        let log_dir = ctx.dirs.sys_log();
        let results: Vec<(String, Result<(), String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(job, script)| {
                    let dir = log_dir.join(job);
                    let name = &self.name;
                    let env = &self.env;
                    (
                        job.clone(),
                        s.spawn(move || {
                            let mut cmd = scripts::command(script, &[], env);
                            // SAFETY: nice(2) is async-signal-safe and only lowers the child's own priority.
                            unsafe {
                                cmd.pre_exec(|| {
                                    libc::nice(5);
                                    Ok(())
                                });
                            }
                            let out = dir.join(format!("{name}.stdout.log"));
                            let err = dir.join(format!("{name}.stderr.log"));
                            match scripts::run_logged(cmd, &out, &err, call.cancel)? {
                                0 => Ok(()),
                                code => Err(format!("exit code {code}")),
                            }
                        }),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(j, h)| (j, h.join().unwrap_or_else(|_| Err("script thread panicked".into()))))
                .collect()
        });
        scripts::summarize(&format!("{} scripts", self.name), &results)?;
        Ok(json!({}))
    }
}

/// `run_errand [name?]`: runs the job's `bin/run`, capturing its output. A non-zero exit is a result,
/// not an error; cancellation terminates it and the result still comes back (exit code 143 or 137).
pub struct RunErrand {
    name: Option<String>,
}
impl Action for RunErrand {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (name,): (Option<String>,) = bind(args)?;
        Ok(RunErrand { name: name.filter(|n| !n.is_empty()) })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let ctx = call.ctx;
        let spec = current_spec(ctx)?;
        let job = match self.name {
            Some(name) => {
                if !spec.jobs().iter().any(|j| j.name == name) {
                    return Err(format!("Could not find errand {name}"));
                }
                name
            }
            None => spec
                .job
                .as_ref()
                .and_then(|j| j.template.clone())
                .filter(|t| !t.is_empty())
                .ok_or("At least one job template is required to run an errand")?,
        };
        let script = scripts::job_script(&ctx.dirs, &job, "run")
            .ok_or_else(|| format!("errand {job} has no bin/run"))?;
        let out = scripts::run_captured(
            scripts::command(&script, &[], &BTreeMap::new()),
            call.cancel,
            ERRAND_OUTPUT_CAP,
            KILL_GRACE,
        )?;
        Ok(json!({ "exit_code": out.exit_code, "stdout": out.stdout, "stderr": out.stderr }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> ApplySpec {
        ApplySpec::from_value(&v).unwrap()
    }

    #[test]
    fn drain_arguments_follow_the_protocol() {
        let none = spec(json!({}));
        let cur = spec(json!({"configuration_hash": "h1", "job": {"templates": [{"name": "a"}]},
            "packages": {"p1": {"name": "p1", "sha1": "x"}, "p2": {"name": "p2", "sha1": "y"}}}));
        let next = spec(json!({"configuration_hash": "h2",
            "packages": {"p1": {"name": "p1", "sha1": "x"}, "p2": {"name": "p2", "sha1": "z"}, "p3": {"name": "p3", "sha1": "w"}}}));
        assert_eq!(job_change(&none), "job_new");
        assert_eq!(job_change(&cur), "job_changed");
        assert_eq!(hash_change(&none, &next), "hash_new");
        assert_eq!(hash_change(&cur, &cur), "hash_unchanged");
        assert_eq!(hash_change(&cur, &next), "hash_changed");
        assert_eq!(updated_packages(&cur, &next), vec!["p2", "p3"]);
    }

    #[test]
    fn drain_states_are_integers_and_an_empty_spec_is_a_spec() {
        assert_eq!(job_state(&spec(json!({}))), r#"{"persistent_disk":0}"#);
        assert_eq!(job_state(&spec(json!({"persistent_disk": null}))), r#"{"persistent_disk":0}"#);
        assert_eq!(job_state(&spec(json!({"persistent_disk": 2048}))), r#"{"persistent_disk":2048}"#);
        assert!(Drain::bind(&[json!("shutdown"), json!({})]).unwrap().next.is_some());
        assert!(Drain::bind(&[json!("shutdown")]).unwrap().next.is_none());
    }

    #[test]
    fn script_names_cannot_escape_bin() {
        for bad in ["../x", "a/b", "", ".hidden"] {
            assert!(RunScript::bind(&[json!(bad), json!({})]).is_err(), "{bad}");
        }
        assert!(RunScript::bind(&[json!("pre-start"), json!({"env": {"A": "b"}})]).is_ok());
        assert!(RunScript::bind(&[json!("pre-stop"), json!({"env": {"A": 1}})]).is_err());
    }
}
