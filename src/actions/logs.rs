//! `fetch_logs`, `fetch_logs_with_signed_url` and `bundle_logs`: what `bosh logs` asks of a VM.
//!
//! Why three actions: the director collects logs through its blobstore (`fetch_logs`, async, result
//! `{"blobstore_id","sha1"}`) or, when it signs URLs, by having the agent PUT the tarball itself
//! (`fetch_logs_with_signed_url`, result `{"sha1":"<sha1>;sha512:<hex>"}`); bosh-cli talking to a
//! create-env VM has neither and instead asks for a tarball left on the VM (`bundle_logs`, sync),
//! which it copies over SSH and removes with `remove_file`. All three select and stream files the same
//! way ([`crate::logs`]); temp tarballs are removed on every path once uploaded.

use super::{bind, Action, Call, Context};
use crate::blobstore::digest::UploadDigests;
use crate::blobstore::Blobs;
use crate::error::Context as _;
use crate::logs::{self, Request};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn blobs(ctx: &Context) -> Result<Blobs, String> {
    Blobs::from_settings(ctx.settings.get().blobstore(), &ctx.dirs)
}

fn request(log_type: &str, filters: Option<&[String]>) -> Result<Request, String> {
    Request::parse(log_type, filters).context("Extracting method arguments from payload")
}

/// `fetch_logs [log_type, filters]`: bundles the logs and uploads them to the configured blobstore.
pub struct FetchLogs {
    request: Request,
}
impl Action for FetchLogs {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (log_type, filters): (String, Option<Vec<String>>) = bind(args)?;
        Ok(FetchLogs { request: request(&log_type, filters.as_deref())? })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let blobs = blobs(call.ctx)?;
        let bundle = logs::bundle(&call.ctx.dirs, &self.request, None)?;
        let (id, sha1) = blobs.upload(bundle.path()).context("Uploading logs")?;
        Ok(json!({"blobstore_id": id, "sha1": sha1}))
    }
}

/// The single argument of `fetch_logs_with_signed_url`.
#[derive(Deserialize)]
struct SignedArgs {
    signed_url: String,
    log_type: String,
    #[serde(default)]
    filters: Option<Vec<String>>,
    #[serde(default)]
    blobstore_headers: Option<BTreeMap<String, String>>,
}

/// `fetch_logs_with_signed_url [{signed_url, log_type, filters, blobstore_headers?}]`: bundles the
/// logs and PUTs them to the director-signed URL with its extra headers.
pub struct FetchLogsWithSignedUrl {
    url: String,
    headers: BTreeMap<String, String>,
    request: Request,
}
impl Action for FetchLogsWithSignedUrl {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (a,): (SignedArgs,) = bind(args)?;
        if a.signed_url.is_empty() {
            return Err("Extracting method arguments from payload: signed_url is empty".into());
        }
        Ok(FetchLogsWithSignedUrl {
            request: request(&a.log_type, a.filters.as_deref())?,
            url: a.signed_url,
            headers: a.blobstore_headers.unwrap_or_default(),
        })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let blobs = blobs(call.ctx)?;
        let bundle = logs::bundle(&call.ctx.dirs, &self.request, None)?;
        let multi = blobs.upload_signed(&self.url, &self.headers, bundle.path()).context("Uploading logs")?;
        Ok(json!({"sha1": multi}))
    }
}

/// The single argument of `bundle_logs`.
#[derive(Deserialize)]
struct BundleArgs {
    #[serde(default)]
    owning_user: Option<String>,
    log_type: String,
    #[serde(default)]
    filters: Option<Vec<String>>,
}

/// `bundle_logs [{owning_user, log_type, filters}]`: leaves the tarball on the VM, owned by
/// `owning_user` (so that user can copy it over SSH), and answers its path and sha512.
pub struct BundleLogs {
    owner: Option<String>,
    request: Request,
}
impl Action for BundleLogs {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (a,): (BundleArgs,) = bind(args)?;
        Ok(BundleLogs {
            request: request(&a.log_type, a.filters.as_deref())?,
            owner: a.owning_user.filter(|u| !u.is_empty()),
        })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        // Look the user up first: an unknown user should not cost a tarball's worth of work.
        let owner = self.owner.as_deref().map(|u| call.ctx.platform.bundle_owner(u)).transpose()?;
        let bundle = logs::bundle(&call.ctx.dirs, &self.request, owner)?;
        let digests = UploadDigests::of_file(bundle.path())
            .with_context(|| format!("Hashing {}", bundle.path().display()))?;
        let path = bundle.keep();
        Ok(json!({"logs_tar_path": path.to_string_lossy(), "sha512": format!("sha512:{}", digests.sha512)}))
    }
}
