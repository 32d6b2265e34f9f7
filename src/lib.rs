//! A BOSH agent: the daemon on every BOSH-managed VM.
//!
//! It takes orders from the BOSH director over NATS (and from `bosh create-env` over HTTPS), runs them
//! through one dispatcher, and reports heartbeats to the health monitor. The crate is a library so that
//! integration tests, benchmarks and the thin `main.rs` all reach the same modules; ARCHITECTURE.md has
//! the bird's-eye view and the invariants.

// Nothing outside tests may unwrap: input from the network, disks or the director must never panic
// the agent. The lint makes that mechanical; tests keep their unwraps.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
// Every public item says what it is for; with the `internals` feature (the tests' and benchmarks'
// build) that is every module's items, not only the binary's surface.
#![warn(missing_docs)]

// The public surface is what the binary needs: the command line, the agent, the `call` client, and
// process-wide logging and memory set-up.
pub mod app;
pub mod cli;
pub mod client;
pub mod logging;
pub mod memory;

// The modules internal to the agent: crate-visible in the agent itself, so the compiler reports
// whatever nothing uses, and public under the `internals` feature, which only the crate's own
// dev-dependency on itself turns on, so its integration tests and benchmarks can reach the parts they
// exercise. Written out one by one (not by a macro) so that `cargo fmt` sees every file.
#[cfg(feature = "internals")]
pub mod actions;
#[cfg(not(feature = "internals"))]
pub(crate) mod actions;
#[cfg(feature = "internals")]
pub mod alerts;
#[cfg(not(feature = "internals"))]
pub(crate) mod alerts;
#[cfg(feature = "internals")]
pub mod archive;
#[cfg(not(feature = "internals"))]
pub(crate) mod archive;
#[cfg(feature = "internals")]
pub mod blobstore;
#[cfg(not(feature = "internals"))]
pub(crate) mod blobstore;
#[cfg(feature = "internals")]
pub mod bus;
#[cfg(not(feature = "internals"))]
pub(crate) mod bus;
#[cfg(feature = "internals")]
pub mod cancel;
#[cfg(not(feature = "internals"))]
pub(crate) mod cancel;
#[cfg(feature = "internals")]
pub mod config;
#[cfg(not(feature = "internals"))]
pub(crate) mod config;
#[cfg(feature = "internals")]
pub mod dirs;
#[cfg(not(feature = "internals"))]
pub(crate) mod dirs;
#[cfg(feature = "internals")]
pub mod dispatch;
#[cfg(not(feature = "internals"))]
pub(crate) mod dispatch;
#[cfg(feature = "internals")]
pub mod error;
#[cfg(not(feature = "internals"))]
pub(crate) mod error;
#[cfg(feature = "internals")]
pub mod exec;
#[cfg(not(feature = "internals"))]
pub(crate) mod exec;
#[cfg(feature = "internals")]
pub mod fsutil;
#[cfg(not(feature = "internals"))]
pub(crate) mod fsutil;
#[cfg(feature = "internals")]
pub mod gzip;
#[cfg(not(feature = "internals"))]
pub(crate) mod gzip;
#[cfg(feature = "internals")]
pub mod heartbeat;
#[cfg(not(feature = "internals"))]
pub(crate) mod heartbeat;
#[cfg(feature = "internals")]
pub mod http_client;
#[cfg(not(feature = "internals"))]
pub(crate) mod http_client;
#[cfg(feature = "internals")]
pub mod ids;
#[cfg(not(feature = "internals"))]
pub(crate) mod ids;
#[cfg(feature = "internals")]
pub mod jobs;
#[cfg(not(feature = "internals"))]
pub(crate) mod jobs;
#[cfg(feature = "internals")]
pub mod logs;
#[cfg(not(feature = "internals"))]
pub(crate) mod logs;
#[cfg(feature = "internals")]
pub mod mbus;
#[cfg(not(feature = "internals"))]
pub(crate) mod mbus;
#[cfg(feature = "internals")]
pub mod order;
#[cfg(not(feature = "internals"))]
pub(crate) mod order;
#[cfg(feature = "internals")]
pub mod owner;
#[cfg(not(feature = "internals"))]
pub(crate) mod owner;
#[cfg(feature = "internals")]
pub mod platform;
#[cfg(not(feature = "internals"))]
pub(crate) mod platform;
#[cfg(feature = "internals")]
pub mod settings;
#[cfg(not(feature = "internals"))]
pub(crate) mod settings;
#[cfg(feature = "internals")]
pub mod supervisor;
#[cfg(not(feature = "internals"))]
pub(crate) mod supervisor;
#[cfg(feature = "internals")]
pub mod sync;
#[cfg(not(feature = "internals"))]
pub(crate) mod sync;
#[cfg(feature = "internals")]
pub mod tasks;
#[cfg(not(feature = "internals"))]
pub(crate) mod tasks;
#[cfg(feature = "internals")]
pub mod tls;
#[cfg(not(feature = "internals"))]
pub(crate) mod tls;
#[cfg(feature = "internals")]
pub mod url;
#[cfg(not(feature = "internals"))]
pub(crate) mod url;
#[cfg(feature = "internals")]
pub mod vitals;
#[cfg(not(feature = "internals"))]
pub(crate) mod vitals;
