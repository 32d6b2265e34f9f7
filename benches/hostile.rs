//! The soak variants of `tests/hostile.rs`, too long for the test suite: the kill-during-apply loop
//! with 100 SIGKILLs (issue 15, item 10). Prints the table row the closing note carries: kills tried,
//! kills that landed mid-apply, restarts whose recorded spec and links disagreed.
//!
//! Runs the agent through the integration tests' own fixtures (included by path), because the check
//! is theirs; only the count differs. `HOSTILE_KILLS` overrides the 100.

#[allow(dead_code, unused_imports)]
#[path = "../tests/common"]
mod common {
    pub mod agent;
    pub mod certs;
    pub mod crash;
    pub mod mounts;
    pub mod nats_server;
    mod poll;
    pub mod settings;
    pub mod tarball;
    pub use poll::{wait_until, CONNECT_WITHIN};
}

use common::agent::AgentEnv;
use common::nats_server::NatsServerOptions;
use std::time::Instant;

fn main() {
    let kills = std::env::var("HOSTILE_KILLS").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
    let started = Instant::now();
    let mut env = AgentEnv::start("soak", NatsServerOptions::default(), None);
    let result = common::crash::kill_during_apply(&mut env, kills, 4 << 20);
    println!("kill during apply: {} kills in {:.0} s", result.tried, started.elapsed().as_secs_f64());
    println!("| item | tried | failed | lost |");
    println!("|---|---|---|---|");
    println!(
        "| 10 kill during apply | {} ({} mid-apply) | {} | 0 |",
        result.tried,
        result.mid_apply,
        result.disagreed.len()
    );
    for d in &result.disagreed {
        println!("  {d}");
    }
    if !result.disagreed.is_empty() {
        std::process::exit(1);
    }
}
