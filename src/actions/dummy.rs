//! Test aids offered only on the dummy platform (the Go agent's dummy platform has similar ones):
//! `dummy_sleep [seconds]`, a cancelable task that only waits, so tests and benchmarks can keep tasks
//! running without jobs; and `dummy_panic`, which proves a panicking action costs one reply, not the agent.

use super::{bind, Action, Call};
use serde_json::{json, Value};
use std::time::Duration;

/// Sleeps up to the given seconds (capped at an hour), waking early when cancelled.
pub struct Sleep {
    seconds: f64,
}
impl Action for Sleep {
    fn bind(args: &[Value]) -> Result<Self, String> {
        let (seconds,): (f64,) = bind(args)?;
        if !(0.0..=3600.0).contains(&seconds) {
            return Err(
                "Extracting method arguments from payload: argument 1: seconds must be within 0..=3600"
                    .into(),
            );
        }
        Ok(Sleep { seconds })
    }
    fn run(self, call: &Call) -> Result<Value, String> {
        let canceled = call.cancel.wait(Duration::from_secs_f64(self.seconds));
        Ok(json!({ "canceled": canceled }))
    }
}

/// Panics on purpose.
pub struct Panic;
impl Action for Panic {
    fn bind(args: &[Value]) -> Result<Self, String> {
        bind::<()>(args).map(|_| Panic)
    }
    #[allow(clippy::panic)] // ok: the whole point of this dummy-only test aid
    fn run(self, _: &Call) -> Result<Value, String> {
        panic!("dummy_panic was asked to panic")
    }
}
