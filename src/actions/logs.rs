//! `fetch_logs`, `fetch_logs_with_signed_url` and `bundle_logs` (being written on the logs branch).

use super::{Action, Call};
use serde_json::Value;

/// `fetch_logs [log_type, filters]`.
pub struct FetchLogs;
impl Action for FetchLogs {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(FetchLogs)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("fetch_logs is not implemented yet".into())
    }
}

/// `fetch_logs_with_signed_url [{signed_url, log_type, filters, blobstore_headers?}]`.
pub struct FetchLogsWithSignedUrl;
impl Action for FetchLogsWithSignedUrl {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(FetchLogsWithSignedUrl)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("fetch_logs_with_signed_url is not implemented yet".into())
    }
}

/// `bundle_logs [{owning_user, log_type, filters}]`.
pub struct BundleLogs;
impl Action for BundleLogs {
    fn bind(_: &[Value]) -> Result<Self, String> {
        Ok(BundleLogs)
    }
    fn run(self, _: &Call) -> Result<Value, String> {
        Err("bundle_logs is not implemented yet".into())
    }
}
