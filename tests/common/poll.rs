//! Waiting by polling with a deadline, the one way tests synchronise with servers and agents.

use std::time::{Duration, Instant};

/// Polls `condition` until it holds or `timeout` passes; returns whether it held. Tests use this
/// instead of fixed sleeps so they are as fast as the system allows and still bounded.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
