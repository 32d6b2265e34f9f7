//! A BOSH agent: the daemon on every BOSH-managed VM.
//!
//! It takes orders from the BOSH director over NATS (and from `bosh create-env` over HTTPS), runs them
//! through one dispatcher, and reports heartbeats to the health monitor. The crate is a library so that
//! integration tests, benchmarks and the thin `main.rs` all reach the same modules; ARCHITECTURE.md has
//! the bird's-eye view and the invariants.

// Nothing outside tests may unwrap: input from the network, disks or the director must never panic
// the agent. The lint makes that mechanical; tests keep their unwraps.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod actions;
pub mod alerts;
pub mod app;
pub mod archive;
pub mod blobstore;
pub mod bus;
pub mod cancel;
pub mod cli;
pub mod client;
pub mod config;
pub mod dirs;
pub mod dispatch;
pub mod fsutil;
pub mod gzip;
pub mod heartbeat;
pub mod ids;
pub mod jobs;
pub mod logging;
pub mod logs;
pub mod mbus;
pub mod memory;
pub mod platform;
pub mod settings;
pub mod supervisor;
pub mod tasks;
pub mod tls;
pub mod url;
pub mod vitals;
