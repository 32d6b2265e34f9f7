//! `compile_package` and `compile_package_with_signed_url`: the director's two ways of asking a
//! compilation VM to compile a source package (the director's `agent_client.rb`). This module only binds and checks
//! the arguments, which differ between the two forms; the compile itself is
//! [`crate::jobs::compiler`], shared by both so they cannot drift apart.
//!
//! A compile changes `packages/<name>` links, so it holds the jobs lock: an `apply` on the same VM
//! never interleaves with it.

use super::{bind, Action, Call};
use crate::blobstore::{Blobs, MultiDigest};
use crate::jobs::compiler::{Compiler, Destination, Request, Source};
use crate::jobs::spec::PackageSpec;
use crate::sync::lock;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

fn bad_args(e: impl std::fmt::Display) -> String {
    format!("Extracting method arguments from payload: {e}")
}

fn digest_arg(what: &str, text: &str) -> Result<MultiDigest, String> {
    MultiDigest::parse(text).map_err(|e| bad_args(format!("{what}: {e}")))
}

/// Dependencies keyed by name; the key names the dependency when its `name` field is empty.
fn deps_list(deps: BTreeMap<String, PackageSpec>) -> Result<Vec<PackageSpec>, String> {
    deps.into_iter()
        .map(|(key, mut d)| {
            if d.name.is_empty() {
                d.name = key;
            }
            match d.sha1.as_deref() {
                Some(s) if !s.is_empty() => {
                    digest_arg(&format!("dependency {} sha1", d.name), s)?;
                    Ok(d)
                }
                _ => Err(bad_args(format!("dependency {} has no sha1", d.name))),
            }
        })
        .collect()
}

fn run(call: &Call, req: &Request) -> Result<Value, String> {
    let ctx = call.ctx;
    let _guard = lock(&ctx.jobs_lock);
    let blobs = Blobs::from_settings(ctx.settings.get().blobstore(), &ctx.dirs)?;
    let compiler = Compiler { dirs: &ctx.dirs, blobs: &blobs, cancel: call.cancel };
    compiler.compile(req).map(|c| c.to_value())
}

/// `compile_package [blobstore_id, digest, name, version, deps]` → `{"result":{"blobstore_id","sha1"}}`.
pub struct CompilePackage(Request);
impl Action for CompilePackage {
    fn bind(args: &[Value]) -> Result<Self, String> {
        type Args = (String, String, String, String, Option<BTreeMap<String, PackageSpec>>);
        let (id, digest, name, version, deps): Args = bind(args)?;
        Ok(CompilePackage(Request {
            digest: digest_arg("digest", &digest)?,
            source: Source::Blobstore(id),
            name,
            version,
            deps: deps_list(deps.unwrap_or_default())?,
            destination: Destination::Blobstore,
        }))
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        run(call, &self.0)
    }
}

/// The single argument of `compile_package_with_signed_url`.
#[derive(Deserialize)]
struct SignedArgs {
    package_get_signed_url: String,
    upload_signed_url: String,
    #[serde(default)]
    blobstore_headers: Option<BTreeMap<String, String>>,
    digest: String,
    name: String,
    version: String,
    #[serde(default)]
    deps: Option<BTreeMap<String, SignedDep>>,
}

/// A dependency in the signed-URL form: `package_get_signed_url` instead of `signed_url`.
#[derive(Deserialize)]
struct SignedDep {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    sha1: Option<String>,
    #[serde(default)]
    blobstore_id: Option<String>,
    #[serde(default)]
    package_get_signed_url: Option<String>,
    #[serde(default)]
    blobstore_headers: Option<BTreeMap<String, String>>,
}

/// `compile_package_with_signed_url [{package_get_signed_url, upload_signed_url, blobstore_headers,
/// digest, name, version, deps}]` → `{"result":{"sha1":"<sha1>;sha512:<hex>"}}`.
pub struct CompilePackageWithSignedUrl(Request);
impl Action for CompilePackageWithSignedUrl {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (a,): (SignedArgs,) = bind(args)?;
        let headers = a.blobstore_headers.unwrap_or_default();
        let deps = a
            .deps
            .unwrap_or_default()
            .into_iter()
            .map(|(k, d)| {
                let spec = PackageSpec {
                    name: d.name,
                    version: d.version,
                    sha1: d.sha1,
                    blobstore_id: d.blobstore_id,
                    signed_url: d.package_get_signed_url,
                    blobstore_headers: d.blobstore_headers,
                };
                (k, spec)
            })
            .collect();
        Ok(CompilePackageWithSignedUrl(Request {
            digest: digest_arg("digest", &a.digest)?,
            source: Source::Signed { url: a.package_get_signed_url, headers: headers.clone() },
            name: a.name,
            version: a.version,
            deps: deps_list(deps)?,
            destination: Destination::Signed { url: a.upload_signed_url, headers },
        }))
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        run(call, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binds_both_forms_and_refuses_bad_digests() {
        let dep = json!({"foo": {"name": "foo", "version": "1.0", "sha1": "sha256:ab", "blobstore_id": "b"}});
        let c = CompilePackage::bind(&[json!("src"), json!("sha256:cd"), json!("bar"), json!("2.0"), dep])
            .map(|c| c.0)
            .unwrap();
        assert_eq!((c.name.as_str(), c.deps.len()), ("bar", 1));
        assert!(matches!(c.source, Source::Blobstore(ref id) if id == "src"));
        assert!(
            CompilePackage::bind(&[json!("src"), json!(""), json!("bar"), json!("2.0"), json!({})]).is_err()
        );
        let no_sha = json!({"foo": {"name": "foo", "version": "1"}});
        assert!(
            CompilePackage::bind(&[json!("s"), json!("sha256:cd"), json!("b"), json!("1"), no_sha]).is_err()
        );

        let signed = json!({"package_get_signed_url": "http://x/get", "upload_signed_url": "http://x/put",
            "blobstore_headers": {"k": "v"}, "digest": "sha256:cd", "name": "bar", "version": "2.0",
            "deps": {"foo": {"name": "foo", "version": "1.0", "sha1": "sha256:ab",
                             "package_get_signed_url": "http://x/foo"}}});
        let s = CompilePackageWithSignedUrl::bind(&[signed]).map(|c| c.0).unwrap();
        assert_eq!(s.deps[0].signed_url.as_deref(), Some("http://x/foo"));
        assert!(matches!(s.destination, Destination::Signed { ref url, ref headers }
            if url == "http://x/put" && headers["k"] == "v"));
    }
}
