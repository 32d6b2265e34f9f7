//! `compile_package` and `compile_package_with_signed_url` (being written on the compile branch).

use super::{Action, Call};
use serde_json::Value;

/// `compile_package [blobstore_id, digest, name, version, deps]`.
pub struct CompilePackage;
impl Action for CompilePackage {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(CompilePackage)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("compile_package is not implemented yet".into())
    }
}

/// `compile_package_with_signed_url [{...}]`.
pub struct CompilePackageWithSignedUrl;
impl Action for CompilePackageWithSignedUrl {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(CompilePackageWithSignedUrl)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("compile_package_with_signed_url is not implemented yet".into())
    }
}
