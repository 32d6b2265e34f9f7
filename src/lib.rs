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

/// Declares modules that are internal to the agent: crate-visible in the agent itself, so the
/// compiler reports whatever nothing uses, and public under the `internals` feature, which only the
/// crate's own dev-dependency on itself turns on, so its integration tests and benchmarks can reach
/// the parts they exercise.
macro_rules! internal_modules {
    ($($name:ident)*) => {$(
        #[cfg(feature = "internals")]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        pub(crate) mod $name;
    )*};
}

internal_modules! {
    actions alerts archive blobstore bus cancel config dirs dispatch error exec fsutil gzip heartbeat ids jobs
    logs mbus owner platform settings supervisor sync tasks tls url vitals
}
