//! The kill-during-apply loop: the agent SIGKILLed at varying points of applies that switch between
//! two specs, restarted, and checked that the spec it recorded and the package links agree. Shared by
//! `tests/hostile.rs` (a few kills) and `benches/hostile.rs` (the soak).

use super::agent::{value, AgentEnv};
use super::tarball::{digests, file, script, tgz};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// What a kill loop saw.
#[derive(Debug, Default)]
pub struct Kills {
    /// Kills made.
    pub tried: usize,
    /// Kills that landed before the apply recorded its spec.
    pub mid_apply: usize,
    /// Restarts after which the recorded spec and the links disagreed, described.
    pub disagreed: Vec<String>,
}

/// A spec of four packages of `filler` bytes each, all at version `tag`.
fn spec(env: &AgentEnv, tag: &str, filler: usize) -> Value {
    let mut packages = serde_json::Map::new();
    for i in 0..4 {
        let name = format!("p{i}");
        let dir = tempfile::tempdir().expect("scratch dir");
        let path = dir.path().join("pkg.tgz");
        let noise: Vec<u8> =
            (0..filler).map(|j| ((j as u64 ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect();
        let body = format!("#!/bin/sh\necho {name} {tag}\n");
        tgz(&path, &[script(&format!("bin/{name}"), &body), file("share/noise", &noise)]);
        let id = bosh_agent::ids::uuid_v4();
        std::fs::copy(&path, env.blobs.path().join(&id)).expect("blob");
        let (_, sha256) = digests(&path);
        packages
            .insert(name.clone(), json!({"name": name, "version": tag, "sha1": sha256, "blobstore_id": id}));
    }
    json!({"configuration_hash": format!("hash-{tag}"), "deployment": "d", "packages": packages})
}

/// Where the recorded spec and the `packages/` links disagree, if they do.
fn disagreement(base: &Path) -> Option<String> {
    let recorded: Value = std::fs::read(base.join("bosh/spec.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let packages = recorded["packages"].as_object().cloned().unwrap_or_default();
    let mut names = BTreeSet::new();
    for p in packages.values() {
        let name = p["name"].as_str().unwrap_or_default();
        names.insert(name.to_string());
        let hash = bosh_agent::jobs::applier::bundle_hash(
            p["version"].as_str().unwrap_or_default(),
            p["sha1"].as_str().unwrap_or_default(),
        );
        let want = base.join("data/packages").join(name).join(hash);
        let link = std::fs::read_link(base.join("packages").join(name)).ok();
        if link.as_deref() != Some(want.as_path()) || !want.is_dir() {
            return Some(format!("packages/{name} -> {link:?}, the recorded spec names {}", want.display()));
        }
    }
    let links: BTreeSet<String> = std::fs::read_dir(base.join("packages"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    (links != names).then(|| format!("links {links:?}, the recorded spec names {names:?}"))
}

/// Applies one spec, then `kills` times starts an apply of the other, SIGKILLs the agent after a
/// delay that moves across the apply, restarts it and compares the recorded spec with the links.
pub fn kill_during_apply(env: &mut AgentEnv, kills: usize, filler: usize) -> Kills {
    let (a, b) = (spec(env, "a", filler), spec(env, "b", filler));
    assert_eq!(value(&env.d.run_task("apply", json!([a]))), "applied");
    let mut out = Kills::default();
    for i in 0..kills {
        let next = if i % 2 == 0 { &b } else { &a };
        let handle = env.d.send("apply", json!([next]));
        assert!(handle["value"]["agent_task_id"].is_string(), "{handle}");
        // Kill points spread over the apply (0 to ~0.5 s after its reply), the same on every run.
        std::thread::sleep(Duration::from_millis((i as u64 * 37) % 500));
        env.agent.restart();
        out.tried += 1;
        assert!(
            env.d.wait_ready(Duration::from_secs(20)),
            "the agent did not come back:\n{}",
            env.agent.log()
        );
        let base = env.agent.base();
        let recorded: Value =
            serde_json::from_slice(&std::fs::read(base.join("bosh/spec.json")).unwrap_or_default())
                .unwrap_or(Value::Null);
        if recorded["configuration_hash"] != next["configuration_hash"] {
            out.mid_apply += 1;
        }
        if let Some(d) = disagreement(&base) {
            out.disagreed.push(format!("kill {i}: {d}"));
        }
    }
    out
}
