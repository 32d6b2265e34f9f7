//! Fixtures shared by the integration tests: a throw-away PKI, a real nats-server and monit, the
//! agent binary and its director, HTTP blob servers, a metadata service, a LAN of network namespaces,
//! tarballs, loop devices and mounts.

pub mod agent;
pub mod blob_server;
pub mod certs;
pub mod crash;
pub mod http_listener;
pub mod loopdev;
pub mod metadata;
pub mod monit_daemon;
pub mod mounts;
pub mod nats_server;
pub mod netns;
mod poll;
pub mod settings;
pub mod tarball;

pub use poll::{wait_until, CONNECT_WITHIN};

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Records every log line of the process (tests run in parallel in one process, so assert with
/// "contains", never "equals") and echoes it to stderr, which libtest shows for failing tests only.
/// Lets negative tests check *why* something failed, not just that it did.
struct CaptureLogger;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

impl log::Log for CaptureLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}", record.level(), record.args());
            eprintln!("{line}");
            LINES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }

    fn flush(&self) {}
}

/// Installs the capturing logger (idempotent; first caller wins).
pub fn capture_logs() {
    INIT.call_once(|| {
        if log::set_logger(&CaptureLogger).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
}

/// True once some captured log line contains `needle`.
pub fn logged(needle: &str) -> bool {
    LINES.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|line| line.contains(needle))
}

/// A file under `tests/fixtures` (captured payloads; see its README).
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(relative)
}
