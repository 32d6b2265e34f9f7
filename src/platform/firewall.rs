//! Who may talk to monit's HTTP interface (`127.0.0.1:2822`): an nftables table `inet bosh_agent`, as
//! the Go agent and the Noble stemcells have it.
//!
//! - The agent makes the table at start ([`setup_monit_firewall`], unless `agent.json` says
//!   `UseMonitIptablesFirewall`, where the stemcell's iptables rules do the job): chain
//!   `monit_access` hooks output and lets root and established connections through, after a jump to
//!   `monit_access_jobs`, and drops every other packet to monit. `monit_access` is refilled at every
//!   start; `monit_access_jobs` is never flushed, so what jobs added survives agent restarts.
//! - A job that needs monit (its pre-start, which the agent runs as root) runs the agent binary under
//!   the name `bosh-enable-monit-access` ([`enable_monit_access`]). It adds one rule to
//!   `monit_access_jobs`: for a process in a bpm container (cgroup `.../runc-bpm-<job>.scope`), a
//!   rule matching sockets of that cgroup; else one matching sockets of the `vcap` user. Either is
//!   added once: running it again changes nothing (a bpm job's rule is replaced when its cgroup is a
//!   new one, as after a restart of the container).
//!
//! Everything goes through the `nft` command and the `exec` runner (no netlink code of our own): rule
//! changes are one `nft -f -` script each, applied atomically, and the rules are read back with
//! `nft -j`.

use crate::error::Context as _;
use crate::exec;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The table's family and name.
pub const TABLE: &str = "inet bosh_agent";
/// The chain the agent refills at every start.
pub const CHAIN: &str = "monit_access";
/// The chain of the jobs' rules, never flushed.
pub const JOBS_CHAIN: &str = "monit_access_jobs";
/// Monit's HTTP interface on a stemcell.
const MONIT_ADDRESS: &str = "127.0.0.1";
const MONIT_PORT: u16 = 2822;
/// The comment that names a bpm job's rule.
const COMMENT_PREFIX: &str = "bosh-monit-access:";
/// cgroup2's filesystem magic (`statfs`'s `f_type`).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// How long one `nft` may take.
const NFT_LIMIT: Duration = Duration::from_secs(30);

/// The nft script that makes the table and both chains and refills `monit_access` (idempotent).
pub fn monit_firewall_script() -> String {
    let to_monit = format!("ip daddr {MONIT_ADDRESS} tcp dport {MONIT_PORT}");
    format!(
        "add table {TABLE}\n\
         add chain {TABLE} {JOBS_CHAIN}\n\
         add chain {TABLE} {CHAIN} {{ type filter hook output priority filter - 1; policy accept; }}\n\
         flush chain {TABLE} {CHAIN}\n\
         add rule {TABLE} {CHAIN} jump {JOBS_CHAIN}\n\
         add rule {TABLE} {CHAIN} ct state established,related accept\n\
         add rule {TABLE} {CHAIN} meta skuid 0 {to_monit} accept\n\
         add rule {TABLE} {CHAIN} {to_monit} drop\n"
    )
}

/// Makes the monit firewall (the agent's start; the caller logs a failure and carries on).
pub fn setup_monit_firewall() -> Result<(), String> {
    nft_script(&monit_firewall_script()).context("setting up the monit firewall (nft)")
}

/// What [`enable_monit_access`] did. `job` is the bpm job, `cgroup` its cgroup as nft names it,
/// `uid` vcap's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are described above
pub enum Access {
    /// A rule was added for this bpm job's cgroup (replacing `replaced` older ones of the job).
    CgroupAdded { job: String, cgroup: String, replaced: usize },
    /// This bpm job's cgroup already had its rule.
    CgroupPresent { job: String, cgroup: String },
    /// A rule was added for vcap's uid.
    UidAdded { uid: u32 },
    /// vcap's uid already had its rule.
    UidPresent { uid: u32 },
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::CgroupAdded { job, cgroup, replaced } => write!(
                f,
                "monit access for bpm job '{job}' (cgroup {cgroup}) added, {replaced} older rule(s) removed"
            ),
            Access::CgroupPresent { job, cgroup } => {
                write!(f, "monit access for bpm job '{job}' (cgroup {cgroup}) already present")
            }
            Access::UidAdded { uid } => write!(f, "monit access for vcap (uid {uid}) added"),
            Access::UidPresent { uid } => write!(f, "monit access for vcap (uid {uid}) already present"),
        }
    }
}

/// `bosh-enable-monit-access`: lets the calling bpm job's cgroup, or else the `vcap` user (looked
/// up in `passwd`, the root's `/etc/passwd`), reach monit. Fails when the agent's table is missing.
pub fn enable_monit_access(passwd: &Path) -> Result<Access, String> {
    let rules = jobs_chain_rules()?;
    if let Some((job, cgroup)) = own_bpm_cgroup() {
        return allow_cgroup(&rules, &job, &cgroup);
    }
    let users = super::users::read_passwd(passwd)?;
    let uid = users
        .iter()
        .find(|u| u.name == "vcap")
        .map(|u| u.uid)
        .ok_or_else(|| format!("there is no user vcap in {}", passwd.display()))?;
    if rules.iter().any(|r| r.skuid == Some(uid)) {
        return Ok(Access::UidPresent { uid });
    }
    let rule = format!(
        "add rule {TABLE} {JOBS_CHAIN} meta skuid {uid} ip daddr {MONIT_ADDRESS} tcp dport {MONIT_PORT} \
         log prefix \"bosh-monit-access: UID {uid} match: \" accept\n"
    );
    nft_script(&rule)?;
    Ok(Access::UidAdded { uid })
}

fn allow_cgroup(rules: &[Rule], job: &str, cgroup: &str) -> Result<Access, String> {
    let comment = format!("{COMMENT_PREFIX}{job}");
    let mine: Vec<&Rule> = rules.iter().filter(|r| r.comment.as_deref() == Some(comment.as_str())).collect();
    if mine.iter().any(|r| r.cgroup.as_deref() == Some(cgroup)) && mine.len() == 1 {
        return Ok(Access::CgroupPresent { job: job.into(), cgroup: cgroup.into() });
    }
    let mut script = String::new();
    for r in &mine {
        script.push_str(&format!("delete rule {TABLE} {JOBS_CHAIN} handle {}\n", r.handle));
    }
    // Level 2: the cgroup two levels below the root, where bpm puts its containers' scopes.
    script.push_str(&format!(
        "add rule {TABLE} {JOBS_CHAIN} socket cgroupv2 level 2 \"{cgroup}\" ip daddr {MONIT_ADDRESS} \
         tcp dport {MONIT_PORT} log prefix \"bosh-monit-access: cgroup match: \" accept comment \"{comment}\"\n"
    ));
    nft_script(&script)?;
    Ok(Access::CgroupAdded { job: job.into(), cgroup: cgroup.into(), replaced: mine.len() })
}

/// One rule of `monit_access_jobs`, the parts that identify it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rule {
    handle: u64,
    comment: Option<String>,
    /// The uid a `meta skuid` match names.
    skuid: Option<u32>,
    /// The cgroup a `socket cgroupv2` match names, as nft prints it (a path while the cgroup exists).
    cgroup: Option<String>,
}

/// The rules of `monit_access_jobs`; an error when the table or the chain is missing.
fn jobs_chain_rules() -> Result<Vec<Rule>, String> {
    let out = exec::run(
        Command::new("nft").args(["-j", "list", "chain", "inet", "bosh_agent", JOBS_CHAIN]),
        None,
        NFT_LIMIT,
    )
    .with_context(|| {
        format!("reading chain {JOBS_CHAIN} of table {TABLE} (the agent makes it at start, unless UseMonitIptablesFirewall)")
    })?;
    parse_rules(&out)
}

/// The rules in `nft -j list chain` output.
fn parse_rules(json: &str) -> Result<Vec<Rule>, String> {
    let doc: Value = serde_json::from_str(json).context("parsing nft -j output")?;
    let items = doc["nftables"].as_array().ok_or("nft -j output has no nftables array")?;
    Ok(items
        .iter()
        .filter_map(|item| item.get("rule"))
        .map(|rule| {
            let mut r = Rule {
                handle: rule["handle"].as_u64().unwrap_or(0),
                comment: rule["comment"].as_str().map(String::from),
                ..Rule::default()
            };
            for m in rule["expr"].as_array().into_iter().flatten().filter_map(|e| e.get("match")) {
                if m["left"]["meta"]["key"] == "skuid" {
                    r.skuid = m["right"].as_u64().and_then(|u| u32::try_from(u).ok());
                }
                if m["left"]["socket"]["key"] == "cgroupv2" {
                    r.cgroup = Some(match &m["right"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                }
            }
            r
        })
        .collect())
}

/// The bpm job this process runs in and its cgroup as nft names it (relative to `/sys/fs/cgroup`),
/// if it is in a `runc-bpm-<job>.scope` cgroup of a cgroup2 hierarchy.
fn own_bpm_cgroup() -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let prefix = if is_cgroup2("/sys/fs/cgroup") {
        ""
    } else if is_cgroup2("/sys/fs/cgroup/unified") {
        "unified/"
    } else {
        return None;
    };
    bpm_cgroup(&text, prefix)
}

/// The bpm job and nft's cgroup path from `/proc/self/cgroup` text, the unified (`0::`) line.
fn bpm_cgroup(proc_cgroup: &str, prefix: &str) -> Option<(String, String)> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let job = path.split('/').find_map(|c| c.strip_prefix("runc-bpm-")?.strip_suffix(".scope"))?;
    // Both go into an nft script: nothing that could end a string or a line.
    let clean = |s: &str| !s.is_empty() && !s.contains(['"', '\\', '\n', '\r', '\0']);
    let cgroup = format!("{prefix}{}", path.trim_start_matches('/'));
    (clean(job) && clean(&cgroup)).then(|| (job.to_string(), cgroup))
}

#[allow(clippy::useless_conversion)] // f_type is i64 with glibc, u64 with musl (the release binary)
fn is_cgroup2(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else { return false };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c is a valid C string and st a valid out pointer for statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statfs filled st when it returned 0.
    rc == 0 && i64::try_from(unsafe { st.assume_init() }.f_type) == Ok(CGROUP2_SUPER_MAGIC)
}

/// Applies an nft script atomically (`nft -f -`).
fn nft_script(script: &str) -> Result<(), String> {
    exec::run(Command::new("nft").args(["-f", "-"]), Some(script.as_bytes()), NFT_LIMIT).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bpm_job_in_the_unified_line() {
        let text = "12:pids:/system.slice/x\n0::/system.slice/runc-bpm-web.scope\n";
        assert_eq!(bpm_cgroup(text, ""), Some(("web".into(), "system.slice/runc-bpm-web.scope".into())));
        assert_eq!(
            bpm_cgroup(text, "unified/").map(|(_, c)| c),
            Some("unified/system.slice/runc-bpm-web.scope".into())
        );
        assert_eq!(bpm_cgroup("0::/system.slice/bosh-agent.service\n", ""), None);
        assert_eq!(
            bpm_cgroup("1:name=systemd:/runc-bpm-web.scope\n", ""),
            None,
            "v1 lines are not looked at"
        );
        assert_eq!(bpm_cgroup("0::/a/runc-bpm-.scope\n", ""), None);
        assert_eq!(bpm_cgroup("0::/a/runc-bpm-we\"b.scope\n", ""), None);
    }

    #[test]
    fn reads_rules_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"chain": {"family": "inet", "table": "bosh_agent", "name": "monit_access_jobs", "handle": 1}},
          {"rule": {"handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": 1000}},
            {"accept": null}]}},
          {"rule": {"handle": 5, "comment": "bosh-monit-access:web", "expr": [{"match": {"op": "==",
            "left": {"socket": {"key": "cgroupv2"}}, "right": "system.slice/runc-bpm-web.scope"}}, {"accept": null}]}},
          {"rule": {"handle": 6, "comment": "bosh-monit-access:web", "expr": [{"match": {"op": "==",
            "left": {"socket": {"key": "cgroupv2"}}, "right": 4242}}]}}]}"#;
        let rules = parse_rules(json).unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0], Rule { handle: 4, skuid: Some(1000), ..Rule::default() });
        assert_eq!(rules[1].cgroup.as_deref(), Some("system.slice/runc-bpm-web.scope"));
        assert_eq!(rules[1].comment.as_deref(), Some("bosh-monit-access:web"));
        assert_eq!(rules[2].cgroup.as_deref(), Some("4242"), "a gone cgroup prints as its id");
        assert!(parse_rules("not json").is_err());
    }

    #[test]
    fn the_agent_script_refills_only_its_own_chain() {
        let s = monit_firewall_script();
        assert!(s.contains("flush chain inet bosh_agent monit_access\n"), "{s}");
        assert!(!s.contains("flush chain inet bosh_agent monit_access_jobs"), "{s}");
        let jump = s.find("jump monit_access_jobs").unwrap();
        let drop = s.find("tcp dport 2822 drop").unwrap();
        assert!(jump < drop, "jobs' rules come before the drop: {s}");
    }
}
