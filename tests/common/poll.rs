//! Waiting by polling with a deadline, the one way tests synchronise with servers and agents.

use std::time::{Duration, Instant};

/// How long a client of the test bus may take to connect: a TLS handshake of a debug build on a
/// loaded 2-core machine can take seconds, and a generous deadline costs nothing when it is quick.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(30);

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
