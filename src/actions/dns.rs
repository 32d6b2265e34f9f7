//! `sync_dns` (and its signed-URL form) and `delete_arp_entries`: the director broadcasts these to
//! every agent and gives the whole broadcast 10 s, so they are synchronous and quick, and an older
//! records version than the one on disk is answered at once without a download.

use super::{bind, Action, Call, Context};
use crate::blobstore::{Blobs, MultiDigest};
use crate::config::get_ci;
use crate::error::Context as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What to fetch: a blobstore id or a signed URL.
enum Source {
    Blob(String),
    Signed { url: String, headers: BTreeMap<String, String> },
}

struct Sync {
    source: Source,
    digest: MultiDigest,
    version: u64,
}

/// `sync_dns [blobstore_id, multi_digest, version]` → `"synced"`.
pub struct SyncDns(Sync);
impl Action for SyncDns {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (id, digest, version): (String, String, u64) = bind_three(args)?;
        let digest = MultiDigest::parse(&digest).context("Extracting method arguments from payload")?;
        Ok(SyncDns(Sync { source: Source::Blob(id), digest, version }))
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        sync(call.ctx, self.0)
    }
}

#[derive(Deserialize)]
struct SignedArgs {
    signed_url: String,
    multi_digest: String,
    version: u64,
    #[serde(default)]
    blobstore_headers: Option<BTreeMap<String, String>>,
}

/// `sync_dns_with_signed_url [{signed_url, multi_digest, version, blobstore_headers?}]` → `"synced"`.
pub struct SyncDnsWithSignedUrl(Sync);
impl Action for SyncDnsWithSignedUrl {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (a,): (SignedArgs,) = bind(args)?;
        let digest =
            MultiDigest::parse(&a.multi_digest).context("Extracting method arguments from payload")?;
        let source = Source::Signed { url: a.signed_url, headers: a.blobstore_headers.unwrap_or_default() };
        Ok(SyncDnsWithSignedUrl(Sync { source, digest, version: a.version }))
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        sync(call.ctx, self.0)
    }
}

fn bind_three(args: &[Value]) -> Result<(String, String, u64), String> {
    let (id, digest): (String, String) = bind(args)?;
    let version = match args.get(2) {
        Some(v) => v.as_u64().ok_or(
            "Extracting method arguments from payload: argument 3: version must be a non-negative integer",
        )?,
        None => {
            return Err(
                "Extracting method arguments from payload: Not enough arguments, expected 3, got 2".into()
            )
        }
    };
    Ok((id, digest, version))
}

/// The version recorded in `records.json`, if any (the blob's own `Version`, any case).
fn current_version(ctx: &Context) -> Option<u64> {
    let data = std::fs::read(records_path(ctx)).ok()?;
    let v: Value = serde_json::from_slice(&data).ok()?;
    get_ci(&v, "version").and_then(Value::as_u64)
}

fn records_path(ctx: &Context) -> std::path::PathBuf {
    ctx.dirs.dns_records_json()
}

fn sync(ctx: &Context, s: Sync) -> Result<Value, String> {
    if current_version(ctx).is_some_and(|v| v >= s.version) {
        return Ok(json!("synced"));
    }
    let blobs = Blobs::from_settings(ctx.settings.get().blobstore(), &ctx.dirs)?;
    let tmp = ctx.dirs.data_tmp();
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let blob = match &s.source {
        Source::Blob(id) => blobs.fetch(id, &s.digest, &tmp),
        Source::Signed { url, headers } => blobs.fetch_signed(url, headers, &s.digest, &tmp),
    }
    .context("Fetching DNS records")?;
    let data = std::fs::read(blob.path()).context("reading DNS records")?;
    let doc: Value = serde_json::from_slice(&data).context("Unmarshalling DNS records")?;
    if get_ci(&doc, "version").and_then(Value::as_u64) != Some(s.version) {
        return Err("version from unpacked dns blob does not match version supplied by director".into());
    }
    let records = parse_records(&doc)?;
    let agent_id = ctx.settings.get().settings.agent_id;
    ctx.platform.save_dns_records(&records, &agent_id)?;
    // root:vcap 0640: bosh-dns and other jobs running as vcap read it.
    let owner = crate::owner::Group::vcap(&ctx.dirs).gid().map(|gid| (0, gid));
    crate::fsutil::write_atomic_owned(&records_path(ctx), &data, 0o640, owner)
        .context("writing records.json")?;
    Ok(json!("synced"))
}

/// `records: [[ip, name], ...]`; anything malformed is refused rather than written to /etc/hosts.
fn parse_records(doc: &Value) -> Result<Vec<(String, String)>, String> {
    let Some(list) = get_ci(doc, "records").filter(|r| !r.is_null()) else { return Ok(Vec::new()) };
    let list = list.as_array().ok_or("DNS records: 'records' must be an array")?;
    list.iter()
        .map(|r| match r.as_array().map(Vec::as_slice) {
            Some([Value::String(ip), Value::String(name), ..]) if valid_record(ip, name) => {
                Ok((ip.clone(), name.clone()))
            }
            _ => Err(format!("DNS records: invalid record {r}")),
        })
        .collect()
}

fn valid_record(ip: &str, name: &str) -> bool {
    ip.parse::<IpAddr>().is_ok()
        && !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

#[derive(Deserialize)]
struct ArpArgs {
    #[serde(default)]
    ips: Vec<String>,
}

/// `delete_arp_entries [{"ips":[..]}]` → `{}`: forgets neighbour entries of recreated VMs; errors are
/// ignored, as the director does not wait for the answer.
pub struct DeleteArpEntries(Vec<IpAddr>);
impl Action for DeleteArpEntries {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (a,): (ArpArgs,) = bind(args)?;
        let ips = a
            .ips
            .iter()
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| format!("Extracting method arguments from payload: invalid IP '{ip}'"))
            })
            .collect::<Result<_, _>>()?;
        Ok(DeleteArpEntries(ips))
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        call.ctx.platform.delete_arp_entries(&self.0);
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_before_they_reach_etc_hosts() {
        let ok = json!({"Version": 3, "records": [["10.0.0.7", "baz.bosh"], ["::1", "v6.bosh"]], "record_keys": []});
        assert_eq!(parse_records(&ok).unwrap().len(), 2);
        for bad in [
            json!({"records": [["10.0.0.7"]]}),
            json!({"records": [["nope", "a"]]}),
            json!({"records": [["1.2.3.4", "a b\n5.6.7.8 evil"]]}),
        ] {
            assert!(parse_records(&bad).is_err(), "{bad}");
        }
        assert!(parse_records(&json!({"version": 1})).unwrap().is_empty());
    }

    #[test]
    fn arp_arguments_must_be_ips() {
        assert!(DeleteArpEntries::bind(&[json!({"ips": ["10.0.0.1", "fe80::1"]})]).is_ok());
        assert!(DeleteArpEntries::bind(&[json!({"ips": ["10.0.0.1; rm -rf /"]})]).is_err());
    }
}
